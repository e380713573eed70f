"""CLIPer's config keys: ``add_cliper_config(cfg)`` adds ``MODEL.CLIPER.*`` (called by escnet's
``add_escnet_config``). Defaults follow the official code (``linsun449/cliper.code``); the shipped
configs (configs/cliper_vit*.yaml) set the per-dataset protocols of its configs.
"""
from detectron2.config import CfgNode as CN

from .templates import DEFAULT_TEMPLATE_SETS

# up_blocks[3] self-attentions of SD-2.1's UNet named by the official `attention_layers_to_use: [-4, -6]`
# (in that order): the 64 x 64 attention of the last up-block's second and first transformer.
SD_UP_BLOCK_SELF_ATTENTIONS = [
    "up_blocks.3.attentions.1.transformer_blocks.0.attn1",
    "up_blocks.3.attentions.0.transformer_blocks.0.attn1",
]


def add_cliper_config(cfg):
    """Add ``MODEL.CLIPER`` (CLIP, early-layer fusion, protocols, fine-grained compensation)."""
    c = cfg.MODEL.CLIPER = CN()
    # --- CLIP (shared loading code: escnet/modeling/clip_weights.py)
    # open_clip model name or JSON model-config path; OpenAI weights need QuickGELU (chosen from the tag).
    c.CLIP_MODEL = "ViT-B-16"
    # open_clip pretrained tag ("openai" for B/16 and L/14, "laion2b_s32b_b79k" for H/14), a file, or "".
    c.CLIP_PRETRAINED = "openai"
    # Never download CLIP weights (also on with HF_HUB_OFFLINE=1); weight cache folder ("": defaults).
    c.CLIP_OFFLINE = False
    c.CLIP_CACHE_DIR = ""
    # Prompts per text-encoder call, and (vocabulary, templates) pairs whose features stay cached.
    c.TEXT_CHUNK_SIZE = 1024
    c.TEXT_CACHE_SIZE = 8
    # The image's shorter side is resized to this (bicubic), each side rounded to a patch multiple.
    c.SHORT_SIDE = 336

    # --- prompt templates: named sets ("{}" = class name); protocols refer to them by name.
    c.TEMPLATE_SETS = CN(new_allowed=True)
    for name, templates in DEFAULT_TEMPLATE_SETS.items():
        c.TEMPLATE_SETS[name] = list(templates)
    # Template files (one template per line, as the official car_template.txt / openai_template.txt):
    # a non-empty path replaces the TEMPLATE_SETS entry of its name ("": the built-in set).
    c.TEMPLATE_FILES = CN(new_allowed=True)
    for name in DEFAULT_TEMPLATE_SETS:
        c.TEMPLATE_FILES[name] = ""

    # --- protocol: how class maps become labels. DEFAULT_PROTOCOL applies to inputs of any other
    # dataset (the demo, the Python API); DATASET_PROTOCOLS.<dataset name> overrides some of its keys.
    p = c.DEFAULT_PROTOCOL = CN()
    p.TEMPLATES = "car"  # a TEMPLATE_SETS name
    # Extra text classes that only enter the softmax over classes (official: a dataset's first line).
    p.BACKGROUND_WORDS = []
    # Scale of the cosine similarities before the softmax over classes.
    p.LOGIT_SCALE = 50.0
    # attention_thr: zeroes the selected layer's class map below this share of its peak, and the
    # Stable Diffusion attention below this share of its column maximum.
    p.ATTENTION_THRESHOLD = 0.2
    # Layer whose class map is propagated by the fused attention (-1: last residual stream).
    p.SELECT_LAYER = -2
    # A class is present when its score exceeds this (score_threshold); absent classes get no pixel.
    p.SCORE_THRESHOLD = 0.0
    # bkg_thre: > 0, background where no present class map reaches it; 0, background score (1 - max)^2.
    p.BACKGROUND_THRESHOLD = 0.0
    # is_normalize: min-max normalise each class map over the image before thresholding.
    p.NORMALIZE_MAPS = False
    # Vocabulary entry that is the background (not a text class; scored by the rule above); -1: none.
    p.BACKGROUND_CLASS_INDEX = -1
    # sliding_crop_size: > 0, the CLIP input is also cut into windows of this side (pixels, a patch
    # multiple), SLIDING_STRIDE apart, whose maps are merged and blended in (SLIDING_WEIGHT); 0: off.
    p.SLIDING_CROP_SIZE = 0
    p.SLIDING_STRIDE = 112
    c.DATASET_PROTOCOLS = CN(new_allowed=True)
    # Weight of the sliding-window probabilities in their blend with the whole image's (official: 0.5).
    c.SLIDING_WEIGHT = 0.5

    # --- fine-grained compensation with Stable Diffusion's self-attention (optional)
    c.FGC = True
    # diffusers model id or a local save_pretrained folder (vae/, unet/, text_encoder/, tokenizer/, scheduler/).
    c.SD_MODEL = "stabilityai/stable-diffusion-2-1-base"
    # Never download SD weights (also on with HF_HUB_OFFLINE=1); cache folder ("": Hugging Face's).
    c.SD_OFFLINE = False
    c.SD_CACHE_DIR = ""
    # Side of the square image fed to the VAE (nearest resize, as the official code).
    c.SD_INPUT_SIZE = 512
    # The noise level: timestep number SD_TIMESTEP_INDEX of the scheduler set to SD_NUM_INFERENCE_STEPS.
    c.SD_NUM_INFERENCE_STEPS = 50
    c.SD_TIMESTEP_INDEX = 45
    # UNet self-attention modules whose per-head maps are chained (in this order).
    c.SD_ATTENTION_LAYERS = list(SD_UP_BLOCK_SELF_ATTENTIONS)
    # Seed of the noise added to the latent (the official code draws it unseeded).
    c.SD_NOISE_SEED = 0
    # A class's score: this weight x peak of the refined map + the rest x peak of the coarse map.
    c.FGC_SCORE_WEIGHT = 0.5
