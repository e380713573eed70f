"""SAM parts: checkpoint loading (bit-exact, strict), prompt embedding and class-wise blocks vs segment_anything."""
import os

import pytest
import torch
from segment_anything.modeling.prompt_encoder import PromptEncoder
from segment_anything.modeling.transformer import TwoWayTransformer

from detectron2.modeling import build_model

from escnet.modeling.esc_net.prompt_generator import PseudoPromptGenerator
from escnet.modeling.esc_net.sam_blocks import SamClassBlock, SamPromptEncoder, load_sam_checkpoint
from escnet.utils.errors import EscnetError

from conftest import tiny_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the tiny config's SAM sizes and CLIP grid (64 / patch 8)
SAM_DIM, HEADS, MLP_DIM, MASK_CHANS, GRID = 32, 2, 64, 8, (8, 8)


def _write_sam_checkpoint(path, seed=0, drop_key=None, reshape_key=None):
    """A random SAM-format checkpoint: ``prompt_encoder.*`` and ``mask_decoder.transformer.*``."""
    torch.manual_seed(seed)
    encoder = PromptEncoder(SAM_DIM, GRID, GRID, MASK_CHANS)
    transformer = TwoWayTransformer(depth=2, embedding_dim=SAM_DIM, num_heads=HEADS, mlp_dim=MLP_DIM)
    state = {f"prompt_encoder.{k}": v for k, v in encoder.state_dict().items()}
    state.update({f"mask_decoder.transformer.{k}": v for k, v in transformer.state_dict().items()})
    state["image_encoder.neck.0.weight"] = torch.zeros(1)  # other SAM parts are ignored
    if drop_key:
        del state[drop_key]
    if reshape_key:
        state[reshape_key] = torch.zeros(3, 3)
    torch.save(state, path)
    return state


def test_loading_gives_the_checkpoint_tensors_bit_identical(tmp_path):
    path = str(tmp_path / "sam_tiny.pth")
    state = _write_sam_checkpoint(path)
    model = build_model(tiny_cfg(SAM_INIT="pretrained", SAM_CHECKPOINT=path, SAM_LAYER_MAP=[1, 0]))
    for name, tensor in model.prompt_encoder.state_dict().items():
        assert torch.equal(tensor, state[f"prompt_encoder.{name}"]), name
    for block, layer in zip(model.blocks, (1, 0)):
        assert block.sam.block.skip_first_layer_pe == (layer == 0)
        for name, tensor in block.sam.block.state_dict().items():
            assert torch.equal(tensor, state[f"mask_decoder.transformer.layers.{layer}.{name}"]), name
    # the blocks are independent copies
    assert model.blocks[0].sam.block.mlp.lin1.weight.data_ptr() != model.blocks[1].sam.block.mlp.lin1.weight.data_ptr()

    # the pretrained model trains (Table 2's "pretrained" setting)
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    label = torch.randint(0, 3, (64, 64))
    loss = model.train()([{"image": image, "sem_seg": label, "vocabulary": ("sky", "tree", "road")}])["loss_sem_seg"]
    loss.backward()
    assert model.blocks[0].sam.block.cross_attn_image_to_token.v_proj.weight.grad is not None

    random_model = build_model(tiny_cfg(SAM_INIT="random", SAM_CHECKPOINT=path))
    weight = random_model.blocks[0].sam.block.mlp.lin1.weight
    assert not torch.equal(weight, state["mask_decoder.transformer.layers.0.mlp.lin1.weight"])


@pytest.mark.parametrize(
    "problem, message",
    [
        ("missing_file", "SAM checkpoint not found: .*missing.pth"),
        ("missing_key", "lacks 'mask_decoder.transformer.layers.1.norm4.weight'"),
        ("wrong_shape", r"'prompt_encoder.no_mask_embed.weight' has shape \(3, 3\)"),
        ("not_a_checkpoint", "cannot read the SAM checkpoint"),
    ],
)
def test_bad_checkpoints_raise_one_line_errors(tmp_path, problem, message):
    path = str(tmp_path / "sam.pth")
    if problem == "missing_file":
        path = str(tmp_path / "missing.pth")
    elif problem == "missing_key":
        _write_sam_checkpoint(path, drop_key="mask_decoder.transformer.layers.1.norm4.weight")
    elif problem == "wrong_shape":
        _write_sam_checkpoint(path, reshape_key="prompt_encoder.no_mask_embed.weight")
    else:
        (tmp_path / "sam.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(EscnetError, match=message) as info:
        build_model(tiny_cfg(SAM_INIT="pretrained", SAM_CHECKPOINT=path))
    assert "\n" not in str(info.value)


def test_url_uses_the_hub_cache_and_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    url = "http://127.0.0.1:9/segment_anything/sam_tiny_test.pth"  # nothing listens on port 9
    encoder = SamPromptEncoder(SAM_DIM, GRID, MASK_CHANS)
    with pytest.raises(EscnetError, match=r"cannot download the SAM checkpoint .* put sam_tiny_test.pth into .*checkpoints"):
        load_sam_checkpoint(url, [("prompt_encoder.", encoder)])
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    state = _write_sam_checkpoint(str(cache / "sam_tiny_test.pth"), seed=3)
    assert load_sam_checkpoint(url, [("prompt_encoder.", encoder)]) == len(encoder.state_dict())
    assert torch.equal(encoder.point_embeddings[1].weight, state["prompt_encoder.point_embeddings.1.weight"])


def _prompts(num_maps, seed=0):
    torch.manual_seed(seed)
    maps = torch.randn(num_maps, *GRID)
    return PseudoPromptGenerator(num_regions=3, threshold=0.5, temperature=0.1, kmeans_iters=5)(maps)


@pytest.mark.parametrize("prompt_types", [("point",), ("point", "box"), ("box", "mask"), ("point", "mask")])
def test_prompt_embedding_matches_segment_anything(prompt_types):
    torch.manual_seed(1)
    ours = SamPromptEncoder(SAM_DIM, GRID, MASK_CHANS)
    reference = PromptEncoder(SAM_DIM, GRID, GRID, MASK_CHANS)
    reference.load_state_dict(ours.state_dict())
    prompts = _prompts(4)
    prompts.valid[:] = True  # segment_anything has no invalid boxes; compare on valid regions
    sparse, dense = ours.embed_pseudo_prompts(prompts, prompt_types)

    # segment_anything's public forward, one prompt kind at a time (it takes one box per set)
    expected = []
    if "point" in prompt_types:
        point_tokens, _ = reference((prompts.points, torch.ones(4, 3)), None, None)  # pads a not-a-point
        expected.append(point_tokens[:, :-1] if "box" in prompt_types else point_tokens)
    if "box" in prompt_types:
        box_tokens, _ = reference(None, prompts.boxes.reshape(-1, 4), None)
        expected.append(box_tokens.reshape(4, -1, SAM_DIM))
    masks = None
    if "mask" in prompt_types:
        masks = torch.nn.functional.interpolate(prompts.foreground.float()[:, None], scale_factor=4, mode="nearest")
    _, expected_dense = reference(None, None, masks)
    assert sparse.shape == (4, sum(t.shape[1] for t in expected), SAM_DIM)
    assert torch.allclose(sparse, torch.cat(expected, dim=1), atol=1e-6)
    assert torch.allclose(dense, expected_dense.expand_as(dense), atol=1e-6)


def test_class_block_equals_segment_anything_block_run_per_class():
    torch.manual_seed(2)
    batch, classes, in_dim, text_dim, out_dim = 2, 3, 12, 10, 6
    block = SamClassBlock(in_dim, text_dim, out_dim, SAM_DIM, HEADS, MLP_DIM, 2, skip_first_layer_pe=True)
    reference = TwoWayTransformer(depth=2, embedding_dim=SAM_DIM, num_heads=HEADS, mlp_dim=MLP_DIM).layers[0]
    reference.load_state_dict(block.block.state_dict())
    encoder = SamPromptEncoder(SAM_DIM, GRID, MASK_CHANS)
    image = torch.randn(batch, in_dim, *GRID)
    text = torch.randn(classes, text_dim)
    sparse, dense = encoder.embed_pseudo_prompts(_prompts(batch * classes), ("point", "mask"))
    dense_pe = encoder.get_dense_pe()
    weights = torch.softmax(torch.randn(batch, classes, *GRID), dim=1)
    fused = block(image, text, sparse, dense, dense_pe, weights)

    expected = torch.zeros(batch, out_dim, *GRID)
    key_pe = dense_pe.flatten(2).transpose(1, 2)
    for b in range(batch):
        for n in range(classes):
            index = b * classes + n
            tokens = torch.cat([block.text_proj(text[n])[None, None], sparse[index:index + 1]], dim=1)
            keys = (block.image_proj(image[b:b + 1]) + dense[index:index + 1]).flatten(2).transpose(1, 2)
            _, keys = reference(queries=tokens, keys=keys, query_pe=tokens, key_pe=key_pe)
            refined = block.fuse(keys[0]).transpose(0, 1).reshape(out_dim, *GRID)  # shared 1x1 conv
            expected[b] += weights[b, n] * refined
    assert torch.allclose(fused, expected, atol=1e-5)
