"""PASCAL-Context-459 validation labels from the per-image ``.mat`` files.

Raw:      ``VOCdevkit/VOC2010/trainval/<id>.mat`` holding ``LabelMap`` (full label ids 1..459,
          0 = unlabeled); the validation ids are read from ``VOCdevkit/VOC2010/pascalcontext_val.txt``
          when present (CAT-Seg's layout), else from ``tables/pascal_context_val_ids.txt`` (5,104).
Prepared: ``VOCdevkit/VOC2010/annotations_detectron2/pc459_val/<id>.tif``: uint16
          ``LabelMap - 1`` (0..458); unlabeled (0) -> ignore 65535, the value a uint16
          ``LabelMap - 1`` wraps to in CAT-Seg's files, so theirs and ours agree.
"""
import functools
import os
from dataclasses import dataclass

import numpy as np
import scipy.io

from ...utils.errors import EscnetError
from ..label_io import write_label_map
from .common import PrepareSummary, load_id_list, lookup_table, prepare_cli, read_id_list, remap, require_dir, run_jobs

NUM_CLASSES = 459
IGNORE_LABEL = 65535
LABEL_KEY = "LabelMap"
LOCAL_VAL_LIST = "pascalcontext_val.txt"
VAL_ID_TABLE = "pascal_context_val_ids.txt"


@dataclass(frozen=True)
class MatJob:
    """Convert one ``.mat`` ``source`` into the TIFF ``outputs[0]``."""

    source: str
    outputs: tuple


def pascal_context_459_lookup_table():
    """``lut[LabelMap value] = value - 1`` for 1..459; 0 -> 65535."""
    return lookup_table({i: i - 1 for i in range(1, NUM_CLASSES + 1)}, NUM_CLASSES + 1, IGNORE_LABEL, np.uint16)


def read_label_mat(path):
    """``LabelMap`` of a PASCAL-Context ``.mat`` file as an ``H x W`` int64 array; raise if malformed."""
    try:
        content = scipy.io.loadmat(path)
    except FileNotFoundError:
        raise EscnetError(f"PASCAL-Context label file not found: {path}") from None
    except (ValueError, TypeError, OSError, NotImplementedError) as err:
        raise EscnetError(f"PASCAL-Context label file {path} cannot be read as a .mat file: {err}") from None
    if LABEL_KEY not in content:
        raise EscnetError(f"PASCAL-Context label file {path} has no '{LABEL_KEY}' variable")
    labels = np.asarray(content[LABEL_KEY])
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.number):
        raise EscnetError(f"PASCAL-Context label file {path}: '{LABEL_KEY}' is not a 2-D numeric array")
    return labels.astype(np.int64)


def convert_label_mat(job, lut):
    """Worker: ``LabelMap - 1`` (0 -> 65535) written as a uint16 TIFF."""
    write_label_map(job.outputs[0], remap(read_label_mat(job.source), lut, job.source))


def validation_ids(base):
    """Validation image ids: ``<base>/pascalcontext_val.txt`` if present, else the shipped table."""
    local_list = os.path.join(base, LOCAL_VAL_LIST)
    if not os.path.isfile(local_list):
        return load_id_list(VAL_ID_TABLE)
    return read_id_list(local_list, "PASCAL-Context validation id list")


def prepare_pascal_context_459(root, workers=None):
    """Write ``annotations_detectron2/pc459_val`` under ``root/VOCdevkit/VOC2010``."""
    base = os.path.join(root, "VOCdevkit", "VOC2010")
    mat_dir = require_dir(os.path.join(base, "trainval"), "PASCAL-Context .mat labels (trainval)")
    ids = validation_ids(base)
    missing = [i for i in ids if not os.path.isfile(os.path.join(mat_dir, i + ".mat"))]
    if missing:
        raise EscnetError(
            f"{len(missing)} of {len(ids)} PASCAL-Context validation label files are missing in "
            f"{mat_dir}, e.g. {missing[0]}.mat"
        )
    out_dir = os.path.join(base, "annotations_detectron2", "pc459_val")
    jobs = [MatJob(os.path.join(mat_dir, i + ".mat"), (os.path.join(out_dir, i + ".tif"),)) for i in ids]
    worker = functools.partial(convert_label_mat, lut=pascal_context_459_lookup_table())
    written, skipped = run_jobs(jobs, worker, "PASCAL-Context-459 val", workers)
    return PrepareSummary(written, skipped, (out_dir,))


main = prepare_cli(
    prepare_pascal_context_459, "Prepare PASCAL-Context-459 validation labels (uint16 TIFF, ignore 65535)."
)
