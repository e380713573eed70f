"""ADE20K-full (847 classes, ADE20K_2021_17_01) validation set: resized images + uint16 TIFF labels.

Raw:      ``ADE20K_2021_17_01/index_ade20k.pkl`` (dict of lists; ``folder[i]``/``filename[i]``
          locate image i relative to the datasets root, ``objectnames`` the full-ADE classes)
          and, next to each ``<name>.jpg``, its ``<name>_seg.png`` whose pixel class is
          ``R // 10 * 256 + G`` (0 = unlabeled, k = ``objectnames[k - 1]``).
Prepared: ``ADE20K_2021_17_01/images_detectron2/validation/<name>.jpg`` and
          ``annotations_detectron2/validation/<name>.tif`` (uint16 trainId 0..846, ignore 65535),
          both with the short side capped at 512 pixels (bilinear image, nearest labels; JPEG
          at PIL's default quality, as in MaskFormer's conversion).

The 847-class table's ``id`` is that pixel class value itself (1-based relative to
``objectnames``), as in MaskFormer/CAT-Seg's conversion; ``check_objectnames`` warns when an
index's names do not line up with the table under this convention.
"""
import functools
import logging
import os
import pickle
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from ...utils.errors import EscnetError
from ...utils.io import save_image_atomic
from ..label_io import write_label_map
from .common import PrepareSummary, load_table, lookup_table, prepare_cli, remap, require_file, run_jobs

logger = logging.getLogger(__name__)

ADE20K_FULL_DIR = "ADE20K_2021_17_01"
VALIDATION_PREFIX = "ADE_val_"
IGNORE_LABEL = 65535
# Convention of the A-847 benchmark (MaskFormer onwards): images and labels are stored with
# their short side capped at this many pixels.
SHORT_SIDE_CAP = 512
# The seg PNG's red channel holds the class index's high part in steps of 10.
RED_STEP = 10
NUM_CLASS_VALUES = (255 // RED_STEP + 1) * 256
INDEX_FIELDS = ("folder", "filename", "objectnames")


@dataclass(frozen=True)
class Ade20kFullJob:
    """One validation image: read ``image``/``seg``, write the two prepared files ``outputs``."""

    image: str
    seg: str
    outputs: tuple  # (prepared image .jpg, prepared label .tif)


def ade20k_full_lookup_table():
    """``lut[pixel class] = trainId`` (0..846) for the 847 table's ids; everything else -> 65535."""
    table = load_table("ade20k_847_categories.json")
    return lookup_table({c["id"]: c["trainId"] for c in table}, NUM_CLASS_VALUES, IGNORE_LABEL, np.uint16)


def decode_class_mask(seg_rgb):
    """Full-ADE object class per pixel from an ``H x W x 3`` uint8 seg PNG: ``R // 10 * 256 + G``."""
    seg_rgb = seg_rgb.astype(np.int32)
    return seg_rgb[..., 0] // RED_STEP * 256 + seg_rgb[..., 1]


def capped_size(height, width, short_side_cap=SHORT_SIDE_CAP):
    """``(height, width)`` scaled so that the short side is at most ``short_side_cap``."""
    if min(height, width) <= short_side_cap:
        return height, width
    if height <= width:
        return short_side_cap, round(width / height * short_side_cap)
    return round(height / width * short_side_cap), short_side_cap


def load_index(path):
    """Read ``index_ade20k.pkl`` and check the fields used here; raise naming the file if malformed."""
    require_file(path, "ADE20K-full index")
    try:
        with open(path, "rb") as f:
            index = pickle.load(f)
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError) as err:
        raise EscnetError(f"ADE20K-full index {path} cannot be read as a pickle: {err}") from None
    if not isinstance(index, dict) or any(k not in index for k in INDEX_FIELDS):
        raise EscnetError(f"ADE20K-full index {path} is malformed: expected a dict with fields {INDEX_FIELDS}")
    if len(index["folder"]) != len(index["filename"]):
        raise EscnetError(f"ADE20K-full index {path} is malformed: 'folder' and 'filename' differ in length")
    return index


def check_objectnames(objectnames, table):
    """Warn unless the table's names sit at ``objectnames[id - 1]`` (pixel class k = ``objectnames[k - 1]``)."""
    names = list(objectnames)

    def matches(offset):
        return sum(0 <= c["id"] + offset < len(names) and names[c["id"] + offset] == c["name"] for c in table)

    one_based, zero_based = matches(-1), matches(0)
    if zero_based > one_based:
        logger.warning(
            "ADE20K-full index: %d of %d class names match objectnames[id] but only %d match "
            "objectnames[id - 1]; this index may use another class numbering than the 847 table",
            zero_based, len(table), one_based,
        )
    return one_based


def convert_ade20k_full(job, lut, short_side_cap=SHORT_SIDE_CAP):
    """Worker: resize the image and its class mask (short side <= cap), write JPEG + uint16 TIFF."""
    try:
        with Image.open(job.image) as img:
            image = np.asarray(img.convert("RGB"))
        with Image.open(job.seg) as seg:
            if seg.mode != "RGB":
                raise EscnetError(f"ADE20K-full seg map {job.seg} has mode {seg.mode}; expected RGB")
            seg_rgb = np.asarray(seg)
    except FileNotFoundError as err:
        raise EscnetError(f"ADE20K-full file not found: {err.filename}") from None
    except OSError as err:
        raise EscnetError(f"cannot read ADE20K-full image {job.image} or {job.seg}: {err}") from None
    if seg_rgb.shape[:2] != image.shape[:2]:
        raise EscnetError(
            f"ADE20K-full seg map {job.seg} is {seg_rgb.shape[1]}x{seg_rgb.shape[0]}, "
            f"its image {image.shape[1]}x{image.shape[0]}"
        )
    labels = remap(decode_class_mask(seg_rgb), lut, job.seg)
    height, width = capped_size(*labels.shape, short_side_cap)
    if (height, width) != labels.shape:
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        labels = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
    image_out, label_out = job.outputs
    save_image_atomic(image_out, image)
    write_label_map(label_out, labels)


def prepare_ade20k_full(root, workers=None, short_side_cap=SHORT_SIDE_CAP):
    """Write ``images_detectron2/validation`` and ``annotations_detectron2/validation`` for A-847.

    ``short_side_cap``: images and labels with a longer short side are downscaled to it
    (512 in the benchmark; a re-run keeps files already written, whatever cap made them).
    """
    base = os.path.join(root, ADE20K_FULL_DIR)
    index_path = os.path.join(base, "index_ade20k.pkl")
    index = load_index(index_path)
    check_objectnames(index["objectnames"], load_table("ade20k_847_categories.json"))
    image_dir = os.path.join(base, "images_detectron2", "validation")
    label_dir = os.path.join(base, "annotations_detectron2", "validation")
    jobs = []
    for folder, filename in zip(index["folder"], index["filename"]):
        if not filename.startswith(VALIDATION_PREFIX):
            continue
        image = os.path.join(root, folder, filename)
        stem = os.path.splitext(filename)[0]
        jobs.append(
            Ade20kFullJob(
                image=image,
                seg=os.path.join(root, folder, stem + "_seg.png"),
                outputs=(os.path.join(image_dir, stem + ".jpg"), os.path.join(label_dir, stem + ".tif")),
            )
        )
    if not jobs:
        raise EscnetError(f"ADE20K-full index {index_path} lists no validation images ({VALIDATION_PREFIX}*)")
    first = jobs[0].image
    if not os.path.isfile(first):
        raise EscnetError(
            f"ADE20K-full image {first} (listed in {index_path}) not found: the index's folders are "
            f"read relative to the datasets root {root}"
        )
    worker = functools.partial(
        convert_ade20k_full, lut=ade20k_full_lookup_table(), short_side_cap=short_side_cap
    )
    written, skipped = run_jobs(jobs, worker, "ADE20K-full validation", workers)
    return PrepareSummary(written, skipped, (image_dir, label_dir))


def _add_arguments(parser):
    parser.add_argument(
        "--short-side-cap", type=int, default=SHORT_SIDE_CAP, dest="short_side_cap",
        help=f"downscale images/labels whose short side exceeds this (default: {SHORT_SIDE_CAP}, the benchmark's)",
    )


main = prepare_cli(
    prepare_ade20k_full,
    "Prepare ADE20K-847 validation images and labels (uint16 TIFF, ignore 65535, short side <= 512).",
    _add_arguments,
)
