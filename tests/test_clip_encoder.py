"""CLIPEncoder: dense image / text features vs open_clip, weights loading, cache, fine-tuning."""
import os
import time

import pytest
import torch
import torch.nn.functional as F
import open_clip
from detectron2.config import get_cfg
from open_clip.transformer import QuickGELU

from escnet.config import add_escnet_config
from escnet.modeling.esc_net.clip_encoder import CLIPEncoder, default_intermediate_layers
from escnet.modeling.clip_weights import REPO_ROOT, clip_architecture, resize_grid_embedding, resolve_checkpoint
from escnet.utils.errors import EscnetError

TINY = os.path.join(REPO_ROOT, "configs", "clip", "tiny-vit.json")
TINY_SIZE = 64  # the tiny config's native image size (8 x 8 grid of 8-pixel patches)


def tiny_encoder(**overrides):
    kwargs = dict(
        model_name=TINY,
        pretrained="",
        input_size=TINY_SIZE,
        templates=["a photo of a {}.", "a picture of the {}."],
        finetune="attention",
    )
    kwargs.update(overrides)
    torch.manual_seed(0)
    return CLIPEncoder(**kwargs)


@pytest.fixture(scope="module")
def encoder():
    return tiny_encoder().eval()


def test_from_config_builds_tiny_model():
    cfg = get_cfg()
    add_escnet_config(cfg)
    cfg.MODEL.ESCNET.CLIP_MODEL = "configs/clip/tiny-vit.json"  # relative to the repo root
    cfg.MODEL.ESCNET.CLIP_PRETRAINED = ""
    cfg.MODEL.ESCNET.CLIP_INPUT_SIZE = 96
    enc = CLIPEncoder(cfg)
    assert (enc.embed_dim, enc.width, enc.grid_size) == (32, 64, (12, 12))
    assert enc.intermediate_layers == [0, 1]
    assert enc.templates == ("A photo of a {} in the scene.",)
    assert enc.pixel_mean.shape == (3, 1, 1) and 100 < float(enc.pixel_mean[0]) < 150


def test_text_features_match_open_clip(encoder):
    vocabulary = ["cat", "sofa, couch", "traffic light"]
    ours = encoder.encode_text(vocabulary)
    assert ours.shape == (3, encoder.embed_dim)
    tokenizer = encoder.tokenizer
    expected = []
    with torch.no_grad():
        for names in (["cat"], ["sofa", "couch"], ["traffic light"]):
            prompts = [t.format(n) for n in names for t in encoder.templates]
            feats = encoder.clip.encode_text(tokenizer(prompts), normalize=True)
            expected.append(F.normalize(feats.mean(0), dim=-1))
    torch.testing.assert_close(ours, torch.stack(expected), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(3))


def test_dense_features_class_token_matches_open_clip(encoder):
    images = torch.randn(4, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        tokens, _ = encoder.encode_image_tokens(images)
        reference = encoder.clip.encode_image(images)  # unnormalised, like our dense output
        dense, intermediates = encoder.encode_image_dense(images)
    torch.testing.assert_close(tokens[:, 0], reference, rtol=1e-5, atol=1e-5)
    assert dense.shape == (4, encoder.embed_dim, 8, 8)
    # Patch token (row r, column c) of the grid sits at sequence position 1 + r * w + c.
    torch.testing.assert_close(dense[:, :, 2, 5], tokens[:, 1 + 2 * 8 + 5])
    assert [t.shape for t in intermediates] == [(4, encoder.width, 8, 8)] * 2
    assert not torch.allclose(intermediates[0], intermediates[1])


def test_intermediates_are_block_outputs(encoder):
    images = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    visual = encoder.clip.visual
    with torch.no_grad():
        x = visual._embeds(images)
        outputs = []
        for block in visual.transformer.resblocks:
            x = block(x)
            outputs.append(x)
        _, intermediates = encoder.encode_image_dense(images)
    for layer, feature in zip(encoder.intermediate_layers, intermediates):
        grid = outputs[layer][:, 1:].transpose(1, 2).reshape(2, encoder.width, 8, 8)
        torch.testing.assert_close(feature, grid)


def test_default_intermediate_layers_follow_cat_seg():
    assert default_intermediate_layers(12) == [3, 7]
    assert default_intermediate_layers(24) == [7, 15]


@pytest.mark.parametrize(
    "model_name, input_size, width, embed_dim, layers",
    [("ViT-B-16", 384, 768, 512, [3, 7]), ("ViT-L-14-336", 336, 1024, 768, [7, 15])],
)
def test_paper_models_grid_at_configured_size(model_name, input_size, width, embed_dim, layers):
    with torch.device("meta"):  # structure only: no memory, no weights
        enc = CLIPEncoder(model_name=model_name, pretrained="", input_size=input_size, templates=["{}"])
    assert enc.grid_size == (24, 24)
    assert (enc.width, enc.embed_dim, enc.intermediate_layers) == (width, embed_dim, layers)
    assert enc.clip.visual.positional_embedding.shape == (24 * 24 + 1, width)


def test_positional_embedding_resize(tmp_path):
    torch.manual_seed(0)
    native = tiny_encoder()
    path = tmp_path / "tiny.pt"
    torch.save(native.clip.state_dict(), path)
    same = tiny_encoder(pretrained=str(path))
    assert torch.equal(same.clip.visual.positional_embedding, native.clip.visual.positional_embedding)
    bigger = tiny_encoder(pretrained=str(path), input_size=96)
    pos = bigger.clip.visual.positional_embedding
    assert pos.shape == (1 + 12 * 12, native.width)
    assert torch.equal(pos[0], native.clip.visual.positional_embedding[0])  # class token kept
    assert torch.equal(resize_grid_embedding(pos, (12, 12), (12, 12)), pos)
    # Resizing the grid part is a bicubic interpolation of the 8 x 8 grid.
    grid = native.clip.visual.positional_embedding[1:].reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(12, 12), mode="bicubic", align_corners=False)
    torch.testing.assert_close(pos[1:], expected.permute(0, 2, 3, 1).reshape(144, -1))
    dense, intermediates = bigger.encode_image_dense(torch.randn(2, 3, 96, 96))
    assert dense.shape == (2, 32, 12, 12) and intermediates[0].shape == (2, 64, 12, 12)
    with pytest.raises(ValueError, match="96 x 96"):
        bigger.encode_image_dense(torch.randn(2, 3, 64, 64))


def test_local_checkpoint_loads_bit_identical(tmp_path):
    torch.manual_seed(123)
    source = tiny_encoder()
    for param in source.clip.parameters():  # make sure the weights differ from tiny_encoder's seed
        param.data.add_(torch.randn_like(param))
    path = tmp_path / "clip.pt"
    torch.save(source.clip.state_dict(), path)
    loaded = tiny_encoder(pretrained=str(path))
    fresh = tiny_encoder()
    source_state, loaded_state = source.clip.state_dict(), loaded.clip.state_dict()
    assert source_state.keys() == loaded_state.keys()
    for key, value in source_state.items():
        assert torch.equal(value, loaded_state[key]), key
    assert not torch.equal(fresh.clip.token_embedding.weight, loaded.clip.token_embedding.weight)


def test_torchscript_checkpoint_loads_bit_identical(tmp_path):
    # OpenAI's original weight files are TorchScript archives.
    source = tiny_encoder()
    path = tmp_path / "clip_ts.pt"
    torch.jit.script(source.clip).save(str(path))
    loaded = tiny_encoder(pretrained=str(path))
    for key, value in source.clip.state_dict().items():
        assert torch.equal(value, loaded.clip.state_dict()[key]), key


def test_checkpoint_of_another_architecture_is_one_line_error(tmp_path):
    path = tmp_path / "other.pt"
    state = tiny_encoder().clip.state_dict()
    state["text_projection"] = torch.zeros(3, 3)
    torch.save(state, path)
    _assert_one_line_fast(lambda: tiny_encoder(pretrained=str(path)), str(path), "does not fit")


def _assert_one_line_fast(call, *needles):
    start = time.monotonic()
    with pytest.raises(EscnetError) as info:
        call()
    assert time.monotonic() - start < 5.0
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_missing_checkpoint_path_is_one_line_error(tmp_path):
    missing = str(tmp_path / "nowhere" / "clip.pt")
    _assert_one_line_fast(lambda: tiny_encoder(pretrained=missing), missing, "CLIP_PRETRAINED")


def test_unknown_tag_is_one_line_error():
    _assert_one_line_fast(
        lambda: CLIPEncoder(model_name="ViT-B-16", pretrained="no_such_tag", input_size=384, templates=["{}"]),
        "no_such_tag",
        "openai",
    )


def test_offline_tag_missing_from_cache_fails_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    build = lambda: CLIPEncoder(  # noqa: E731
        model_name="ViT-B-16", pretrained="openai", input_size=384, templates=["{}"],
        offline=True, cache_dir=str(tmp_path),
    )
    _assert_one_line_fast(build, "ViT-B-16/openai", "https://", "CLIP_PRETRAINED", str(tmp_path))
    # The Hugging Face offline variable switches offline mode on as well.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    build = lambda: CLIPEncoder(  # noqa: E731
        model_name="ViT-B-16", pretrained="openai", input_size=384, templates=["{}"], cache_dir=str(tmp_path),
    )
    _assert_one_line_fast(build, "not available offline")


def test_online_without_network_fails_fast(tmp_path, monkeypatch):
    from escnet.modeling import clip_weights

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(clip_weights, "_host_reachable", lambda host: False)
    build = lambda: CLIPEncoder(  # noqa: E731
        model_name="ViT-B-16", pretrained="openai", input_size=384, templates=["{}"], cache_dir=str(tmp_path),
    )
    _assert_one_line_fast(build, "cannot reach", "CLIP_PRETRAINED", str(tmp_path))


def test_offline_tag_found_in_url_cache(tmp_path):
    # A weight file already in open_clip's URL cache is used without any network access.
    url = open_clip.get_pretrained_cfg("ViT-B-16", "openai")["url"]
    cached = tmp_path / os.path.basename(url)
    cached.write_bytes(b"weights")
    found = resolve_checkpoint("ViT-B-16", "ViT-B-16", "openai", offline=True, cache_dir=str(tmp_path))
    assert found == str(cached)


def test_quick_gelu_for_openai_weights():
    with torch.device("meta"):
        openai_model, info = clip_architecture("ViT-B-16", "openai")
        laion_model, laion_info = clip_architecture("ViT-B-16", "laion2b_s34b_b88k")
    assert info["quick_gelu"] and not laion_info["quick_gelu"]
    for block in list(openai_model.visual.transformer.resblocks) + list(openai_model.transformer.resblocks):
        assert isinstance(block.mlp.gelu, QuickGELU)
    assert not isinstance(laion_model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert isinstance(laion_model.visual.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)


def test_text_cache_eval_and_invalidation(monkeypatch):
    enc = tiny_encoder().eval()
    calls = []
    compute = enc._compute_text_features
    monkeypatch.setattr(enc, "_compute_text_features", lambda v: calls.append(v) or compute(v))
    first = enc.encode_text(["cat", "dog"])
    assert enc.encode_text(("cat", "dog")) is first and len(calls) == 1
    assert not first.requires_grad
    other = enc.encode_text(["cat", "bird"])
    assert len(calls) == 2 and not torch.equal(other, first)
    enc.templates = ["an image of a {}."]
    changed = enc.encode_text(["cat", "dog"])
    assert len(calls) == 3 and not torch.equal(changed, first)
    enc.train()
    enc.eval()
    enc.encode_text(["cat", "dog"])
    assert len(calls) == 4
    enc.load_state_dict(enc.state_dict())
    enc.encode_text(["cat", "dog"])
    assert len(calls) == 5
    assert not any("cache" in key for key in enc.state_dict())


def test_text_cache_cleared_when_loaded_through_a_parent():
    enc = tiny_encoder().eval()
    parent = torch.nn.Module()
    parent.clip_encoder = enc
    before = enc.encode_text(["cat", "dog"])
    state = {k: v.clone() for k, v in parent.state_dict().items()}
    state["clip_encoder.clip.token_embedding.weight"].normal_()
    parent.load_state_dict(state)
    after = enc.encode_text(["cat", "dog"])
    assert not torch.allclose(before, after)


def test_training_mode_computes_fresh_with_grads_to_attention():
    enc = tiny_encoder().train()
    first = enc.encode_text(["cat", "dog"])
    second = enc.encode_text(["cat", "dog"])
    assert first is not second and first.requires_grad
    dense, intermediates = enc.encode_image_dense(torch.randn(2, 3, TINY_SIZE, TINY_SIZE))
    logits = torch.einsum("bchw,nc->bnhw", F.normalize(dense, dim=1), first)
    (logits.sum() + sum(t.mean() for t in intermediates)).backward()
    named = dict(enc.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable and all(".attn." in n for n in trainable)
    assert "clip.visual.transformer.resblocks.0.attn.in_proj_weight" in trainable
    assert "clip.transformer.resblocks.0.attn.out_proj.weight" in trainable
    for name in trainable:
        assert named[name].grad is not None and named[name].grad.abs().sum() > 0, name
    for name in ("clip.visual.conv1.weight", "clip.token_embedding.weight", "clip.visual.proj"):
        assert named[name].grad is None


@pytest.mark.parametrize("mode", ["none", "full"])
def test_finetune_modes(mode):
    enc = tiny_encoder(finetune=mode)
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    if mode == "none":
        assert not trainable
        enc.train()
        assert enc.encode_text(["cat"]) is enc.encode_text(["cat"])  # frozen text: cached in training too
    else:
        assert trainable == {n for n, _ in enc.named_parameters()} - {"clip.logit_scale"}


def test_bad_configuration_errors():
    with pytest.raises(EscnetError, match="CLIP_FINETUNE"):
        tiny_encoder(finetune="some")
    with pytest.raises(EscnetError, match="exactly one"):
        tiny_encoder(templates=["no placeholder"])
    with pytest.raises(EscnetError, match="not a multiple"):
        tiny_encoder(input_size=60)
    with pytest.raises(EscnetError, match="out of range"):
        tiny_encoder(intermediate_layers=[5])
    with pytest.raises(EscnetError, match="unknown open_clip model"):
        tiny_encoder(model_name="ViT-Q-99")
    with pytest.raises(EscnetError, match="not found"):
        tiny_encoder(model_name="configs/clip/missing.json")
    with pytest.raises(EscnetError, match="duplicate"):
        tiny_encoder().encode_text(["cat", "Cat"])


def test_text_cache_keeps_only_the_most_recent_vocabularies():
    from escnet.modeling.esc_net.clip_encoder import CLIPEncoder
    from conftest import tiny_cfg

    cfg = tiny_cfg()
    cfg.MODEL.ESCNET.CLIP_TEXT_CACHE_SIZE = 2
    encoder = CLIPEncoder(cfg).eval()
    first = encoder.encode_text(["cat"])
    encoder.encode_text(["dog"])
    assert encoder.encode_text(["cat"]) is first  # still cached, now most recent
    encoder.encode_text(["bird"])  # evicts "dog", the least recently used
    assert len(encoder._text_cache) == 2
    assert encoder.encode_text(["cat"]) is first
    assert {key[0] for key in encoder._text_cache} == {("cat",), ("bird",)}
