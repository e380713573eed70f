"""escnet's additions to Detectron2's config: ``add_escnet_config(cfg)``.

Every key here is read somewhere; defaults are the ESC-Net paper's values (CVPR 2025) where
the paper gives one. See docs/design.md for the choices the paper leaves open.
"""
from detectron2.config import CfgNode as CN


def add_escnet_config(cfg):
    """Add escnet's keys (data, solver, test protocol and the ESC-Net model) to ``cfg``."""
    _add_data_config(cfg)
    _add_solver_config(cfg)
    _add_test_config(cfg)
    _add_escnet_model_config(cfg)


def _add_data_config(cfg):
    # "sem_seg": escnet.data.SemanticSegmentationMapper (resize, crop, flip, colour jitter).
    cfg.INPUT.DATASET_MAPPER_NAME = "sem_seg"
    cfg.INPUT.COLOR_AUG_SSD = False
    # Training crops whose largest category covers more than this share are re-drawn (1.0: off).
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    # Pad images to a multiple of this in a batch (-1: no padding).
    cfg.INPUT.SIZE_DIVISIBILITY = -1


def _add_solver_config(cfg):
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    # LR multipliers relative to SOLVER.BASE_LR for the model's parameter groups
    # (ESC-Net: CLIP attention and SAM blocks at 2e-6 with base 2e-4).
    cfg.SOLVER.CLIP_MULTIPLIER = 0.01
    cfg.SOLVER.SAM_MULTIPLIER = 0.01


def _add_test_config(cfg):
    # Sliding-window inference: windows of the model's input size with overlap, plus a global view.
    cfg.TEST.SLIDING_WINDOW = False
    cfg.TEST.SLIDING_OVERLAP = 0.333


def _add_escnet_model_config(cfg):
    cfg.MODEL.ESCNET = CN()
    # Vocabulary overrides: JSON lists of class names; empty: the dataset's metadata.stuff_classes.
    cfg.MODEL.ESCNET.TRAIN_CLASS_JSON = ""
    cfg.MODEL.ESCNET.TEST_CLASS_JSON = ""
