"""train_net.py with test instrumentation, for tests/test_faults.py and tests/test_multiprocess.py.

Run it as ``PYTHONPATH=<repo> python tests/fault_injection_train_net.py <train_net arguments>``:
spawned ranks re-import this file, so the instrumentation holds in every rank.

* ``$ESCNET_TEST_PID_DIR``: each rank writes ``rank<R>.pid`` there after its first training step.
* ``$ESCNET_TEST_FAULT=worker_exception``: the DataLoader worker of rank 1 raises a RuntimeError
  on its second sample, after writing the time to ``$ESCNET_TEST_PID_DIR/fault.time``.
"""
import os
import time

from detectron2.engine import SimpleTrainer
from detectron2.utils import comm
from torch.utils.data import get_worker_info

import escnet.engine.trainer as trainer_module
import train_net
from escnet.utils.io import atomic_path

INJECTED_MESSAGE = "injected fault in a DataLoader worker"


def _write(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def _instrument():
    pid_dir = os.environ.get("ESCNET_TEST_PID_DIR", "")
    if pid_dir:
        original_step = SimpleTrainer.run_step

        def run_step(self):
            original_step(self)
            path = os.path.join(pid_dir, f"rank{comm.get_rank()}.pid")
            if not os.path.exists(path):
                _write(path, str(os.getpid()))

        SimpleTrainer.run_step = run_step
    if os.environ.get("ESCNET_TEST_FAULT") == "worker_exception":
        original_build = trainer_module.build_train_loader

        def build_train_loader(cfg, mapper):
            return original_build(cfg, FaultyMapper(mapper, comm.get_rank(), pid_dir))

        trainer_module.build_train_loader = build_train_loader


class FaultyMapper:
    """The training mapper of rank ``rank``: in rank 1's DataLoader worker, fail on sample 2."""

    def __init__(self, mapper, rank, pid_dir):
        self.mapper, self.rank, self.pid_dir, self.calls = mapper, rank, pid_dir, 0

    def __call__(self, dataset_dict):
        if self.rank == 1 and get_worker_info() is not None:
            self.calls += 1
            if self.calls >= 2:
                if self.pid_dir:
                    _write(os.path.join(self.pid_dir, "fault.time"), repr(time.time()))
                raise RuntimeError(INJECTED_MESSAGE)
        return self.mapper(dataset_dict)

_instrument()

if __name__ == "__main__":
    train_net.cli()
