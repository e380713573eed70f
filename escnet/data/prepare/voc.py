"""PASCAL VOC 2012 (SegmentationClassAug) -> VOC-20, VOC-20b and VOC-21 validation labels.

Raw:      ``VOCdevkit/VOC2012/SegmentationClassAug/*.png`` (0 background, 1..20 classes, 255
          boundary) and the id list ``VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt``
Prepared: ``VOCdevkit/VOC2012/annotations_detectron2/val/*.png``: classes 0..19, background and
          boundary -> 255 (VOC-20); ``annotations_detectron2_bg/val/*.png``: classes 0..19,
          background -> 20, boundary -> 255 (VOC-20b); ``annotations_detectron2_21/val/*.png``:
          background 0, classes 1..20, boundary 255, i.e. the raw encoding (VOC-21, the
          protocol of training-free methods such as CLIPer); any other raw value -> 255.
"""
import functools
import os

import numpy as np

from ...utils.errors import EscnetError
from .common import LabelJob, PrepareSummary, lookup_table, prepare_cli
from .common import read_id_list, remap_label_file, require_dir, run_jobs

NUM_CLASSES = 20
IGNORE_LABEL = 255
BACKGROUND = 0


def voc_lookup_tables():
    """``(lut_voc20, lut_voc20b, lut_voc21)``: class c (1..20) -> c - 1; background -> 255 resp. 20;
    VOC-21 keeps background 0 and classes 1..20 as they are."""
    classes = {c: c - 1 for c in range(1, NUM_CLASSES + 1)}
    voc20 = lookup_table(classes, 256, IGNORE_LABEL, np.uint8)
    voc20b = lookup_table({**classes, BACKGROUND: NUM_CLASSES}, 256, IGNORE_LABEL, np.uint8)
    voc21 = lookup_table({c: c for c in range(BACKGROUND, NUM_CLASSES + 1)}, 256, IGNORE_LABEL, np.uint8)
    return voc20, voc20b, voc21


def prepare_voc(root, workers=None):
    """Write the VOC-20, VOC-20b and VOC-21 validation labels under ``root/VOCdevkit/VOC2012``."""
    base = os.path.join(root, "VOCdevkit", "VOC2012")
    raw_dir = require_dir(os.path.join(base, "SegmentationClassAug"), "VOC SegmentationClassAug")
    ids = read_id_list(os.path.join(base, "ImageSets", "Segmentation", "val.txt"), "VOC image-id list")
    missing = [i for i in ids if not os.path.isfile(os.path.join(raw_dir, i + ".png"))]
    if missing:
        raise EscnetError(
            f"{len(missing)} of {len(ids)} VOC val label maps are missing in {raw_dir}, e.g. {missing[0]}.png"
        )
    out_dirs = (
        os.path.join(base, "annotations_detectron2", "val"),
        os.path.join(base, "annotations_detectron2_bg", "val"),
        os.path.join(base, "annotations_detectron2_21", "val"),
    )
    jobs = [
        LabelJob(os.path.join(raw_dir, i + ".png"), tuple(os.path.join(d, i + ".png") for d in out_dirs))
        for i in ids
    ]
    worker = functools.partial(remap_label_file, luts=voc_lookup_tables())
    written, skipped = run_jobs(jobs, worker, "PASCAL VOC val", workers)
    return PrepareSummary(written, skipped, out_dirs)


main = prepare_cli(prepare_voc, "Prepare PASCAL VOC-20 / VOC-20b / VOC-21 validation labels.")
