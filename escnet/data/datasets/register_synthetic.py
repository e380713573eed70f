"""Register the built-in synthetic dataset (``synthetic_shapes_{train,val}``), generated on first use.

Generation happens once, under a file lock, even when several processes load it at once.
"""
import functools
import os

from ..synthetic import IGNORE_LABEL, SPLITS, SYNTHETIC_CLASSES, ensure_dataset, split_dirs
from .common import datasets_root, register_sem_seg_dataset

SYNTHETIC_FOLDER = "synthetic_shapes"


def register_synthetic(root):
    """Register ``synthetic_shapes_train`` and ``synthetic_shapes_val`` under ``root/synthetic_shapes``."""
    folder = os.path.join(root, SYNTHETIC_FOLDER)
    for split in SPLITS:
        image_dir, label_dir = split_dirs(folder, split)
        register_sem_seg_dataset(
            f"synthetic_shapes_{split}",
            image_dir=image_dir,
            gt_dir=label_dir,
            stuff_classes=SYNTHETIC_CLASSES,
            ignore_label=IGNORE_LABEL,
            evaluator_type="sem_seg",
            image_ext=".png",
            gt_ext=".png",
            prepare_hint="it is generated on first use",
            before_load=functools.partial(ensure_dataset, folder),
            benchmark_name=f"Synthetic-{split}",
        )


register_synthetic(datasets_root())
