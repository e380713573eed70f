"""CLIPer end to end without MODEL.WEIGHTS: train_net.py --eval-only on the synthetic set (with a
per-dataset protocol reaching the model through the dataset mapper) and demo/demo.py, both with a
tiny random CLIP and a tiny random Stable Diffusion folder (no download)."""
import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

from cliper_helpers import tiny_fgc_opts, write_tiny_sd_folder
from conftest import REPO, run_cli

TINY_CONFIG = os.path.join(REPO, "configs", "cliper_tiny.yaml")
SYNTHETIC_CLASSES = 6


def test_eval_only_runs_without_weights_and_applies_the_dataset_protocol(tmp_path):
    sd_folder = write_tiny_sd_folder(str(tmp_path / "tiny_sd"))
    # Everything background: with NORMALIZE_MAPS every map is <= 1 < BACKGROUND_THRESHOLD 1.0, so
    # each pixel is labelled with the background entry 0 ("grass") of the synthetic vocabulary.
    config = tmp_path / "cliper_protocol.yaml"
    config.write_text(
        f"_BASE_: {TINY_CONFIG}\n"
        "MODEL:\n  CLIPER:\n    DATASET_PROTOCOLS:\n      synthetic_shapes_val:\n"
        "        BACKGROUND_CLASS_INDEX: 0\n        BACKGROUND_THRESHOLD: 1.0\n        NORMALIZE_MAPS: True\n"
    )
    out = tmp_path / "eval"
    proc = run_cli(["train_net.py", "--config-file", str(config), "--eval-only", *tiny_fgc_opts(sd_folder),
                    "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.load(open(out / "inference" / "synthetic_shapes_val" / "sem_seg_metrics.json"))
    ious = {k: v for k, v in metrics.items() if k.startswith("IoU-") and v == v}  # NaN: class absent
    assert len(ious) == SYNTHETIC_CLASSES
    assert ious["IoU-grass"] > 0 and all(v == 0 for k, v in ious.items() if k != "IoU-grass")
    assert metrics["mIoU"] == pytest.approx(ious["IoU-grass"] / SYNTHETIC_CLASSES)
    assert "needs trained weights" not in proc.stderr


def load_demo():
    spec = importlib.util.spec_from_file_location("escnet_demo_cliper", os.path.join(REPO, "demo", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_segments_a_picture_without_weights(tmp_path):
    sd_folder = write_tiny_sd_folder(str(tmp_path / "tiny_sd"))
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (45, 60, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "photo.png")
    demo = load_demo()
    status = demo.main(["--config-file", TINY_CONFIG, "--input", str(tmp_path / "photo.png"), "--vocab", "cat,sofa",
                        "--output", str(tmp_path / "out"), "--device", "cpu", "--opts", *tiny_fgc_opts(sd_folder)])
    assert status in (0, None)
    summary = json.load(open(tmp_path / "out" / "photo_summary.json"))
    assert summary["vocabulary"] == ["cat", "sofa"]
    labels = np.asarray(Image.open(tmp_path / "out" / "photo_labels.png"))
    assert labels.shape == (45, 60) and set(np.unique(labels)) <= {0, 1}
    assert (tmp_path / "out" / "photo_overlay.png").is_file()
