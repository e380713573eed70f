"""Shared test fixtures: an isolated dataset root, the repo paths, and one tiny trained model."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO, "configs", "tiny.yaml")
# Iterations of the shared tiny training run (learning test, eval-only, demo on trained weights).
TINY_TRAIN_ITERS = 300


def pytest_configure(config):
    # Registration reads $DETECTRON2_DATASETS when escnet is imported: point it at a private
    # folder before any test module imports escnet, so tests never write into the repo.
    root = tempfile.mkdtemp(prefix="escnet-test-datasets-")
    config._escnet_datasets = root
    os.environ["DETECTRON2_DATASETS"] = root
    # The on-disk text-feature cache (default $XDG_CACHE_HOME/escnet) stays private to the run too.
    cache = tempfile.mkdtemp(prefix="escnet-test-cache-")
    config._escnet_cache = cache
    os.environ["XDG_CACHE_HOME"] = cache


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "_escnet_datasets", ""), ignore_errors=True)
    shutil.rmtree(getattr(config, "_escnet_cache", ""), ignore_errors=True)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module: tiny tensors are fastest so, also on a busy CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_cli(args, timeout=600, cwd=REPO, env=None):
    """Run ``python <args>`` in the repo; return the CompletedProcess (text output)."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def read_metrics(output_dir):
    """The per-iteration records Detectron2's JSONWriter wrote to ``metrics.json``."""
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def tiny_cfg(**escnet_overrides):
    """A mutable tiny-config CfgNode on the CPU, with ``MODEL.ESCNET`` keys overridden."""
    from detectron2.config import get_cfg

    from escnet import add_escnet_config

    cfg = get_cfg()
    add_escnet_config(cfg)
    cfg.merge_from_file(TINY_CONFIG)
    cfg.MODEL.DEVICE = "cpu"
    for key, value in escnet_overrides.items():
        setattr(cfg.MODEL.ESCNET, key, value)
    return cfg


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A checkpoint of a randomly initialised tiny ESC-Net (consistency tests need no training)."""
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    folder = tmp_path_factory.mktemp("tiny_checkpoint")
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    DetectionCheckpointer(model, save_dir=str(folder)).save("tiny_random")
    return str(folder / "tiny_random.pth")


@pytest.fixture(scope="session")
def segmenter(checkpoint):
    """A ``Segmenter`` over the random tiny checkpoint."""
    from escnet import Segmenter

    return Segmenter("tiny", weights=checkpoint, device="cpu")


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory):
    """Train configs/tiny.yaml once (in-process) and evaluate it on the synthetic val split.

    Returns a namespace with ``output_dir``, ``weights`` (model_final.pth), ``results``
    (``{"sem_seg": metrics}`` as the evaluator wrote them) and ``losses`` (total loss per logged iteration).
    """
    from detectron2.utils.env import seed_all_rng

    from escnet.engine import Trainer, load_config

    output_dir = str(tmp_path_factory.mktemp("tiny_train"))
    cfg = load_config(TINY_CONFIG, ["OUTPUT_DIR", output_dir, "SOLVER.MAX_ITER", str(TINY_TRAIN_ITERS)])
    # As train_net's default_setup does: the result must not depend on which tests ran before.
    seed_all_rng(cfg.SEED)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    # The EvalHook evaluates after the last iteration and the evaluator writes its metrics.
    with open(os.path.join(output_dir, "inference", "synthetic_shapes_val", "sem_seg_metrics.json")) as f:
        results = {"sem_seg": json.load(f)}
    records = read_metrics(output_dir)
    losses = [(r["iteration"], r["total_loss"]) for r in records if "total_loss" in r]
    return types.SimpleNamespace(
        cfg=cfg,
        output_dir=output_dir,
        weights=os.path.join(output_dir, "model_final.pth"),
        results=results,
        losses=losses,
    )
