"""Atomic file output: a reader never sees a half-written file."""
import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the same folder; rename it to ``path`` only on success.

    The temporary name keeps ``path``'s extension so that writers choosing a format by
    extension (OpenCV, PIL, video writers) still work.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    stem, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{ext}", dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(path, obj, indent=2):
    """Write ``obj`` as JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent)
            f.write("\n")


def save_image_atomic(path, image):
    """Save a PIL image or an ``H x W (x C)`` uint8/uint16 array to ``path`` atomically.

    The format follows the extension; uint16 arrays are written as 16-bit PNG/TIFF.
    """
    import numpy as np
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.dtype == np.uint16:
            image = Image.fromarray(image)
        else:
            image = Image.fromarray(image)
    with atomic_path(path) as tmp:
        image.save(tmp)
