"""escnet: open-vocabulary semantic segmentation on Detectron2.

Importing escnet registers its meta-architectures, datasets, mappers and evaluators.
"""
from .utils.compat import report_compiled_ops

from .config import add_escnet_config  # noqa: E402
from . import data  # noqa: F401,E402  (registers datasets)
from . import modeling  # noqa: F401,E402  (registers meta-architectures)
from . import evaluation  # noqa: F401,E402
from .segmenter import Segmenter  # noqa: E402

__version__ = "0.1.0"
__all__ = ["add_escnet_config", "Segmenter", "__version__"]

report_compiled_ops()
