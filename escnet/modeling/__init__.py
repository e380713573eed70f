"""Models: one sub-package per meta-architecture plus the parts they share.

Shared: ``clip_weights`` (open_clip model names, tags, local/offline weights), ``text_encoder``
(class text embeddings over templates and synonyms, cache), ``prompt_templates``, ``model_inputs``
(reading the model contract's inputs). Models: ``esc_net`` (ESC-Net), ``sed`` (SED),
``cliper`` (CLIPer, training-free).
Importing this package registers every meta-architecture in Detectron2's ``META_ARCH_REGISTRY``.
"""
from . import esc_net  # noqa: F401  (registers ESCNet)
from . import sed  # noqa: F401  (registers SED)
from . import cliper  # noqa: F401  (registers CLIPer)
from .esc_net import ESCNet
from .sed import SED

__all__ = ["ESCNet", "SED"]
