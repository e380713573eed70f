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
    # SSD-style photometric jitter (brightness, contrast, saturation) in training.
    cfg.INPUT.COLOR_AUG_SSD = False
    # Training crops whose largest category covers more than this share are re-drawn (1.0: off).
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0


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
    # Images per batch at inference (per process).
    cfg.TEST.IMS_PER_BATCH = 1


def _add_escnet_model_config(cfg):
    cfg.MODEL.ESCNET = CN()
    # Vocabulary overrides: JSON lists of class names; empty: the dataset's metadata.stuff_classes.
    cfg.MODEL.ESCNET.TRAIN_CLASS_JSON = ""
    cfg.MODEL.ESCNET.TEST_CLASS_JSON = ""

    # --- CLIP (clip_encoder.py)
    # open_clip model name (ViT-B-16, ViT-L-14-336, ...) or a JSON model-config path such as
    # configs/clip/tiny-vit.json (relative paths: working directory, then the repo root).
    cfg.MODEL.ESCNET.CLIP_MODEL = "ViT-B-16"
    # open_clip pretrained tag ("openai": QuickGELU is used), a checkpoint file path, or "" (random).
    cfg.MODEL.ESCNET.CLIP_PRETRAINED = "openai"
    # Side of the square CLIP input; the positional embedding is resized to it (B/16: 384, L/14: 336).
    cfg.MODEL.ESCNET.CLIP_INPUT_SIZE = 384
    # Prompt templates ("{}" = class name); text features are averaged over templates and synonyms.
    cfg.MODEL.ESCNET.CLIP_TEMPLATES = ["A photo of a {} in the scene."]
    # 0-based vision blocks whose outputs feed the decoder's skips; []: first and second third of
    # the ViT (CAT-Seg: [3, 7] for ViT-B/16, [7, 15] for ViT-L/14).
    cfg.MODEL.ESCNET.CLIP_INTERMEDIATE_LAYERS = []
    # Trainable CLIP parameters: "attention" (attention layers of both towers), "none", "full".
    cfg.MODEL.ESCNET.CLIP_FINETUNE = "attention"
    # Never download CLIP weights (also on with HF_HUB_OFFLINE=1): a missing weight is an error.
    cfg.MODEL.ESCNET.CLIP_OFFLINE = False
    # Weight cache folder ("": Hugging Face hub cache / ~/.cache/clip).
    cfg.MODEL.ESCNET.CLIP_CACHE_DIR = ""
    # Prompts per text-encoder call (bounds memory for large vocabularies x many templates).
    cfg.MODEL.ESCNET.CLIP_TEXT_CHUNK_SIZE = 1024
