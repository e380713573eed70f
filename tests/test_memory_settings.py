"""escnet.utils.memory: the CPU heap settings (mmap and trim thresholds) and the heap release (run
in a child process: the glibc settings are process-wide and one-way)."""
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
if sys.argv[1] != "default":
    cfg.MODEL.CPU_MMAP_THRESHOLD_MB = float(sys.argv[1])
    cfg.MODEL.CPU_TRIM_THRESHOLD_MB = float(sys.argv[2])
applied = apply_memory_settings(cfg)
torch.ones(1024 * 1024)  # freed at once: glibc's adaptive threshold rises past 4 MiB (default mode)
if sys.argv[3] == "holes":  # many 4 MiB tensors, every other one freed: heap holes unless each has its own mmap
    tensors = [torch.ones(1024 * 1024) for _ in range(100)]
    del tensors[::2]  # 50 freed blocks between live ones
    print(applied, rss())
else:  # "top": 40 tensors of 4 MiB freed at the heap's top (a class chunk's transients)
    tensors = [torch.ones(1024 * 1024) for _ in range(40)]
    del tensors
    kept = rss()
    release_free_heap()
    print(applied, kept, rss())
"""

GLIBC = pytest.mark.skipif(not sys.platform.startswith("linux") or memory._malloc_trim() is None, reason="glibc only")


def _child(mmap_mb, trim_mb, pattern):
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(mmap_mb), str(trim_mb), pattern], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    applied, *rss = out.stdout.split()[-3 if pattern == "top" else -2:]
    return applied == "True", [int(r) for r in rss]


@GLIBC
def test_small_mmap_threshold_returns_freed_blocks():
    applied_off, (rss_off,) = _child(0, 0, "holes")
    applied_on, (rss_on,) = _child(1, 0, "holes")
    assert not applied_off and applied_on
    # 50 freed 4 MiB tensors (200 MiB) stay in the default heap's RSS or not at all with mmap
    assert rss_off - rss_on > 100 * 2**20


@GLIBC
@pytest.mark.parametrize("settings", [(32, 1024), ("default", "default")], ids=["fixed", "escnet defaults"])
def test_fixed_thresholds_keep_freed_blocks_for_reuse_until_released(settings):
    """A class chunk's transients (here 160 MiB of 4 MiB tensors), once freed, stay resident for
    the next chunk under escnet's settings, and release_free_heap returns them. (Under glibc's
    adaptive settings it depends on the process's history; docs/design.md has the page faults.)"""
    applied, (kept, released) = _child(*settings, "top")
    assert applied
    assert kept - released > 100 * 2**20


def test_settings_are_no_ops_off_the_cpu_and_when_zero():
    from detectron2.config import get_cfg

    from escnet.config import add_escnet_config

    cfg = get_cfg()
    add_escnet_config(cfg)
    cfg.MODEL.DEVICE = "cuda"
    cfg.MODEL.CPU_MMAP_THRESHOLD_MB = 1
    assert memory.apply_memory_settings(cfg) is False
    assert memory.set_mmap_threshold(0) is False and memory.set_trim_threshold(0) is False
    assert isinstance(memory.release_free_heap(), bool)
