"""The installed environment is consistent: pip finds no conflict, numpy honours detectron2's numpy<2,
and the libraries escnet uses work together with that numpy."""
import importlib.metadata as metadata
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.version import Version


def test_pip_check_is_clean():
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 0 and lines == ["No broken requirements found."], lines


def test_numpy_satisfies_detectron2_declaration():
    assert Version(np.__version__) < Version("2")
    try:
        requires = metadata.requires("sal-detectron2") or []
    except metadata.PackageNotFoundError:
        pytest.skip("detectron2 is the user's own build, not tools/install.sh's sal-detectron2")
    numpy_spec = [Requirement(r) for r in requires if Requirement(r).name == "numpy"]
    assert numpy_spec and all(np.__version__ in r.specifier for r in numpy_spec)


def test_installed_detectron2_wheel_describes_its_files():
    """tools/install.sh installs sal-detectron2's Python code as a pure wheel: a supported tag and
    no compiled extension that this interpreter could not load."""
    try:
        dist = metadata.distribution("sal-detectron2")
    except metadata.PackageNotFoundError:
        pytest.skip("detectron2 is the user's own build")
    assert "Tag: py3-none-any" in dist.read_text("WHEEL") and "Root-Is-Purelib: true" in dist.read_text("WHEEL")
    files = [str(f) for f in dist.files]
    assert any(f == "detectron2/__init__.py" for f in files)
    assert not [f for f in files if f.endswith((".so", ".pyd"))]
    assert all(f.split("/")[0] in ("detectron2", "sal_detectron2-0.7.2.dist-info") or f.startswith("..") for f in files)


SMOKE = textwrap.dedent(
    """
    import io, os, sys, tempfile
    import numpy as np
    import torch, torchvision, cv2, scipy.ndimage, scipy.optimize, pandas, open_clip, gradio, diffusers
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image
    from detectron2.evaluation.sem_seg_evaluation import load_image_into_numpy_array
    from detectron2.layers.mask_ops import paste_mask_in_image_old

    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert torch.from_numpy(a).mul(2).numpy()[2, 3] == 22 and torch.tensor(a).numpy().dtype == np.float32
    assert cv2.resize(np.zeros((5, 7, 3), np.uint8), (3, 2)).shape == (2, 3, 3)
    assert scipy.ndimage.label(np.eye(4, dtype=int))[1] == 4
    assert list(scipy.optimize.linear_sum_assignment(np.array([[4, 1], [2, 8]]))[1]) == [1, 0]
    assert pandas.DataFrame(a).to_numpy().sum() == a.sum()
    assert tuple(open_clip.tokenize(["a photo of a cat"]).shape) == (1, 77)
    fig = plt.figure(figsize=(1, 1)); plt.imshow(a); buf = io.BytesIO(); fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\\x89PNG"
    scheduler = diffusers.DDIMScheduler(); scheduler.set_timesteps(5)
    assert len(scheduler.timesteps) == 5
    assert gradio.Image(type="numpy") is not None
    # The Detectron2 code paths that break under numpy 2 (np.array(..., copy=False)).
    path = os.path.join(tempfile.mkdtemp(), "label.png")
    Image.fromarray(np.arange(6, dtype=np.uint8).reshape(2, 3)).save(path)
    assert load_image_into_numpy_array(path, dtype=int).sum() == 15
    mask = paste_mask_in_image_old(torch.ones(4, 4), torch.tensor([1.0, 1.0, 4.0, 4.0]), 8, 8, 0.5)
    assert int(mask.sum()) == 16
    print("smoke ok", np.__version__, torch.__version__)
    """
)


def test_libraries_work_with_installed_numpy():
    result = subprocess.run([sys.executable, "-c", SMOKE], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "smoke ok 1." in result.stdout
