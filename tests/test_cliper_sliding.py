"""CLIPer's sliding window (official ``forward_slide``): the window grid, the merging of window
logits and attention on hand-made maps, a one-window image against the formula built from the
whole-image fusion, several windows against a per-window slow reference, the per-dataset protocol
of configs/cliper_vitb.yaml and the one-line errors of bad window settings."""
import os
from dataclasses import replace

import pytest
import torch

from cliper_helpers import build
from conftest import REPO

VOCABULARY = ("red ball", "blue box", "grass", "sky")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build()


def random_image(height=40, width=56, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)


def test_window_boxes_follow_the_official_grid():
    from escnet.modeling.cliper.sliding_window import window_boxes, window_starts

    # 336 x 448 (a 480 x 640 photo at short side 336), 224-pixel windows every 112 pixels.
    assert window_starts(336, 224, 112) == [(0, 224), (112, 336)]
    assert window_starts(448, 224, 112) == [(0, 224), (112, 336), (224, 448)]
    # The last window is pushed back inside the image: 400 -> starts 0, 112 and 176 (not 224).
    assert window_starts(400, 224, 112) == [(0, 224), (112, 336), (176, 400)]
    # A side shorter than the window is one window of that side.
    assert window_starts(200, 224, 112) == [(0, 200)]
    boxes = window_boxes(336, 400, 224, 112)
    assert len(boxes) == 6 and boxes[0] == (0, 224, 0, 224) and boxes[-1] == (112, 336, 176, 400)
    assert boxes[1] == (0, 224, 112, 336)  # row by row
    covered = torch.zeros(336, 400)
    for top, bottom, left, right in boxes:
        assert (bottom - top, right - left) == (224, 224)
        covered[top:bottom, left:right] += 1
    assert covered.min() >= 1


def test_merge_windows_on_hand_made_maps():
    from escnet.modeling.cliper.sliding_window import COUNT_EPS, merge_windows

    # A 1 x 3 grid, two windows: cells (0, 1) and (1, 2); one layer, two texts.
    z1 = torch.tensor([[[1.0, 2.0], [0.0, 4.0]]])  # L x T x n
    z2 = torch.tensor([[[6.0, 3.0], [2.0, 0.0]]])
    a1 = torch.tensor([[0.6, 0.2], [0.3, 0.5]])
    a2 = torch.tensor([[0.7, 0.1], [0.4, 0.4]])
    merged = merge_windows([z1, z2], [a1, a2], [torch.tensor([0, 1]), torch.tensor([1, 2])], 3)
    # By hand: cell 1 is in both windows, so its logits and its self-attention are averaged.
    z = torch.tensor([[[1.0, (2.0 + 6.0) / 2, 3.0], [0.0, (4.0 + 2.0) / 2, 0.0]]])
    counts = torch.tensor([[1.0, 1.0, 0.0], [1.0, 2.0, 1.0], [0.0, 1.0, 1.0]])
    summed = torch.tensor([[0.6, 0.2, 0.0], [0.3, 0.5 + 0.7, 0.1], [0.0, 0.4, 0.4]])
    a = summed / (counts + COUNT_EPS)
    a = a / a.sum(dim=1, keepdim=True)
    expected = torch.einsum("ltn,nm->ltm", z, a)  # column m: sum over n of z_n a[n, m]
    torch.testing.assert_close(merged, expected)
    # Column 0 of the merged attention comes from cells 0 and 1 only (cell 2 shares no window with 0).
    assert a[2, 0] == 0 and a[0, 2] == 0
    assert merged[0, 0, 0].item() == pytest.approx(1.0 * a[0, 0].item() + 4.0 * a[1, 0].item(), rel=1e-6)


def probabilities_of(merged_logits, num_foreground):
    return merged_logits.transpose(-1, -2).softmax(dim=-1)[..., :num_foreground]


def test_one_window_image_is_the_whole_image_fusion_propagated(model):
    from escnet.modeling.cliper.class_maps import class_texts, propagate_class_maps, text_logits

    protocol = model.default_protocol
    one_window = replace(protocol, sliding_crop_size=128, sliding_stride=64)  # CLIP input 64 x 88 < 128
    image = random_image()
    fg = model.text_features(VOCABULARY, protocol.templates)
    bg = model.text_features(("sand", "water"), protocol.templates)
    with torch.no_grad():
        coarse, _ = model.predict_class_maps(image, fg, bg, one_window)
        plain, _ = model.predict_class_maps(image, fg, bg, protocol)
        # Formula: the only window is the image, its merged attention the row-normalised fused attention.
        features, attention = model.fusion(model.clip_input(image))
        logits = text_logits(features[:, 0], class_texts(fg, bg), protocol.logit_scale)  # L x N x T
        a = attention[0] / attention[0].sum(dim=1, keepdim=True)
        windows = probabilities_of(logits.transpose(-1, -2) @ a, len(VOCABULARY))
        whole = logits.softmax(dim=-1)[..., : len(VOCABULARY)]
        w = model.sliding_weight
        expected = propagate_class_maps(w * windows + (1 - w) * whole, attention[0], protocol.attention_threshold,
                                        protocol.select_layer)
    assert w == 0.5 and coarse.shape == (4, 8, 11)
    torch.testing.assert_close(coarse.flatten(1), expected, atol=1e-5, rtol=1e-4)
    assert (coarse - plain).abs().max() > 1e-3  # the window path is live


def test_several_windows_match_a_per_window_reference(model):
    from escnet.modeling.cliper.class_maps import class_texts
    from escnet.modeling.cliper.sliding_window import sliding_window_logits

    protocol = model.default_protocol
    clip_input = model.clip_input(random_image(seed=5))  # 1 x 3 x 64 x 88: grid 8 x 11, patch 8
    texts = class_texts(model.text_features(VOCABULARY, protocol.templates),
                        model.text_features(("sand",), protocol.templates))
    crop, stride, patch = 48, 24, 8
    with torch.no_grad():
        merged = sliding_window_logits(model.fusion, clip_input, texts, protocol.logit_scale, crop, stride)
        # Reference: one window at a time (the official loop), 4-D grid x grid accumulators.
        layers, num_texts = model.fusion.depth, texts.shape[0]
        preds = torch.zeros(layers, num_texts, 8, 11)
        count = torch.zeros(8, 11)
        attns = torch.zeros(8, 11, 8, 11)
        pair_count = torch.zeros(8, 11, 8, 11)
        # (64 - 48 + 23) // 24 + 1 = 2 rows, (88 - 48 + 23) // 24 + 1 = 3 columns, the last ones pushed back
        tops, lefts = [0, 16], [0, 24, 40]
        for top in tops:
            for left in lefts:
                window = clip_input[..., top:top + crop, left:left + crop]
                features, attention = model.fusion(window)
                f = features[:, 0] / features[:, 0].norm(dim=-1, keepdim=True)
                t = texts / texts.norm(dim=-1, keepdim=True)
                logits = (protocol.logit_scale * f @ t.t()).transpose(1, 2).reshape(layers, num_texts, 6, 6)
                r, c = top // patch, left // patch
                preds[..., r:r + 6, c:c + 6] += logits
                count[r:r + 6, c:c + 6] += 1
                attns[r:r + 6, c:c + 6, r:r + 6, c:c + 6] += attention[0].reshape(6, 6, 6, 6)
                pair_count[r:r + 6, c:c + 6, r:r + 6, c:c + 6] += 1
        preds = (preds / count).flatten(2)
        attns = (attns / (pair_count + 1e-5)).reshape(88, 88)
        expected = preds @ (attns / attns.sum(dim=1, keepdim=True))
    assert merged.shape == (layers, num_texts, 88)
    torch.testing.assert_close(merged, expected, atol=1e-4, rtol=1e-4)


def test_fgc_refines_the_blended_coarse_map(model, tmp_path):
    from cliper_helpers import tiny_fgc_opts, write_tiny_sd_folder
    from escnet.modeling.cliper.refinement import refine_class_maps

    sd_folder = write_tiny_sd_folder(str(tmp_path / "tiny_sd"))
    torch.manual_seed(0)  # the same tiny CLIP as the fixture's
    fgc_model = build(tiny_fgc_opts(sd_folder))
    protocol = replace(fgc_model.default_protocol, sliding_crop_size=32, sliding_stride=16)
    image = random_image(seed=7)
    fg = fgc_model.text_features(VOCABULARY, protocol.templates)
    bg = fgc_model.text_features((), protocol.templates)
    with torch.no_grad():
        coarse, refined = fgc_model.predict_class_maps(image, fg, bg, protocol)
        without_fgc, _ = model.predict_class_maps(image, fg, bg, protocol)
        expected = refine_class_maps(without_fgc, fgc_model.diffusion(image), protocol.attention_threshold)
    torch.testing.assert_close(coarse, without_fgc)  # the window acts on the coarse map only
    torch.testing.assert_close(refined, expected)


def test_vitb_config_turns_the_window_on_where_the_official_configs_do():
    from escnet.engine import load_config
    from escnet.modeling.cliper.protocol import protocols_from_config

    default, per_dataset = protocols_from_config(load_config(os.path.join(REPO, "configs", "cliper_vitb.yaml")))
    sliding = {name: (p.sliding_crop_size, p.sliding_stride) for name, p in per_dataset.items() if p.sliding_crop_size}
    assert sliding == {"context_60_test_sem_seg": (224, 112), "coco_2017_test_object_sem_seg": (224, 112),
                       "context_59_test_sem_seg": (224, 112)}
    assert default.sliding_crop_size == 0
    for name in ("cliper_vitl.yaml", "cliper_vith.yaml"):
        default, per_dataset = protocols_from_config(load_config(os.path.join(REPO, "configs", name)))
        assert not any(p.sliding_crop_size for p in (default, *per_dataset.values()))


def test_bad_window_settings_are_one_line_errors():
    from escnet.utils.errors import EscnetError

    key = "MODEL.CLIPER.DEFAULT_PROTOCOL."
    cases = [
        ([key + "SLIDING_CROP_SIZE", "32", key + "SLIDING_STRIDE", "48"], "SLIDING_STRIDE must lie in 1..SLIDING_CROP"),
        ([key + "SLIDING_CROP_SIZE", "-8"], "SLIDING_CROP_SIZE must be >= 0"),
        ([key + "SLIDING_CROP_SIZE", "36", key + "SLIDING_STRIDE", "16"], "multiples of the CLIP patch size 8"),
        (["MODEL.CLIPER.SLIDING_WEIGHT", "1.5"], "SLIDING_WEIGHT must lie in 0..1"),
        (["TEST.SLIDING_WINDOW", "True"], "not CLIPer's sliding window.*SLIDING_CROP_SIZE"),
    ]
    for opts, message in cases:
        with pytest.raises(EscnetError, match=message) as info:
            build(opts)
        assert "\n" not in str(info.value)
