"""Shared machinery of the dataset preparation scripts.

A preparation is a list of independent *jobs* (one per raw label file); ``run_jobs`` runs
them in a process pool with a tqdm bar, skipping jobs whose outputs already exist, so a
re-run only does what is left. Every output is written atomically (``escnet.utils.io``),
so an interrupted run never leaves a half-written file that a re-run would skip.
"""
import argparse
import functools
import json
import logging
import multiprocessing
import os
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from ...utils.errors import EscnetError, cli_entry
from ..datasets.common import datasets_root
from ..label_io import read_label_map, write_label_map

logger = logging.getLogger(__name__)

TABLES_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "tables")

# Jobs handed to one worker at a time: large enough to amortise inter-process traffic,
# small enough to keep the progress bar moving.
POOL_CHUNK_SIZE = 16


@dataclass(frozen=True)
class PrepareSummary:
    """What a preparation did: outputs written now, outputs already present, output folders."""

    written: int
    skipped: int
    output_dirs: tuple

    def describe(self):
        folders = ", ".join(self.output_dirs)
        return f"wrote {self.written}, kept {self.skipped} already prepared -> {folders}"


def load_table(filename):
    """Load a JSON table shipped in ``escnet/data/tables``."""
    with open(os.path.join(TABLES_DIR, filename), encoding="utf-8") as f:
        return json.load(f)


def load_id_list(filename):
    """Load a text table of ids (one per line) shipped in ``escnet/data/tables``."""
    with open(os.path.join(TABLES_DIR, filename), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def read_id_list(path, what):
    """Image ids, the first word of each non-empty line of ``path``; ``what`` names it in errors."""
    require_file(path, what)
    with open(path, encoding="utf-8") as f:
        ids = [line.split()[0] for line in f if line.strip()]
    if not ids:
        raise EscnetError(f"{what} {path} is empty")
    return ids


def lookup_table(id_to_train_id, size, ignore_label, dtype):
    """Array ``lut`` of length ``size`` with ``lut[id] = train_id``; every other id -> ``ignore_label``."""
    lut = np.full(size, ignore_label, dtype=dtype)
    for raw_id, train_id in id_to_train_id.items():
        lut[raw_id] = train_id
    return lut


def remap(labels, lut, path):
    """Apply ``lut`` to the integer label map ``labels`` (``H x W``); ``path`` names it in errors."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise EscnetError(f"label map {path} has shape {labels.shape}; expected a single-channel H x W map")
    if labels.size and (labels.min() < 0 or labels.max() >= len(lut)):
        raise EscnetError(
            f"label map {path} holds value {int(labels.max())}, outside the expected range 0..{len(lut) - 1}"
        )
    return lut[labels]


def require_dir(path, what):
    """Raise ``EscnetError`` naming ``path`` unless it is an existing folder."""
    if not os.path.isdir(path):
        raise EscnetError(f"{what} folder not found: {path} (see datasets/README.md)")
    return path


def require_file(path, what):
    """Raise ``EscnetError`` naming ``path`` unless it is an existing file."""
    if not os.path.isfile(path):
        raise EscnetError(f"{what} not found: {path} (see datasets/README.md)")
    return path


def list_files(folder, ext, what):
    """Sorted names of the ``*ext`` files in ``folder``; raise when the folder is missing or has none."""
    require_dir(folder, what)
    names = sorted(f for f in os.listdir(folder) if f.endswith(ext) and not f.startswith("."))
    if not names:
        raise EscnetError(f"{what} folder {folder} holds no *{ext} files")
    return names


@dataclass(frozen=True)
class LabelJob:
    """Convert one raw label map ``source`` into one prepared map per entry of ``outputs``."""

    source: str
    outputs: tuple


def remap_label_file(job, luts):
    """Worker: read ``job.source``, write ``luts[i][labels]`` to ``job.outputs[i]`` (atomically)."""
    labels = read_label_map(job.source)
    for output, lut in zip(job.outputs, luts):
        write_label_map(output, remap(labels, lut, job.source))


def _outputs_exist(job):
    return all(os.path.isfile(path) for path in job.outputs)


def run_jobs(jobs, worker, desc, workers=None):
    """Run ``worker(job)`` for every job whose ``job.outputs`` are not all present yet.

    ``jobs``: objects with an ``outputs`` tuple of file paths. ``workers``: process count
    (default: all CPU cores; 1 runs in this process). Returns ``(written, skipped)``.
    """
    if workers is not None and workers < 1:
        raise EscnetError(f"the number of worker processes must be at least 1, got {workers}")
    todo = [job for job in jobs if not _outputs_exist(job)]
    skipped = len(jobs) - len(todo)
    if skipped:
        logger.info("%s: %d of %d outputs already prepared, skipping them", desc, skipped, len(jobs))
    workers = min(workers or os.cpu_count() or 1, max(len(todo), 1))
    with tqdm(total=len(todo), desc=desc, unit="file", disable=not todo) as bar:
        if workers == 1:
            for job in todo:
                worker(job)
                bar.update()
        else:
            with multiprocessing.Pool(workers) as pool:
                for _ in pool.imap_unordered(worker, todo, chunksize=POOL_CHUNK_SIZE):
                    bar.update()
    return len(todo), skipped


def remap_png_splits(base, splits, lut, name, raw_what, workers=None):
    """Remap ``base/annotations/<split>/*.png`` through ``lut`` into ``base/annotations_detectron2/<split>``.

    ``name`` labels the progress bars (e.g. "COCO-Stuff"), ``raw_what`` the raw files in errors.
    """
    worker = functools.partial(remap_label_file, luts=(lut,))
    written = skipped = 0
    outputs = []
    for split in splits:
        raw_dir = os.path.join(base, "annotations", split)
        out_dir = os.path.join(base, "annotations_detectron2", split)
        names = list_files(raw_dir, ".png", f"{name} {split} {raw_what}")
        jobs = [LabelJob(os.path.join(raw_dir, n), (os.path.join(out_dir, n),)) for n in names]
        done, kept = run_jobs(jobs, worker, f"{name} {split}", workers)
        written, skipped = written + done, skipped + kept
        outputs.append(out_dir)
    return PrepareSummary(written, skipped, tuple(outputs))


def build_arg_parser(description):
    """Argument parser shared by ``datasets/prepare_*.py``: ``--root`` and ``--workers``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--root",
        default=None,
        help="datasets root holding the raw benchmark folders (default: $DETECTRON2_DATASETS or datasets/)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: all CPU cores)"
    )
    return parser


def prepare_cli(prepare, description, add_arguments=None):
    """Build the ``main(argv)`` of a prepare script around ``prepare(root, workers=..., **extra)``.

    ``add_arguments(parser)`` may add options; their parsed values are passed to ``prepare``
    as keyword arguments. User errors end the program with a one-line message (``cli_entry``).
    """

    @cli_entry
    def main(argv=None):
        parser = build_arg_parser(description)
        if add_arguments is not None:
            add_arguments(parser)
        args = vars(parser.parse_args(argv))
        root = args.pop("root") or datasets_root()
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        summary = prepare(root, **args)
        print(summary.describe())
        return summary

    return main
