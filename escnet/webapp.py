"""Request handling of the web page (``demo/app.py``), free of any web framework.

One ``SegmentationService`` holds the ``Segmenter`` of every model the server was started with and
answers one page request at a time: read the uploaded picture (downscaled above ``max_pixels``),
parse the typed vocabulary, segment through ``Segmenter.segment_rgb_arrays`` (the call the CLI
``demo/demo.py`` makes, so both give identical label maps), draw the overlay with its legend and
write the label map (PNG) and the JSON summary.

    service = SegmentationService({"tiny": Segmenter("tiny", weights="model_final.pth")})
    response = service.segment("photo.jpg", "cat, sofa, window", "tiny", score_threshold=0.3)
    response.overlay, response.label_map_path, response.summary_path, response.note

Bad input raises ``EscnetError`` with a one-line message for the page.

Image size policy: the model's output is ``Nc x H x W`` float32 at the picture's own resolution,
so a picture above ``max_pixels`` is downscaled (aspect kept; JPEGs are decoded at a reduced
scale) before segmentation and its label map has the downscaled size (the page says so). A
picture above PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, 89.5 megapixels by
default) is refused from its header, before anything is decoded.

Vocabulary syntax on the page: one line is a comma-separated list of classes (as ``--vocab``);
several lines hold one class per line, commas separating its synonyms (as a ``--vocab-file``
text file: ``sofa, couch``).
"""

import html
import math
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from .data.label_io import write_label_map
from .segmenter import pil_to_rgb_array
from .utils.errors import EscnetError
from .utils.io import write_json_atomic
from .visualization import UNLABELLED_NAME, class_color, render_overlay, segmentation_summary
from .vocabulary import builtin_vocabulary, validate_vocabulary

__all__ = [
    "ModelSpec",
    "parse_model_spec",
    "default_model_name",
    "VOCABULARY_PRESETS",
    "preset_text",
    "parse_vocabulary_text",
    "LoadedImage",
    "load_image",
    "PageResponse",
    "SegmentationService",
    "legend_html",
    "message_html",
]

# Page presets: label shown -> built-in vocabulary (escnet/data/vocab/<name>.json).
VOCABULARY_PRESETS = {
    "ADE-150": "ade150",
    "COCO-Stuff-171": "coco",
    "PASCAL-Context-59": "pc59",
    "VOC-20": "voc20",
}
MEGAPIXEL = 1_000_000
NO_IMAGE = "no image: upload a picture (or drop one on the image box) or pick an example"
# File names offered for download keep these characters of the uploaded name.
UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ModelSpec:
    """A model the server offers: page name, config (file or shipped name), weights and overrides."""

    name: str
    config: str
    weights: Optional[str] = None
    opts: Tuple[str, ...] = ()


def parse_model_spec(text):
    """Parse ``[NAME=]CONFIG[:WEIGHTS]`` (``--model`` of ``demo/app.py``) into a ``ModelSpec``.

    ``NAME`` defaults to the config's file stem; ``WEIGHTS`` (after the first ``:``, so URLs work)
    overrides ``MODEL.WEIGHTS``.
    """
    name, has_name, rest = text.partition("=") if "=" in text else ("", "", text)
    config, has_weights, weights = (part.strip() for part in rest.partition(":"))
    name = name.strip()
    if not config or (has_name and not name) or (has_weights and not weights):
        raise EscnetError(
            f"bad --model {text!r}: expected [NAME=]CONFIG[:WEIGHTS], e.g. ESC-Net=configs/vitb.yaml:model.pth"
        )
    return ModelSpec(name or default_model_name(config), config, weights or None)


def default_model_name(config):
    """The page name of a model given only its config: the config's file stem (``vitb``)."""
    return os.path.splitext(os.path.basename(os.path.normpath(config)))[0]


def preset_text(preset):
    """The text a preset puts in the vocabulary box: one class per line."""
    if preset not in VOCABULARY_PRESETS:
        raise EscnetError(f"unknown vocabulary preset {preset!r}; known: {', '.join(VOCABULARY_PRESETS)}")
    return "\n".join(builtin_vocabulary(VOCABULARY_PRESETS[preset]))


def parse_vocabulary_text(text):
    """Parse the vocabulary box into a validated vocabulary tuple.

    One non-empty line: comma-separated classes (``"cat, sofa, window"``). Several lines: one class
    per line, an entry's synonyms separated by commas (``"sofa, couch"``).
    """
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if len(lines) > 1:
        entries = lines
    else:
        entries = lines[0].split(",") if lines else []
    return validate_vocabulary(entries, "vocabulary")


@dataclass(frozen=True)
class LoadedImage:
    """An uploaded picture as the model sees it: ``rgb`` is ``H x W x 3`` uint8, upright.

    ``original_size`` is ``(height, width)`` of the file (after EXIF rotation); it differs from
    ``rgb``'s size when the picture was downscaled to the pixel limit.
    """

    rgb: np.ndarray
    name: str
    original_size: Tuple[int, int]

    @property
    def resized(self):
        return tuple(self.rgb.shape[:2]) != tuple(self.original_size)


def _downscaled_size(width, height, max_pixels):
    """``(width, height)`` scaled uniformly to at most ``max_pixels`` pixels (each side >= 1)."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    return max(1, int(width * scale)), max(1, int(height * scale))


def load_image(path, max_pixels, name=None):
    """Read an uploaded picture as ``LoadedImage``, downscaled to at most ``max_pixels`` pixels.

    Below the limit the pixels equal ``escnet.segmenter.read_image``'s (what the CLI reads).
    Raises ``EscnetError`` for a missing or non-image file, a truncated or corrupt one, and a
    picture above PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``).
    """
    if not path:
        raise EscnetError(NO_IMAGE)
    name = name or os.path.basename(path)
    if not os.path.isfile(path):
        raise EscnetError(f"image not found: {name!r}")
    try:
        with warnings.catch_warnings():
            # The size is checked below from the header; nothing is decoded before that.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            width, height = img.size  # from the header; nothing decoded yet
            limit = Image.MAX_IMAGE_PIXELS
            if limit and width * height > limit:
                raise EscnetError(
                    f"image too large: {name!r} is {width} x {height} = {width * height / MEGAPIXEL:.1f} "
                    f"megapixels, above the decompression-bomb limit of {limit / MEGAPIXEL:.1f} megapixels; "
                    "downscale it first"
                )
            target = _downscaled_size(width, height, max_pixels)
            if target != (width, height):
                img.draft("RGB", target)  # JPEG: decode at a reduced scale (no-op for other formats)
            img.load()
            rgb = pil_to_rgb_array(img, source=repr(name))  # upright: EXIF orientation applied
            # (height, width) as displayed: swapped when the EXIF orientation turned the picture.
            turned = (rgb.shape[1], rgb.shape[0]) != img.size  # img.size: decoded, maybe reduced
            upright = (width, height) if turned else (height, width)
    except UnidentifiedImageError:
        raise EscnetError(f"not an image file (unrecognised format): {name!r}") from None
    except Image.DecompressionBombError as err:
        raise EscnetError(f"image too large: {name!r}: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise EscnetError(f"cannot read image {name!r}: {reason}") from None
    target_width, target_height = _downscaled_size(upright[1], upright[0], max_pixels)
    if rgb.shape[:2] != (target_height, target_width):
        resized = Image.fromarray(rgb).resize((target_width, target_height), Image.Resampling.LANCZOS)
        rgb = np.asarray(resized, dtype=np.uint8).copy()
    return LoadedImage(rgb=rgb, name=name, original_size=upright)


@dataclass(frozen=True)
class LegendRow:
    """One row of the page's legend: a class (or the unlabelled pixels) and its pixel share."""

    label: int
    name: str
    share: float
    color: Optional[Tuple[int, int, int]]


@dataclass(frozen=True)
class PageResponse:
    """What the page shows for one request.

    ``overlay``: ``H' x W' x 3`` uint8 picture with the legend panel; ``legend``: every class of the
    vocabulary (present ones first, largest share first) plus the unlabelled pixels when there are
    any; ``labels``: the ``H x W`` label map also written to ``label_map_path``; ``summary``: the
    JSON object written to ``summary_path``; ``note``: what the page should tell beside the result
    (e.g. that the picture was downscaled), or ``""``.
    """

    overlay: np.ndarray
    legend: Tuple[LegendRow, ...]
    labels: np.ndarray
    label_map_path: str
    summary_path: str
    summary: dict
    note: str


def _no_progress(fraction, desc=None):
    """A progress callback that shows nothing."""


class SegmentationService:
    """Answer the page's requests with the models the server was started with, one at a time.

    Args:
        segmenters: page name -> ``Segmenter`` (the first is the default model).
        max_pixels: pictures above this many pixels are downscaled before segmentation.
        output_dir: folder for the files offered for download; each request writes a fresh
            subfolder and removes the previous requests' (the web framework has copied them by then).
        opacity: weight of the class colours in the overlay (0..1).
        display_min_height: overlays of lower pictures are enlarged (integer factor) to stay legible.
        model_info: page name -> extra facts for the JSON summary (config file...).

    Requests are serialised by a lock: two requests never run models at the same time.
    """

    def __init__(self, segmenters, max_pixels, output_dir, opacity=0.5, display_min_height=256, model_info=None):
        if not segmenters:
            raise EscnetError("no model to serve: give --config-file or --model")
        if max_pixels < 1:
            raise EscnetError(f"--max-pixels must be >= 1, got {max_pixels}")
        self.segmenters: Dict[str, object] = dict(segmenters)
        self.max_pixels = int(max_pixels)
        self.output_dir = output_dir
        self.opacity = opacity
        self.display_min_height = display_min_height
        self.model_info = dict(model_info or {})
        self._lock = threading.Lock()
        os.makedirs(output_dir, exist_ok=True)

    @property
    def model_names(self):
        return list(self.segmenters)

    def segment(self, image_path, vocabulary_text, model_name, score_threshold=0.0, progress=None, image_name=None):
        """Segment the picture at ``image_path`` with the typed vocabulary; return a ``PageResponse``.

        ``progress(fraction, desc=...)`` is called at each stage (reading, segmenting, drawing,
        writing). Raises ``EscnetError`` (one line) for bad input.
        """
        progress = progress or _no_progress
        if not image_path:
            raise EscnetError(NO_IMAGE)
        vocabulary = parse_vocabulary_text(vocabulary_text)
        if model_name not in self.segmenters:
            raise EscnetError(f"unknown model {model_name!r}; this server has: {', '.join(self.segmenters)}")
        score_threshold = float(score_threshold)
        if not 0.0 <= score_threshold <= 1.0:
            raise EscnetError(f"score threshold must lie in 0..1, got {score_threshold}")
        segmenter = self.segmenters[model_name]
        with self._lock:
            start = time.perf_counter()  # timings leave out the wait for other requests
            progress(0.0, desc="reading the image")
            image = load_image(image_path, self.max_pixels, name=image_name)
            loaded = time.perf_counter()
            progress(0.1, desc=f"segmenting with {model_name} ({len(vocabulary)} classes)")
            (result,) = segmenter.segment_rgb_arrays(
                [image.rgb], vocabulary, score_threshold, return_probabilities=False
            )
            segmented = time.perf_counter()
            progress(0.8, desc="drawing the overlay")
            overlay, present = render_overlay(
                image.rgb, result.labels, vocabulary, result.unlabelled, self.opacity, "side", self.display_min_height
            )
            progress(0.9, desc="writing the label map and summary")
            folder = self._fresh_request_folder()
            stem = UNSAFE_FILE_CHARS.sub("_", os.path.splitext(image.name)[0]).strip("._") or "image"
            label_map_path = os.path.join(folder, f"{stem}_labels.png")
            summary_path = os.path.join(folder, f"{stem}_summary.json")
            write_label_map(label_map_path, result.labels)
            timing = {"read": loaded - start, "segment": segmented - loaded, "total": time.perf_counter() - start}
            summary = self._summary(image, result, present, model_name, label_map_path, timing)
            write_json_atomic(summary_path, summary)
            progress(1.0, desc="done")
        return PageResponse(
            overlay=overlay,
            legend=_legend_rows(result),
            labels=result.labels,
            label_map_path=label_map_path,
            summary_path=summary_path,
            summary=summary,
            note=self._note(image),
        )

    def _note(self, image):
        if not image.resized:
            return ""
        (height, width), (new_height, new_width) = image.original_size, image.rgb.shape[:2]
        return (
            f"The picture ({width} x {height}) is above this server's limit of "
            f"{self.max_pixels / MEGAPIXEL:g} megapixels: it was downscaled to {new_width} x {new_height}, "
            "and the label map has that size."
        )

    def _fresh_request_folder(self):
        for entry in os.listdir(self.output_dir):
            if entry.startswith("request-"):
                shutil.rmtree(os.path.join(self.output_dir, entry), ignore_errors=True)
        return tempfile.mkdtemp(prefix="request-", dir=self.output_dir)

    def _summary(self, image, result, present, model_name, label_map_path, timing):
        """The JSON summary (same keys as ``demo/demo.py``'s, plus the original size when downscaled)."""
        segmenter = self.segmenters[model_name]
        summary = {
            "input": image.name,
            **segmentation_summary(result, present),
            "outputs": {"label_map": os.path.basename(label_map_path)},
            "model": {
                "name": model_name,
                **self.model_info.get(model_name, {}),
                "weights": segmenter.cfg.MODEL.WEIGHTS,
                "device": segmenter.cfg.MODEL.DEVICE,
            },
            "timing_s": timing,
        }
        if image.resized:
            summary["original_size"] = {"height": image.original_size[0], "width": image.original_size[1]}
        return summary


def _legend_rows(result):
    """Every class with its pixel share, largest first (ties in vocabulary order), then unlabelled."""
    shares, unlabelled_share = result.pixel_shares()
    order = sorted(range(len(result.vocabulary)), key=lambda i: (-shares[i], i))
    rows = [LegendRow(i, result.vocabulary[i], float(shares[i]), class_color(result.vocabulary[i])) for i in order]
    if unlabelled_share > 0:
        rows.append(LegendRow(int(result.unlabelled), UNLABELLED_NAME, float(unlabelled_share), None))
    return tuple(rows)


def legend_html(rows):
    """The legend as an HTML table (swatch, class, pixel share); names are HTML-escaped."""
    lines = [
        '<table class="escnet-legend" style="border-collapse: collapse; width: 100%">',
        "<thead><tr><th></th><th style='text-align: left'>class</th>"
        "<th style='text-align: right'>pixels</th></tr></thead><tbody>",
    ]
    for row in rows:
        if row.color is None:
            swatch = "background: repeating-linear-gradient(45deg, #fff 0 3px, #999 3px 4px)"
        else:
            swatch = "background: rgb({}, {}, {})".format(*row.color)
        present = "present" if row.share > 0 else "absent"
        text_color = "inherit" if row.share > 0 else "#888"
        lines.append(
            f'<tr class="escnet-legend-row {present}" data-label="{row.label}" style="color: {text_color}">'
            f'<td style="width: 1.4em"><span style="display: inline-block; width: 1em; height: 1em; '
            f'border: 1px solid #666; {swatch}"></span></td>'
            f'<td class="escnet-legend-name">{html.escape(row.name)}</td>'
            f'<td class="escnet-legend-share" style="text-align: right">{row.share:.1%}</td></tr>'
        )
    lines.append("</tbody></table>")
    return "\n".join(lines)


def message_html(text, kind):
    """A one-line page message (``kind``: ``"error"``, ``"note"`` or ``"done"``), HTML-escaped."""
    styles = {
        "error": ("Error", "#b91c1c", "#fef2f2"),
        "note": ("Note", "#92400e", "#fffbeb"),
        "done": ("Done", "#166534", "#f0fdf4"),
    }
    title, color, background = styles[kind]
    return (
        f'<div class="escnet-message escnet-{kind}" style="color: {color}; background: {background}; '
        f'border: 1px solid {color}; border-radius: 6px; padding: 0.5em 0.8em">'
        f"<strong>{title}:</strong> {html.escape(text)}</div>"
    )
