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
    _add_text_cache_config(cfg)
    _add_escnet_model_config(cfg)
    _add_launch_config(cfg)
    from .modeling.sed.config import add_sed_config  # SED's MODEL.SED.* (imported here: no import cycle)

    add_sed_config(cfg)
    from .modeling.cliper.config import add_cliper_config  # CLIPer's MODEL.CLIPER.* (no import cycle)

    add_cliper_config(cfg)


def _add_launch_config(cfg):
    # Multi-process runs (--num-gpus N > 1, escnet/engine/launch.py).
    cfg.LAUNCH = CN()
    # Seconds a collective (all-reduce, barrier, process-group setup) waits for the other ranks
    # before the run fails (Detectron2's default: 30 minutes).
    cfg.LAUNCH.COLLECTIVE_TIMEOUT = 1800
    # Seconds without a heartbeat (a rank frozen, stopped or not scheduled) before the launcher
    # ends the whole run; 0 disables the check. Ranks beat every HEARTBEAT_TIMEOUT / 10 seconds.
    cfg.LAUNCH.HEARTBEAT_TIMEOUT = 60


def _add_data_config(cfg):
    # SSD-style photometric jitter (brightness, contrast, saturation) in training.
    cfg.INPUT.COLOR_AUG_SSD = False
    # Training crops whose largest category covers more than this share are re-drawn (1.0: off).
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    # An image or label file that cannot be read: False ends the run with an error naming the
    # file and dataset; True skips the sample with a warning and counts the skipped ones in the log.
    cfg.DATALOADER.SKIP_CORRUPT_FILES = False


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
    # Views (windows + global) run per forward pass in sliding-window inference (bounds memory).
    cfg.TEST.SLIDING_BATCH = 4
    # Images per batch at inference (per process).
    cfg.TEST.IMS_PER_BATCH = 1
    # Inference precision: "fp32" or "bf16" (autocast, opt-in; CPUs with AMX / AVX-512 BF16 gain most).
    cfg.TEST.PRECISION = "fp32"


def _add_text_cache_config(cfg):
    # On-disk cache of class text embeddings, shared by every model: keyed by CLIP model name,
    # text-weights digest, templates, class names and dtype, so a second run pays nothing.
    cfg.MODEL.TEXT_CACHE = CN()
    cfg.MODEL.TEXT_CACHE.ENABLED = True
    # Folder; "": $XDG_CACHE_HOME/escnet/text_features (default ~/.cache/escnet/text_features).
    cfg.MODEL.TEXT_CACHE.DIR = ""
    # CPU heap (glibc malloc; process-wide, set when a model is built for the CPU; 0: glibc's
    # adaptive default). Allocations of at least MMAP MiB get their own mmap and return to the
    # system when freed: 32 is the ceiling of glibc's adaptive threshold, fixed from the start;
    # 1 is the lowest-memory mode (about 2x inference time).
    cfg.MODEL.CPU_MMAP_THRESHOLD_MB = 32
    # Free space at the heap's top kept for reuse up to this many MiB (escnet returns free pages
    # itself between stages). Under glibc's adaptive thresholds every class chunk's transients
    # went back to the system and were faulted in again (docs/design.md, class chunks).
    cfg.MODEL.CPU_TRIM_THRESHOLD_MB = 1024
    # Vocabulary overrides for every model (as CAT-Seg's keys): JSON lists of class names;
    # empty: each dataset's metadata.stuff_classes.
    cfg.MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON = ""
    cfg.MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON = ""


def _add_escnet_model_config(cfg):
    cfg.MODEL.ESCNET = CN()

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
    # Text features of this many (vocabulary, templates) pairs stay cached in eval mode.
    cfg.MODEL.ESCNET.CLIP_TEXT_CACHE_SIZE = 8

    # --- ESC-Net (escnet_model.py and parts)
    # Number of ESC blocks (PPG + SAM block + VLF); paper: N = 4.
    cfg.MODEL.ESCNET.NUM_BLOCKS = 4
    # Width of the class features, of F_v' and of the VLF / decoder input (CAT-Seg: 128).
    cfg.MODEL.ESCNET.HIDDEN_DIM = 128
    # Pseudo prompts fed to SAM's prompt encoder, any of "point", "box", "mask" (paper Table 3:
    # point + mask is best).
    cfg.MODEL.ESCNET.PROMPT_TYPES = ["point", "mask"]
    # Regions (k-means clusters) per class map; paper: N_o = 5.
    cfg.MODEL.ESCNET.NUM_REGIONS = 5
    # alpha: a pixel is foreground when its spatial probability is >= alpha x the map's peak
    # probability (not given in the paper; see docs/design.md).
    cfg.MODEL.ESCNET.PPG_THRESHOLD = 0.5
    # Softmax temperature of class maps (over positions for the PPG, over classes for fusing the
    # SAM outputs); 0.01 = CLIP's logit scale 100 on cosine similarities.
    cfg.MODEL.ESCNET.PPG_TEMPERATURE = 0.01
    # Maximum Lloyd iterations of the PPG's k-means (stops early on convergence).
    cfg.MODEL.ESCNET.PPG_KMEANS_ITERS = 10
    # SAM blocks: "pretrained" (from SAM_CHECKPOINT), "random", "none" (no SAM block; Table 2).
    cfg.MODEL.ESCNET.SAM_INIT = "pretrained"
    # SAM ViT-B checkpoint: local path or URL (cached in torch hub's checkpoints dir); "": random.
    cfg.MODEL.ESCNET.SAM_CHECKPOINT = "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
    # SAM decoder layer (0 or 1) initialising each ESC block; []: block k <- layer k mod 2.
    cfg.MODEL.ESCNET.SAM_LAYER_MAP = []
    # SAM block sizes (must match the checkpoint when pretrained: 256, 8, 2048, 16, 2).
    cfg.MODEL.ESCNET.SAM_DIM = 256
    cfg.MODEL.ESCNET.SAM_NUM_HEADS = 8
    cfg.MODEL.ESCNET.SAM_MLP_DIM = 2048
    cfg.MODEL.ESCNET.SAM_MASK_IN_CHANS = 16
    cfg.MODEL.ESCNET.SAM_ATTENTION_DOWNSAMPLE = 2
    # VLF: Swin window size (on the CLIP grid), Swin heads, heads of the linear class attention.
    cfg.MODEL.ESCNET.WINDOW_SIZE = 12
    cfg.MODEL.ESCNET.SWIN_NUM_HEADS = 4
    cfg.MODEL.ESCNET.CLASS_ATTENTION_HEADS = 4
    # Decoder: channels of each 2x upsampling stage and of its CLIP skip (CAT-Seg: 64/32, 32/16).
    cfg.MODEL.ESCNET.DECODER_DIMS = [64, 32]
    cfg.MODEL.ESCNET.DECODER_SKIP_DIMS = [32, 16]
    # Classes per chunk through the per-class stages (PPG, SAM step, VLF, decoder): bounds the
    # memory of large vocabularies; exact for any value (0: all classes at once).
    cfg.MODEL.ESCNET.CLASS_CHUNK_SIZE = 16
    # Memory budget (MiB) of one forward's B x Nc x hw x HIDDEN_DIM class features: sliding-window
    # inference runs as many views per forward as fit (at least 1, at most TEST.SLIDING_BATCH),
    # so large vocabularies stay in bounded memory (0: always TEST.SLIDING_BATCH views).
    cfg.MODEL.ESCNET.CLASS_FEATURE_BUDGET_MB = 256
    # Category early rejection (SED-style, inference only, an approximation; off = paper protocol):
    # after ESC block AFTER_BLOCK (0: from the CLIP correlation) only the union over pixels of each
    # pixel's TOP_K highest-scoring classes continues; the others get probability 0.
    cfg.MODEL.ESCNET.CER = CN()
    cfg.MODEL.ESCNET.CER.ENABLED = False
    cfg.MODEL.ESCNET.CER.TOP_K = 8
    cfg.MODEL.ESCNET.CER.AFTER_BLOCK = 1
