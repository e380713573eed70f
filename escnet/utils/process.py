"""Child processes that never outlive their parent (DataLoader workers, launched ranks)."""
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

# Linux prctl option: signal this process when its parent exits (<linux/prctl.h>).
PR_SET_PDEATHSIG = 1
# Seconds between parent checks where prctl is unavailable (not Linux).
PARENT_POLL_INTERVAL_S = 1.0


def _set_parent_death_signal(sig):
    """Ask the Linux kernel to send ``sig`` when the parent exits; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _poll_parent(parent_pid):
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(PARENT_POLL_INTERVAL_S)


def die_with_parent(parent_pid):
    """End this process as soon as ``parent_pid`` (its parent) is gone, starting now.

    On Linux the kernel sends SIGKILL when the parent exits (``prctl(PR_SET_PDEATHSIG)``);
    elsewhere a daemon thread polls ``os.getppid()``. A parent that already died before this
    call (the process was re-parented) ends the process at once.
    """
    if not _set_parent_death_signal(signal.SIGKILL):
        threading.Thread(target=_poll_parent, args=(parent_pid,), daemon=True, name="parent-watch").start()
    if os.getppid() != parent_pid:
        os._exit(1)


class ParentWatchingWorkerInit:
    """DataLoader ``worker_init_fn``: the worker dies with the process that created the loader.

    Built in the loader's process (which records its pid), called in each worker; runs the
    wrapped ``worker_init_fn`` (e.g. Detectron2's seed reset) afterwards. Picklable.
    """

    def __init__(self, then=None):
        self.parent_pid = os.getpid()
        self.then = then

    def __call__(self, worker_id):
        die_with_parent(self.parent_pid)
        if self.then is not None:
            self.then(worker_id)
