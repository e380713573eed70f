"""SED's config keys: ``add_sed_config(cfg)`` adds ``MODEL.SED.*`` (called by ``add_escnet_config``).

Defaults are the official ConvNeXt-B configuration (``xb534/SED``, ``configs/convnextB_768.yaml``);
the names of the official keys are given where they differ.
"""
from detectron2.config import CfgNode as CN

from ..prompt_templates import IMAGENET_TEMPLATES


def add_sed_config(cfg):
    """Add ``MODEL.SED.*`` (SED, CVPR 2024) to ``cfg``."""
    cfg.MODEL.SED = CN()
    s = cfg.MODEL.SED
    # --- ConvNeXt CLIP (clip_encoder.py)
    # open_clip ConvNeXt CLIP name (convnext_base_w_320, convnext_large_d_320) or a JSON
    # model-config path with a timm convnext* trunk (configs/clip/tiny-convnext.json).
    s.CLIP_MODEL = "convnext_base_w_320"
    # open_clip pretrained tag, a checkpoint file path, or "" (random initialisation).
    s.CLIP_PRETRAINED = "laion_aesthetic_s13b_b82k"
    # Side of the square image the encoder sees (official: 768; every image is resized to it).
    s.CLIP_INPUT_SIZE = 768
    # Prompt templates; the cost map has one channel per template (official: the 80 ImageNet
    # templates, PROMPT_ENSEMBLE_TYPE "imagenet"). Released weights need exactly these 80.
    s.CLIP_TEMPLATES = list(IMAGENET_TEMPLATES)
    # Trainable CLIP parameters: "full" (the whole image tower; official CLIP_FINETUNE) or "none".
    # The text tower is always frozen.
    s.CLIP_FINETUNE = "full"
    # Never download CLIP weights (also on with HF_HUB_OFFLINE=1); weight cache folder.
    s.CLIP_OFFLINE = False
    s.CLIP_CACHE_DIR = ""
    # Prompts per text-encoder call; (vocabulary, templates) pairs kept cached in eval mode.
    s.CLIP_TEXT_CHUNK_SIZE = 1024
    s.CLIP_TEXT_CACHE_SIZE = 8
    # --- gradual fusion decoder (decoder.py)
    # Width of the embedded cost map (official HIDDEN_DIMS).
    s.HIDDEN_DIM = 128
    # Output width of each of the decoder layers (official DECODER_DIMS); multiples of 16.
    s.DECODER_DIMS = [64, 32, 16]
    # Width each encoder skip (res4, res3, res2) and each upsampled cost map is reduced to
    # (official DECODER_GUIDANCE_PROJ_DIMS).
    s.SKIP_DIMS = [32, 16, 8]
    # Depthwise kernel of each layer's ConvNeXt block (official KERNEL_SIZE).
    s.KERNEL_SIZES = [9, 9, 9]
    # Heads of the linear attention across classes and its average-pooling window (official
    # NUM_HEADS, POOLING_SIZES).
    s.NUM_HEADS = 4
    s.POOLING_SIZE = [2, 2]
    # Class maps per call in the decoder's per-class steps (ConvNeXt blocks, upsampling, fusion,
    # heads): bounds memory for large vocabularies (ADE-847) without changing the result.
    s.CLASS_CHUNK_SIZE = 128
    # --- category early rejection (official TEST.FAST_INFERENCE, TEST.TOPK)
    s.CER = CN()
    # At inference, keep after each decoder layer only the union of every pixel's top-k classes
    # of the auxiliary head; rejected classes score 0.
    s.CER.ENABLED = False
    s.CER.TOP_K = 8
