"""Pictures of segmentations: label-map overlay with a legend; class colours stable per name.

A class's colour derives from a hash of its (normalised) name, not its index, so "cat" has the
same colour in every image and every vocabulary. Unlabelled pixels (below the score threshold)
keep the image's own colours and have an uncoloured, crossed legend swatch.
"""

import colorsys
import functools
import hashlib
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["LegendEntry", "UNLABELLED_NAME", "class_color", "legend_entries", "blend_labels", "render_overlay"]

UNLABELLED_NAME = "unlabelled"

# Hashed colours stay vivid and light enough to read over photos: saturation and value are drawn
# from these ranges (HSV, 0..1), the hue from the whole circle.
SATURATION_RANGE = (0.55, 1.0)
VALUE_RANGE = (0.65, 1.0)

# Legend layout, relative to the font size (pixels); the font scales with the image height.
FONT_HEIGHT_FRACTION = 1 / 32
MIN_FONT_PX = 12
ROW_HEIGHT_EM = 1.6
PADDING_EM = 0.6
SWATCH_EM = 1.0
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)
OUTLINE_COLOR = (96, 96, 96)


@dataclass(frozen=True)
class LegendEntry:
    """One legend row: a label value present in the map, its name, pixel share and colour.

    ``color`` is ``None`` for unlabelled pixels (drawn uncoloured).
    """

    label: int
    name: str
    share: float
    color: Optional[Tuple[int, int, int]]


def normalized_name(name):
    """The key a colour is derived from: lower case, single spaces, synonyms as ``"a, b"``."""
    return ", ".join(" ".join(part.lower().split()) for part in name.split(",") if part.strip())


@functools.lru_cache(maxsize=4096)  # pure: same name, same colour; spares hashing per video frame
def class_color(name):
    """A stable RGB colour (three ints 0..255) for a class name, from a hash of the name."""
    digest = hashlib.sha256(normalized_name(name).encode("utf-8")).digest()
    hue = int.from_bytes(digest[0:2], "big") / 65536
    saturation = SATURATION_RANGE[0] + digest[2] / 255 * (SATURATION_RANGE[1] - SATURATION_RANGE[0])
    value = VALUE_RANGE[0] + digest[3] / 255 * (VALUE_RANGE[1] - VALUE_RANGE[0])
    return tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(hue, saturation, value))


def _check_labels(labels, vocabulary, unlabelled):
    labels = np.asarray(labels)
    invalid = (labels >= len(vocabulary)) & (labels != unlabelled)
    if invalid.any():
        raise ValueError(f"label map holds values outside the vocabulary: {np.unique(labels[invalid])[:10]}")
    return labels


def legend_entries(labels, vocabulary, unlabelled):
    """Legend rows for the labels present in ``labels`` (``H x W``), largest share first.

    Unlabelled pixels (value ``unlabelled``) get a row named ``UNLABELLED_NAME`` with no colour.
    """
    labels = _check_labels(labels, vocabulary, unlabelled)
    values, counts = np.unique(labels, return_counts=True)
    order = sorted(range(len(values)), key=lambda i: (-counts[i], int(values[i])))
    entries = []
    for i in order:
        value = int(values[i])
        share = float(counts[i]) / labels.size
        if value == unlabelled:
            entries.append(LegendEntry(value, UNLABELLED_NAME, share, None))
        else:
            entries.append(LegendEntry(value, vocabulary[value], share, class_color(vocabulary[value])))
    return entries


def blend_labels(image, labels, vocabulary, unlabelled, opacity=0.5):
    """Tint each labelled pixel of ``image`` (``H x W x 3`` uint8 RGB) with its class colour.

    ``opacity`` 0..1 is the weight of the class colour; unlabelled pixels keep the image colour.
    """
    labels = _check_labels(labels, vocabulary, unlabelled)
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and label map {labels.shape} differ in size")
    palette = np.array([class_color(name) for name in vocabulary], dtype=np.float32)
    labelled = labels != unlabelled
    colors = palette[np.where(labelled, labels, 0)]
    blended = image.astype(np.float32)
    blended[labelled] = (1 - opacity) * blended[labelled] + opacity * colors[labelled]
    return np.round(blended).astype(np.uint8)


@functools.lru_cache(maxsize=16)  # pure: one font per size, not one per frame
def _font(size):
    """Pillow's built-in scalable font (Pillow >= 10.1), else its fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


class _LegendLayout:
    """Sizes (pixels) of a legend for images of a given height."""

    def __init__(self, image_height):
        self.font_px = max(MIN_FONT_PX, int(round(image_height * FONT_HEIGHT_FRACTION)))
        self.font = _font(self.font_px)
        self.row = int(round(self.font_px * ROW_HEIGHT_EM))
        self.pad = int(round(self.font_px * PADDING_EM))
        self.swatch = int(round(self.font_px * SWATCH_EM))

    @staticmethod
    def text(entry):
        return f"{entry.name}  {entry.share:.1%}"

    def width(self, texts):
        text_width = max((self.font.getlength(t) for t in texts), default=0)
        return int(np.ceil(3 * self.pad + self.swatch + text_width))

    def height(self, rows):
        return 2 * self.pad + rows * self.row

    def draw_row(self, draw, x, y, entry_color, text, swatch=True):
        """Draw a row at ``(x, y)``: a swatch (a crossed empty box when ``entry_color`` is None) and text."""
        top = y + (self.row - self.swatch) // 2
        box = [x + self.pad, top, x + self.pad + self.swatch - 1, top + self.swatch - 1]
        if swatch:
            fill = BACKGROUND if entry_color is None else tuple(entry_color)
            draw.rectangle(box, fill=fill, outline=OUTLINE_COLOR)
            if entry_color is None:
                draw.line(box, fill=OUTLINE_COLOR)
        draw.text((box[2] + 1 + self.pad, y + self.row / 2), text, fill=TEXT_COLOR, font=self.font, anchor="lm")


def render_overlay(image, labels, vocabulary, unlabelled, opacity=0.5, legend="side", min_height=0):
    """Draw the segmentation over ``image`` (``H x W x 3`` uint8 RGB) with a legend.

    ``legend``: ``"side"`` adds a panel right of the image listing every class present (the picture
    grows); ``"inside"`` draws the legend in the image's top-left corner, keeping its size (for video;
    rows that do not fit are summarised as "+N more"); ``None`` draws no legend.
    ``min_height``: pictures lower than this are enlarged by an integer factor (nearest neighbour,
    so pixels stay sharp) to keep small images and their legend legible; 0: never.
    Returns the picture (uint8 RGB array) and the legend entries (classes present, largest first).
    """
    entries = legend_entries(labels, vocabulary, unlabelled)
    if 0 < image.shape[0] < min_height:
        factor = -(-min_height // image.shape[0])
        image = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
        labels = np.repeat(np.repeat(labels, factor, axis=0), factor, axis=1)
    blended = blend_labels(image, labels, vocabulary, unlabelled, opacity)
    if legend is None:
        return blended, entries
    layout = _LegendLayout(image.shape[0])
    height, width = blended.shape[:2]
    if legend == "side":
        panel_width = layout.width([layout.text(e) for e in entries])
        canvas = Image.new("RGB", (width + panel_width, max(height, layout.height(len(entries)))), BACKGROUND)
        canvas.paste(Image.fromarray(blended), (0, 0))
        rows, x0, y0 = [(e.color, layout.text(e), True) for e in entries], width, 0
    elif legend == "inside":
        canvas = Image.fromarray(blended)
        fitting = max(0, (height - 2 * layout.pad) // layout.row)
        if len(entries) > fitting:
            shown = max(0, fitting - 1)
            rows = [(e.color, layout.text(e), True) for e in entries[:shown]]
            rows.append((None, f"+{len(entries) - shown} more", False))
        else:
            rows = [(e.color, layout.text(e), True) for e in entries]
        x0, y0 = 0, 0
        box_width = min(width, layout.width([text for _, text, _ in rows]))
        box_height = min(height, layout.height(len(rows)))
        ImageDraw.Draw(canvas).rectangle([0, 0, box_width - 1, box_height - 1], fill=BACKGROUND)
    else:
        raise ValueError(f"legend must be 'side', 'inside' or None, got {legend!r}")
    draw = ImageDraw.Draw(canvas)
    for i, (color, text, swatch) in enumerate(rows):
        layout.draw_row(draw, x0, y0 + layout.pad + i * layout.row, color, text, swatch)
    return np.asarray(canvas), entries


def segmentation_summary(result, present):
    """The JSON fields shared by every summary of one ``SegmentationResult`` (demo, web page).

    ``present``: the legend entries shown (classes present, largest first). Class shares and the
    unlabelled share sum to 1.
    """
    shares, unlabelled_share = result.pixel_shares()
    height, width = result.image_size
    return {
        "image_size": {"height": height, "width": width},
        "vocabulary": list(result.vocabulary),
        "classes": [
            {"label": i, "name": name, "pixel_share": float(share), "color": list(class_color(name))}
            for i, (name, share) in enumerate(zip(result.vocabulary, shares))
        ],
        "present": [entry.name for entry in present],
        "unlabelled": {
            "label": int(result.unlabelled),
            "name": UNLABELLED_NAME,
            "pixel_share": float(unlabelled_share),
        },
        "score_threshold": result.score_threshold,
    }
