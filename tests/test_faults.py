"""Faults end a run quickly and cleanly; damaged files give clear errors and lose nothing.

Multi-process cases run ``tests/fault_injection_train_net.py`` (train_net.py plus injected
faults) with 2 CPU processes (gloo) and check: the run ends non-zero within
``MAX_SECONDS_TO_END`` of the fault, prints exactly one ``error:`` line as its last line, no
launcher traceback, and leaves no process carrying the run's environment marker.
"""
import errno
import json
import logging
import os
import signal
import time

import numpy as np
import pytest
import torch

from conftest import REPO, TINY_CONFIG, read_metrics, tiny_cfg
from process_scan import FAULT_SCRIPT, assert_no_process_left, error_lines, new_marker, start

# The bound on how long a failed run may take to end (measured: a few seconds).
MAX_SECONDS_TO_END = 60.0
# Seconds to wait for the 2-process run to reach training on a busy 2-core machine.
STARTUP_TIMEOUT_S = 420
HEARTBEAT_TIMEOUT_S = 6
LAUNCHER_TRACEBACKS = ("ProcessExitedException", "ProcessRaisedException", "torch/multiprocessing/spawn.py")


def _two_process_args(output_dir, *opts):
    return [FAULT_SCRIPT, "--config-file", TINY_CONFIG, "--num-gpus", "2", "OUTPUT_DIR", str(output_dir),
            "SOLVER.MAX_ITER", "100000", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.CHECKPOINT_PERIOD", "100000",
            "DATASETS.TEST", "()", *opts]


def _wait_for_files(paths, process, timeout=STARTUP_TIMEOUT_S):
    start_time = time.monotonic()
    while not all(os.path.exists(p) for p in paths):
        if process.poll() is not None:
            pytest.fail(f"run ended before training started:\n{process.stderr()[-3000:]}")
        assert time.monotonic() - start_time < timeout, f"training did not start within {timeout} s"
        time.sleep(0.1)


def _check_clean_failure(process, stderr, marker):
    assert process.returncode not in (0, None)
    errors = error_lines(stderr)
    assert len(errors) == 1, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == errors[0]
    for name in LAUNCHER_TRACEBACKS:
        assert name not in stderr
    assert_no_process_left(marker)
    return errors[0]


def _kill_rank(tmp_path, signum, *opts):
    """Start a 2-process run, send ``signum`` to rank 1 mid-training; return (line, seconds)."""
    marker, pid_dir = new_marker(), tmp_path / "pids"
    pid_dir.mkdir()
    process = start(_two_process_args(tmp_path / "out", *opts), marker, tmp_path / "logs", ESCNET_TEST_PID_DIR=pid_dir)
    try:
        _wait_for_files([pid_dir / "rank0.pid", pid_dir / "rank1.pid"], process)
        victim = int((pid_dir / "rank1.pid").read_text())
        fault_time = time.monotonic()
        os.kill(victim, signum)
    finally:
        stderr = process.wait(timeout=300)
    seconds = time.monotonic() - fault_time
    line = _check_clean_failure(process, stderr, marker)
    assert "Traceback" not in stderr, stderr[-3000:]
    return line, seconds


def test_rank_killed_by_sigkill_ends_the_run(tmp_path):
    line, seconds = _kill_rank(tmp_path, signal.SIGKILL)
    print(f"SIGKILL of rank 1: run ended {seconds:.1f} s later")
    assert line == "error: rank 1 was killed by SIGKILL"
    assert seconds < MAX_SECONDS_TO_END


def test_rank_that_stops_answering_ends_the_run(tmp_path):
    line, seconds = _kill_rank(tmp_path, signal.SIGSTOP, "LAUNCH.HEARTBEAT_TIMEOUT", str(HEARTBEAT_TIMEOUT_S))
    print(f"SIGSTOP of rank 1: run ended {seconds:.1f} s later (heartbeat timeout {HEARTBEAT_TIMEOUT_S} s)")
    assert line.startswith("error: rank 1 stopped answering: no heartbeat for")
    # Detected between timeout - beat interval (timeout / 10) and the bound after the stop.
    assert 0.9 * HEARTBEAT_TIMEOUT_S - 0.1 <= seconds < HEARTBEAT_TIMEOUT_S + MAX_SECONDS_TO_END


def test_exception_in_one_ranks_dataloader_worker_ends_the_run(tmp_path):
    from fault_injection_train_net import INJECTED_MESSAGE

    marker, pid_dir = new_marker(), tmp_path / "pids"
    pid_dir.mkdir()
    process = start(_two_process_args(tmp_path / "out"), marker, tmp_path / "logs", ESCNET_TEST_PID_DIR=pid_dir,
                    ESCNET_TEST_FAULT="worker_exception")
    stderr = process.wait(timeout=STARTUP_TIMEOUT_S + 120)
    seconds = time.time() - float((pid_dir / "fault.time").read_text())
    print(f"exception in rank 1's DataLoader worker: run ended {seconds:.1f} s later")
    line = _check_clean_failure(process, stderr, marker)
    assert line == f"error: rank 1 failed: RuntimeError in a DataLoader worker: {INJECTED_MESSAGE}"
    assert process.returncode == 1
    assert seconds < MAX_SECONDS_TO_END


# ------------------------------------------------------------------------ damaged images
def _synthetic_copy(root):
    """A complete synthetic dataset under ``root`` (as train_net would generate it)."""
    from escnet.data.datasets.register_synthetic import SYNTHETIC_FOLDER
    from escnet.data.synthetic import ensure_dataset

    folder = os.path.join(root, SYNTHETIC_FOLDER)
    ensure_dataset(folder)
    return folder


def _corrupt(path, keep_bytes=40):
    """Truncate a file to its first bytes (a PNG with a valid signature but no image data)."""
    with open(path, "rb") as f:
        head = f.read(keep_bytes)
    with open(path, "wb") as f:
        f.write(head)


def test_user_error_in_a_rank_is_printed_once_and_leaves_nothing(tmp_path):
    folder = _synthetic_copy(str(tmp_path / "datasets"))
    image_dir = os.path.join(folder, "images", "train")
    for name in os.listdir(image_dir):
        _corrupt(os.path.join(image_dir, name))
    marker = new_marker()
    args = [FAULT_SCRIPT, "--config-file", TINY_CONFIG, "--num-gpus", "2", "OUTPUT_DIR", str(tmp_path / "out"),
            "SOLVER.MAX_ITER", "5", "SOLVER.IMS_PER_BATCH", "4", "DATASETS.TEST", "()"]
    process = start(args, marker, tmp_path / "logs", DETECTRON2_DATASETS=tmp_path / "datasets")
    stderr = process.wait(timeout=STARTUP_TIMEOUT_S + 120)
    line = _check_clean_failure(process, stderr, marker)
    assert process.returncode == 2
    assert "Traceback" not in stderr
    assert line.startswith(f"error: dataset 'synthetic_shapes_train': cannot read image {image_dir}{os.sep}train_")


def _corrupt_val_dataset(tmp_path, name, damage):
    """Register ``name``: a copy of 6 synthetic val pictures, ``damage(image, label)`` on the third."""
    import shutil

    from escnet.data.datasets.common import register_sem_seg_dataset
    from escnet.data.synthetic import IGNORE_LABEL, SYNTHETIC_CLASSES

    source = _synthetic_copy(os.environ["DETECTRON2_DATASETS"])
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for index in range(6):
        stem = f"val_{index:05d}.png"
        shutil.copy(os.path.join(source, "images", "val", stem), images / stem)
        shutil.copy(os.path.join(source, "annotations", "val", stem), labels / stem)
    damage(images / "val_00002.png", labels / "val_00002.png")
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_sem_seg_dataset(name, str(images), str(labels), SYNTHETIC_CLASSES, ignore_label=IGNORE_LABEL,
                             image_ext=".png", gt_ext=".png")
    return images / "val_00002.png", labels / "val_00002.png"


def _evaluate(tmp_path, dataset, skip):
    from detectron2.modeling import build_model

    from escnet.engine import Trainer

    cfg = tiny_cfg()
    cfg.DATASETS.TEST = (dataset,)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.SKIP_CORRUPT_FILES = skip
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    torch.manual_seed(0)
    model = build_model(cfg)
    return Trainer.test(cfg, model)


@pytest.mark.parametrize("which", ["image", "label"])
def test_corrupt_file_in_evaluation_is_an_error_naming_file_and_dataset(tmp_path, which):
    from escnet.utils.errors import EscnetError

    image, label = _corrupt_val_dataset(tmp_path, f"h2_corrupt_{which}", lambda i, l: _corrupt(i if which == "image" else l))
    with pytest.raises(EscnetError) as info:
        _evaluate(tmp_path, f"h2_corrupt_{which}", skip=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"dataset 'h2_corrupt_{which}': cannot read {'image' if which == 'image' else 'label map'} "
                              f"{image if which == 'image' else label} (")


def test_skip_switch_evaluates_the_rest_and_counts_skipped_files(tmp_path, caplog):
    _corrupt_val_dataset(tmp_path, "h2_skip", lambda image, label: _corrupt(image))
    _corrupt(tmp_path / "labels" / "val_00004.png")
    with caplog.at_level(logging.WARNING, logger="escnet"):
        results = _evaluate(tmp_path, "h2_skip", skip=True)
    assert "dataset 'h2_skip': 2 unreadable sample(s) skipped (DATALOADER.SKIP_CORRUPT_FILES)" in caplog.text
    assert "cannot read image" in caplog.text and "val_00002.png" in caplog.text
    assert "cannot read label map" in caplog.text and "val_00004.png" in caplog.text
    # The four readable pictures are evaluated: each counted once in the confusion matrix.
    confusion = np.load(tmp_path / "out" / "inference" / "h2_skip" / "confusion_matrix.npy")
    from escnet.data.label_io import read_label_map

    labels = [read_label_map(tmp_path / "labels" / f"val_{i:05d}.png") for i in (0, 1, 3, 5)]
    assert confusion.sum() == sum(int((lab != 255).sum()) for lab in labels)
    assert results["sem_seg"]["mIoU"] >= 0


def test_skip_switch_in_training_drops_unreadable_samples(tmp_path, caplog):
    from escnet.data.build import build_train_loader
    from escnet.data.dataset_mapper import SemanticSegmentationMapper

    image, _ = _corrupt_val_dataset(tmp_path, "h2_skip_train", lambda image, label: _corrupt(image))
    cfg = tiny_cfg()
    cfg.DATASETS.TRAIN = ("h2_skip_train",)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.SKIP_CORRUPT_FILES = True
    cfg.SOLVER.IMS_PER_BATCH = 6
    loader = build_train_loader(cfg, SemanticSegmentationMapper(cfg, is_train=True))
    with caplog.at_level(logging.WARNING, logger="escnet"):
        batches = [batch for _, batch in zip(range(4), loader)]
    names = {os.path.basename(sample["file_name"]) for batch in batches for sample in batch}
    assert names and "val_00002.png" not in names
    assert all("sem_seg" in sample for batch in batches for sample in batch)
    assert "so far in training data h2_skip_train" in caplog.text and str(image) in caplog.text


# ------------------------------------------------------------------------ damaged checkpoints
def _train_with_checkpoints(output_dir, max_iter=4, period=2):
    from detectron2.utils.env import seed_all_rng

    from escnet.engine import Trainer, load_config

    cfg = load_config(TINY_CONFIG, ["OUTPUT_DIR", str(output_dir), "SOLVER.MAX_ITER", str(max_iter),
                                    "SOLVER.CHECKPOINT_PERIOD", str(period), "DATASETS.TEST", "()",
                                    "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", "MODEL.DEVICE", "cpu"])
    seed_all_rng(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return cfg


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished 4-iteration run with checkpoints model_0000001, model_0000003 and model_final."""
    output_dir = tmp_path_factory.mktemp("checkpoints")
    _train_with_checkpoints(output_dir)
    return output_dir


def _copy_run(source, target):
    import shutil

    shutil.copytree(source, target)
    # Keep the files' age order (newest: model_final) after copying.
    for age, name in enumerate(["model_0000001.pth", "model_0000003.pth", "model_final.pth"]):
        os.utime(target / name, (1_000_000 + age, 1_000_000 + age))
    return target


def _resumed_trainer(cfg_dir):
    from escnet.engine import Trainer, load_config

    cfg = load_config(TINY_CONFIG, ["OUTPUT_DIR", str(cfg_dir), "SOLVER.MAX_ITER", "6", "DATASETS.TEST", "()",
                                    "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", "MODEL.DEVICE", "cpu"])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    return trainer


def test_resume_falls_back_to_the_newest_intact_checkpoint(trained_run, tmp_path, caplog):
    run = _copy_run(trained_run, tmp_path / "run")
    assert (run / "last_checkpoint").read_text() == "model_final.pth"
    _corrupt(run / "model_final.pth", keep_bytes=1000)
    (run / "model_0000003.pth").write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING):
        trainer = _resumed_trainer(run)
    assert trainer.start_iter == 2  # model_0000001.pth holds iteration 1
    assert f"checkpoint {run / 'model_final.pth'} is damaged or not a checkpoint" in caplog.text
    assert "resuming from model_0000001.pth, the newest intact checkpoint (2 newer damaged" in caplog.text


def test_last_checkpoint_naming_a_missing_file_falls_back(trained_run, tmp_path, caplog):
    run = _copy_run(trained_run, tmp_path / "run")
    (run / "model_final.pth").unlink()
    with caplog.at_level(logging.WARNING):
        trainer = _resumed_trainer(run)
    assert trainer.start_iter == 4  # model_0000003.pth
    assert "last_checkpoint names" in caplog.text and "does not exist" in caplog.text


def test_resume_with_only_damaged_checkpoints_is_one_line_error(trained_run, tmp_path):
    from escnet.utils.errors import EscnetError

    run = _copy_run(trained_run, tmp_path / "run")
    for name in ("model_0000001.pth", "model_0000003.pth", "model_final.pth"):
        _corrupt(run / name, keep_bytes=500)
    with pytest.raises(EscnetError) as info:
        _resumed_trainer(run)
    assert str(info.value).startswith(f"no intact checkpoint to resume from in {run}: checkpoint {run / 'model_final.pth'}")


def test_damaged_model_weights_is_one_line_error(trained_run, tmp_path, capsys):
    import importlib.util

    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes((trained_run / "model_final.pth").read_bytes()[:5000])
    spec = importlib.util.spec_from_file_location("train_net", os.path.join(REPO, "train_net.py"))
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    args = train_net.argument_parser().parse_args(
        ["--config-file", TINY_CONFIG, "--eval-only", "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.WEIGHTS", str(damaged)])
    with pytest.raises(SystemExit) as exit_info:
        train_net.main(args)
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: checkpoint {damaged} is damaged or not a checkpoint (")


def test_failed_checkpoint_write_keeps_previous_checkpoint_and_metrics(tmp_path, monkeypatch):
    from escnet.engine import checkpoint as checkpoint_module
    from escnet.utils.errors import EscnetError

    real_save = torch.save
    saves = []

    def save_until_disk_full(obj, path, *args, **kwargs):
        saves.append(path)
        if len(saves) < 2:
            return real_save(obj, path, *args, **kwargs)
        with open(path, "wb") as f:  # a partial file, then the disk is full
            f.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint_module.torch, "save", save_until_disk_full)
    with pytest.raises(EscnetError) as info:
        _train_with_checkpoints(tmp_path)
    assert str(info.value) == (
        f"cannot write checkpoint {tmp_path / 'model_0000003.pth'} ([Errno 28] No space left on device); "
        "model_0000001.pth and last_checkpoint are unchanged"
    )
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".pth") == ["model_0000001.pth"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and ".tmp" in p.name]
    assert torch.load(tmp_path / "model_0000001.pth", map_location="cpu", weights_only=False)["iteration"] == 1
    assert [r["iteration"] for r in read_metrics(tmp_path) if "total_loss" in r]  # metrics.json still parses
    json.loads((tmp_path / "metrics.json").read_text().splitlines()[0])
