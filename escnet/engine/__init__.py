from .checkpoint import AtomicCheckpointer  # noqa: F401
from .setup import load_config  # noqa: F401
from .trainer import Trainer  # noqa: F401
