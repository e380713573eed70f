"""COCO-Stuff-171: stuffthingmaps PNGs (ids 0..181 with gaps, 255 unlabeled) -> trainId 0..170.

Raw:      ``coco-stuff/annotations/{train2017,val2017}/*.png``
Prepared: ``coco-stuff/annotations_detectron2/{train2017,val2017}/*.png`` (uint8, ignore 255)
"""
import os

import numpy as np

from .common import load_table, lookup_table, prepare_cli, remap_png_splits

COCO_STUFF_SPLITS = ("train2017", "val2017")
IGNORE_LABEL = 255


def coco_stuff_lookup_table():
    """``lut[stuffthingmap id] = trainId`` (0..170); ids outside the 171 classes -> 255."""
    table = load_table("coco_stuff_171_categories.json")
    return lookup_table({c["id"]: c["trainId"] for c in table}, 256, IGNORE_LABEL, np.uint8)


def prepare_coco_stuff(root, splits=COCO_STUFF_SPLITS, workers=None):
    """Write ``annotations_detectron2/<split>`` under ``root/coco-stuff`` for each split."""
    base = os.path.join(root, "coco-stuff")
    return remap_png_splits(base, splits, coco_stuff_lookup_table(), "COCO-Stuff", "stuffthingmaps", workers)


def _add_arguments(parser):
    parser.add_argument(
        "--splits", nargs="+", default=list(COCO_STUFF_SPLITS), choices=COCO_STUFF_SPLITS,
        help="splits to prepare (default: both; val2017 alone suffices for evaluation)",
    )


main = prepare_cli(prepare_coco_stuff, "Prepare COCO-Stuff-171 labels (trainId 0..170, ignore 255).", _add_arguments)
