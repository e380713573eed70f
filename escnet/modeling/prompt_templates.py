"""Prompt-template sets shared by the models ("{}" stands for the class name).

``IMAGENET_TEMPLATES``: the 80 ImageNet prompt templates of CLIP's zero-shot evaluation (OpenAI's
"Prompt Engineering for ImageNet" notebook, as open_clip ships them), in that order. SED's cost
map has one channel per template in this order, so a released SED checkpoint needs exactly this
list ("a bad photo of a {}." first, "a tattoo of the {}." last).
"""
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

IMAGENET_TEMPLATES = tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES)
