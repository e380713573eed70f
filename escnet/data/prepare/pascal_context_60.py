"""PASCAL-Context-60 (the 59 classes plus background) validation labels from the Detail annotation file.

Raw:      ``VOCdevkit/VOC2010/trainval_merged.json``, the same PASCAL in Detail file as PC-59
          (read and painted exactly as ``pascal_context_59`` does: later annotations win).
Prepared: ``VOCdevkit/VOC2010/annotations_detectron2/pc60_val/<image stem>.png``: background 0,
          the 59 kept ids (``tables/pascal_context_59_label_ids.json``, sorted) -> 1..59, i.e.
          the PC-59 label + 1. Unpainted pixels (id 0) and every id outside the 59 are background,
          so no pixel is ignored; this is MMSegmentation's ``SegmentationClassContext`` encoding,
          which CLIPer (and SCLIP, ClearCLIP) evaluate as "Context" (60 classes).
"""
import numpy as np

from .common import load_table, lookup_table, prepare_cli
from .pascal_context_59 import prepare_detail_labels

BACKGROUND = 0


def pascal_context_60_lookup_table(max_id):
    """``lut[full label id] = 1..59`` for the 59 kept ids (sorted); 0 and all other ids -> background 0."""
    kept = sorted(i for i in load_table("pascal_context_59_label_ids.json")["ids"] if i != BACKGROUND)
    size = max(max_id, kept[-1]) + 1
    return lookup_table({label_id: k + 1 for k, label_id in enumerate(kept)}, size, BACKGROUND, np.uint8)


def prepare_pascal_context_60(root, workers=None):
    """Write ``annotations_detectron2/pc60_val`` under ``root/VOCdevkit/VOC2010``."""
    return prepare_detail_labels(root, "pc60_val", pascal_context_60_lookup_table, "PASCAL-Context-60 val", workers)


main = prepare_cli(
    prepare_pascal_context_60, "Prepare PASCAL-Context-60 validation labels (background 0, classes 1..59)."
)
