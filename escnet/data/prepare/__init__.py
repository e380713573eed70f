"""Preparation of the open-vocabulary benchmarks: raw downloads -> Detectron2-style label folders.

One module per benchmark family; ``datasets/prepare_*.py`` are thin command-line wrappers
around their ``main``. The prepared layouts are those of CAT-Seg / SED / SAN, so prepared
data is interchangeable with theirs (see ``datasets/README.md``).
"""
from .ade20k_150 import prepare_ade20k_150
from .ade20k_full import prepare_ade20k_full
from .coco_object import prepare_coco_object
from .coco_stuff import prepare_coco_stuff
from .common import PrepareSummary
from .pascal_context_59 import prepare_pascal_context_59
from .pascal_context_459 import prepare_pascal_context_459
from .pascal_context_60 import prepare_pascal_context_60
from .voc import prepare_voc

__all__ = [
    "PrepareSummary",
    "prepare_ade20k_150",
    "prepare_ade20k_full",
    "prepare_coco_object",
    "prepare_coco_stuff",
    "prepare_pascal_context_59",
    "prepare_pascal_context_459",
    "prepare_pascal_context_60",
    "prepare_voc",
]
