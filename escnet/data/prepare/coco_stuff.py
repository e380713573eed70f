"""COCO-Stuff-171: stuffthingmaps PNGs (ids 0..181 with gaps, 255 unlabeled) -> trainId 0..170.

Raw:      ``coco-stuff/annotations/{train2017,val2017}/*.png``
Prepared: ``coco-stuff/annotations_detectron2/{train2017,val2017}/*.png`` (uint8, ignore 255)
"""
import functools
import os

import numpy as np

from .common import LabelJob, PrepareSummary, list_files, load_table, lookup_table, prepare_cli
from .common import remap_label_file, run_jobs

COCO_STUFF_SPLITS = ("train2017", "val2017")
IGNORE_LABEL = 255


def coco_stuff_lookup_table():
    """``lut[stuffthingmap id] = trainId`` (0..170); ids outside the 171 classes -> 255."""
    table = load_table("coco_stuff_171_categories.json")
    return lookup_table({c["id"]: c["trainId"] for c in table}, 256, IGNORE_LABEL, np.uint8)


def prepare_coco_stuff(root, splits=COCO_STUFF_SPLITS, workers=None):
    """Write ``annotations_detectron2/<split>`` under ``root/coco-stuff`` for each split."""
    base = os.path.join(root, "coco-stuff")
    worker = functools.partial(remap_label_file, luts=(coco_stuff_lookup_table(),))
    written = skipped = 0
    outputs = []
    for split in splits:
        raw_dir = os.path.join(base, "annotations", split)
        out_dir = os.path.join(base, "annotations_detectron2", split)
        names = list_files(raw_dir, ".png", f"COCO-Stuff {split} stuffthingmaps")
        jobs = [LabelJob(os.path.join(raw_dir, n), (os.path.join(out_dir, n),)) for n in names]
        done, kept = run_jobs(jobs, worker, f"COCO-Stuff {split}", workers)
        written, skipped = written + done, skipped + kept
        outputs.append(out_dir)
    return PrepareSummary(written, skipped, tuple(outputs))


def _add_arguments(parser):
    parser.add_argument(
        "--splits", nargs="+", default=list(COCO_STUFF_SPLITS), choices=COCO_STUFF_SPLITS,
        help="splits to prepare (default: both; val2017 alone suffices for evaluation)",
    )


main = prepare_cli(prepare_coco_stuff, "Prepare COCO-Stuff-171 labels (trainId 0..170, ignore 255).", _add_arguments)
