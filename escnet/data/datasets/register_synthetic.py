"""Register the built-in synthetic dataset (``synthetic_shapes_{train,val}``), generated on first use."""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..synthetic import IGNORE_LABEL, SPLITS, SYNTHETIC_CLASSES, generate_split, split_dirs
from .common import datasets_root, list_sem_seg_pairs

SYNTHETIC_FOLDER = "synthetic_shapes"


def _load_split(root, split, name):
    generate_split(root, split)
    image_dir, label_dir = split_dirs(root, split)
    return list_sem_seg_pairs(image_dir, label_dir, ".png", ".png", name, "it is generated on first use")


def register_synthetic(root):
    """Register ``synthetic_shapes_train`` and ``synthetic_shapes_val`` under ``root/synthetic_shapes``."""
    folder = os.path.join(root, SYNTHETIC_FOLDER)
    for split in SPLITS:
        name = f"synthetic_shapes_{split}"
        image_dir, label_dir = split_dirs(folder, split)
        DatasetCatalog.register(name, lambda split=split, name=name: _load_split(folder, split, name))
        MetadataCatalog.get(name).set(
            image_root=image_dir,
            sem_seg_root=label_dir,
            stuff_classes=list(SYNTHETIC_CLASSES),
            ignore_label=IGNORE_LABEL,
            evaluator_type="sem_seg",
            benchmark_name=f"Synthetic-{split}",
            prepare_hint="it is generated on first use",
        )


register_synthetic(datasets_root())
