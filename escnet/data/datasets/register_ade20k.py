"""Register ADE20K: A-150 (``ade20k_150_test_sem_seg``) and A-847 (``ade20k_full_sem_seg_freq_val_all``).

Layout (under the datasets root):
- A-150: ``ADEChallengeData2016/images/validation/*.jpg`` and prepared
  ``ADEChallengeData2016/annotations_detectron2/validation/*.png`` (0..149, ignore 255);
- A-847: prepared ``ADE20K_2021_17_01/images_detectron2/validation/*.jpg`` and
  ``ADE20K_2021_17_01/annotations_detectron2/validation/*.tif`` (uint16 0..846, ignore 65535).
"""
import os

from ...vocabulary import builtin_vocabulary
from .common import datasets_root, register_sem_seg_dataset


def register_ade20k_150(root):
    """Register ``ade20k_150_test_sem_seg`` under ``root/ADEChallengeData2016``."""
    base = os.path.join(root, "ADEChallengeData2016")
    register_sem_seg_dataset(
        "ade20k_150_test_sem_seg",
        image_dir=os.path.join(base, "images", "validation"),
        gt_dir=os.path.join(base, "annotations_detectron2", "validation"),
        stuff_classes=builtin_vocabulary("ade150"),
        ignore_label=255,
        evaluator_type="sem_seg",
        image_ext=".jpg",
        gt_ext=".png",
        prepare_hint="run: python datasets/prepare_ade20k_150.py",
        benchmark_name="A-150",
    )


def register_ade20k_full(root):
    """Register ``ade20k_full_sem_seg_freq_val_all`` under ``root/ADE20K_2021_17_01``."""
    base = os.path.join(root, "ADE20K_2021_17_01")
    register_sem_seg_dataset(
        "ade20k_full_sem_seg_freq_val_all",
        image_dir=os.path.join(base, "images_detectron2", "validation"),
        gt_dir=os.path.join(base, "annotations_detectron2", "validation"),
        stuff_classes=builtin_vocabulary("ade847"),
        ignore_label=65535,
        evaluator_type="sem_seg",
        image_ext=".jpg",
        gt_ext=".tif",
        prepare_hint="run: python datasets/prepare_ade20k_full.py",
        benchmark_name="A-847",
    )


def register_all_ade20k(root):
    """Register A-150 and A-847 under ``root``."""
    register_ade20k_150(root)
    register_ade20k_full(root)


register_all_ade20k(datasets_root())
