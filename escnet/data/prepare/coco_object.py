"""COCO-Object (80 thing classes plus background) val2017 labels from the COCO-Stuff stuffthingmaps.

Raw:      ``coco-stuff/annotations/val2017/*.png``: the same stuffthingmaps as COCO-Stuff-171
          (ids 0..181 with gaps: 0..89 the 80 things, 91..181 the 91 stuff classes, 255 unlabeled)
Prepared: ``coco-stuff/annotations_detectron2_object/val2017/*.png`` (uint8): background 0, the 80
          things -> 1..80 (their COCO-Stuff trainId + 1, in ``coco_object.json`` order); the stuff
          classes and unlabeled pixels (255) -> background 0; ids outside the 171 classes -> 255.

The field's COCO-Object (GroupViT's ``convert_coco_object.py``, used by SCLIP, ClearCLIP and the
MMSegmentation-based training-free methods that CLIPer compares with) is built the same way from
these maps. COCO-Stuff's thing pixels are COCO's instance masks, so up to overlapping instances
this is the instance annotations painted over a background: what CLIPer's own loader reads
(``coco_seg_anno`` PNGs of COCO 2014 images, 0 background, 1..80; its 5k image list is not
published; val2017's 5,000 images all belong to val2014 and keep their 12-digit ids).
"""
import functools
import os

import numpy as np

from .common import LabelJob, PrepareSummary, list_files, load_table, lookup_table, prepare_cli
from .common import remap_label_file, run_jobs

COCO_OBJECT_SPLIT = "val2017"
IGNORE_LABEL = 255
BACKGROUND = 0
UNLABELED = 255  # value of unannotated pixels in the stuffthingmaps


def coco_object_lookup_table():
    """``lut[stuffthingmap id]``: thing -> trainId + 1 (1..80); stuff and 255 -> 0; other ids -> 255."""
    table = load_table("coco_stuff_171_categories.json")
    mapping = {c["id"]: c["trainId"] + 1 if c.get("isthing") == 1 else BACKGROUND for c in table}
    mapping[UNLABELED] = BACKGROUND
    return lookup_table(mapping, 256, IGNORE_LABEL, np.uint8)


def prepare_coco_object(root, workers=None):
    """Write ``annotations_detectron2_object/val2017`` under ``root/coco-stuff``."""
    base = os.path.join(root, "coco-stuff")
    raw_dir = os.path.join(base, "annotations", COCO_OBJECT_SPLIT)
    out_dir = os.path.join(base, "annotations_detectron2_object", COCO_OBJECT_SPLIT)
    names = list_files(raw_dir, ".png", f"COCO-Stuff {COCO_OBJECT_SPLIT} stuffthingmaps")
    jobs = [LabelJob(os.path.join(raw_dir, n), (os.path.join(out_dir, n),)) for n in names]
    worker = functools.partial(remap_label_file, luts=(coco_object_lookup_table(),))
    written, skipped = run_jobs(jobs, worker, f"COCO-Object {COCO_OBJECT_SPLIT}", workers)
    return PrepareSummary(written, skipped, (out_dir,))


main = prepare_cli(
    prepare_coco_object, "Prepare COCO-Object val2017 labels (background 0, things 1..80) from COCO-Stuff."
)
