"""Load Stable Diffusion's parts for CLIPer's fine-grained compensation (diffusers).

``MODEL.CLIPER.SD_MODEL`` is a local folder written by diffusers' ``save_pretrained`` (sub-folders
``vae/``, ``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) or a Hugging Face model id
(``stabilityai/stable-diffusion-2-1-base``). An id is looked up in the Hugging Face cache first;
offline (``MODEL.CLIPER.SD_OFFLINE`` or ``HF_HUB_OFFLINE=1``) a cache miss is an ``EscnetError``
saying what to download and where; online the needed files (safetensors only) are downloaded.
"""
import json
import logging
import os
import socket
from dataclasses import dataclass

from ...utils.errors import EscnetError
from ..clip_weights import NETWORK_PROBE_TIMEOUT_S

logger = logging.getLogger(__name__)

SD_SUBFOLDERS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")
# Files fetched for a model id: configs, tokenizer, and the fp32 safetensors weights.
SD_DOWNLOAD_PATTERNS = [
    "model_index.json",
    "scheduler/*",
    "tokenizer/*",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
]


@dataclass
class StableDiffusionParts:
    vae: object
    unet: object
    text_encoder: object
    tokenizer: object
    scheduler: object


def is_local_path(sd_model: str) -> bool:
    """True for paths (existing, absolute, ``./``-relative, or deeper than ``org/name``)."""
    return (
        os.path.exists(sd_model)
        or os.path.isabs(sd_model)
        or sd_model.startswith((".", "~"))
        or sd_model.count("/") != 1
    )


def resolve_sd_folder(sd_model: str, *, offline: bool, cache_dir: str = "") -> str:
    """The local folder holding ``sd_model``'s parts (downloaded when online and not cached)."""
    if not sd_model:
        raise EscnetError("MODEL.CLIPER.SD_MODEL is empty: give a diffusers model id or a save_pretrained folder "
                          "(or MODEL.CLIPER.FGC False)")
    if is_local_path(sd_model):
        folder = os.path.expanduser(sd_model)
        if not os.path.isdir(folder):
            raise EscnetError(
                f"Stable Diffusion folder not found: {sd_model!r} (MODEL.CLIPER.SD_MODEL); put a diffusers "
                f"save_pretrained folder ({'/, '.join(SD_SUBFOLDERS)}/) there, or set MODEL.CLIPER.FGC False"
            )
        check_sd_folder(folder)
        return folder
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    hub_cache = cache_dir or HF_HUB_CACHE
    hint = (
        f"download it on a machine with internet (huggingface-cli download {sd_model}) into the Hugging Face "
        f"cache {hub_cache}, or set MODEL.CLIPER.SD_MODEL to a local save_pretrained folder "
        f"(or MODEL.CLIPER.FGC False)"
    )
    try:
        folder = snapshot_download(sd_model, cache_dir=cache_dir or None, allow_patterns=SD_DOWNLOAD_PATTERNS,
                                   local_files_only=True)
        check_sd_folder(folder)
        return folder
    except Exception:  # not (completely) cached
        if offline:
            raise EscnetError(f"Stable Diffusion weights {sd_model!r} are not available offline: {hint}") from None
    from huggingface_hub.constants import ENDPOINT
    from urllib.parse import urlparse

    host = urlparse(ENDPOINT).hostname
    try:
        socket.create_connection((host, 443), timeout=NETWORK_PROBE_TIMEOUT_S).close()
    except OSError:
        raise EscnetError(f"Stable Diffusion weights {sd_model!r}: cannot reach {host} (no network?); {hint}") from None
    logger.info("Downloading Stable Diffusion %s from %s", sd_model, host)
    try:
        folder = snapshot_download(sd_model, cache_dir=cache_dir or None, allow_patterns=SD_DOWNLOAD_PATTERNS)
    except Exception as err:  # network, authentication or missing-repository failures
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EscnetError(f"could not download Stable Diffusion {sd_model!r} ({reason}); {hint}") from None
    check_sd_folder(folder)
    return folder


def check_sd_folder(folder: str):
    missing = [name for name in SD_SUBFOLDERS if not os.path.isdir(os.path.join(folder, name))]
    if missing:
        raise EscnetError(
            f"Stable Diffusion folder {folder!r} lacks {', '.join(m + '/' for m in missing)} "
            f"(MODEL.CLIPER.SD_MODEL); write it with StableDiffusionPipeline.save_pretrained"
        )


def load_sd_parts(folder: str) -> StableDiffusionParts:
    """VAE, UNet, text encoder, tokenizer and scheduler from a resolved folder (fp32, eval mode)."""
    import diffusers
    import transformers

    try:
        with open(os.path.join(folder, "scheduler", "scheduler_config.json"), encoding="utf-8") as f:
            scheduler_name = json.load(f)["_class_name"]
        scheduler_class = getattr(diffusers, scheduler_name)
        parts = StableDiffusionParts(
            vae=diffusers.AutoencoderKL.from_pretrained(folder, subfolder="vae"),
            unet=diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet"),
            text_encoder=transformers.CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder")),
            tokenizer=transformers.AutoTokenizer.from_pretrained(os.path.join(folder, "tokenizer")),
            scheduler=scheduler_class.from_pretrained(folder, subfolder="scheduler"),
        )
    except (OSError, ValueError, KeyError, AttributeError, json.JSONDecodeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EscnetError(f"cannot load Stable Diffusion from {folder!r} (MODEL.CLIPER.SD_MODEL): {reason}") from None
    for module in (parts.vae, parts.unet, parts.text_encoder):
        module.eval()
    return parts
