"""The web page's request handling (escnet.webapp, demo/app.py) without a browser.

On the randomly initialised tiny checkpoint: identical label maps to the CLI, size limits, bad
input messages, one request at a time, progress, legend, and a page that loads nothing from the
internet (served in-process, fetched over loopback).
"""

import importlib.util
import json
import os
import re
import socket
import struct
import threading
import time
import types
import urllib.request
import zlib

import numpy as np
import pytest
from PIL import Image

from escnet.data.label_io import read_label_map
from escnet.utils.errors import EscnetError
from escnet.vocabulary import builtin_vocabulary
from escnet.webapp import (
    VOCABULARY_PRESETS,
    ModelSpec,
    SegmentationService,
    legend_html,
    load_image,
    parse_model_spec,
    parse_vocabulary_text,
    preset_text,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "tiny"
VOCAB = "grass, water, red ball"


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


app = _load(os.path.join(REPO, "demo", "app.py"), "escnet_app")
demo = _load(os.path.join(REPO, "demo", "demo.py"), "escnet_demo_for_app")


def _picture(height=40, width=56, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image[: height // 2] //= 3
    return image


def _save(tmp_path, name, image=None, **save_args):
    path = str(tmp_path / name)
    Image.fromarray(_picture() if image is None else image).save(path, **save_args)
    return path


def _png_claiming_size(path, width, height):
    """A valid small PNG whose header claims ``width x height`` (a decompression bomb's header)."""
    Image.fromarray(_picture(8, 8)).save(path)
    data = bytearray(open(path, "rb").read())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    open(path, "wb").write(bytes(data))
    return path


@pytest.fixture(autouse=True)
def gradio_cache(tmp_path, monkeypatch):
    """Gradio copies files offered for download into its cache: keep it in the test's folder."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))


@pytest.fixture
def service(segmenter, tmp_path):
    return SegmentationService({MODEL: segmenter}, max_pixels=100_000, output_dir=str(tmp_path / "served"))


def test_model_flags_name_configs_weights_and_overrides():
    assert parse_model_spec("configs/tiny.yaml") == ModelSpec("tiny", "configs/tiny.yaml")
    assert parse_model_spec("ESC-Net=tiny:/w/model.pth") == ModelSpec("ESC-Net", "tiny", "/w/model.pth")
    assert parse_model_spec("SED=sed.yaml:https://host/sed.pth").weights == "https://host/sed.pth"
    for bad in ("=tiny", "name=", "A=tiny:", ":w.pth"):
        with pytest.raises(EscnetError, match=r"bad --model .*\[NAME=\]CONFIG\[:WEIGHTS\]"):
            parse_model_spec(bad)

    parser = app.get_parser()
    args = parser.parse_args(["--config-file", "tiny", "--model", "B=tiny:b.pth", "--opts", "MODEL.WEIGHTS", "a.pth"])
    assert app.model_specs(args) == [
        ModelSpec("tiny", "tiny", None, ("MODEL.WEIGHTS", "a.pth")),  # --opts belong to --config-file
        ModelSpec("B", "tiny", "b.pth"),
    ]
    assert args.host == "127.0.0.1"
    assert app.uploaded_file({"path": "/cache/x/a.png", "orig_name": "photo.png"}) == ("/cache/x/a.png", "photo.png")
    assert app.uploaded_file(None) == (None, None)
    with pytest.raises(EscnetError, match="two models are named 'tiny'"):
        app.model_specs(parser.parse_args(["--config-file", "tiny", "--model", "tiny"]))
    with pytest.raises(EscnetError, match="no model to serve"):
        app.model_specs(parser.parse_args([]))
    with pytest.raises(EscnetError, match="--opts apply to the --config-file model"):
        app.model_specs(parser.parse_args(["--model", "tiny", "--opts", "MODEL.WEIGHTS", "a.pth"]))


def test_bad_start_is_a_one_line_error(tmp_path, capsys):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        random_tiny = ["--config-file", "tiny", "--allow-random-weights"]
        for argv, message in [
            (["--config-file", "no-such-config"], "error: model 'no-such-config': config file not found: 'no-such-"),
            (["--model", "B=tiny:" + str(tmp_path / "missing.pth")], "error: model 'B': checkpoint not found: "),
            (random_tiny + ["--max-pixels", "0"], "error: --max-pixels must be >= 1"),
            (random_tiny + ["--port", str(port)], f"error: cannot serve on 127.0.0.1:{port}: "),
        ]:
            with pytest.raises(SystemExit) as exit_:
                app.main(argv + ["--device", "cpu"])
            err = capsys.readouterr().err.strip()
            assert exit_.value.code == 2 and err.startswith(message) and "\n" not in err, err


def test_vocabulary_box_syntax_and_presets():
    assert parse_vocabulary_text("cat,  sofa ,window") == ("cat", "sofa", "window")
    # Several lines: one class per line, commas separate synonyms (the vocabulary-file format).
    assert parse_vocabulary_text("cat\nsofa, couch\n\n window ") == ("cat", "sofa, couch", "window")
    for preset, builtin in VOCABULARY_PRESETS.items():
        assert parse_vocabulary_text(preset_text(preset)) == builtin_vocabulary(builtin)
    assert len(parse_vocabulary_text(preset_text("ADE-150"))) == 150
    assert len(parse_vocabulary_text(preset_text("COCO-Stuff-171"))) == 171
    for text, message in [
        ("", "vocabulary is empty"),
        ("  \n ", "vocabulary is empty"),
        ("cat, , dog", "empty class name"),
        ("cat, dog, Cat", "duplicate class name: 'Cat'"),
        ("sofa, couch\nsofa, couch", "duplicate class name"),
    ]:
        with pytest.raises(EscnetError, match=message):
            parse_vocabulary_text(text)
    with pytest.raises(EscnetError, match="unknown vocabulary preset"):
        preset_text("ADE-151")


def test_page_and_cli_give_identical_label_maps(service, segmenter, checkpoint, tmp_path, monkeypatch):
    path = _save(tmp_path, "photo.png", _picture(44, 60, seed=3))
    vocabulary_lines = "grass\nwater, sea\nred ball"  # synonyms: one class per line
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text(vocabulary_lines + "\n")
    classes = ["grass", "water, sea", "red ball"]
    # A threshold between the random model's lowest and highest scores leaves some pixels unlabelled.
    threshold = round(float(np.median(segmenter.segment(path, classes).scores)), 4)
    response = service.segment(path, vocabulary_lines, MODEL, score_threshold=threshold)

    out = tmp_path / "cli"
    argv = ["--config-file", MODEL, "--input", path, "--vocab-file", str(vocab_file), "--output", str(out)]
    argv += ["--score-threshold", str(threshold), "--device", "cpu", "--opts", "MODEL.WEIGHTS", checkpoint]

    def same_model(args):  # the CLI would build the same model from the same config and checkpoint
        assert (args.config_file, args.opts) == (MODEL, ["MODEL.WEIGHTS", checkpoint])
        return segmenter

    monkeypatch.setattr(demo, "build_segmenter", same_model)
    assert demo.main(argv) == 0
    cli_labels = read_label_map(out / "photo_labels.png")
    page_labels = read_label_map(response.label_map_path)
    expected = segmenter.segment(path, classes, score_threshold=threshold).labels
    np.testing.assert_array_equal(page_labels, cli_labels)
    np.testing.assert_array_equal(page_labels, expected)
    np.testing.assert_array_equal(response.labels, expected)
    assert (expected == 255).any() and (expected != 255).any()  # the threshold left some pixels unlabelled

    cli_summary = json.loads((out / "photo_summary.json").read_text())
    page_summary = json.loads(open(response.summary_path).read())
    assert page_summary == response.summary
    for key in ("image_size", "vocabulary", "classes", "present", "unlabelled", "score_threshold"):
        assert page_summary[key] == cli_summary[key], key
    assert page_summary["model"]["name"] == MODEL and page_summary["model"]["weights"] == checkpoint
    assert os.path.basename(response.label_map_path) == "photo_labels.png" and response.note == ""

    # The legend: every class, largest share first, then the unlabelled pixels; shares sum to 1.
    names = [row.name for row in response.legend]
    assert set(names) == {"grass", "water, sea", "red ball", "unlabelled"}
    shares = [row.share for row in response.legend[:-1]]
    assert shares == sorted(shares, reverse=True)
    assert sum(row.share for row in response.legend) == pytest.approx(1.0)
    for row in response.legend:
        assert row.share == pytest.approx(np.mean(expected == row.label))
    height, width = expected.shape
    assert response.overlay.shape[0] >= height and response.overlay.shape[1] > width  # legend panel


def test_server_offers_every_model_it_was_started_with(checkpoint, tmp_path):
    """Generic over configs: ESC-Net with weights, SED and CLIPer (tiny configs) side by side."""
    argv = ["--config-file", MODEL, "--model", "SED=sed_tiny", "--model", "CLIPer=configs/cliper_tiny.yaml"]
    argv += ["--device", "cpu", "--allow-random-weights", "--opts", "MODEL.WEIGHTS", checkpoint]
    service = app.build_service(app.get_parser().parse_args(argv), str(tmp_path / "served"))
    assert service.model_names == [MODEL, "SED", "CLIPer"]
    architectures = [service.segmenters[name].cfg.MODEL.META_ARCHITECTURE for name in service.model_names]
    assert architectures == ["ESCNet", "SED", "CLIPer"]
    assert service.segmenters[MODEL].cfg.MODEL.WEIGHTS == checkpoint  # --opts: the --config-file model's
    assert service.segmenters["SED"].cfg.MODEL.WEIGHTS == ""
    path = _save(tmp_path, "photo.png")
    for name in service.model_names:
        response = service.segment(path, VOCAB, name)
        expected = service.segmenters[name].segment(path, [c.strip() for c in VOCAB.split(",")]).labels
        np.testing.assert_array_equal(response.labels, expected)
        assert response.summary["model"]["name"] == name
    assert response.summary["model"]["config"] == "configs/cliper_tiny.yaml"
    (dropdown,) = [
        block for block in app.build_app(service).blocks.values() if getattr(block, "elem_id", "") == "model"
    ]
    assert [choice[0] for choice in dropdown.choices] == [MODEL, "SED", "CLIPer"]


def test_oversized_pictures_are_downscaled_with_a_note(service, segmenter, tmp_path):
    service.max_pixels = 6000
    path = _save(tmp_path, "big.png", _picture(200, 300))
    response = service.segment(path, VOCAB, MODEL)
    assert response.labels.shape == (63, 94)  # sqrt(6000 / 60000) = 0.316: 94 x 63, aspect kept
    assert "300 x 200" in response.note and "94 x 63" in response.note and "label map has that size" in response.note
    assert response.summary["original_size"] == {"height": 200, "width": 300}
    assert response.summary["image_size"] == {"height": 63, "width": 94}
    assert read_label_map(response.label_map_path).shape == (63, 94)
    # The downscaled picture is what Segmenter segments: same labels as segmenting it directly.
    loaded = load_image(path, 6000)
    reference = np.asarray(Image.open(path).resize((94, 63), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(loaded.rgb, reference)
    np.testing.assert_array_equal(response.labels, segmenter.segment(loaded.rgb, VOCAB.split(",")).labels)

    # A JPEG turned by its EXIF orientation, decoded at a reduced scale: upright, close to a full decode.
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    jpeg = _save(tmp_path, "turned.jpg", _picture(400, 800), quality=95, exif=exif)
    loaded = load_image(jpeg, 20_000)
    assert loaded.original_size == (800, 400) and loaded.resized
    assert loaded.rgb.shape == (200, 100, 3)
    full = Image.open(jpeg)
    full = np.asarray(full.transpose(Image.Transpose.ROTATE_270).resize((100, 200), Image.Resampling.LANCZOS))
    assert np.abs(loaded.rgb.astype(int) - full.astype(int)).mean() < 8
    assert not load_image(_save(tmp_path, "small.png"), 20_000).resized


@pytest.mark.parametrize(
    "case, message",
    [
        ("no image", r"no image: upload a picture"),
        ("missing file", r"image not found: 'gone\.png'"),
        ("not an image", r"not an image file \(unrecognised format\): 'notes\.png'"),
        ("truncated png", r"cannot read image 'cut\.png': .*truncated"),
        ("bomb header", r"image too large: 'bomb\.png' is 12000 x 10000 = 120\.0 megapixels, above the "),
        ("huge bomb header", r"image too large: 'huge\.png'"),
        ("empty vocabulary", r"vocabulary is empty"),
        ("duplicate vocabulary", r"vocabulary has a duplicate class name: 'grass'"),
        ("unknown model", r"unknown model 'SED'; this server has: tiny"),
        ("bad threshold", r"score threshold must lie in 0\.\.1, got 1\.5"),
    ],
)
def test_bad_inputs_give_one_line_messages_and_the_next_request_works(service, tmp_path, case, message):
    good = _save(tmp_path, "good.png")
    image, vocabulary, model, threshold = good, VOCAB, MODEL, 0.0
    if case == "no image":
        image = None
    elif case == "missing file":
        image = str(tmp_path / "gone.png")
    elif case == "not an image":
        image = str(tmp_path / "notes.png")
        open(image, "w").write("these are notes, not a picture\n")
    elif case == "truncated png":
        data = open(_save(tmp_path, "full.png", _picture(64, 64)), "rb").read()
        image = str(tmp_path / "cut.png")
        open(image, "wb").write(data[: len(data) // 2])
    elif case == "bomb header":  # above PIL.Image.MAX_IMAGE_PIXELS (89.5 MP): refused before decoding
        image = _png_claiming_size(str(tmp_path / "bomb.png"), 12000, 10000)
    elif case == "huge bomb header":  # above twice the limit: PIL itself refuses to open it
        image = _png_claiming_size(str(tmp_path / "huge.png"), 30000, 30000)
    elif case == "empty vocabulary":
        vocabulary = ""
    elif case == "duplicate vocabulary":
        vocabulary = "grass, water, grass"
    elif case == "unknown model":
        model = "SED"
    elif case == "bad threshold":
        threshold = 1.5
    with pytest.raises(EscnetError, match=message) as error:
        service.segment(image, vocabulary, model, threshold)
    assert "\n" not in str(error.value)
    # The page shows the message (HTML-escaped); the outputs are cleared; the next request works.
    status, overlay, legend, labels_button, summary_button = app.respond(service, image, vocabulary, model, threshold)
    assert 'class="escnet-message escnet-error"' in status and "Error:" in status
    assert overlay is None and legend == "" and labels_button.value is None and not labels_button.interactive
    status, overlay, legend, labels_button, _ = app.respond(service, good, VOCAB, MODEL, 0.0)
    assert "escnet-done" in status and overlay.ndim == 3 and "red ball" in legend
    assert labels_button.interactive and labels_button.value["orig_name"] == "good_labels.png"


def test_unexpected_failures_become_a_message_and_serving_goes_on(segmenter, tmp_path):
    class Exhausted:
        cfg = segmenter.cfg

        def segment_rgb_arrays(self, *args, **kwargs):
            raise RuntimeError("DefaultCPUAllocator: not enough memory\nmore lines")

    service = SegmentationService(
        {"broken": Exhausted(), MODEL: segmenter}, max_pixels=100_000, output_dir=str(tmp_path / "served")
    )
    status, overlay, *_ = app.respond(service, _save(tmp_path, "a.png"), VOCAB, "broken", 0.0)
    assert "internal error (RuntimeError: DefaultCPUAllocator: not enough memory); see the server log" in status
    assert overlay is None
    status, overlay, *_ = app.respond(service, _save(tmp_path, "a.png"), VOCAB, MODEL, 0.0)
    assert "escnet-done" in status and overlay is not None


def test_requests_run_one_at_a_time_and_report_progress(segmenter, tmp_path):
    active, overlaps = [0], []

    class Slow:
        cfg = segmenter.cfg

        def segment_rgb_arrays(self, *args, **kwargs):
            active[0] += 1
            overlaps.append(active[0])
            time.sleep(0.2)
            active[0] -= 1
            return segmenter.segment_rgb_arrays(*args, **kwargs)

    service = SegmentationService({"a": Slow(), "b": Slow()}, 100_000, str(tmp_path / "served"))
    path = _save(tmp_path, "a.png")
    errors = []

    def request(model):
        try:
            service.segment(path, VOCAB, model)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=request, args=(m,)) for m in ("a", "b", "a")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and overlaps == [1, 1, 1]

    steps = []
    service.segment(path, VOCAB, "a", progress=lambda fraction, desc=None: steps.append((fraction, desc)))
    fractions = [fraction for fraction, _ in steps]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert any("segmenting with a (3 classes)" in desc for _, desc in steps)

    # The page queues its segmentation event with concurrency 1.
    page = app.build_app(service)
    (event,) = [fn for fn in page.fns.values() if fn.api_name == "segment"]
    assert event.concurrency_limit == 1 and event.queue and page.enable_queue
    # Each request's files are kept until the next request (Gradio has copied them by then).
    first = service.segment(path, VOCAB, "a")
    second = service.segment(path, VOCAB, "a")
    assert not os.path.exists(first.label_map_path) and os.path.exists(second.label_map_path)


def test_legend_escapes_class_names():
    result = types.SimpleNamespace(
        vocabulary=("<b>cat</b>", "dog"),
        unlabelled=255,
        pixel_shares=lambda: (np.array([0.25, 0.5]), 0.25),
    )
    from escnet.webapp import _legend_rows

    rows = _legend_rows(result)
    assert [(row.name, row.share) for row in rows] == [("dog", 0.5), ("<b>cat</b>", 0.25), ("unlabelled", 0.25)]
    page = legend_html(rows)
    assert "&lt;b&gt;cat&lt;/b&gt;" in page and "<b>cat" not in page
    assert re.findall(r'class="escnet-legend-share"[^>]*>([^<]+)<', page) == ["50.0%", "25.0%", "25.0%"]


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _external_urls(text):
    """URLs to other hosts that a browser would fetch: src/href attributes, CSS url() and @import."""
    found = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", text)
    found += re.findall(r"""url\(\s*["']?([^"')\s]+)""", text)
    found += re.findall(r"""@import\s+(?:url\()?\s*["']?([^"')\s;]+)""", text)
    return sorted({u for u in found if re.match(r"^(https?:)?//", u) and not re.match(r"^(https?:)?//127\.0\.0\.1", u)})


def test_served_page_and_styles_reference_no_external_urls(service):
    page = app.build_app(service)
    port = _free_port()
    page.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        theme=app.page_theme(),
        ssr_mode=False,
        quiet=True,
    )
    try:
        base = f"http://127.0.0.1:{port}/"
        index = urllib.request.urlopen(base, timeout=30).read().decode()
        theme = urllib.request.urlopen(base + "theme.css", timeout=30).read().decode()
        styles = [
            urllib.request.urlopen(base + href.lstrip("./"), timeout=30).read().decode()
            for href in re.findall(r'<link rel="stylesheet"[^>]*href="([^"]+)"', index)
        ]
    finally:
        page.close()
    assert styles, "the page links no stylesheet"
    # <meta> tags (og:image...) are not fetched; everything else must be served from this machine.
    tags = re.sub(r"<meta[^>]*>", "", index)
    for text in (tags, theme, *styles):
        assert _external_urls(text) == []
    assert "googleapis" not in theme and "ui-sans-serif" in theme
    assert '"analytics_enabled":false' in index.replace(" ", "")
