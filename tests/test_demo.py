"""demo/demo.py on a randomly initialised tiny ESC-Net checkpoint: outputs, errors, video.

Most cases call the demo's ``main(argv)`` in-process; a few run it as a subprocess to check the
real command line (exit status, one-line errors on stderr).
"""

import importlib.util
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image


from escnet.data.label_io import read_label_map
from escnet.visualization import class_color

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "demo", "demo.py")
CONFIG = "tiny"
VOCAB = "grass,water,red ball"


def _load_demo():
    spec = importlib.util.spec_from_file_location("escnet_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_demo()


@pytest.fixture
def use_segmenter(segmenter, monkeypatch):
    """Let in-process ``main`` reuse the module's segmenter instead of building one per call."""
    built = []

    def build(args):
        assert args.config_file == CONFIG and args.opts[-1] == segmenter.cfg.MODEL.WEIGHTS
        built.append(args)
        return segmenter

    monkeypatch.setattr(demo, "build_segmenter", build)
    return built


def _picture(height=40, width=56, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image[: height // 2] //= 3
    return image


def _run(argv):
    """``main(argv)``'s exit status (0 when it returns)."""
    try:
        return demo.main(argv)
    except SystemExit as exit_:
        return exit_.code


def _args(checkpoint, inputs, output, *extra, vocab=VOCAB):
    vocab_args = ["--vocab", vocab] if vocab is not None else []
    return [
        "--config-file",
        CONFIG,
        "--input",
        *inputs,
        *vocab_args,
        "--output",
        str(output),
        "--device",
        "cpu",
        *extra,
        "--opts",
        "MODEL.WEIGHTS",
        checkpoint,
    ]


def _check_outputs(overlay, labels_path, summary_path, vocabulary, size):
    """The three outputs of one image agree with each other and with the vocabulary."""
    labels = read_label_map(labels_path)
    summary = json.loads(open(summary_path).read())
    height, width = size
    assert labels.shape == size and summary["image_size"] == {"height": height, "width": width}
    assert summary["vocabulary"] == list(vocabulary)
    unlabelled = summary["unlabelled"]["label"]
    values, counts = np.unique(labels, return_counts=True)
    assert set(values) <= set(range(len(vocabulary))) | {unlabelled}
    shares = {c["name"]: c["pixel_share"] for c in summary["classes"]}
    assert sum(shares.values()) + summary["unlabelled"]["pixel_share"] == pytest.approx(1.0)
    for value, count in zip(values, counts):
        share = summary["unlabelled"]["pixel_share"] if value == unlabelled else shares[vocabulary[value]]
        assert share == pytest.approx(count / labels.size)
    order = sorted(zip(-counts, values))  # largest first, ties by label value
    names = ["unlabelled" if v == unlabelled else vocabulary[v] for _, v in order]
    assert summary["present"] == names  # the legend: classes present, largest first
    assert [c["color"] for c in summary["classes"]] == [list(class_color(n)) for n in vocabulary]
    picture = np.asarray(Image.open(overlay).convert("RGB"))
    assert picture.shape[0] >= height and picture.shape[1] > width  # legend panel beside the image
    colours = {tuple(c) for c in picture.reshape(-1, 3)}
    assert all(class_color(n) in colours for n in names if n != "unlabelled")
    assert summary["timing_s"]["total"] >= summary["timing_s"]["segment"] > 0
    return labels, summary


def test_cli_single_image_to_named_file(checkpoint, tmp_path):
    image = tmp_path / "photo.jpg"
    Image.fromarray(_picture()).save(image)
    output = tmp_path / "out" / "result.png"
    process = subprocess.run(
        [sys.executable, DEMO, *_args(checkpoint, [str(image)], output)], capture_output=True, text=True, cwd=REPO
    )
    assert process.returncode == 0, process.stderr
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["result.png", "result_labels.png", "result_summary.json"]
    _check_outputs(
        out / "result.png", out / "result_labels.png", out / "result_summary.json", VOCAB.split(","), (40, 56)
    )


def test_cli_config_without_weights_is_one_line_error(tmp_path):
    image = tmp_path / "photo.png"
    Image.fromarray(_picture()).save(image)
    argv = [
        "--config-file",
        CONFIG,
        "--input",
        str(image),
        "--vocab",
        VOCAB,
        "--output",
        str(tmp_path / "out"),
        "--device",
        "cpu",
    ]
    process = subprocess.run([sys.executable, DEMO, *argv], capture_output=True, text=True, cwd=REPO)
    assert process.returncode == 2
    assert process.stderr.strip().splitlines() == [
        "error: config has no weights (MODEL.WEIGHTS is empty): pass a checkpoint with --opts MODEL.WEIGHTS "
        "<file> (Python: weights=...), or --allow-random-weights (allow_random_weights=True) "
        "to run an untrained model"
    ]
    assert not (tmp_path / "out").exists()


def test_random_weights_only_with_explicit_flag(tmp_path):
    Image.fromarray(_picture()).save(tmp_path / "photo.png")
    argv = [
        "--config-file",
        CONFIG,
        "--input",
        str(tmp_path / "photo.png"),
        "--vocab",
        VOCAB,
        "--output",
        str(tmp_path / "out"),
        "--device",
        "cpu",
        "--allow-random-weights",
    ]
    assert _run(argv) == 0
    summary = json.loads((tmp_path / "out" / "photo_summary.json").read_text())
    assert summary["model"] == {"config": CONFIG, "weights": "", "device": "cpu", "precision": "fp32"}


def test_folder_and_glob_inputs_with_threshold(checkpoint, segmenter, use_segmenter, tmp_path, monkeypatch):
    """Several images (folder + glob), text features computed once, unlabelled pixels below the threshold."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    sizes = {"a/one.png": (40, 56), "a/two.jpg": (32, 48), "b/one.png": (24, 30)}
    for i, (name, size) in enumerate(sizes.items()):
        Image.fromarray(_picture(*size, seed=i)).save(tmp_path / name)
    (tmp_path / "a" / "readme.txt").write_text("not an image, not picked from the folder")
    encoder = segmenter.model.clip_encoder
    calls = []
    compute = encoder._compute_text_features
    monkeypatch.setattr(encoder, "_compute_text_features", lambda v: calls.append(v) or compute(v))
    encoder.clear_text_cache()
    reference = segmenter.segment(_picture(40, 56, seed=0), VOCAB.split(","))
    threshold = float(np.median(reference.scores))
    out = tmp_path / "out"
    status = _run(
        _args(
            checkpoint, [str(tmp_path / "a"), str(tmp_path / "b" / "*.png")], out, "--score-threshold", str(threshold)
        )
    )
    assert status == 0 and len(use_segmenter) == 1
    assert calls == [tuple(VOCAB.split(","))]  # once for the vocabulary, not per image
    assert sorted(os.listdir(out)) == sorted(
        f"{stem}_{kind}" for stem in ["one", "two", "one-2"] for kind in ["overlay.png", "labels.png", "summary.json"]
    )
    for stem, size in zip(["one", "two", "one-2"], sizes.values()):
        labels, summary = _check_outputs(
            out / f"{stem}_overlay.png",
            out / f"{stem}_labels.png",
            out / f"{stem}_summary.json",
            VOCAB.split(","),
            size,
        )
        assert summary["score_threshold"] == pytest.approx(threshold)
    labels = read_label_map(out / "one_labels.png")
    np.testing.assert_array_equal(labels == 255, reference.scores < threshold)
    assert "unlabelled" in json.loads((out / "one_summary.json").read_text())["present"]


def test_bad_inputs_are_reported_and_the_rest_processed(checkpoint, use_segmenter, tmp_path, capsys):
    Image.fromarray(_picture()).save(tmp_path / "good.png")
    (tmp_path / "text.jpg").write_text("plain text")
    Image.fromarray(_picture()).save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:150])
    Image.fromarray(_picture(30, 20)).save(tmp_path / "good2.png")
    inputs = [str(tmp_path / n) for n in ["good.png", "missing.png", "text.jpg", "cut.png", "*.none", "good2.png"]]
    out = tmp_path / "out"
    assert _run(_args(checkpoint, inputs, out)) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: image not found: {inputs[1]!r}",
        f"error: not an image file (unrecognised format): {inputs[2]!r}",
        f"error: cannot read image {inputs[3]!r}: image file is truncated",
        f"error: no file matches {inputs[4]!r}",
        "error: 4 of 6 inputs failed (see the errors above); the others were written",
    ]
    assert sorted(os.listdir(out)) == sorted(
        f"{stem}_{kind}" for stem in ["good", "good2"] for kind in ["overlay.png", "labels.png", "summary.json"]
    )  # nothing half-written, no temporary files


SINGLE_INPUT_ERRORS = {
    "empty vocabulary": (["--vocab", "  "], "error: --vocab is empty: give at least one class name"),
    "duplicate name": (["--vocab", "cat,sofa,Cat"], "error: --vocab has a duplicate class name: 'Cat'"),
    "missing image": (["--input", "{tmp}/missing.png"], "error: image not found: '{tmp}/missing.png'"),
    "non-image": (["--input", "{tmp}/notes.txt"], "error: not an image file (unrecognised format): '{tmp}/notes.txt'"),
    "unknown config": (
        ["--config-file", "no-such-config"],
        "error: config file not found: 'no-such-config'; known config names:",
    ),
    "empty vocabulary file": (
        ["--vocab-file", "{tmp}/empty.txt"],
        "error: vocabulary file '{tmp}/empty.txt' is empty: give at least one class name",
    ),
    "duplicate in vocabulary file": (
        ["--vocab-file", "{tmp}/dup.json"],
        "error: vocabulary file '{tmp}/dup.json' has a duplicate class name: 'sofa'",
    ),
    "missing vocabulary file": (
        ["--vocab-file", "{tmp}/none.json"],
        "error: vocabulary file not found: '{tmp}/none.json'",
    ),
    "missing checkpoint": (
        ["--opts", "MODEL.WEIGHTS", "{tmp}/nope.pth"],
        "error: checkpoint not found: '{tmp}/nope.pth' (MODEL.WEIGHTS)",
    ),
    "file output, two inputs": (
        ["--input", "{tmp}/photo.png", "{tmp}/photo2.png", "--output", "{tmp}/many.png"],
        "error: --output '{tmp}/many.png' names a file but there are 2 inputs; give a folder",
    ),
    "threshold out of range": (["--score-threshold", "1.5"], "error: --score-threshold must lie in 0..1, got 1.5"),
}


@pytest.mark.parametrize("case", SINGLE_INPUT_ERRORS)
def test_single_bad_input_is_one_line_error(checkpoint, tmp_path, capsys, case):
    Image.fromarray(_picture()).save(tmp_path / "photo.png")
    Image.fromarray(_picture()).save(tmp_path / "photo2.png")
    (tmp_path / "notes.txt").write_text("no picture here")
    (tmp_path / "empty.txt").write_text("\n \n")
    (tmp_path / "dup.json").write_text(json.dumps(["sofa", "cat", "sofa"]))
    change, message = SINGLE_INPUT_ERRORS[case]
    change = [item.format(tmp=tmp_path) for item in change]
    options = {
        "--config-file": [CONFIG],
        "--input": [str(tmp_path / "photo.png")],
        "--vocab": [VOCAB],
        "--output": [str(tmp_path / "out")],
        "--device": ["cpu"],
    }
    flags = [i for i, item in enumerate(change) if item.startswith("--")] + [len(change)]
    for start, stop in zip(flags, flags[1:]):
        options[change[start]] = change[start + 1 : stop]
    if "--vocab-file" in options:
        del options["--vocab"]
    options.setdefault("--opts", ["MODEL.WEIGHTS", checkpoint])
    argv = [item for flag, values in options.items() for item in [flag, *values]]
    assert _run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message.format(tmp=tmp_path)), err
    assert not (tmp_path / "out").exists()


def test_vocabulary_file_with_synonyms_and_image_kinds(checkpoint, use_segmenter, tmp_path):
    """A text vocabulary with synonyms; grayscale, RGBA, 16-bit and EXIF-rotated inputs."""
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("grass, lawn\nwater\n\nred ball, ball\n")
    photo = _picture(40, 56)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(photo[:, :, 0]).save(folder / "gray.png")
    Image.fromarray(np.dstack([photo, photo[:, :, :1]]), "RGBA").save(folder / "rgba.png")
    Image.fromarray(photo[:, :, 1].astype(np.uint16) * 257).save(folder / "deep.png")
    exif = Image.Exif()
    exif[0x0112] = 8  # rotated 90 degrees: the upright picture is 56 x 40
    Image.fromarray(photo).save(folder / "turned.jpg", exif=exif)
    out = tmp_path / "out"
    argv = _args(checkpoint, [str(folder)], out, vocab=None)
    argv[argv.index("--output") : argv.index("--output")] = ["--vocab-file", str(vocab_file)]
    assert _run(argv) == 0
    vocabulary = ["grass, lawn", "water", "red ball, ball"]
    for stem, size in [("gray", (40, 56)), ("rgba", (40, 56)), ("deep", (40, 56)), ("turned", (56, 40))]:
        _, summary = _check_outputs(
            out / f"{stem}_overlay.png", out / f"{stem}_labels.png", out / f"{stem}_summary.json", vocabulary, size
        )


def test_more_than_255_classes_give_uint16_label_map(checkpoint, use_segmenter, tmp_path):
    vocabulary = [f"thing {i}" for i in range(256)]
    vocab_file = tmp_path / "vocab.json"
    vocab_file.write_text(json.dumps(vocabulary))
    Image.fromarray(_picture(16, 20)).save(tmp_path / "small.png")
    argv = _args(checkpoint, [str(tmp_path / "small.png")], tmp_path / "out", "--score-threshold", "0.005", vocab=None)
    argv[argv.index("--output") : argv.index("--output")] = ["--vocab-file", str(vocab_file)]
    assert _run(argv) == 0
    labels = read_label_map(tmp_path / "out" / "small_labels.png")
    assert labels.dtype == np.uint16
    summary = json.loads((tmp_path / "out" / "small_summary.json").read_text())
    assert summary["unlabelled"]["label"] == 65535
    assert set(np.unique(labels)) <= set(range(256)) | {65535}


def _write_video(path, frames, size, codec):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), 10.0, size)
    assert writer.isOpened()
    for i in range(frames):
        writer.write(_picture(size[1], size[0], seed=i))
    writer.release()


def _video_info(path):
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    info = (count, int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    capture.release()
    return info


@pytest.mark.parametrize("output_name", ["segmented.mp4", "segmented.avi"])
def test_video_round_trip_keeps_frame_count_and_size(checkpoint, use_segmenter, tmp_path, output_name):
    video = tmp_path / "clip.avi"
    _write_video(video, frames=5, size=(64, 48), codec="MJPG")
    output = tmp_path / "out" / output_name
    argv = [
        "--config-file",
        CONFIG,
        "--video-input",
        str(video),
        "--vocab",
        VOCAB,
        "--output",
        str(output),
        "--device",
        "cpu",
        "--opts",
        "MODEL.WEIGHTS",
        checkpoint,
    ]
    assert _run(argv) == 0
    assert _video_info(output) == (5, 64, 48)
    assert os.listdir(tmp_path / "out") == [output_name]


def test_video_errors(checkpoint, tmp_path, capsys):
    (tmp_path / "fake.mp4").write_text("not a video")
    base = ["--config-file", CONFIG, "--vocab", VOCAB, "--device", "cpu", "--opts", "MODEL.WEIGHTS", checkpoint]
    cases = [
        (["--video-input", str(tmp_path / "none.mp4"), "--output", str(tmp_path)], "error: video not found:"),
        (
            ["--video-input", str(tmp_path / "fake.mp4"), "--output", str(tmp_path / "o.mp4")],
            "error: cannot read video",
        ),
        (["--video-input", str(tmp_path / "fake.mp4"), "--output", str(tmp_path / "o.gif")], "error: --output"),
    ]
    for extra, message in cases:
        assert _run(base[:4] + extra + base[4:]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(message), err


def test_trained_model_demo_matches_ground_truth(tiny_trained, tmp_path):
    """On the shared tiny model trained on the synthetic set, the demo's label maps are right
    (vocabulary in the dataset's order: label i = class i) for most pixels of val images."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    records = DatasetCatalog.get("synthetic_shapes_val")[:3]
    classes = MetadataCatalog.get("synthetic_shapes_val").stuff_classes
    ignore = MetadataCatalog.get("synthetic_shapes_val").ignore_label
    out = tmp_path / "out"
    argv = [
        "--config-file",
        CONFIG,
        "--input",
        *[r["file_name"] for r in records],
        "--vocab",
        ",".join(classes),
        "--output",
        str(out),
        "--device",
        "cpu",
        "--opts",
        "MODEL.WEIGHTS",
        tiny_trained.weights,
    ]
    assert _run(argv) == 0
    for record in records:
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        labels = read_label_map(out / f"{stem}_labels.png")
        truth = read_label_map(record["sem_seg_file_name"])
        valid = truth != ignore
        assert (labels[valid] == truth[valid]).mean() > 0.85
