"""PASCAL-Context-59 validation labels from the PASCAL in Detail annotation file.

Raw:      ``VOCdevkit/VOC2010/trainval_merged.json`` (Detail API format: ``images`` with
          ``image_id``, ``file_name``, ``phase``, ``height``, ``width``; ``annos_segmentation``
          with ``image_id``, ``category_id`` (full PASCAL-Context label id) and COCO-RLE
          ``segmentation``). Annotations are painted in file order; later ones win, unpainted
          pixels keep id 0.
Prepared: ``VOCdevkit/VOC2010/annotations_detectron2/pc59_val/<image stem>.png``: the 59 kept ids
          (``tables/pascal_context_59_label_ids.json``, sorted, without 0) -> 0..58; id 0 and
          every other id -> ignore 255.
"""
import functools
import json
import os
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

from ...utils.errors import EscnetError
from ..label_io import write_label_map
from .common import PrepareSummary, load_table, lookup_table, prepare_cli, remap, require_file, run_jobs

IGNORE_LABEL = 255
IMAGE_FIELDS = ("image_id", "file_name", "phase", "height", "width")
ANNOTATION_FIELDS = ("image_id", "category_id", "segmentation")


@dataclass(frozen=True)
class DetailImageJob:
    """One validation image: its Detail ``image`` record and its ``annotations``, painted in order."""

    image: dict
    annotations: tuple
    outputs: tuple
    source: str  # the JSON file, named in errors


def pascal_context_59_lookup_table(max_id):
    """``lut[full label id] = 0..58`` for the 59 kept ids; 0 and all others -> 255."""
    kept = sorted(load_table("pascal_context_59_label_ids.json")["ids"])
    kept = [i for i in kept if i != 0]
    size = max(max_id, kept[-1]) + 1
    return lookup_table({label_id: k for k, label_id in enumerate(kept)}, size, IGNORE_LABEL, np.uint8)


def load_detail_annotations(path):
    """Read the Detail JSON; return ``(val_images, annotations_by_image_id)``; raise if malformed."""
    require_file(path, "PASCAL-Context Detail annotation file")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EscnetError(f"PASCAL-Context annotation file {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or "images" not in data or "annos_segmentation" not in data:
        raise EscnetError(f"PASCAL-Context annotation file {path} is malformed: no 'images'/'annos_segmentation'")
    for what, records, fields in (
        ("image", data["images"], IMAGE_FIELDS),
        ("annotation", data["annos_segmentation"], ANNOTATION_FIELDS),
    ):
        for record in records:
            if not isinstance(record, dict) or any(k not in record for k in fields):
                raise EscnetError(
                    f"PASCAL-Context annotation file {path} is malformed: an {what} lacks one of {fields}"
                )
    val_images = [img for img in data["images"] if img["phase"] == "val"]
    if not val_images:
        raise EscnetError(f"PASCAL-Context annotation file {path} lists no images with phase 'val'")
    val_ids = {img["image_id"] for img in val_images}
    by_image = defaultdict(list)
    for ann in data["annos_segmentation"]:
        if ann["image_id"] in val_ids:
            by_image[ann["image_id"]].append(ann)
    return val_images, by_image


def paint_full_labels(image, annotations, source):
    """``height x width`` int64 map of full PASCAL-Context ids: each RLE mask painted in order, rest 0."""
    height, width = int(image["height"]), int(image["width"])
    labels = np.zeros((height, width), dtype=np.int64)
    for ann in annotations:
        try:
            mask = mask_utils.decode(ann["segmentation"])
        except (TypeError, ValueError, KeyError) as err:
            raise EscnetError(
                f"PASCAL-Context annotation file {source}: bad RLE mask for image {image['file_name']}: {err}"
            ) from None
        if mask.shape != (height, width):
            raise EscnetError(
                f"PASCAL-Context annotation file {source}: a mask of image {image['file_name']} is "
                f"{mask.shape[1]}x{mask.shape[0]}, the image {width}x{height}"
            )
        labels[mask.astype(bool)] = int(ann["category_id"])
    return labels


def convert_detail_image(job, lut):
    """Worker: paint one image's annotations, map them to 0..58 / 255, write the PNG."""
    labels = paint_full_labels(job.image, job.annotations, job.source)
    write_label_map(job.outputs[0], remap(labels, lut, f"{job.source} ({job.image['file_name']})"))


def prepare_detail_labels(root, out_name, make_lookup_table, title, workers=None):
    """Paint the Detail val annotations, remap them with ``make_lookup_table(max_id)``, write PNGs.

    Output: ``annotations_detectron2/<out_name>`` under ``root/VOCdevkit/VOC2010`` (shared by
    PC-59 and PC-60, which differ only in their lookup tables).
    """
    base = os.path.join(root, "VOCdevkit", "VOC2010")
    json_path = os.path.join(base, "trainval_merged.json")
    val_images, by_image = load_detail_annotations(json_path)
    out_dir = os.path.join(base, "annotations_detectron2", out_name)
    jobs = [
        DetailImageJob(
            image=img,
            annotations=tuple(by_image.get(img["image_id"], ())),
            outputs=(os.path.join(out_dir, os.path.splitext(img["file_name"])[0] + ".png"),),
            source=json_path,
        )
        for img in val_images
    ]
    max_id = max((int(a["category_id"]) for anns in by_image.values() for a in anns), default=0)
    worker = functools.partial(convert_detail_image, lut=make_lookup_table(max_id))
    written, skipped = run_jobs(jobs, worker, title, workers)
    return PrepareSummary(written, skipped, (out_dir,))


def prepare_pascal_context_59(root, workers=None):
    """Write ``annotations_detectron2/pc59_val`` under ``root/VOCdevkit/VOC2010``."""
    return prepare_detail_labels(root, "pc59_val", pascal_context_59_lookup_table, "PASCAL-Context-59 val", workers)


main = prepare_cli(prepare_pascal_context_59, "Prepare PASCAL-Context-59 validation labels (0..58, ignore 255).")
