"""escnet.utils.memory: the opt-in CPU mmap threshold and the heap release (run in a child process:
the glibc setting is process-wide and one-way)."""
import subprocess
import sys

import pytest

from escnet.utils import memory

CHILD = r"""
import ctypes, sys
import torch
from detectron2.config import get_cfg
from escnet.config import add_escnet_config
from escnet.utils.memory import apply_memory_settings, release_free_heap

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

cfg = get_cfg(); add_escnet_config(cfg)
cfg.MODEL.DEVICE = "cpu"
cfg.MODEL.CPU_MMAP_THRESHOLD_MB = float(sys.argv[1])
applied = apply_memory_settings(cfg)
# many 4 MiB tensors, every other one freed: heap holes unless each block has its own mmap
torch.ones(1024 * 1024)  # freed at once: glibc's adaptive threshold rises past 4 MiB (default mode)
tensors = [torch.ones(1024 * 1024) for _ in range(100)]
del tensors[::2]  # 50 freed blocks between live ones
before = rss()
print(applied, before)
"""


def _child_rss(threshold_mb):
    out = subprocess.run([sys.executable, "-c", CHILD, str(threshold_mb)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    applied, rss = out.stdout.split()[-2:]
    return applied == "True", int(rss)


@pytest.mark.skipif(not sys.platform.startswith("linux") or memory._malloc_trim() is None, reason="glibc only")
def test_mmap_threshold_returns_freed_blocks_and_is_off_by_default():
    applied_off, rss_off = _child_rss(0)
    applied_on, rss_on = _child_rss(1)
    assert not applied_off and applied_on
    # 50 freed 4 MiB tensors (200 MiB) stay in the default heap's RSS or not at all with mmap
    assert rss_off - rss_on > 100 * 2**20


def test_settings_are_no_ops_off_the_cpu_and_when_zero():
    from detectron2.config import get_cfg

    from escnet.config import add_escnet_config

    cfg = get_cfg()
    add_escnet_config(cfg)
    cfg.MODEL.DEVICE = "cuda"
    cfg.MODEL.CPU_MMAP_THRESHOLD_MB = 1
    assert memory.apply_memory_settings(cfg) is False
    assert memory.set_mmap_threshold(0) is False
    assert isinstance(memory.release_free_heap(), bool)
