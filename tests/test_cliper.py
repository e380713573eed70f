"""CLIPer: early-layer fusion and class maps against slow references written from the method's
equations, the fine-grained compensation on hand-made attention maps, the protocol's labels
against the official rule, and the model's behaviour (FGC off, vocabulary permutation, protocols
per dataset, Stable Diffusion loading errors)."""
import os

import pytest
import torch
import torch.nn.functional as F

from cliper_helpers import TINY_CONFIG, build, tiny_fgc_opts, write_tiny_sd_folder
from conftest import REPO

TINY_CLIP = os.path.join(REPO, "configs", "clip", "tiny-vit.json")
VOCABULARY = ("red ball", "blue box", "grass", "sky")


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return str(write_tiny_sd_folder(str(tmp_path_factory.mktemp("tiny_sd"))))


@pytest.fixture(scope="module")
def coarse_model():
    torch.manual_seed(0)
    return build()


@pytest.fixture(scope="module")
def fgc_model(sd_folder):
    torch.manual_seed(0)
    return build(tiny_fgc_opts(sd_folder))


def random_image(height=40, width=56, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)


# ---------------------------------------------------------------------------------- references
def reference_fusion(visual, images):
    """Early-layer fusion written from the equations, with open_clip's own block and attention calls.

    Returns ``L x N_patch x C`` features and the ``N_patch x N_patch`` head-mean attention.
    """
    from escnet.modeling.cliper.early_fusion import resize_positional_embedding

    blocks = visual.transformer.resblocks
    grid = (images.shape[-2] // visual.patch_size[0], images.shape[-1] // visual.patch_size[1])
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.view(1, 1, -1), x], dim=1)
    x = visual.ln_pre(x + resize_positional_embedding(visual.positional_embedding, grid))
    embeddings, maps = [], []
    for block in blocks[:-1]:
        h = block.ln_1(x)
        embeddings.append(h)
        _, weights = block.attn(h, h, h, need_weights=True, average_attn_weights=False)
        maps.append(weights[0])  # heads x N x N
        x = block(x)  # the block's own forward (residual + MLP)
    embeddings.append(x)
    total = sum(maps).double()
    last = blocks[-1].attn
    heads, width = last.num_heads, last.embed_dim
    features = []
    for k, e in enumerate(embeddings):
        m = total.clone()
        for _ in range(k + 1):  # the official in-place normalisation, repeated on every layer
            for h_ in range(heads):
                m[h_] = m[h_] / m[h_].sum(dim=0, keepdim=True)
                m[h_] = m[h_] / m[h_].sum(dim=1, keepdim=True)
        fused = torch.zeros_like(m)
        for h_ in range(heads):
            s = (m[h_] + m[h_].t()) / 2
            s = (s - s.mean(dim=0, keepdim=True)).clamp(min=0)
            fused[h_] = s / s.sum(dim=1, keepdim=True)
        u = blocks[-1].ln_1(e)[0].double()
        w_v = last.in_proj_weight[2 * width:].double()
        b_v = last.in_proj_bias[2 * width:].double()
        v = u @ w_v.t() + b_v  # N x D
        head_dim = width // heads
        out = torch.cat([fused[h_] @ v[:, h_ * head_dim:(h_ + 1) * head_dim] for h_ in range(heads)], dim=1)
        out = out @ last.out_proj.weight.double().t() + last.out_proj.bias.double()
        features.append((visual.ln_post(out.float()) @ visual.proj)[1:])
        attention = fused.mean(dim=0)[1:, 1:]
    return torch.stack(features), attention.float()


def reference_coarse(features, attention, fg, bg, scale, threshold, select):
    """Coarse class maps from the paper's/code's equations, one class and one layer at a time."""
    texts = torch.cat([fg, bg, fg.mean(0, keepdim=True)])
    texts = texts / texts.norm(dim=-1, keepdim=True)
    probs = []
    for layer in features:
        layer = layer / layer.norm(dim=-1, keepdim=True)
        probs.append(torch.softmax(scale * layer @ texts.t(), dim=-1)[:, : len(fg)])
    probs = torch.stack(probs)  # L x N x Nf
    selected = probs[select].clone()
    for c in range(len(fg)):
        column = selected[:, c]
        column[column < threshold * column.max()] = 0
    probs[select] = selected
    maps = []
    for c in range(len(fg)):
        propagated = torch.stack([(selected[:, c] * attention[:, j]).sum() for j in range(attention.shape[1])])
        maps.append(propagated + probs[:, :, c].mean(dim=0))
    return torch.stack(maps)


def official_labels(maps, scores, protocol):
    """Labels as the official main_ovs.py + cam_to_label (background first, label 0)."""
    cam = maps / (maps.flatten(1).amax(1)[:, None, None] + 1e-5) * scores[:, None, None]
    c, h, w = cam.shape
    flat = cam.reshape(c, -1).clone()
    if protocol.normalize_maps:
        flat -= flat.amin(dim=-1, keepdim=True)
        flat /= flat.amax(dim=-1, keepdim=True) + 1e-6
    present = (scores > protocol.score_threshold).float()[:, None]
    if protocol.background_threshold > 0:
        flat[flat < protocol.background_threshold] = 0
        valid = present * flat
        value, label = valid.max(dim=0)
        label = label + 1
        label[value == 0] = 0
    else:
        valid = present * flat
        valid = torch.cat([(1 - valid.amax(dim=0, keepdim=True)) ** 2, valid])
        label = valid.argmax(dim=0)
    return label.reshape(h, w)


# ---------------------------------------------------------------------------------- tests
def test_early_layer_fusion_matches_slow_reference():
    from escnet.modeling.clip_weights import clip_architecture
    from escnet.modeling.cliper.class_maps import coarse_class_maps
    from escnet.modeling.cliper.early_fusion import EarlyLayerFusion

    torch.manual_seed(0)
    clip, _ = clip_architecture(TINY_CLIP, "")
    clip.eval()
    images = torch.randn(1, 3, 40, 56)  # 5 x 7 grid (native 8 x 8: the positional grid is resized)
    with torch.no_grad():
        features, attention = EarlyLayerFusion(clip.visual)(images)
        ref_features, ref_attention = reference_fusion(clip.visual, images)
        assert features.shape == (3, 1, 35, 32) and attention.shape == (1, 35, 35)
        torch.testing.assert_close(features[:, 0], ref_features, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(attention[0], ref_attention, atol=1e-5, rtol=1e-4)
        assert torch.allclose(attention[0].sum(-1), torch.ones(35), atol=0.2)  # patch rows of a row-stochastic map

        fg, bg = F.normalize(torch.randn(4, 32), dim=-1), F.normalize(torch.randn(2, 32), dim=-1)
        for select, threshold in ((-2, 0.2), (-1, 0.5)):
            coarse = coarse_class_maps(features[:, 0], attention[0], fg, bg, 50.0, threshold, select)
            expected = reference_coarse(ref_features, ref_attention, fg, bg, 50.0, threshold, select)
            torch.testing.assert_close(coarse, expected, atol=1e-5, rtol=1e-4)


def test_fgc_refinement_on_hand_made_maps():
    from escnet.modeling.cliper.refinement import refine_class_maps

    # Two 4 x 4 self-attention maps over a 2 x 2 grid; one class; coarse map already 2 x 2.
    a = torch.tensor([[4.0, 2.0, 0.0, 0.0], [2.0, 4.0, 0.0, 1.0], [0.0, 0.0, 4.0, 4.0], [0.0, 1.0, 2.0, 4.0]])
    b = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [3.0, 0.0, 0.0, 1.0]])
    coarse = torch.tensor([[[1.0, 0.0], [0.0, 0.5]]])
    threshold = 0.3
    # By hand: divide by column maxima (1e-5 guard), zero below 0.3, divide rows by their sums.
    a_n = a / (a.amax(0) + 1e-5)
    a_n[a_n < threshold] = 0
    a_n = a_n / (a_n.sum(1, keepdim=True) + 1e-5)
    b_n = b / (b.amax(0) + 1e-5)
    b_n[b_n < threshold] = 0
    b_n = b_n / (b_n.sum(1, keepdim=True) + 1e-5)
    expected = (torch.eye(4) @ a_n @ b_n @ coarse.flatten(1).t()).t().reshape(1, 2, 2)
    refined = refine_class_maps(coarse, torch.stack([a, b]), threshold)
    torch.testing.assert_close(refined, expected)
    # Row 1 of a: [2, 4, 0, 1] / column maxima [4, 4, 4, 4] -> [.5, 1, 0, .25]: .25 < .3 is dropped,
    # so pixel 1 averages pixels 0 and 1 of b's output with weights 1/3, 2/3.
    b_out = b_n @ coarse.flatten(1).t()
    assert refined[0, 0, 1].item() == pytest.approx((b_out[0] / 3 + 2 * b_out[1] / 3).item(), abs=1e-4)
    # Identity attention leaves the (resized) coarse map unchanged.
    same = refine_class_maps(coarse, torch.eye(4)[None].repeat(3, 1, 1), threshold)
    torch.testing.assert_close(same, coarse, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("background_threshold, normalize", [(0.4, True), (0.0, False), (0.3, False)])
def test_protocol_labels_follow_official_rule(background_threshold, normalize):
    from escnet.modeling.cliper.protocol import CliperProtocol
    from escnet.modeling.cliper.scores import class_scores, foreground_maps, vocabulary_scores

    protocol = CliperProtocol(templates=("{}",), background_words=(), logit_scale=50.0, attention_threshold=0.2,
                              select_layer=-1, score_threshold=0.45, background_threshold=background_threshold,
                              normalize_maps=normalize, background_class_index=0, sliding_crop_size=0,
                              sliding_stride=0)
    generator = torch.Generator().manual_seed(3)
    refined = torch.rand(5, 8, 8, generator=generator) ** 3
    coarse = torch.rand(5, 6, 6, generator=generator)
    scores = class_scores(refined, coarse, 0.5)
    assert scores.tolist() == pytest.approx((0.5 * refined.flatten(1).amax(1) + 0.5 * coarse.flatten(1).amax(1)).tolist())
    maps = foreground_maps(refined, scores, (20, 24), protocol)
    out = vocabulary_scores(maps, 0, protocol)
    assert out.shape == (6, 20, 24)
    torch.testing.assert_close(out.sum(0), torch.ones(20, 24))
    resized = F.interpolate(refined[None], size=(20, 24), mode="bilinear", align_corners=False)[0]
    expected = official_labels(resized, scores, protocol)
    assert 0 < (expected == 0).float().mean() < 1  # both background and objects occur
    assert torch.equal(out.argmax(0), expected)


def test_fgc_off_is_the_coarse_map_resized(coarse_model):
    model = coarse_model
    image = random_image()
    protocol = model.default_protocol
    fg = model.text_features(VOCABULARY, protocol.templates)
    bg = model.text_features(protocol.background_words, protocol.templates)
    coarse, refined = model.predict_class_maps(image, fg, bg, protocol)
    assert refined is coarse and coarse.shape == (4, 8, 11)  # 40 x 56 -> 64 x 88 (short side 64, patch 8)
    with torch.no_grad():
        (out,) = model([{"image": image, "height": 30, "width": 42, "vocabulary": VOCABULARY}])
    resized = F.interpolate(coarse[None], size=(30, 42), mode="bilinear", align_corners=False)[0]
    peaks = coarse.flatten(1).amax(1)
    scaled = resized / (resized.flatten(1).amax(1)[:, None, None] + 1e-5) * peaks[:, None, None]
    torch.testing.assert_close(out["sem_seg"], scaled / scaled.sum(0, keepdim=True))


def test_permuting_the_vocabulary_permutes_the_output(fgc_model):
    model = fgc_model
    assert model.diffusion is not None
    image = random_image(seed=1)
    order = [2, 0, 3, 1]
    with torch.no_grad():
        (out,) = model([{"image": image, "height": 40, "width": 56, "vocabulary": VOCABULARY}])
        (permuted,) = model([{"image": image, "height": 40, "width": 56,
                              "vocabulary": tuple(VOCABULARY[i] for i in order)}])
    torch.testing.assert_close(permuted["sem_seg"], out["sem_seg"][order], atol=1e-5, rtol=1e-4)
    coarse, refined = model.predict_class_maps(
        image, model.text_features(VOCABULARY, ("{}",)), model.text_features((), ("{}",)), model.default_protocol)
    assert refined.shape == (4, 16, 16) and coarse.shape == (4, 8, 11)  # SD attention grid 16 x 16


def test_fgc_changes_the_maps_and_is_deterministic(fgc_model, coarse_model):
    image = random_image(seed=2)
    inputs = [{"image": image, "height": 40, "width": 56, "vocabulary": VOCABULARY}]
    with torch.no_grad():
        first, second = fgc_model(inputs)[0]["sem_seg"], fgc_model(inputs)[0]["sem_seg"]
        coarse = coarse_model(inputs)[0]["sem_seg"]
    torch.testing.assert_close(first, second)  # seeded noise: the same output twice
    assert (first - coarse).abs().max() > 1e-3


def config_with_protocols(tmp_path, protocols_yaml):
    """A config file on top of configs/cliper_tiny.yaml with DATASET_PROTOCOLS given as YAML lines."""
    path = tmp_path / "cliper_protocols.yaml"
    indented = "\n".join("      " + line for line in protocols_yaml.strip().splitlines())
    path.write_text(f"_BASE_: {TINY_CONFIG}\nMODEL:\n  CLIPER:\n    DATASET_PROTOCOLS:\n{indented}\n")
    return str(path)


def test_dataset_protocol_applies_per_input(tmp_path):
    overrides = "synthetic_shapes_val:\n  LOGIT_SCALE: 10.0\n  SELECT_LAYER: -1\n  BACKGROUND_WORDS: [sand]"
    torch.manual_seed(0)
    model = build(config=config_with_protocols(tmp_path, overrides))
    torch.manual_seed(0)
    same_as_default = build(["MODEL.CLIPER.DEFAULT_PROTOCOL.LOGIT_SCALE", "10.0",
                             "MODEL.CLIPER.DEFAULT_PROTOCOL.SELECT_LAYER", "-1",
                             "MODEL.CLIPER.DEFAULT_PROTOCOL.BACKGROUND_WORDS", "['sand']"])
    assert set(model.dataset_protocols) == {"synthetic_shapes_val"}
    image = random_image(seed=3)
    with torch.no_grad():
        (default,) = model([{"image": image, "vocabulary": VOCABULARY}])
        (tuned,) = model([{"image": image, "vocabulary": VOCABULARY, "dataset_name": "synthetic_shapes_val"}])
        (other,) = model([{"image": image, "vocabulary": VOCABULARY, "dataset_name": "some_other_set"}])
        (expected,) = same_as_default([{"image": image, "vocabulary": VOCABULARY}])
    torch.testing.assert_close(tuned["sem_seg"], expected["sem_seg"])
    torch.testing.assert_close(other["sem_seg"], default["sem_seg"])
    assert (tuned["sem_seg"] - default["sem_seg"]).abs().max() > 1e-3


def test_background_entry_of_the_vocabulary_is_scored_by_the_protocol(coarse_model):
    from dataclasses import replace

    from escnet.modeling.cliper.scores import class_scores, foreground_maps

    model, image = coarse_model, random_image(seed=4)
    plain = model.default_protocol
    coarse, refined = model.predict_class_maps(
        image, model.text_features(VOCABULARY, plain.templates), model.text_features((), plain.templates), plain)
    maps = foreground_maps(refined, class_scores(refined, coarse, 1.0), (40, 56), plain)  # V_c
    threshold = float(maps.amax(0).median()) + 1e-4  # background on about half of the pixels (no ties)
    model.dataset_protocols["with_background"] = replace(plain, background_class_index=2,
                                                         background_threshold=threshold)
    try:
        vocabulary = VOCABULARY[:2] + ("background",) + VOCABULARY[2:]
        with torch.no_grad():
            (out,) = model([{"image": image, "vocabulary": vocabulary, "dataset_name": "with_background"}])
    finally:
        del model.dataset_protocols["with_background"]
    scores = out["sem_seg"]
    assert scores.shape == (5, 40, 56)
    foreground = torch.cat([scores[:2], scores[3:]])
    # Before the per-pixel normalisation the background row is the threshold and the others are V_c.
    torch.testing.assert_close(foreground / scores[2:3] * threshold, maps, atol=1e-5, rtol=1e-4)
    labels = scores.argmax(0)
    assert torch.equal(labels == 2, maps.amax(0) < threshold)
    assert 0.3 < (labels == 2).float().mean() < 0.7


@pytest.mark.parametrize("where", ["folder", "hub"])
def test_missing_stable_diffusion_offline_is_one_line_error(tmp_path, monkeypatch, where):
    from escnet.utils.errors import EscnetError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if where == "folder":
        opts = ["MODEL.CLIPER.FGC", "True", "MODEL.CLIPER.SD_MODEL", str(tmp_path / "missing_sd")]
        expected = "Stable Diffusion folder not found"
    else:
        opts = ["MODEL.CLIPER.FGC", "True", "MODEL.CLIPER.SD_MODEL", "stabilityai/stable-diffusion-2-1-base",
                "MODEL.CLIPER.SD_CACHE_DIR", str(tmp_path / "empty_cache")]
        expected = "not available offline"
    with pytest.raises(EscnetError) as info:
        build(opts)
    message = str(info.value)
    assert expected in message and "MODEL.CLIPER.SD_MODEL" in message and "\n" not in message


def test_incomplete_stable_diffusion_folder_names_what_is_missing(tmp_path):
    from escnet.utils.errors import EscnetError

    (tmp_path / "sd" / "unet").mkdir(parents=True)
    with pytest.raises(EscnetError, match=r"lacks vae/, text_encoder/, tokenizer/, scheduler/"):
        build(["MODEL.CLIPER.FGC", "True", "MODEL.CLIPER.SD_MODEL", str(tmp_path / "sd")])


def test_bad_protocol_keys_are_one_line_errors(tmp_path):
    from escnet.utils.errors import EscnetError

    with pytest.raises(EscnetError, match="unknown key.*SCORE_TRESHOLD"):
        build(config=config_with_protocols(tmp_path, "synthetic_shapes_val:\n  SCORE_TRESHOLD: 0.5"))
    with pytest.raises(EscnetError, match="not a template set name of MODEL.CLIPER.TEMPLATE_SETS or TEMPLATE_FILES"):
        build(["MODEL.CLIPER.DEFAULT_PROTOCOL.TEMPLATES", "imagenet"])
    with pytest.raises(EscnetError, match="SELECT_LAYER 5 is outside the 3 layers"):
        build(["MODEL.CLIPER.DEFAULT_PROTOCOL.SELECT_LAYER", "5"])


def test_training_free_contract(coarse_model):
    from escnet.modeling.trained_weights import needs_trained_weights
    from escnet.utils.errors import EscnetError

    assert not needs_trained_weights(coarse_model)
    assert all(not p.requires_grad for p in coarse_model.parameters())
    assert coarse_model.yardstick_input_size == (64, 64)
    with torch.no_grad():
        assert coarse_model.run_yardstick(torch.randn(2, 3, 64, 64)).shape == (2, 32)
    coarse_model.train()
    try:
        with pytest.raises(EscnetError, match="training-free"):
            coarse_model([{"image": random_image(), "vocabulary": VOCABULARY}])
    finally:
        coarse_model.eval()
