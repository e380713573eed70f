"""Build an open_clip CLIP model from escnet's config: architecture, activation, weights.

``MODEL.ESCNET.CLIP_MODEL`` names the architecture in one of two ways:

* a registered open_clip name (``ViT-B-16``, ``ViT-L-14-336``, ``ViT-B-16-quickgelu``...);
* a path to a JSON file in open_clip's model-config format (``embed_dim``, ``vision_cfg``,
  ``text_cfg``, optional ``quick_gelu``), e.g. ``configs/clip/tiny-vit.json``. A relative
  path is looked up in the working directory, then in the escnet repository root.

``MODEL.ESCNET.CLIP_PRETRAINED`` is an open_clip tag (``openai``, ``laion2b_s34b_b88k``...),
a path to a checkpoint file (open_clip/OpenAI state dict, ``.safetensors`` or an OpenAI
TorchScript archive), or empty for random initialisation.

Weights for a tag are looked up in the local caches first (Hugging Face hub cache, open_clip's
URL cache). Offline (``MODEL.ESCNET.CLIP_OFFLINE`` or ``HF_HUB_OFFLINE=1``) a weight missing
there is an ``EscnetError`` naming the file to download and where it goes; nothing touches the
network. A local file path bypasses all of this.
"""
import copy
import json
import logging
import os

import torch
import torch.nn.functional as F

from ..utils.errors import EscnetError
from ..utils.locking import file_lock
from ..utils.names import unknown_name_error

logger = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECKPOINT_EXTENSIONS = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
_TRUE_STRINGS = {"1", "on", "yes", "true"}
# Seconds to wait for the weight host to answer before calling the network unreachable (the
# Hugging Face client otherwise retries for about a minute per file without a network).
NETWORK_PROBE_TIMEOUT_S = 5.0


def is_config_file(model_name):
    """True when ``model_name`` names a JSON model-config file rather than an open_clip name."""
    return model_name.lower().endswith(".json")


def resolve_model_config(model_name, tower="vit"):
    """Return ``(config_name, model_cfg)`` for an open_clip name or a JSON config path.

    ``config_name`` is the open_clip name used to look up pretrained tags (the file path for
    JSON configs, which have no tags). ``tower`` is the image tower the caller reads densely:
    ``"vit"`` (a standard CLIP ViT: ESC-Net reads its tokens) or ``"convnext"`` (a timm
    ConvNeXt trunk: SED reads its stages).
    """
    import open_clip

    if not model_name:
        raise EscnetError("MODEL.ESCNET.CLIP_MODEL is empty: give an open_clip name or a JSON config path")
    if is_config_file(model_name):
        path = _find_config_file(model_name)
        try:
            with open(path, encoding="utf-8") as f:
                model_cfg = json.load(f)
        except json.JSONDecodeError as err:
            raise EscnetError(f"CLIP model config {path!r} is not valid JSON: {err}") from None
        config_name = path
    else:
        config_name = model_name.replace("/", "-")
        model_cfg = open_clip.get_model_config(config_name)
        if model_cfg is None:
            raise unknown_name_error(
                "open_clip model (MODEL.ESCNET.CLIP_MODEL)", model_name, open_clip.list_models(),
                "list all: python train_net.py --list clip-models (or give a JSON model-config path)",
            )
        model_cfg = copy.deepcopy(model_cfg)
    _check_supported(model_cfg, model_name, tower)
    return config_name, model_cfg


def _find_config_file(model_name):
    for candidate in (model_name, os.path.join(REPO_ROOT, model_name)):
        if os.path.isfile(candidate):
            return candidate
    raise EscnetError(f"CLIP model config file not found: {model_name!r} (MODEL.ESCNET.CLIP_MODEL)")


def _check_supported(model_cfg, model_name, tower="vit"):
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in model_cfg]
    if missing:
        raise EscnetError(f"CLIP model config {model_name!r} lacks {', '.join(missing)}")
    vision_cfg, text_cfg = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    if tower == "convnext":
        trunk = str(vision_cfg.get("timm_model_name", ""))
        if "convnext" not in trunk or "hf_model_name" in text_cfg or model_cfg.get("custom_text", False):
            raise EscnetError(
                f"CLIP model {model_name!r} is not supported: SED needs a ConvNeXt CLIP (open_clip's timm "
                f"tower with a timm ConvNeXt trunk, e.g. convnext_base_w_320) and its own text transformer"
            )
        return
    unsupported = (
        "timm_model_name" in vision_cfg
        or "hf_model_name" in text_cfg
        or model_cfg.get("custom_text", False)
        or vision_cfg.get("attentional_pool", False)
        or vision_cfg.get("pool_type", "tok") != "tok"
        or vision_cfg.get("final_ln_after_pool", False)
        or isinstance(vision_cfg.get("layers"), (list, tuple))  # ResNet towers
    )
    if unsupported:
        raise EscnetError(
            f"CLIP model {model_name!r} is not supported: escnet needs a standard CLIP ViT "
            f"(open_clip's VisionTransformer with class-token pooling and its own text transformer)"
        )


def pretrained_tag_config(config_name, pretrained):
    """open_clip's pretrained config for ``pretrained`` if it is a known tag of the model, else {}."""
    import open_clip

    if not pretrained or is_checkpoint_path(pretrained) or is_config_file(config_name):
        return {}
    return open_clip.get_pretrained_cfg(config_name, pretrained)


def use_quick_gelu(model_cfg, tag_cfg):
    """QuickGELU when the model config asks for it or the pretrained tag was trained with it.

    OpenAI's weights (tag ``openai``) need QuickGELU; for an OpenAI checkpoint given as a file
    path, use an open_clip ``-quickgelu`` model name (e.g. ``ViT-B-16-quickgelu``).
    """
    return bool(model_cfg.get("quick_gelu", False) or tag_cfg.get("quick_gelu", False))


def is_checkpoint_path(pretrained):
    """True when ``pretrained`` looks like a file path rather than an open_clip tag."""
    return (
        os.path.sep in pretrained
        or (os.path.altsep is not None and os.path.altsep in pretrained)
        or pretrained.lower().endswith(CHECKPOINT_EXTENSIONS)
        or os.path.isfile(pretrained)
    )


def offline_mode(offline_switch):
    """Offline when escnet's switch is on or the Hugging Face offline variable is set."""
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(offline_switch) or env.strip().lower() in _TRUE_STRINGS


def resolve_checkpoint(model_name, config_name, pretrained, *, offline, cache_dir=""):
    """Return the local checkpoint path for ``pretrained`` (None for random init).

    A file path must exist. A tag is looked up in the caches; offline, a cache miss raises
    ``EscnetError`` naming the file and where to put it; online it is downloaded.
    """
    if not pretrained:
        return None
    if is_checkpoint_path(pretrained):
        if not os.path.isfile(pretrained):
            raise EscnetError(
                f"CLIP checkpoint not found: {pretrained!r} (MODEL.ESCNET.CLIP_PRETRAINED); "
                f"put the weight file there or fix the path"
            )
        return pretrained
    tag_cfg = pretrained_tag_config(config_name, pretrained)
    if not tag_cfg:
        import open_clip

        known = open_clip.list_pretrained_tags_by_model(config_name) if not is_config_file(config_name) else []
        raise EscnetError(
            f"CLIP_PRETRAINED={pretrained!r} is neither an existing file nor an open_clip tag of "
            f"{model_name!r}; known tags: {', '.join(known) or 'none'}"
        )
    cached = _cached_tag_file(tag_cfg, cache_dir)
    if cached:
        return cached
    source = _tag_source(tag_cfg, cache_dir)
    hint = (
        f"download {source['url']} and set MODEL.ESCNET.CLIP_PRETRAINED to the file's path "
        f"(or put it at {source['cache_path']})"
    )
    if offline:
        raise EscnetError(f"CLIP weights {model_name}/{pretrained} are not available offline: {hint}")
    import open_clip

    host = _download_host(tag_cfg)
    if not _host_reachable(host):
        raise EscnetError(f"CLIP weights {model_name}/{pretrained}: cannot reach {host} (no network?); {hint}")
    # One process downloads; other ranks or runs sharing the cache wait, then find the file.
    with file_lock(_download_lock_target(tag_cfg, cache_dir)):
        cached = _cached_tag_file(tag_cfg, cache_dir)
        if cached:
            return cached
        logger.info("Downloading CLIP weights %s/%s from %s", model_name, pretrained, host)
        try:
            return open_clip.pretrained.download_pretrained(tag_cfg, cache_dir=cache_dir or None)
        except Exception as err:  # network, hub or checksum failures: all mean "get the file yourself"
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise EscnetError(f"could not download CLIP weights {model_name}/{pretrained} ({reason}); {hint}") from None


def _download_lock_target(tag_cfg, cache_dir):
    """The path whose file lock serialises downloads of a tag (its URL cache file, or a hub repo entry)."""
    url = tag_cfg.get("url", "")
    if url:
        return _url_cache_path(url, cache_dir)
    from huggingface_hub.constants import HF_HUB_CACHE

    repo_id = _hf_candidates(tag_cfg)[-1][0]
    return os.path.join(cache_dir or HF_HUB_CACHE, f"escnet-download-{repo_id.replace('/', '--')}")


def _download_host(tag_cfg):
    """The host open_clip downloads a tag from (the hub when it can, else the URL's host)."""
    from urllib.parse import urlparse

    from open_clip.pretrained import has_hf_hub

    if tag_cfg.get("hf_hub") and has_hf_hub():
        from huggingface_hub.constants import ENDPOINT

        return urlparse(ENDPOINT).hostname
    return urlparse(tag_cfg.get("url", "")).hostname


def _host_reachable(host):
    import socket

    try:
        socket.create_connection((host, 443), timeout=NETWORK_PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def _hf_candidates(tag_cfg):
    """(repo_id, filename) pairs open_clip would fetch from the hub, preferred first."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    repo_id, filename = os.path.split(tag_cfg.get("hf_hub", ""))
    if not repo_id:
        return []
    filename = filename or HF_WEIGHTS_NAME
    if filename == HF_WEIGHTS_NAME:
        return [(repo_id, HF_SAFE_WEIGHTS_NAME), (repo_id, filename)]
    if filename.endswith((".bin", ".pth")):
        return [(repo_id, filename[:-4] + ".safetensors"), (repo_id, filename)]
    return [(repo_id, filename)]


def _url_cache_path(url, cache_dir):
    return os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))


def _cached_tag_file(tag_cfg, cache_dir):
    """The tag's weight file if a cache already holds it (no network access), else None."""
    if tag_cfg.get("file") and os.path.isfile(tag_cfg["file"]):
        return tag_cfg["file"]
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        try_to_load_from_cache = None
    if try_to_load_from_cache is not None:
        for repo_id, filename in _hf_candidates(tag_cfg):
            found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir or None)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    url = tag_cfg.get("url", "")
    if url and os.path.isfile(_url_cache_path(url, cache_dir)):
        return _url_cache_path(url, cache_dir)
    return None


def _tag_source(tag_cfg, cache_dir):
    """Where to download a tag's weights by hand, and the cache path a download would use."""
    url = tag_cfg.get("url", "")
    if url:
        return {"url": url, "cache_path": _url_cache_path(url, cache_dir)}
    repo_id, filename = _hf_candidates(tag_cfg)[-1]
    from huggingface_hub.constants import HF_HUB_CACHE

    hub_cache = cache_dir or HF_HUB_CACHE
    return {
        "url": f"https://huggingface.co/{repo_id}/resolve/main/{filename}",
        "cache_path": f"the Hugging Face cache {hub_cache} (models--{repo_id.replace('/', '--')})",
    }


def build_clip_model(model_name, pretrained, *, offline=False, cache_dir="", load_weights=True, tower="vit"):
    """Build the open_clip ``CLIP`` model named by the config and load its weights.

    The checkpoint is resolved before the model is built, so a missing weight fails fast.
    With ``load_weights=False`` (a trained escnet checkpoint will overwrite every tensor) no
    file is looked up, but ``pretrained`` still decides the architecture (QuickGELU, mean/std).
    Returns ``(model, info)`` as ``clip_architecture``; ``tower`` as ``resolve_model_config``.
    """
    checkpoint = None
    if load_weights:
        config_name, _ = resolve_model_config(model_name, tower)
        checkpoint = resolve_checkpoint(model_name, config_name, pretrained, offline=offline, cache_dir=cache_dir)
    model, info = clip_architecture(model_name, pretrained, tower)
    if checkpoint is not None:
        load_clip_checkpoint(model, checkpoint)
    return model, info


def clip_architecture(model_name, pretrained, tower="vit"):
    """The randomly initialised open_clip ``CLIP`` for ``model_name``, set up for ``pretrained``.

    The activation follows ``use_quick_gelu`` (QuickGELU for OpenAI weights). Returns
    ``(model, info)``; ``info`` holds ``quick_gelu`` and ``mean`` / ``std`` (0..1 RGB
    normalisation the weights were trained with; OpenAI's for random init and files).
    """
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    config_name, model_cfg = resolve_model_config(model_name, tower)
    tag_cfg = pretrained_tag_config(config_name, pretrained)
    quick_gelu = use_quick_gelu(model_cfg, tag_cfg)
    model_cfg["quick_gelu"] = quick_gelu
    model = open_clip.CLIP(**model_cfg)
    info = {
        "quick_gelu": quick_gelu,
        "mean": tuple(tag_cfg.get("mean", OPENAI_DATASET_MEAN)),
        "std": tuple(tag_cfg.get("std", OPENAI_DATASET_STD)),
    }
    return model, info


def load_clip_checkpoint(model, path):
    """Load a CLIP checkpoint file into ``model`` strictly; a bad file is an ``EscnetError``."""
    import open_clip

    logger.info("Loading CLIP weights from %s", path)
    try:
        if _is_torchscript_archive(path):
            state_dict = torch.jit.load(path, map_location="cpu").state_dict()
            # TorchScript archives also hold OpenAI's metadata and non-persistent buffers.
            persistent = set(model.state_dict())
            transient = {name for name, _ in model.named_buffers()} - persistent
            for key in transient | {"input_resolution", "context_length", "vocab_size"}:
                state_dict.pop(key, None)
            state_dict = open_clip.convert.convert_state_dict(model, state_dict)
            open_clip.model.resize_pos_embed(state_dict, model)
            model.load_state_dict(state_dict, strict=True)
        else:
            open_clip.load_checkpoint(model, path, strict=True)
    except (RuntimeError, KeyError, ValueError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EscnetError(f"CLIP checkpoint {path!r} does not fit MODEL.ESCNET.CLIP_MODEL: {reason}") from None


def _is_torchscript_archive(path):
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def resize_grid_embedding(pos_embed, old_grid, new_grid):
    """Resize a ViT positional embedding ``(1 + h0*w0) x D`` to ``(1 + h*w) x D``.

    The class-token row is kept; the grid part is interpolated bicubically (align_corners
    False, as open_clip's own ``resize_pos_embed``). Identity when the grid does not change.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    cls_pos, grid_pos = pos_embed[:1], pos_embed[1:]
    width = pos_embed.shape[-1]
    grid = grid_pos.reshape(1, old_grid[0], old_grid[1], width).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bicubic", align_corners=False)
    grid = grid.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], width)
    return torch.cat([cls_pos, grid], dim=0)
