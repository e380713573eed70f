"""Register the benchmarks whose class 0 is background: VOC-21, PC-60 and COCO-Object.

These are the "with background" protocol of training-free methods (CLIPer, SCLIP, ClearCLIP):
the ground truth labels background 0 and the objects 1..N, and the vocabulary's entry 0 is
"background" (``background_class_index`` = 0 in the metadata; how a model predicts it, e.g. by
thresholds or proxy names, is the model's choice). Each is scored over all its classes,
background included, by the plain ``sem_seg`` evaluator.

Layout (under the datasets root):
- ``voc_2012_test_21_sem_seg`` (VOC-21, 1,449 images): ``VOCdevkit/VOC2012/JPEGImages/*.jpg`` and
  ``VOCdevkit/VOC2012/annotations_detectron2_21/val/*.png`` (0..20, boundary 255), written by
  ``datasets/prepare_voc.py``;
- ``context_60_test_sem_seg`` (PC-60, 5,105 images): ``VOCdevkit/VOC2010/JPEGImages/*.jpg`` and
  ``VOCdevkit/VOC2010/annotations_detectron2/pc60_val/*.png`` (0..59), written by
  ``datasets/prepare_pascal_context_60.py``;
- ``coco_2017_test_object_sem_seg`` (COCO-Object, 5,000 images): ``coco-stuff/images/val2017/*.jpg``
  and ``coco-stuff/annotations_detectron2_object/val2017/*.png`` (0..80), written by
  ``datasets/prepare_coco_object.py``.
"""
import os

from ...vocabulary import builtin_vocabulary
from .common import datasets_root, register_sem_seg_dataset

BACKGROUND_CLASS_INDEX = 0
IGNORE_LABEL = 255

BACKGROUND_SETS = (
    # name, vocabulary, image folder, label folder (relative to the root), display name, prepare script
    ("voc_2012_test_21_sem_seg", "voc21", "VOCdevkit/VOC2012/JPEGImages",
     "VOCdevkit/VOC2012/annotations_detectron2_21/val", "VOC-21", "prepare_voc.py"),
    ("context_60_test_sem_seg", "pc60", "VOCdevkit/VOC2010/JPEGImages",
     "VOCdevkit/VOC2010/annotations_detectron2/pc60_val", "PC-60", "prepare_pascal_context_60.py"),
    ("coco_2017_test_object_sem_seg", "coco_object", "coco-stuff/images/val2017",
     "coco-stuff/annotations_detectron2_object/val2017", "COCO-Obj", "prepare_coco_object.py"),
)


def register_all_background(root):
    """Register VOC-21, PC-60 and COCO-Object under ``root``."""
    for name, vocabulary, image_dir, label_dir, display_name, script in BACKGROUND_SETS:
        register_sem_seg_dataset(
            name,
            image_dir=os.path.join(root, *image_dir.split("/")),
            gt_dir=os.path.join(root, *label_dir.split("/")),
            stuff_classes=builtin_vocabulary(vocabulary),
            ignore_label=IGNORE_LABEL,
            evaluator_type="sem_seg",
            image_ext=".jpg",
            gt_ext=".png",
            prepare_hint=f"run: python datasets/{script}",
            benchmark_name=display_name,
            background_class_index=BACKGROUND_CLASS_INDEX,
        )


register_all_background(datasets_root())
