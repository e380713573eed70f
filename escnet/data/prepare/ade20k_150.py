"""ADE20K-150 (SceneParsing): labels 0 (other) and 1..150 -> 0..149, with 0 -> ignore 255.

Raw:      ``ADEChallengeData2016/annotations/validation/*.png``
Prepared: ``ADEChallengeData2016/annotations_detectron2/validation/*.png`` (uint8, ignore 255)
"""
import os

import numpy as np

from .common import lookup_table, prepare_cli, remap_png_splits

ADE20K_150_SPLITS = ("training", "validation")
NUM_CLASSES = 150
IGNORE_LABEL = 255


def ade20k_150_lookup_table():
    """``lut[label] = label - 1`` for 1..150; 0 ("other") and anything else -> 255."""
    return lookup_table({i: i - 1 for i in range(1, NUM_CLASSES + 1)}, 256, IGNORE_LABEL, np.uint8)


def prepare_ade20k_150(root, splits=("validation",), workers=None):
    """Write ``annotations_detectron2/<split>`` under ``root/ADEChallengeData2016``."""
    base = os.path.join(root, "ADEChallengeData2016")
    return remap_png_splits(base, splits, ade20k_150_lookup_table(), "ADE20K-150", "annotations", workers)


def _add_arguments(parser):
    parser.add_argument(
        "--splits", nargs="+", default=["validation"], choices=ADE20K_150_SPLITS,
        help="splits to prepare (default: validation, the benchmark split)",
    )


main = prepare_cli(prepare_ade20k_150, "Prepare ADE20K-150 labels (0..149, ignore 255).", _add_arguments)
