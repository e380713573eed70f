"""SED (CVPR 2024): ConvNeXt CLIP encoder, gradual fusion decoder, category early rejection.

Importing this package registers ``SED`` in Detectron2's ``META_ARCH_REGISTRY``; its config keys
(``MODEL.SED.*``) come from :func:`add_sed_config`.
"""
from .clip_encoder import ConvNextCLIPEncoder
from .config import add_sed_config
from .decoder import GradualFusionDecoder
from .official_checkpoint import to_escnet_names, to_official_names
from .rejection import REJECTED_SCORE, union_of_topk
from .sed_model import SED

__all__ = [
    "ConvNextCLIPEncoder",
    "GradualFusionDecoder",
    "REJECTED_SCORE",
    "SED",
    "add_sed_config",
    "to_escnet_names",
    "to_official_names",
    "union_of_topk",
]
