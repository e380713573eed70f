"""Atomic file output: a reader never sees a half-written file."""
import contextlib
import json
import os
import uuid


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the same folder; rename it to ``path`` only on success.

    The temporary name is hidden (leading dot, so ``*.pth``-style globs skip it) and keeps
    ``path``'s extension so that writers choosing a format by extension (OpenCV, PIL, video
    writers) still work. The writer creates the file, so it gets the usual permissions (umask);
    its content is flushed to disk before the rename.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    stem, ext = os.path.splitext(os.path.basename(path))
    tmp = os.path.join(folder, f".{stem}.{uuid.uuid4().hex[:12]}.tmp{ext}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
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
        image = Image.fromarray(image)
    with atomic_path(path) as tmp:
        image.save(tmp)
