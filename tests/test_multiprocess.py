"""First-use artefacts are created once, by one process, even by runs started together."""
import multiprocessing
import os
import time

import pytest

from conftest import TINY_CONFIG
from process_scan import assert_no_process_left, new_marker, start

RUN_TIMEOUT_S = 600
GENERATION_BANNER = "generating synthetic train"


def _train_args(output_dir, *opts, num_processes=1):
    return ["train_net.py", "--config-file", TINY_CONFIG, "--num-gpus", str(num_processes), "OUTPUT_DIR",
            str(output_dir), "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "4", "DATASETS.TEST", "()", *opts]


def _check_complete_dataset(root):
    from escnet.data.datasets.register_synthetic import SYNTHETIC_FOLDER
    from escnet.data.synthetic import SPLITS

    folder = os.path.join(root, SYNTHETIC_FOLDER)
    assert os.path.isfile(os.path.join(folder, ".complete"))
    for split, spec in SPLITS.items():
        for sub in ("images", "annotations"):
            names = os.listdir(os.path.join(folder, sub, split))
            assert len(names) == spec.num_images and not [n for n in names if n.startswith(".")], (sub, split)


def test_two_process_training_from_an_empty_dataset_root_three_times(tmp_path):
    for attempt in range(3):
        root, marker = tmp_path / f"datasets{attempt}", new_marker()
        run = start(_train_args(tmp_path / f"out{attempt}", num_processes=2), marker, tmp_path / f"logs{attempt}",
                    DETECTRON2_DATASETS=root)
        stderr = run.wait(timeout=RUN_TIMEOUT_S)
        assert run.returncode == 0, f"attempt {attempt}:\n{stderr[-3000:]}"
        assert "error:" not in stderr
        _check_complete_dataset(root)
        assert_no_process_left(marker)


def test_two_independent_runs_started_together_on_one_empty_root(tmp_path):
    root, marker = tmp_path / "datasets", new_marker()
    runs = [start(_train_args(tmp_path / f"out{i}", "DATALOADER.NUM_WORKERS", "0"), marker, tmp_path / f"logs{i}",
                  DETECTRON2_DATASETS=root) for i in range(2)]
    errors = [run.wait(timeout=RUN_TIMEOUT_S) for run in runs]
    for run, stderr in zip(runs, errors):
        assert run.returncode == 0, stderr[-3000:]
    # One run generated the dataset; the other waited for the lock and read the finished files.
    assert sum(GENERATION_BANNER in stderr for stderr in errors) == 1
    _check_complete_dataset(root)
    assert_no_process_left(marker)


# ------------------------------------------------------------------------ lock primitives
def _slow_build(folder):
    with open(os.path.join(os.path.dirname(folder), "builds.txt"), "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(1.0)
    with open(os.path.join(folder, "result.txt"), "w") as f:
        f.write("finished")


def _create_and_read(folder, results):
    from escnet.utils.locking import create_once

    create_once(folder, _slow_build)
    with open(os.path.join(folder, "result.txt")) as f:
        results.put(f.read())


def test_create_once_builds_once_and_waiters_read_the_finished_result(tmp_path):
    import escnet.utils.locking  # noqa: F401  (imported once here, not in each forked child)

    folder = str(tmp_path / "artefact")
    context = multiprocessing.get_context("fork")  # cheap: the children need nothing new
    results = context.Queue()
    processes = [context.Process(target=_create_and_read, args=(folder, results)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    assert sorted(results.get(timeout=5) for _ in processes) == ["finished"] * 4
    assert len((tmp_path / "builds.txt").read_text().split()) == 1
    _create_and_read(folder, results)  # complete: returns at once, no second build
    assert len((tmp_path / "builds.txt").read_text().split()) == 1


def test_file_lock_timeout_is_one_line_error(tmp_path):
    from escnet.utils.errors import EscnetError
    from escnet.utils.locking import file_lock

    target = tmp_path / "weights.pth"
    context = multiprocessing.get_context("fork")
    holder = context.Process(target=_hold_lock, args=(str(target), 30))
    holder.start()
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "held").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(EscnetError) as info:
            with file_lock(target, timeout=0.5):
                pass
    finally:
        holder.kill()
        holder.join()
    assert str(info.value).startswith(f"waited 0 s for another process creating {target} (lock ")
    with file_lock(target, timeout=5):  # the killed holder's lock was released by the kernel
        pass


def _hold_lock(path, seconds):
    from escnet.utils.locking import file_lock

    with file_lock(path, timeout=5):
        open(os.path.join(os.path.dirname(path), "held"), "w").close()
        time.sleep(seconds)


def test_dataset_listing_ignores_files_being_written(tmp_path):
    from escnet.data.datasets.common import list_sem_seg_pairs

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for folder in (images, labels):
        (folder / "a.png").write_bytes(b"x")
    # What atomic_path leaves while another process is still writing, and lock files.
    (labels / ".b.0123456789ab.tmp.png").write_bytes(b"x")
    (labels / ".c.png.lock").write_bytes(b"")
    records = list_sem_seg_pairs(str(images), str(labels), ".png", ".png", "probe", "")
    assert [os.path.basename(r["sem_seg_file_name"]) for r in records] == ["a.png"]
    assert records[0]["dataset_name"] == "probe"
