"""End-to-end training, evaluation, resumption and distributed runs of train_net.py on CPU."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import REPO, TINY_CONFIG, TINY_TRAIN_ITERS, read_metrics, run_cli

NUM_SYNTHETIC_CLASSES = 6
# Measured on 2 CPU cores: 92.1 mIoU after 300 iterations (~50 s); an untrained model scores ~5-17.
MIN_TINY_MIOU = 75.0


def load_train_net():
    spec = importlib.util.spec_from_file_location("train_net", os.path.join(REPO, "train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_model_learns_synthetic_dataset(tiny_trained):
    losses = [loss for _, loss in tiny_trained.losses]
    assert len(losses) >= TINY_TRAIN_ITERS // 20 - 1
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:2]) / 2, losses
    metrics = tiny_trained.results["sem_seg"]
    assert metrics["mIoU"] > MIN_TINY_MIOU, metrics
    for name in ("grass", "water", "sand", "red ball", "blue box", "yellow kite"):
        assert f"IoU-{name}" in metrics
    summary = json.load(open(os.path.join(tiny_trained.output_dir, "inference", "summary.json")))
    assert summary["synthetic_shapes_val"]["mIoU"] == pytest.approx(metrics["mIoU"])


def test_eval_only_reproduces_final_evaluation(tiny_trained, tmp_path):
    out = tmp_path / "eval"
    proc = run_cli(["train_net.py", "--config-file", TINY_CONFIG, "--eval-only",
                    "MODEL.WEIGHTS", tiny_trained.weights, "OUTPUT_DIR", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.load(open(out / "inference" / "summary.json"))
    assert summary["synthetic_shapes_val"]["mIoU"] == pytest.approx(tiny_trained.results["sem_seg"]["mIoU"], abs=1e-6)
    per_dataset = json.load(open(out / "inference" / "synthetic_shapes_val" / "sem_seg_metrics.json"))
    assert per_dataset["mIoU"] == pytest.approx(summary["synthetic_shapes_val"]["mIoU"])
    assert "mIoU per benchmark" in proc.stdout and "Synthetic-val" in proc.stdout
    from escnet.utils.compat import compiled_ops_available

    if not compiled_ops_available():  # e.g. sal-detectron2's cp310 _C on another Python
        assert proc.stdout.count("detectron2's compiled ops (_C) are not available") == 1


def _wait_for(path, process, timeout):
    start = time.time()
    while not os.path.exists(path):
        assert process.poll() is None, "training ended before the checkpoint appeared"
        assert time.time() - start < timeout, f"{path} did not appear"
        time.sleep(0.05)


def test_resume_after_kill_continues_from_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    base = ["train_net.py", "--config-file", TINY_CONFIG]
    opts = ["OUTPUT_DIR", str(out), "SOLVER.CHECKPOINT_PERIOD", "4", "DATALOADER.NUM_WORKERS", "0"]
    process = subprocess.Popen(
        [sys.executable, *base, *opts, "SOLVER.MAX_ITER", "100000"], cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(out / "model_0000007.pth", process, timeout=300)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    last = (out / "last_checkpoint").read_text().strip()
    last_iter = int(last[len("model_"):-len(".pth")])
    assert last_iter >= 7 and not (out / "model_final.pth").exists()
    saved = torch.load(out / last, map_location="cpu", weights_only=False)
    assert saved["iteration"] == last_iter

    final_iter = last_iter + 3
    proc = run_cli([*base, "--resume", *opts, "SOLVER.MAX_ITER", str(final_iter + 1), "DATASETS.TEST", "()"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert f"Starting training from iteration {last_iter + 1}" in log
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == final_iter
    assert "optimizer" in final["trainer"]["_trainer"] and "last_epoch" in final["trainer"]["hooks"]["LRScheduler"]


def test_two_process_gloo_training_and_distributed_evaluation(tmp_path):
    out = tmp_path / "ddp"
    proc = run_cli(["train_net.py", "--config-file", TINY_CONFIG, "--num-gpus", "2",
                    "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "6", "SOLVER.IMS_PER_BATCH", "4",
                    "DATALOADER.NUM_WORKERS", "0"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "World size: 2" in log
    distributed = json.load(open(out / "inference" / "summary.json"))["synthetic_shapes_val"]["mIoU"]
    iterations = [r["iteration"] for r in read_metrics(out) if "total_loss" in r]
    assert iterations[-1] == 5
    # The same weights evaluated by one process give the same confusion matrix, hence mIoU.
    single = tmp_path / "single"
    proc = run_cli(["train_net.py", "--config-file", TINY_CONFIG, "--eval-only",
                    "MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(single)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Both ranks hold rank 0's parameters and buffers, and each image is counted exactly once.
    conf_ddp = np.load(out / "inference" / "synthetic_shapes_val" / "confusion_matrix.npy")
    conf_single = np.load(single / "inference" / "synthetic_shapes_val" / "confusion_matrix.npy")
    assert conf_ddp.tolist() == conf_single.tolist()
    single_miou = json.load(open(single / "inference" / "summary.json"))["synthetic_shapes_val"]["mIoU"]
    assert single_miou == pytest.approx(distributed)


def test_amp_on_cpu_warns_and_trains_in_fp32(tmp_path, caplog):
    from escnet.engine import Trainer, load_config

    cfg = load_config(TINY_CONFIG, ["OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", "2", "SOLVER.AMP.ENABLED", "True",
                                    "DATASETS.TEST", "()", "MODEL.DEVICE", "cpu"])
    with caplog.at_level("WARNING", logger="escnet"):
        trainer = Trainer(cfg)
    assert "AMP needs CUDA" in caplog.text
    assert type(trainer._trainer).__name__ == "SimpleTrainer"
    trainer.train()
    assert (tmp_path / "model_final.pth").exists()


@pytest.fixture(scope="module")
def train_net():
    return load_train_net()


def _run_main(train_net, argv, capsys):
    args = train_net.default_argument_parser().parse_args(argv)
    with pytest.raises(SystemExit) as exit_info:
        train_net.main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    return err[-1]


def test_missing_config_file_is_one_line_error(train_net, capsys):
    line = _run_main(train_net, ["--config-file", "configs/does-not-exist.yaml"], capsys)
    assert line == "error: config file not found: 'configs/does-not-exist.yaml'"


def test_unknown_dataset_is_one_line_error(train_net, capsys, tmp_path):
    line = _run_main(train_net, ["--config-file", TINY_CONFIG, "OUTPUT_DIR", str(tmp_path),
                                 "DATASETS.TRAIN", "('no_such_dataset',)"], capsys)
    assert line.startswith("error: unknown dataset 'no_such_dataset';") and len(line) <= 200


def test_missing_checkpoint_is_one_line_error(train_net, capsys, tmp_path):
    line = _run_main(train_net, ["--config-file", TINY_CONFIG, "--eval-only", "OUTPUT_DIR", str(tmp_path),
                                 "MODEL.WEIGHTS", str(tmp_path / "missing.pth")], capsys)
    assert line == f"error: checkpoint not found: '{tmp_path / 'missing.pth'}' (check MODEL.WEIGHTS)"


def test_empty_class_list_is_one_line_error(train_net, capsys, tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    line = _run_main(train_net, ["--config-file", TINY_CONFIG, "OUTPUT_DIR", str(tmp_path),
                                 "MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON", str(empty)], capsys)
    assert line == f"error: vocabulary file '{empty}' is empty: give at least one class name"


def test_unknown_config_key_is_one_line_error(train_net, capsys, tmp_path):
    line = _run_main(train_net, ["--config-file", TINY_CONFIG, "MODEL.ESCNET.NO_SUCH_KEY", "1"], capsys)
    assert line.startswith("error: bad config") and "NO_SUCH_KEY" in line


def test_malformed_config_file_is_one_line_error(train_net, capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  ESCNET: [unclosed\n")
    line = _run_main(train_net, ["--config-file", str(bad)], capsys)
    assert line.startswith(f"error: bad config ({bad}):")


def test_test_vocabulary_must_match_the_ground_truth_classes(train_net, capsys, tmp_path, checkpoint):
    wrong = tmp_path / "three.json"
    wrong.write_text('["grass", "water", "sand"]')
    line = _run_main(train_net, ["--config-file", TINY_CONFIG, "--eval-only", "OUTPUT_DIR", str(tmp_path),
                                 "MODEL.WEIGHTS", checkpoint, "MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON", str(wrong)], capsys)
    assert line.startswith("error: dataset 'synthetic_shapes_val': the test vocabulary has 3 classes but the ground truth has 6")


def test_checkpoint_that_does_not_fit_the_config_is_one_line_error(train_net, capsys, tmp_path, checkpoint):
    line = _run_main(train_net, ["--config-file", TINY_CONFIG, "--eval-only", "OUTPUT_DIR", str(tmp_path),
                                 "MODEL.WEIGHTS", checkpoint, "MODEL.ESCNET.HIDDEN_DIM", "16"], capsys)
    assert line.startswith("error: checkpoint does not fit the model built from the config:")
    assert "differ in shape" in line


def test_eval_only_resume_without_checkpoint_is_one_line_error(train_net, capsys, tmp_path):
    line = _run_main(train_net, ["--config-file", TINY_CONFIG, "--eval-only", "--resume", "OUTPUT_DIR", str(tmp_path)], capsys)
    assert line.startswith("error: --eval-only needs trained weights")


def test_multi_process_launch_reports_bad_input_once():
    proc = run_cli(["train_net.py", "--config-file", TINY_CONFIG, "--num-gpus", "2", "DATASETS.TRAIN", "('nope',)"])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: unknown dataset 'nope'")
