"""ESC-Net: CLIP encoder, pseudo prompt generator, SAM blocks, VLF, decoder, meta-architecture.

Importing this package registers ``ESCNet`` in Detectron2's ``META_ARCH_REGISTRY``.
"""
from .clip_encoder import CLIPEncoder
from .escnet_model import ESCNet
from .prompt_generator import PseudoPromptGenerator, PseudoPrompts
from .sam_blocks import SamClassBlock, SamPromptEncoder, load_sam_checkpoint

__all__ = [
    "CLIPEncoder",
    "ESCNet",
    "PseudoPromptGenerator",
    "PseudoPrompts",
    "SamClassBlock",
    "SamPromptEncoder",
    "load_sam_checkpoint",
]
