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

import train_net
from escnet.data.dataset_mapper import SemanticSegmentationMapper
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
        original_call = SemanticSegmentationMapper.__call__
        calls = []

        def call(self, dataset_dict):
            if get_worker_info() is not None and comm.get_rank() == 1:
                calls.append(1)
                if len(calls) >= 2:
                    if pid_dir:
                        _write(os.path.join(pid_dir, "fault.time"), repr(time.time()))
                    raise RuntimeError(INJECTED_MESSAGE)
            return original_call(self, dataset_dict)

        SemanticSegmentationMapper.__call__ = call


_instrument()

if __name__ == "__main__":
    train_net.cli()
