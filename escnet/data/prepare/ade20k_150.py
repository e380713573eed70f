"""ADE20K-150 (SceneParsing): labels 0 (other) and 1..150 -> 0..149, with 0 -> ignore 255.

Raw:      ``ADEChallengeData2016/annotations/validation/*.png``
Prepared: ``ADEChallengeData2016/annotations_detectron2/validation/*.png`` (uint8, ignore 255)
"""
import functools
import os

import numpy as np

from .common import LabelJob, PrepareSummary, list_files, lookup_table, prepare_cli
from .common import remap_label_file, run_jobs

ADE20K_150_SPLITS = ("training", "validation")
NUM_CLASSES = 150
IGNORE_LABEL = 255


def ade20k_150_lookup_table():
    """``lut[label] = label - 1`` for 1..150; 0 ("other") and anything else -> 255."""
    return lookup_table({i: i - 1 for i in range(1, NUM_CLASSES + 1)}, 256, IGNORE_LABEL, np.uint8)


def prepare_ade20k_150(root, splits=("validation",), workers=None):
    """Write ``annotations_detectron2/<split>`` under ``root/ADEChallengeData2016``."""
    base = os.path.join(root, "ADEChallengeData2016")
    worker = functools.partial(remap_label_file, luts=(ade20k_150_lookup_table(),))
    written = skipped = 0
    outputs = []
    for split in splits:
        raw_dir = os.path.join(base, "annotations", split)
        out_dir = os.path.join(base, "annotations_detectron2", split)
        names = list_files(raw_dir, ".png", f"ADE20K-150 {split} annotations")
        jobs = [LabelJob(os.path.join(raw_dir, n), (os.path.join(out_dir, n),)) for n in names]
        done, kept = run_jobs(jobs, worker, f"ADE20K-150 {split}", workers)
        written, skipped = written + done, skipped + kept
        outputs.append(out_dir)
    return PrepareSummary(written, skipped, tuple(outputs))


def _add_arguments(parser):
    parser.add_argument(
        "--splits", nargs="+", default=["validation"], choices=ADE20K_150_SPLITS,
        help="splits to prepare (default: validation, the benchmark split)",
    )


main = prepare_cli(prepare_ade20k_150, "Prepare ADE20K-150 labels (0..149, ignore 255).", _add_arguments)
