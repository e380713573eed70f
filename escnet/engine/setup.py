"""Building a frozen config from a file and ``--opts`` the way escnet's tools all do."""
import logging
import os
import re

import torch
import yaml
from detectron2.config import CfgNode, get_cfg

from ..config import add_escnet_config
from ..utils.errors import EscnetError
from ..utils.names import unknown_name_error

logger = logging.getLogger("escnet")

LIST_CONFIG_KEYS_HINT = "list all: python train_net.py --list config-keys"
LIST_META_ARCHITECTURES_HINT = "list all: python train_net.py --list meta-architectures"
# yacs' messages for a key the config does not have (merge_from_file / merge_from_list).
_UNKNOWN_KEY = re.compile(r"Non-existent (?:config )?key: (\S+)")


def default_config():
    """Detectron2's default config with escnet's keys (mutable)."""
    cfg = get_cfg()
    add_escnet_config(cfg)
    return cfg


def config_keys(cfg):
    """Every leaf key of ``cfg`` as a dotted name (``MODEL.ESCNET.HIDDEN_DIM``), sorted."""
    keys = []

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, CfgNode):
                walk(value, f"{prefix}{key}.")
            else:
                keys.append(f"{prefix}{key}")

    walk(cfg, "")
    return sorted(keys)


def check_meta_architecture(name):
    """Raise a one-line ``EscnetError`` with the closest names unless ``name`` is a registered
    meta-architecture (Detectron2's ``META_ARCH_REGISTRY``: every model escnet imports)."""
    from detectron2.modeling import META_ARCH_REGISTRY

    if name not in META_ARCH_REGISTRY:
        known = [registered for registered, _ in META_ARCH_REGISTRY]
        raise unknown_name_error("MODEL.META_ARCHITECTURE", name, known, LIST_META_ARCHITECTURES_HINT)


def load_config(config_file, opts=(), freeze=True):
    """Detectron2 config with escnet's keys, merged from ``config_file`` then ``opts``.

    Raises ``EscnetError`` for a missing file, an unknown key or meta-architecture (with the
    closest names); picks the CPU (with a warning) when the config asks for CUDA on a machine
    without it.
    """
    if not config_file or not os.path.isfile(config_file):
        raise EscnetError(f"config file not found: {config_file!r}")
    cfg = default_config()
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError, AttributeError, TypeError, yaml.YAMLError) as err:
        message = str(err).strip().strip("'\"").splitlines()[0]
        unknown = _UNKNOWN_KEY.search(message)
        if unknown:
            raise unknown_name_error(
                "key", unknown.group(1), config_keys(default_config()), LIST_CONFIG_KEYS_HINT,
                prefix=f"bad config ({os.path.basename(config_file)}): ",
            ) from None
        raise EscnetError(f"bad config ({config_file}): {message}") from None
    check_meta_architecture(cfg.MODEL.META_ARCHITECTURE)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"MODEL.DEVICE={cfg.MODEL.DEVICE} but CUDA is not available: using the CPU")
        cfg.MODEL.DEVICE = "cpu"
    if freeze:
        cfg.freeze()
    return cfg
