"""CLIPer (training-free): early-layer fusion over CLIP, optional fine-grained compensation with
Stable Diffusion's self-attention, per-dataset protocols (thresholds, background, templates from
built-in sets or files, the official sliding window).

Importing this package registers ``CLIPer`` in Detectron2's ``META_ARCH_REGISTRY``.
"""
from .cliper_model import CLIPer
from .config import add_cliper_config
from .early_fusion import EarlyLayerFusion
from .protocol import CliperProtocol

__all__ = ["CLIPer", "CliperProtocol", "EarlyLayerFusion", "add_cliper_config"]
