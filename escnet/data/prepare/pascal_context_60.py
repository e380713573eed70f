"""PASCAL-Context-60 (the 59 classes plus background) validation labels from the Detail annotation file.

Raw:      ``VOCdevkit/VOC2010/trainval_merged.json``, the same PASCAL in Detail file as PC-59
          (read and painted exactly as ``pascal_context_59`` does: later annotations win).
Prepared: ``VOCdevkit/VOC2010/annotations_detectron2/pc60_val/<image stem>.png``: background 0,
          the 59 kept ids (``tables/pascal_context_59_label_ids.json``, sorted) -> 1..59, i.e.
          the PC-59 label + 1. Unpainted pixels (id 0) and every id outside the 59 are background,
          so no pixel is ignored; this is MMSegmentation's ``SegmentationClassContext`` encoding,
          which CLIPer (and SCLIP, ClearCLIP) evaluate as "Context" (60 classes).
"""
import functools
import os

import numpy as np

from .common import PrepareSummary, load_table, lookup_table, prepare_cli, run_jobs
from .pascal_context_59 import DetailImageJob, convert_detail_image, load_detail_annotations

BACKGROUND = 0


def pascal_context_60_lookup_table(max_id):
    """``lut[full label id] = 1..59`` for the 59 kept ids (sorted); 0 and all other ids -> background 0."""
    kept = sorted(i for i in load_table("pascal_context_59_label_ids.json")["ids"] if i != BACKGROUND)
    size = max(max_id, kept[-1]) + 1
    return lookup_table({label_id: k + 1 for k, label_id in enumerate(kept)}, size, BACKGROUND, np.uint8)


def prepare_pascal_context_60(root, workers=None):
    """Write ``annotations_detectron2/pc60_val`` under ``root/VOCdevkit/VOC2010``."""
    base = os.path.join(root, "VOCdevkit", "VOC2010")
    json_path = os.path.join(base, "trainval_merged.json")
    val_images, by_image = load_detail_annotations(json_path)
    out_dir = os.path.join(base, "annotations_detectron2", "pc60_val")
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
    worker = functools.partial(convert_detail_image, lut=pascal_context_60_lookup_table(max_id))
    written, skipped = run_jobs(jobs, worker, "PASCAL-Context-60 val", workers)
    return PrepareSummary(written, skipped, (out_dir,))


main = prepare_cli(
    prepare_pascal_context_60, "Prepare PASCAL-Context-60 validation labels (background 0, classes 1..59)."
)
