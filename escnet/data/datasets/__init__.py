"""Dataset registration: importing this package registers every dataset under ``datasets_root()``."""
from . import register_synthetic  # noqa: F401
