"""One-command evaluation (tools/eval_benchmarks.sh -> train_net.py --eval-only) over the six
miniature benchmarks with the tiny ESC-Net: one summary table and one JSON per benchmark."""
import json
import os
import subprocess
import sys

import torch

from benchmark_miniatures import write_and_prepare_all

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIX = [  # DATASETS.TEST order of tools/eval_benchmarks.sh, with the table's column headers
    ("ade20k_full_sem_seg_freq_val_all", "A-847"),
    ("context_459_test_sem_seg", "PC-459"),
    ("ade20k_150_test_sem_seg", "A-150"),
    ("context_59_test_sem_seg", "PC-59"),
    ("voc_2012_test_sem_seg", "PAS-20"),
    ("voc_2012_test_background_sem_seg", "PAS-20b"),
]
# Classes present in each miniature's ground truth (see benchmark_miniatures): the evaluator
# must report an IoU for each (a class absent from both ground truth and prediction has none).
GT_CLASSES = {
    "ade20k_full_sem_seg_freq_val_all": ["wall", "person", "adding machine"],
    "context_459_test_sem_seg": ["accordion", "hay", "wool"],
    "ade20k_150_test_sem_seg": ["wall", "computer", "flag"],
    "context_59_test_sem_seg": ["aeroplane", "bag", "wood"],
    "voc_2012_test_sem_seg": ["aeroplane", "person", "tvmonitor"],
    "voc_2012_test_background_sem_seg": ["aeroplane", "person", "tvmonitor", "background"],
}


def save_untrained_tiny_weights(path):
    from escnet.engine import Trainer, load_config

    cfg = load_config(os.path.join(REPO, "configs", "tiny.yaml"), ["MODEL.DEVICE", "cpu"])
    torch.save({"model": Trainer.build_model(cfg).state_dict()}, path)


def test_eval_benchmarks_script_over_miniatures(tmp_path):
    root, output = tmp_path / "datasets", tmp_path / "eval"
    write_and_prepare_all(root)
    weights = str(tmp_path / "tiny.pth")
    save_untrained_tiny_weights(weights)
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", os.path.join(REPO, "tools", "eval_benchmarks.sh"), "configs/tiny.yaml", weights,
         "OUTPUT_DIR", str(output), "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]

    summary = json.loads((output / "inference" / "summary.json").read_text())
    assert list(summary) == [name for name, _ in SIX]
    table_lines = log[log.index("mIoU per benchmark:"):].splitlines()
    assert [c.strip() for c in table_lines[1].strip("|").split("|")] == [d for _, d in SIX]
    row = [float(c) for c in table_lines[3].strip("|").split("|")]
    for (name, display), shown in zip(SIX, row):
        assert summary[name]["benchmark"] == display
        assert abs(summary[name]["mIoU"] - shown) <= 0.05 + 1e-9
        metrics = json.loads((output / "inference" / name / "sem_seg_metrics.json").read_text())
        assert metrics["dataset"] == name and metrics["mIoU"] == summary[name]["mIoU"]
        for cls in GT_CLASSES[name]:
            assert metrics[f"IoU-{cls}"] is not None, (name, cls)
        if name.startswith("voc_2012"):  # PAS-20b: its 39 background names fold into one class
            iou_keys = [k for k in metrics if k.startswith("IoU-")]
            assert len(iou_keys) == (21 if "background" in name else 20)


def test_eval_benchmarks_script_usage_errors(tmp_path):
    script = os.path.join(REPO, "tools", "eval_benchmarks.sh")
    proc = subprocess.run(["bash", script, "configs/tiny.yaml"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "usage:" in proc.stderr
    missing = str(tmp_path / "missing.pth")
    proc = subprocess.run(["bash", script, "configs/tiny.yaml", missing], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: weights not found: {missing}"
