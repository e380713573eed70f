"""Register PASCAL VOC 2012 val: PAS-20 (``voc_2012_test_sem_seg``) and PAS-20b (``voc_2012_test_background_sem_seg``).

Layout (under the datasets root): images ``VOCdevkit/VOC2012/JPEGImages/*.jpg``; prepared labels
``VOCdevkit/VOC2012/annotations_detectron2/val/*.png`` (0..19, background and boundary -> 255) and
``VOCdevkit/VOC2012/annotations_detectron2_bg/val/*.png`` (0..19, background -> 20).

PAS-20b's vocabulary is the 20 VOC classes followed by 39 PASCAL-Context names standing for
background; its ``sem_seg_background`` evaluator counts predictions of entries >= 20
(``background_class_index``) as background.
"""
import os

from ...vocabulary import builtin_vocabulary
from .common import datasets_root, register_sem_seg_dataset

PREPARE_HINT = "run: python datasets/prepare_voc.py"
NUM_VOC_CLASSES = 20


def register_all_voc(root):
    """Register PAS-20 and PAS-20b under ``root/VOCdevkit/VOC2012``."""
    base = os.path.join(root, "VOCdevkit", "VOC2012")
    image_dir = os.path.join(base, "JPEGImages")
    register_sem_seg_dataset(
        "voc_2012_test_sem_seg",
        image_dir=image_dir,
        gt_dir=os.path.join(base, "annotations_detectron2", "val"),
        stuff_classes=builtin_vocabulary("voc20"),
        ignore_label=255,
        evaluator_type="sem_seg",
        prepare_hint=PREPARE_HINT,
        benchmark_name="PAS-20",
    )
    register_sem_seg_dataset(
        "voc_2012_test_background_sem_seg",
        image_dir=image_dir,
        gt_dir=os.path.join(base, "annotations_detectron2_bg", "val"),
        stuff_classes=builtin_vocabulary("voc20b"),
        ignore_label=255,
        evaluator_type="sem_seg_background",
        prepare_hint=PREPARE_HINT,
        benchmark_name="PAS-20b",
        background_class_index=NUM_VOC_CLASSES,
    )


register_all_voc(datasets_root())
