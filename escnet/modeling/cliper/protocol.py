"""Per-dataset protocol of CLIPer: templates, background words, logit scale and thresholds.

The official code sets these per benchmark (``scripts/config/vit-*/ovs_*.yaml``). escnet keeps
a default (``MODEL.CLIPER.DEFAULT_PROTOCOL``) and per-dataset overrides
(``MODEL.CLIPER.DATASET_PROTOCOLS.<registered dataset name>.<KEY>``); the model picks the
protocol of each input's ``"dataset_name"`` (set by the dataset mapper), so one
``--eval-only`` run over several datasets applies each one's settings.
"""
from dataclasses import dataclass
from typing import Dict, Mapping, Tuple

from ...utils.errors import EscnetError
from ..text_encoder import validate_templates
from .templates import template_sets_from_config

# Config key -> field of CliperProtocol.
PROTOCOL_KEYS = {
    "TEMPLATES": "templates",
    "BACKGROUND_WORDS": "background_words",
    "LOGIT_SCALE": "logit_scale",
    "ATTENTION_THRESHOLD": "attention_threshold",
    "SELECT_LAYER": "select_layer",
    "SCORE_THRESHOLD": "score_threshold",
    "BACKGROUND_THRESHOLD": "background_threshold",
    "NORMALIZE_MAPS": "normalize_maps",
    "BACKGROUND_CLASS_INDEX": "background_class_index",
    "SLIDING_CROP_SIZE": "sliding_crop_size",
    "SLIDING_STRIDE": "sliding_stride",
}


@dataclass(frozen=True)
class CliperProtocol:
    """One protocol (see escnet/modeling/cliper/config.py for each key's meaning)."""

    templates: Tuple[str, ...]
    background_words: Tuple[str, ...]
    logit_scale: float
    attention_threshold: float
    select_layer: int
    score_threshold: float
    background_threshold: float
    normalize_maps: bool
    background_class_index: int
    sliding_crop_size: int
    sliding_stride: int

    def foreground_vocabulary(self, vocabulary):
        """``(foreground entries, background index or None)`` of a validated vocabulary."""
        index = self.background_class_index
        if index < 0:
            return tuple(vocabulary), None
        if index >= len(vocabulary):
            raise EscnetError(
                f"BACKGROUND_CLASS_INDEX {index} is outside the vocabulary of {len(vocabulary)} classes"
            )
        foreground = tuple(vocabulary[:index]) + tuple(vocabulary[index + 1:])
        if not foreground:
            raise EscnetError("the vocabulary holds only the background class: give at least one class")
        return foreground, index


def build_protocol(values: Mapping, template_sets: Mapping, where: str) -> CliperProtocol:
    """A validated protocol from config ``values`` (all PROTOCOL_KEYS); ``where`` names the config node."""
    unknown = sorted(set(values) - set(PROTOCOL_KEYS))
    if unknown:
        raise EscnetError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(PROTOCOL_KEYS)}")
    set_name = values["TEMPLATES"]
    if set_name not in template_sets:
        raise EscnetError(
            f"{where}.TEMPLATES={set_name!r} is not a template set name of MODEL.CLIPER.TEMPLATE_SETS "
            f"or TEMPLATE_FILES ({', '.join(sorted(template_sets))})"
        )
    templates = validate_templates(template_sets[set_name], f"MODEL.CLIPER.TEMPLATE_SETS.{set_name}")
    words = values["BACKGROUND_WORDS"]
    if isinstance(words, str) or any(not isinstance(w, str) or not w.strip() for w in words):
        raise EscnetError(f"{where}.BACKGROUND_WORDS must be a list of non-empty words, got {words!r}")
    if float(values["LOGIT_SCALE"]) <= 0:
        raise EscnetError(f"{where}.LOGIT_SCALE must be positive, got {values['LOGIT_SCALE']}")
    for key in ("ATTENTION_THRESHOLD", "SCORE_THRESHOLD", "BACKGROUND_THRESHOLD"):
        if not 0.0 <= float(values[key]) <= 1.0:
            raise EscnetError(f"{where}.{key} must lie in 0..1, got {values[key]}")
    crop, stride = int(values["SLIDING_CROP_SIZE"]), int(values["SLIDING_STRIDE"])
    if crop < 0:
        raise EscnetError(f"{where}.SLIDING_CROP_SIZE must be >= 0 (0: no sliding window), got {crop}")
    if crop and not 0 < stride <= crop:
        raise EscnetError(f"{where}.SLIDING_STRIDE must lie in 1..SLIDING_CROP_SIZE ({crop}), got {stride}")
    return CliperProtocol(
        templates=templates,
        background_words=tuple(w.strip() for w in words),
        logit_scale=float(values["LOGIT_SCALE"]),
        attention_threshold=float(values["ATTENTION_THRESHOLD"]),
        select_layer=int(values["SELECT_LAYER"]),
        score_threshold=float(values["SCORE_THRESHOLD"]),
        background_threshold=float(values["BACKGROUND_THRESHOLD"]),
        normalize_maps=bool(values["NORMALIZE_MAPS"]),
        background_class_index=int(values["BACKGROUND_CLASS_INDEX"]),
        sliding_crop_size=crop,
        sliding_stride=stride,
    )


def protocols_from_config(cfg) -> Tuple[CliperProtocol, Dict[str, CliperProtocol]]:
    """``(default protocol, {dataset name: protocol})`` from ``MODEL.CLIPER``."""
    c = cfg.MODEL.CLIPER
    template_sets = template_sets_from_config(c)
    defaults = dict(c.DEFAULT_PROTOCOL)
    default = build_protocol(defaults, template_sets, "MODEL.CLIPER.DEFAULT_PROTOCOL")
    per_dataset = {}
    for name, overrides in c.DATASET_PROTOCOLS.items():
        where = f"MODEL.CLIPER.DATASET_PROTOCOLS.{name}"
        if not hasattr(overrides, "items"):
            raise EscnetError(f"{where} must map protocol keys to values, got {overrides!r}")
        unknown = sorted(set(overrides) - set(PROTOCOL_KEYS))
        if unknown:
            raise EscnetError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(PROTOCOL_KEYS)}")
        per_dataset[name] = build_protocol({**defaults, **dict(overrides)}, template_sets, where)
    return default, per_dataset
