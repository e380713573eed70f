"""Released SED checkpoints (``xb534/SED`` ``model_final.pth``) load into our module tree.

The official model keeps its CLIP at ``sem_seg_head.predictor.clip_model`` and its decoder at
``sem_seg_head.predictor.transformer`` under the official module names (``conv1``,
``decoder1.cnext``, ``head0``...). ``to_escnet_names`` renames such a state dict to ours
(``encoder.clip``, ``decoder.cost_embed``, ``decoder.layers.0.spatial``,
``decoder.rejection_heads.0``...); ``to_official_names`` is its inverse. The SED model converts
automatically on ``load_state_dict`` (any loader: Detectron2's checkpointer, ``MODEL.WEIGHTS``).
A tensor the rules do not know, or one whose shape differs from the model's, is an
``EscnetError``; missing tensors are reported by the loader (escnet's checkpointer: an error).
"""
import re

from ...utils.errors import EscnetError

OFFICIAL_CLIP_PREFIX = "sem_seg_head.predictor.clip_model."
OFFICIAL_DECODER_PREFIX = "sem_seg_head.predictor.transformer."
OFFICIAL_PREFIX = "sem_seg_head.predictor."
CLIP_PREFIX = "encoder.clip."
DECODER_PREFIX = "decoder."

# (official, ours) name prefixes inside the decoder. "#" is a 0-based index on both sides;
# "@" is the official 1-based decoder layer number (decoder1 = our layers.0).
_DECODER_RULES = (
    ("conv1.", "cost_embed."),
    ("decoder_guidance_projection.#.", "skip_projections.#."),
    ("decoder_corr_guidance_projection.#.", "cost_upsamplers.#."),
    ("decoder@.cnext.", "layers.#.spatial."),
    ("decoder@.attention.attention.q.", "layers.#.class_attention.q."),
    ("decoder@.attention.attention.k.", "layers.#.class_attention.k."),
    ("decoder@.attention.attention.v.", "layers.#.class_attention.v."),
    ("decoder@.attention.MLP.", "layers.#.class_attention.mlp."),
    ("decoder@.attention.norm", "layers.#.class_attention.norm"),
    ("decoder@.up.", "layers.#.upsample."),
    ("decoder@.conv.double_conv.", "layers.#.fuse."),
    ("head#.", "rejection_heads.#."),
    ("head.", "output_head."),
)


def _pattern(template):
    return re.compile("^" + re.escape(template).replace("\\#", "#").replace("\\@", "@").replace("#", r"(\d+)").replace("@", r"(\d+)"))


def _rename(name, rules, source, target):
    for rule in rules:
        match = _pattern(rule[source]).match(name)
        if match is None:
            continue
        replacement = rule[target]
        if match.groups():
            index = int(match.group(1))
            index += (1 if "@" in replacement else 0) - (1 if "@" in rule[source] else 0)
            replacement = replacement.replace("#", str(index)).replace("@", str(index))
        return replacement + name[match.end():]
    return None


def is_official_state_dict(state_dict, prefix=""):
    """True when ``state_dict`` (under ``prefix``) holds official SED names."""
    return any(k.startswith(prefix + OFFICIAL_PREFIX) for k in state_dict)


def to_escnet_names(state_dict, prefix=""):
    """Official names -> ours (a new dict; keys outside ``prefix`` are kept as they are)."""
    converted = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            converted[key] = value
            continue
        name = key[len(prefix):]
        if name.startswith(OFFICIAL_CLIP_PREFIX):
            new = CLIP_PREFIX + name[len(OFFICIAL_CLIP_PREFIX):]
        elif name.startswith(OFFICIAL_DECODER_PREFIX):
            inner = _rename(name[len(OFFICIAL_DECODER_PREFIX):], _DECODER_RULES, 0, 1)
            new = None if inner is None else DECODER_PREFIX + inner
        else:
            new = None
        if new is None:
            raise EscnetError(
                f"SED checkpoint tensor {name!r} has no place in this model (an official SED "
                f"checkpoint of another configuration, e.g. with text guidance?)"
            )
        converted[prefix + new] = value
    return converted


def to_official_names(state_dict):
    """Our names -> the official ones (what the released ``model_final.pth`` holds)."""
    converted = {}
    for key, value in state_dict.items():
        if key.startswith(CLIP_PREFIX):
            new = OFFICIAL_CLIP_PREFIX + key[len(CLIP_PREFIX):]
        elif key.startswith(DECODER_PREFIX):
            inner = _rename(key[len(DECODER_PREFIX):], _DECODER_RULES, 1, 0)
            if inner is None:
                raise KeyError(f"no official name for {key!r}")
            new = OFFICIAL_DECODER_PREFIX + inner
        else:
            raise KeyError(f"no official name for {key!r}")
        converted[new] = value
    return converted


def convert_on_load(module, state_dict, prefix, *_args):
    """``load_state_dict`` pre-hook of the SED model: rename official keys in place, check shapes."""
    if not is_official_state_dict(state_dict, prefix):
        return
    converted = to_escnet_names({k: state_dict[k] for k in state_dict if k.startswith(prefix)}, prefix)
    own = module.state_dict(prefix=prefix)
    for key, value in converted.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise EscnetError(
                f"SED checkpoint tensor {key[len(prefix):]!r} has shape {tuple(value.shape)}, the model "
                f"built from the config has {tuple(own[key].shape)} (wrong CLIP model, templates or decoder sizes?)"
            )
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]
    state_dict.update(converted)
