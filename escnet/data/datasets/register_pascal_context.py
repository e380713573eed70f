"""Register PASCAL-Context: PC-59 (``context_59_test_sem_seg``) and PC-459 (``context_459_test_sem_seg``).

Layout (under the datasets root): images ``VOCdevkit/VOC2010/JPEGImages/*.jpg``; prepared labels
``VOCdevkit/VOC2010/annotations_detectron2/pc59_val/*.png`` (0..58, ignore 255) and
``VOCdevkit/VOC2010/annotations_detectron2/pc459_val/*.tif`` (uint16 0..458, ignore 65535).
"""
import os

from ...vocabulary import builtin_vocabulary
from .common import datasets_root, register_sem_seg_dataset

PASCAL_CONTEXT_SETS = (
    # name, vocabulary, label folder, label extension, ignore label, display name, prepare script
    ("context_59_test_sem_seg", "pc59", "pc59_val", ".png", 255, "PC-59", "prepare_pascal_context_59.py"),
    ("context_459_test_sem_seg", "pc459", "pc459_val", ".tif", 65535, "PC-459", "prepare_pascal_context_459.py"),
)


def register_all_pascal_context(root):
    """Register PC-59 and PC-459 under ``root/VOCdevkit/VOC2010``."""
    base = os.path.join(root, "VOCdevkit", "VOC2010")
    for name, vocabulary, label_dir, gt_ext, ignore_label, display_name, script in PASCAL_CONTEXT_SETS:
        register_sem_seg_dataset(
            name,
            image_dir=os.path.join(base, "JPEGImages"),
            gt_dir=os.path.join(base, "annotations_detectron2", label_dir),
            stuff_classes=builtin_vocabulary(vocabulary),
            ignore_label=ignore_label,
            evaluator_type="sem_seg",
            image_ext=".jpg",
            gt_ext=gt_ext,
            prepare_hint=f"run: python datasets/{script}",
            benchmark_name=display_name,
        )


register_all_pascal_context(datasets_root())
