"""Dataset registration: importing this package registers every dataset under ``datasets_root()``."""
from . import register_synthetic  # noqa: F401
from . import register_ade20k, register_coco_stuff, register_pascal_context, register_voc  # noqa: F401
from . import register_background  # noqa: F401
