"""escnet: open-vocabulary semantic segmentation on Detectron2.

Importing escnet registers its meta-architectures, datasets, mappers and evaluators.
"""
from .config import add_escnet_config
from . import data  # noqa: F401  (registers datasets)
from . import modeling  # noqa: F401  (registers meta-architectures)
from . import evaluation  # noqa: F401  (evaluators)
from .segmenter import Segmenter

__version__ = "0.1.0"
__all__ = ["add_escnet_config", "Segmenter", "__version__"]
