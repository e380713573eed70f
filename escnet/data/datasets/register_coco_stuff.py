"""Register COCO-Stuff-171: ``coco_2017_train_stuff_all_sem_seg`` and ``coco_2017_test_stuff_all_sem_seg``.

Layout (under the datasets root): ``coco-stuff/images/{train2017,val2017}/*.jpg`` and the
prepared labels ``coco-stuff/annotations_detectron2/{train2017,val2017}/*.png`` (trainId 0..170,
ignore 255), written by ``datasets/prepare_coco_stuff.py``.
"""
import os

from ...vocabulary import builtin_vocabulary
from .common import datasets_root, register_sem_seg_dataset

COCO_STUFF_SPLITS = {
    "coco_2017_train_stuff_all_sem_seg": "train2017",
    "coco_2017_test_stuff_all_sem_seg": "val2017",
}
PREPARE_HINT = "run: python datasets/prepare_coco_stuff.py"


def register_all_coco_stuff(root):
    """Register both COCO-Stuff-171 splits with their images and labels under ``root/coco-stuff``."""
    base = os.path.join(root, "coco-stuff")
    vocabulary = builtin_vocabulary("coco")
    for name, split in COCO_STUFF_SPLITS.items():
        register_sem_seg_dataset(
            name,
            image_dir=os.path.join(base, "images", split),
            gt_dir=os.path.join(base, "annotations_detectron2", split),
            stuff_classes=vocabulary,
            ignore_label=255,
            evaluator_type="sem_seg",
            image_ext=".jpg",
            gt_ext=".png",
            prepare_hint=PREPARE_HINT,
            benchmark_name="COCO-171",
        )


register_all_coco_stuff(datasets_root())
