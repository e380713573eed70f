"""Reading and writing label maps: uint8 PNG (<= 255 ids) and uint16 PNG/TIFF (847-class sets)."""
import numpy as np
from PIL import Image

from ..utils.errors import EscnetError
from ..utils.io import atomic_path


def read_label_map(path):
    """Read a label map as an ``H x W`` integer array (uint8 or uint16 as stored; palette indices kept)."""
    try:
        with Image.open(path) as img:
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(img).astype(np.uint16 if img.mode != "I" else np.int32)
            elif img.mode in ("L", "P"):
                array = np.asarray(img, dtype=np.uint8)
            else:
                raise EscnetError(f"label map {path} has unsupported mode {img.mode}")
    except FileNotFoundError:
        raise EscnetError(f"label map not found: {path}") from None
    except OSError as err:
        raise EscnetError(f"cannot read label map {path}: {err}") from None
    return array


def write_label_map(path, labels):
    """Write ``labels`` (``H x W``) atomically: uint8 when all values fit, else uint16 (PNG or TIFF)."""
    labels = np.asarray(labels)
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 65535:
        raise ValueError("label values must lie in 0..65535")
    if labels.max(initial=0) <= 255 and labels.dtype != np.uint16:
        image = Image.fromarray(labels.astype(np.uint8))
    else:
        image = Image.fromarray(labels.astype(np.uint16))
    with atomic_path(path) as tmp:
        image.save(tmp)
