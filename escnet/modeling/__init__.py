"""Models: one sub-package per meta-architecture plus the parts they share.

Shared: ``clip_weights`` (open_clip model names, tags, local/offline weights), ``text_encoder``
(class text embeddings over templates and synonyms, cache). Models: ``esc_net`` (ESC-Net).
Importing this package registers every meta-architecture in Detectron2's ``META_ARCH_REGISTRY``.
"""
from . import esc_net  # noqa: F401  (registers ESCNet)
from .esc_net import ESCNet

__all__ = ["ESCNet"]
