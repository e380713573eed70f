"""Segmenter (Python API) and visualization on a randomly initialised tiny ESC-Net checkpoint."""

import os

import numpy as np
import pytest
import torch
from PIL import Image


from escnet import Segmenter
from escnet.segmenter import read_image, resolve_config_file, to_rgb_array
from escnet.utils.errors import EscnetError
from escnet.visualization import class_color, legend_entries, render_overlay

CONFIG = "tiny"
VOCABULARY = ("grass", "water", "red ball")


@pytest.fixture(scope="module")
def photo():
    """A 48 x 80 RGB uint8 picture with structure (two halves, noise)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    image[:, :40] //= 4
    return image


def test_config_names_resolve_to_shipped_configs():
    path = resolve_config_file("tiny")
    assert os.path.samefile(path, os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.yaml"))
    assert resolve_config_file(path) == path
    with pytest.raises(EscnetError, match=r"config file not found: 'no-such-model'.*tiny"):
        resolve_config_file("no-such-model")


def test_segment_returns_consistent_labels_and_probabilities(segmenter, photo):
    result = segmenter.segment(photo, list(VOCABULARY))
    assert result.vocabulary == VOCABULARY
    assert result.labels.shape == (48, 80) and result.labels.dtype == np.uint8
    assert result.probabilities.shape == (3, 48, 80) and result.probabilities.dtype == np.float32
    np.testing.assert_allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(result.labels, result.probabilities.argmax(axis=0))
    np.testing.assert_allclose(result.scores, result.probabilities.max(axis=0))
    assert result.labels.max() < len(VOCABULARY)
    shares, unlabelled_share = result.pixel_shares()
    assert unlabelled_share == 0 and shares.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(shares, np.bincount(result.labels.ravel(), minlength=3) / result.labels.size)


def test_model_input_follows_default_predictor_preprocessing(segmenter, photo, monkeypatch):
    """Shortest edge resized to INPUT.MIN_SIZE_TEST, uint8 RGB CHW, original size, vocabulary tuple;
    the model runs in eval mode without gradients."""
    seen = []
    forward = segmenter.model.forward

    def recording_forward(batched_inputs):
        seen.append((batched_inputs, torch.is_grad_enabled(), segmenter.model.training))
        return forward(batched_inputs)

    monkeypatch.setattr(segmenter.model, "forward", recording_forward)
    segmenter.segment(photo, VOCABULARY)
    ((inputs, grad_enabled, training),) = seen
    (x,) = inputs
    short = segmenter.cfg.INPUT.MIN_SIZE_TEST
    assert x["image"].dtype == torch.uint8
    assert tuple(x["image"].shape) == (3, short, int(80 * short / 48 + 0.5))
    assert (x["height"], x["width"]) == (48, 80)
    assert x["vocabulary"] == VOCABULARY and isinstance(x["vocabulary"], tuple)
    assert not grad_enabled and not training
    # RGB order: the mean colour of the dark left half is kept per channel.
    left = x["image"][:, :, : x["image"].shape[2] // 2].float().mean(dim=(1, 2))
    np.testing.assert_allclose(left.numpy(), photo[:, :40].reshape(-1, 3).mean(0), atol=2.0)


def test_path_pil_rgb_and_bgr_arrays_give_the_same_result(segmenter, photo, tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(photo).save(path)
    reference = segmenter.segment(photo, VOCABULARY, color_format="RGB")
    for image, color_format in [
        (str(path), "RGB"),
        (path, "BGR"),  # colour format does not apply to files
        (Image.fromarray(photo), "RGB"),
        (np.ascontiguousarray(photo[:, :, ::-1]), "BGR"),
    ]:
        result = segmenter.segment(image, VOCABULARY, color_format=color_format)
        np.testing.assert_allclose(result.probabilities, reference.probabilities, atol=1e-5)
    swapped = segmenter.segment(np.ascontiguousarray(photo[:, :, ::-1]), VOCABULARY, color_format="RGB")
    assert np.abs(swapped.probabilities - reference.probabilities).max() > 1e-4


def test_vocabulary_change_without_rebuild_and_text_features_cached(segmenter, photo, monkeypatch):
    encoder = segmenter.model.clip_encoder
    calls = []
    compute = encoder._compute_text_features

    def counting(vocabulary):
        calls.append(tuple(vocabulary))
        return compute(vocabulary)

    encoder.clear_text_cache()
    monkeypatch.setattr(encoder, "_compute_text_features", counting)
    other = ("sand", "blue box", "yellow kite", "sky, heaven")
    images = [photo, photo[::-1].copy(), photo[:, ::-1].copy()]
    first = segmenter.segment_batch(images, VOCABULARY, batch_size=2)
    second = [segmenter.segment(image, other) for image in images]
    again = segmenter.segment(images[0], VOCABULARY)
    assert calls == [VOCABULARY, other]
    assert [r.probabilities.shape[0] for r in first + second] == [3, 3, 3, 4, 4, 4]
    assert second[0].vocabulary == other and second[0].labels.max() < 4
    np.testing.assert_allclose(again.probabilities, first[0].probabilities, atol=1e-5)


def test_batches_of_mixed_sizes_match_single_images(segmenter, photo):
    images = [photo, np.ascontiguousarray(photo[:20, 5:35])]
    batched = segmenter.segment_batch(images, VOCABULARY, batch_size=2)
    singles = segmenter.segment(images, VOCABULARY)  # a list input: one forward pass per image
    assert [r.labels.shape for r in batched] == [(48, 80), (20, 30)]
    for one_pass, single in zip(batched, singles):
        np.testing.assert_allclose(one_pass.probabilities, single.probabilities, atol=1e-5)


def test_score_threshold_leaves_low_confidence_pixels_unlabelled(segmenter, photo):
    full = segmenter.segment(photo, VOCABULARY)
    threshold = float(np.median(full.scores))
    result = segmenter.segment(photo, VOCABULARY, score_threshold=threshold)
    low = full.scores < threshold
    assert 0 < low.sum() < low.size
    assert result.unlabelled == 255
    np.testing.assert_array_equal(result.labels[low], 255)
    np.testing.assert_array_equal(result.labels[~low], full.labels[~low])
    shares, unlabelled_share = result.pixel_shares()
    assert unlabelled_share == pytest.approx(low.mean())
    assert shares.sum() + unlabelled_share == pytest.approx(1.0)
    with pytest.raises(EscnetError, match="score threshold must lie in 0..1"):
        segmenter.segment(photo, VOCABULARY, score_threshold=1.5)


def _save_exif_rotated(path, image, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(image).save(path, exif=exif, quality=95)


@pytest.mark.parametrize("kind", ["gray", "rgba", "palette", "uint16", "exif"])
def test_image_files_of_every_kind_are_read_upright_as_rgb(segmenter, photo, tmp_path, kind):
    path = str(tmp_path / f"{kind}.png")
    if kind == "gray":
        Image.fromarray(photo[:, :, 0]).save(path)
        expected = np.repeat(photo[:, :, :1], 3, axis=2)
    elif kind == "rgba":
        alpha = np.full((48, 80, 1), 7, dtype=np.uint8)
        Image.fromarray(np.concatenate([photo, alpha], axis=2), "RGBA").save(path)
        expected = photo
    elif kind == "palette":
        Image.fromarray(photo).quantize(16).save(path, transparency=0)
        expected = np.asarray(Image.open(path).convert("RGB"))
    elif kind == "uint16":
        deep = photo[:, :, 1].astype(np.uint16) * 257 + 100
        Image.fromarray(deep).save(path)
        assert Image.open(path).mode.startswith("I")
        expected = np.repeat(np.round(deep / 257).astype(np.uint8)[:, :, None], 3, axis=2)
    else:  # EXIF orientation 6: the camera was rotated; the upright picture is turned 90 deg clockwise
        path = str(tmp_path / "exif.jpg")
        yy, xx = np.mgrid[0:48, 0:80]
        smooth = np.stack([xx * 3, yy * 5, 255 - xx * 3], axis=2).astype(np.uint8)  # JPEG keeps it
        _save_exif_rotated(path, smooth, orientation=6)
        expected = np.rot90(smooth, k=-1)
    rgb = read_image(path)
    assert rgb.dtype == np.uint8 and rgb.shape == expected.shape
    tolerance = 3 if kind == "exif" else 0  # JPEG is lossy
    assert np.abs(rgb.astype(int) - expected.astype(int)).mean() <= tolerance
    result = segmenter.segment(path, VOCABULARY)
    assert result.labels.shape == expected.shape[:2]


def test_array_conversions():
    gray16 = np.array([[0, 65535], [257, 32896]], dtype=np.uint16)
    np.testing.assert_array_equal(to_rgb_array(gray16)[:, :, 2], [[0, 255], [1, 128]])
    bgra = np.zeros((2, 3, 4), dtype=np.uint8)
    bgra[..., 0] = 200  # blue in BGR order
    np.testing.assert_array_equal(to_rgb_array(bgra, color_format="BGR")[0, 0], [0, 0, 200])
    np.testing.assert_array_equal(to_rgb_array(np.full((2, 2, 1), 0.5))[0, 0], [128, 128, 128])
    for bad, message in [
        (np.full((2, 2), 2.0), "float images must hold values in 0..1"),
        (np.zeros((2, 2, 2), dtype=np.uint8), "image array must be"),
        (np.zeros((2, 2), dtype=np.int64), "dtype must be uint8, uint16"),
        ([[1, 2]], "unsupported image type list"),
    ]:
        with pytest.raises(EscnetError, match=message):
            to_rgb_array(bad)
    with pytest.raises(EscnetError, match="color_format must be one of"):
        to_rgb_array(bgra, color_format="bgr")


def test_bad_inputs_raise_one_line_errors(segmenter, photo, checkpoint, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    truncated = tmp_path / "truncated.png"
    Image.fromarray(photo).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    cases = [
        (lambda: segmenter.segment(str(tmp_path / "missing.jpg"), VOCABULARY), "image not found: '.*missing.jpg'"),
        (lambda: segmenter.segment(str(text), VOCABULARY), "not an image file .*notes.png"),
        (lambda: segmenter.segment(str(truncated), VOCABULARY), "cannot read image .*truncated.png"),
        (lambda: segmenter.segment(str(tmp_path), VOCABULARY), "expected an image file, got a folder"),
        (lambda: segmenter.segment(photo, []), "vocabulary is empty"),
        (lambda: segmenter.segment(photo, ["cat", "Cat"]), "duplicate class name: 'Cat'"),
        (lambda: Segmenter(CONFIG, device="cpu"), r"no weights \(MODEL.WEIGHTS is empty\).*--allow-random-weights"),
        (
            lambda: Segmenter(CONFIG, weights=str(tmp_path / "nope.pth"), device="cpu"),
            "checkpoint not found: '.*nope.pth'",
        ),
        (lambda: Segmenter(CONFIG, weights=str(text), device="cpu"), "cannot load checkpoint '.*notes.png'"),
        (
            lambda: Segmenter(CONFIG, weights=checkpoint, opts=["MODEL.NO_SUCH_KEY", "1"], device="cpu"),
            r"bad config \(.*tiny.yaml\): unknown key 'MODEL.NO_SUCH_KEY'",
        ),
    ]
    for call, message in cases:
        with pytest.raises(EscnetError, match=message) as info:
            call()
        assert "\n" not in str(info.value)


def test_random_weights_only_when_allowed(photo):
    result = Segmenter(CONFIG, device="cpu", allow_random_weights=True).segment(photo, VOCABULARY)
    assert result.labels.shape == (48, 80)


def test_class_colours_are_stable_per_name_not_index():
    assert class_color("cat") == class_color(" Cat ") == class_color("CAT")
    assert class_color("sofa, couch") == class_color("Sofa ,couch")
    assert len({class_color(name) for name in ["cat", "dog", "sky", "wall", "sofa", "window"]}) == 6
    labels = np.array([[0, 1]], dtype=np.uint8)
    first = {e.name: e.color for e in legend_entries(labels, ("cat", "dog"), 255)}
    second = {e.name: e.color for e in legend_entries(labels, ("dog", "cat"), 255)}
    assert first == second


def test_overlay_legend_lists_classes_present_largest_first():
    vocabulary = ("wall", "cat", "sofa, couch", "window")
    labels = np.zeros((60, 90), dtype=np.uint8)
    labels[10:40, 10:50] = 1
    labels[45:, :] = 2
    labels[:5, 80:] = 255
    image = np.full((60, 90, 3), 128, dtype=np.uint8)
    picture, entries = render_overlay(image, labels, vocabulary, 255, opacity=0.5, legend="side")
    assert [e.name for e in entries] == ["wall", "sofa, couch", "cat", "unlabelled"]
    assert [e.share for e in entries] == pytest.approx([2800 / 5400, 1350 / 5400, 1200 / 5400, 50 / 5400])
    assert entries[-1].color is None and entries[-1].label == 255
    assert picture.shape[0] >= 60 and picture.shape[1] > 90
    np.testing.assert_array_equal(picture[:5, 80:90], image[:5, 80:])  # unlabelled: uncoloured
    colours = {tuple(c) for c in picture.reshape(-1, 3)}
    for entry in entries[:-1]:
        assert entry.color in colours  # its legend swatch is drawn
    assert class_color("window") not in colours  # absent class: not in the legend
    plain, _ = render_overlay(image, labels, vocabulary, 255, legend=None)
    enlarged, _ = render_overlay(image, labels, vocabulary, 255, legend=None, min_height=130)
    assert enlarged.shape == (180, 270, 3)  # integer factor 3, nearest neighbour
    np.testing.assert_array_equal(enlarged[1::3, 2::3], plain)
    framed, framed_entries = render_overlay(image, labels, vocabulary, 255, legend="inside")
    assert framed.shape == image.shape and framed_entries == entries
    with pytest.raises(ValueError, match="outside the vocabulary"):
        legend_entries(np.array([[7]]), vocabulary, 255)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_requested_without_cuda_is_an_error(checkpoint):
    with pytest.raises(EscnetError, match="device 'cuda' requested but CUDA is not available"):
        Segmenter(CONFIG, weights=checkpoint, device="cuda")
