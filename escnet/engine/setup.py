"""Building a frozen config from a file and ``--opts`` the way escnet's tools all do."""
import logging
import os

import torch
import yaml
from detectron2.config import get_cfg

from ..config import add_escnet_config
from ..utils.errors import EscnetError

logger = logging.getLogger("escnet")


def load_config(config_file, opts=(), freeze=True):
    """Detectron2 config with escnet's keys, merged from ``config_file`` then ``opts``.

    Raises ``EscnetError`` for a missing file or an unknown key; picks the CPU (with a
    warning) when the config asks for CUDA on a machine without it.
    """
    if not config_file or not os.path.isfile(config_file):
        raise EscnetError(f"config file not found: {config_file!r}")
    cfg = get_cfg()
    add_escnet_config(cfg)
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError, AttributeError, TypeError, yaml.YAMLError) as err:
        message = str(err).strip().strip("'\"").splitlines()[0]
        raise EscnetError(f"bad config ({config_file}): {message}") from None
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"MODEL.DEVICE={cfg.MODEL.DEVICE} but CUDA is not available: using the CPU")
        cfg.MODEL.DEVICE = "cpu"
    if freeze:
        cfg.freeze()
    return cfg
