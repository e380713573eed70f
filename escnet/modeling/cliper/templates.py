"""Prompt-template sets of CLIPer ("{}" stands for the class name): built-in sets and template files.

The official configs name two files: ``car_template.txt`` and ``openai_template.txt``. Neither is
in the public repository. ``CAR_TEMPLATES`` are the 15 "semantic templates" of CaR (CLIP as RNN,
whose prompt set the file name refers to), in CaR's order; ``openai`` is CLIP's 80 ImageNet
templates (``escnet.modeling.prompt_templates.IMAGENET_TEMPLATES``). See docs/design.md (CLIPer).

Whoever has the official files reads them instead with ``MODEL.CLIPER.TEMPLATE_FILES.<set name>``
(``read_template_file``): one template per line, each line stripped of surrounding white space, as
the official ``main_ovs.py`` reads ``semantic_templates``; a file replaces the built-in set of its
name (or adds a set, for a name given in a YAML config).
"""
import os
from typing import Dict, Mapping, Tuple

from ...utils.errors import EscnetError
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


def read_template_file(path: str, key: str) -> Tuple[str, ...]:
    """Templates of a text file: one per line, stripped (the official loader's format).

    Lines that are empty after stripping are skipped (the official loader would keep them as an
    empty prompt). ``key`` names the config key in errors: a missing, unreadable or empty file, or a
    line without exactly one ``{}``, is a one-line ``EscnetError``.
    """
    if not os.path.isfile(path):
        raise EscnetError(f"{key}: template file {path} not found")
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as err:
        raise EscnetError(f"{key}: template file {path} is unreadable ({str(err).splitlines()[0]})") from None
    templates = []
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        if line.count("{}") != 1:
            raise EscnetError(f"{key}: line {number} of {path} ({line!r}) must contain exactly one '{{}}' "
                              "(the class name)")
        templates.append(line)
    if not templates:
        raise EscnetError(f"{key}: template file {path} is empty (give one template per line, '{{}}' for the class)")
    return tuple(templates)


def template_sets_from_config(cliper_cfg) -> Dict[str, Tuple[str, ...]]:
    """Set name -> templates: ``TEMPLATE_SETS``, each replaced by its ``TEMPLATE_FILES`` file if one is named."""
    sets = {name: tuple(templates) for name, templates in cliper_cfg.TEMPLATE_SETS.items()}
    files: Mapping[str, str] = cliper_cfg.TEMPLATE_FILES
    for name, path in files.items():
        key = f"MODEL.CLIPER.TEMPLATE_FILES.{name}"
        if not isinstance(path, str):
            raise EscnetError(f"{key} must be a file path (or \"\" for the built-in set), got {path!r}")
        if path:
            sets[name] = read_template_file(os.path.expanduser(path), key)
    return sets
