"""Shared by the CLIPer tests: the tiny CLIPer model, a tiny randomly initialised Stable
Diffusion folder (diffusers ``save_pretrained`` layout, no download) and the config options that
point CLIPer at it."""
import json
import os

import torch

from conftest import REPO

TINY_CONFIG = os.path.join(REPO, "configs", "cliper_tiny.yaml")


def build(opts=(), config=TINY_CONFIG):
    """The CLIPer model of ``config`` (default: the tiny one) on the CPU, in eval mode."""
    from detectron2.modeling import build_model

    from escnet.engine import load_config

    cfg = load_config(config, list(opts) + ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    model.eval()
    return model

# A tiny UNet whose up_blocks.1 runs self-attention on a 16 x 16 grid for a 32 x 32 image
# (VAE: one 2x downsampling -> 16 x 16 latent; UNet: 16 -> 8 -> 16).
TINY_UNET = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=16,
    attention_head_dim=2,
    norm_num_groups=8,
)
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(8, 16),
    latent_channels=4,
    norm_num_groups=8,
    sample_size=32,
)
TINY_SD_INPUT_SIZE = 32
TINY_SD_LAYERS = [
    "up_blocks.1.attentions.1.transformer_blocks.0.attn1",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn1",
]
# SD-2.1-base's scheduler settings (PNDM, scaled-linear betas).
SD21_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False,
)


def write_tiny_tokenizer(folder, max_length=8):
    """A CLIP BPE tokenizer with a handful of tokens (enough for the empty prompt)."""
    from transformers import CLIPTokenizer

    os.makedirs(folder, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "b</w>": 3, "a": 4, "b": 5}
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    tokenizer = CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"),
                              model_max_length=max_length, pad_token="<|endoftext|>")
    tokenizer.save_pretrained(folder)


def write_tiny_sd_folder(folder, seed=0):
    """Write a tiny random SD pipeline folder (vae, unet, text_encoder, tokenizer, scheduler)."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    AutoencoderKL(**TINY_VAE).save_pretrained(os.path.join(folder, "vae"))
    UNet2DConditionModel(**TINY_UNET).save_pretrained(os.path.join(folder, "unet"))
    text_config = CLIPTextConfig(vocab_size=6, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=8, bos_token_id=0, eos_token_id=1,
                                 pad_token_id=1)
    CLIPTextModel(text_config).save_pretrained(os.path.join(folder, "text_encoder"))
    write_tiny_tokenizer(os.path.join(folder, "tokenizer"))
    PNDMScheduler(**SD21_SCHEDULER).save_pretrained(os.path.join(folder, "scheduler"))
    return folder


def tiny_fgc_opts(folder):
    """``--opts`` turning on FGC of configs/cliper_tiny.yaml with the tiny SD folder."""
    return [
        "MODEL.CLIPER.FGC", "True",
        "MODEL.CLIPER.SD_MODEL", str(folder),
        "MODEL.CLIPER.SD_INPUT_SIZE", str(TINY_SD_INPUT_SIZE),
        "MODEL.CLIPER.SD_ATTENTION_LAYERS", repr(TINY_SD_LAYERS),
    ]
