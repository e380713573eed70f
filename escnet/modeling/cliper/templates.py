"""Prompt-template sets of CLIPer's official configs ("{}" stands for the class name).

The official configs name two files: ``car_template.txt`` and ``openai_template.txt``. Neither is
in the public repository. ``CAR_TEMPLATES`` are the 15 "semantic templates" of CaR (CLIP as RNN,
whose prompt set the file name refers to), in CaR's order; ``openai`` is CLIP's 80 ImageNet
templates (``escnet.modeling.prompt_templates.IMAGENET_TEMPLATES``). See docs/design.md (CLIPer).
"""
from ..prompt_templates import IMAGENET_TEMPLATES

CAR_TEMPLATES = (
    "a clean origami {}.",
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

# Set name -> templates; the config's MODEL.CLIPER.TEMPLATE_SETS starts from these.
DEFAULT_TEMPLATE_SETS = {"car": CAR_TEMPLATES, "openai": IMAGENET_TEMPLATES}
