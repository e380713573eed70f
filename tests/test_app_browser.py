"""demo/app.py in a real browser: Debian's chromium, headless, driven by Playwright.

The app runs as a subprocess on a free loopback port with the random tiny checkpoint. The page is
loaded with every request to another host blocked (as offline) and recorded. Chromium comes
from tools/install.sh (apt-get); Playwright drives it through ``executable_path`` (Playwright's
own browser download is never used). Without chromium the test is skipped, except under CI
(``CI=true``), where it fails: CI must run it.
"""

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from escnet.data.label_io import read_label_map
from escnet.data.synthetic import SPLITS, render_example

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = os.path.join(REPO, "demo", "app.py")
MAX_PIXELS = 250_000
VOCAB = "grass, water, sand, red ball, blue box, yellow kite"
STARTUP_TIMEOUT_S = 180
REQUEST_TIMEOUT_MS = 60_000
LOOPBACK = "127.0.0.1"
SECOND_MODEL = "tiny-copy"


def _require(available, reason):
    """Skip when ``available`` is false, but fail under CI, which must run the browser test."""
    if available:
        return
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{reason}: CI must run the browser test (tools/install.sh installs it)")
    pytest.skip(reason)


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def sync_playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    _require(sync_playwright is not None, "playwright is not installed (pip install -e .[test])")
    _require(_chromium() is not None, "chromium is not installed (Debian: apt-get install chromium)")
    return sync_playwright


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    """``python demo/app.py`` with the tiny checkpoint on a free loopback port; its URL."""
    folder = tmp_path_factory.mktemp("app_server")
    port = _free_port()
    log_path = folder / "server.log"
    command = [sys.executable, APP, "--config-file", "tiny", "--device", "cpu", "--port", str(port)]
    command += ["--model", f"{SECOND_MODEL}=tiny:{checkpoint}", "--max-pixels", str(MAX_PIXELS)]
    command += ["--opts", "MODEL.WEIGHTS", checkpoint]
    env = dict(os.environ, GRADIO_TEMP_DIR=str(folder / "gradio"), PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://{LOOPBACK}:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"demo/app.py exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"demo/app.py did not answer within {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()}")
                time.sleep(0.5)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode is not None


@pytest.fixture(scope="module")
def browser(sync_playwright):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    """A fresh page on the app; requests to any other host are blocked and recorded."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(REQUEST_TIMEOUT_MS)
    page.foreign_requests = []

    def route(route):
        if urlparse(route.request.url).hostname == LOOPBACK:
            route.continue_()
        else:
            page.foreign_requests.append(route.request.url)
            route.abort()

    context.route("**/*", route)  # every page and worker of the context
    page.goto(server)
    page.wait_for_selector("#run")
    yield page
    context.close()


def _upload(page, path):
    page.locator("#input-image input[type=file]").set_input_files(str(path))


def _submit(page, vocabulary, expected_status):
    """Type ``vocabulary``, press Segment, wait until the status holds ``expected_status``."""
    from playwright.sync_api import expect

    page.locator("#vocab textarea").fill(vocabulary)
    page.click("#run")
    expect(page.locator("#status")).to_contain_text(expected_status, timeout=REQUEST_TIMEOUT_MS)
    return page.locator("#status").inner_text()


def _download(page, element_id, folder):
    with page.expect_download() as download:
        page.click(f"#{element_id}")
    path = folder / download.value.suggested_filename
    download.value.save_as(str(path))
    return path


def _wait_for_overlay(page):
    page.wait_for_selector("#overlay img")
    page.wait_for_selector("#legend .escnet-legend-name")


def _picture(path, index=1, scale=2):
    """Synthetic validation image ``index`` enlarged ``scale`` times, as PNG."""
    image = render_example(SPLITS["val"], index)[0].repeat(scale, 0).repeat(scale, 1)
    Image.fromarray(image).save(path)
    return path


def test_segment_a_picture_in_the_browser(page, segmenter, tmp_path):
    picture = _picture(tmp_path / "beach.png")
    _upload(page, picture)
    status = _submit(page, VOCAB, "Done")
    assert "beach.png (128 x 128)" in status and "6 classes" in status
    _wait_for_overlay(page)
    overlay = page.locator("#overlay img")
    assert overlay.evaluate("img => img.complete && img.naturalWidth") > 128  # picture + legend panel
    names = page.locator("#legend .escnet-legend-name").all_inner_texts()
    assert sorted(names) == sorted(name.strip() for name in VOCAB.split(","))
    shares = [float(s.rstrip("%")) for s in page.locator("#legend .escnet-legend-share").all_inner_texts()]
    assert sum(shares) == pytest.approx(100, abs=0.1 * len(shares)) and shares == sorted(shares, reverse=True)

    labels = read_label_map(_download(page, "download-labels", tmp_path))
    expected = segmenter.segment(str(picture), [name.strip() for name in VOCAB.split(",")]).labels
    np.testing.assert_array_equal(labels, expected)
    summary = json.loads(_download(page, "download-summary", tmp_path).read_text())
    assert summary["input"] == "beach.png" and summary["vocabulary"] == [n.strip() for n in VOCAB.split(",")]
    assert summary["outputs"]["label_map"] == "beach_labels.png"
    page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
    assert os.path.getsize(tmp_path / "app.png") > 0
    assert page.foreign_requests == []


def test_presets_and_examples_fill_the_page(page):
    page.locator("#vocab-preset input").click()
    page.get_by_role("option", name="VOC-20").click()
    page.wait_for_function("document.querySelector('#vocab textarea').value.startsWith('aeroplane\\nbicycle')")
    assert len(page.locator("#vocab textarea").input_value().splitlines()) == 20
    page.locator(".gallery-item, tr.tr-body").first.click()  # the first bundled example
    page.wait_for_function(f"document.querySelector('#vocab textarea').value === {json.dumps(VOCAB)}")
    page.locator("#model input").click()
    page.get_by_role("option", name=SECOND_MODEL).click()
    page.click("#run")
    _wait_for_overlay(page)
    assert f"shapes_1.png (192 x 192) with {SECOND_MODEL}" in page.locator("#status").inner_text()
    assert page.foreign_requests == []


def _png_claiming_size(path, width, height):
    """A small PNG whose header claims ``width x height`` pixels (a decompression bomb's header)."""
    Image.new("RGB", (8, 8), (90, 140, 60)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def test_bad_inputs_give_messages_on_the_page_and_a_normal_request_still_works(page, segmenter, tmp_path):
    from playwright.sync_api import expect

    not_image = tmp_path / "notes.png"
    not_image.write_text("these are notes, not a picture\n")
    _upload(page, not_image)
    assert "not an image file (unrecognised format): 'notes.png'" in _submit(page, VOCAB, "not an image file")

    text_file = tmp_path / "notes.txt"  # the image box itself refuses other file types
    text_file.write_text("notes\n")
    _upload(page, text_file)
    expect(page.locator(".toast-body, [data-testid='toast-body']").first).to_contain_text("Invalid file type")

    full = _picture(tmp_path / "full.png").read_bytes()
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(full[: len(full) // 2])
    _upload(page, truncated)
    assert "truncated" in _submit(page, VOCAB, "cannot read image 'cut.png'")

    bomb = _png_claiming_size(tmp_path / "bomb.png", 12000, 10000)
    _upload(page, bomb)
    assert "120.0 megapixels, above the decompression-bomb limit" in _submit(page, VOCAB, "image too large")

    _upload(page, _picture(tmp_path / "ok.png"))
    assert "give at least one class name" in _submit(page, "", "vocabulary is empty")
    assert "duplicate class name: 'Grass'" in _submit(page, "grass, water, Grass", "duplicate")
    assert page.locator("#overlay img").count() == 0  # errors clear the previous result

    # 50 megapixels: below PIL's bomb limit, so downscaled to the server's --max-pixels, with a note.
    huge = tmp_path / "huge.png"
    Image.new("RGB", (8660, 5774), (200, 175, 120)).save(huge, compress_level=1)
    _upload(page, huge)
    status = _submit(page, "sand, water", "downscaled")
    assert "(8660 x 5774) is above this server's limit of 0.25 megapixels" in status
    _wait_for_overlay(page)
    labels = read_label_map(_download(page, "download-labels", tmp_path))
    assert labels.shape == (408, 612) and labels.size <= MAX_PIXELS  # aspect kept, as the note says

    normal = _picture(tmp_path / "after.png", index=2)
    _upload(page, normal)
    assert "after.png (128 x 128)" in _submit(page, VOCAB, "Done: segmented after.png")
    _wait_for_overlay(page)
    labels = read_label_map(_download(page, "download-labels", tmp_path))
    np.testing.assert_array_equal(labels, segmenter.segment(str(normal), VOCAB.split(",")).labels)
    page.screenshot(path=str(tmp_path / "after_bad_inputs.png"), full_page=True)
    assert page.foreign_requests == []
