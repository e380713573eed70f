"""Create first-use artefacts (datasets, downloads, caches) once, even across independent runs.

Several processes may want the same artefact at the same moment: the ranks of one multi-process
run, or two runs started together that share ``$DETECTRON2_DATASETS`` or a weight cache. One of
them takes an inter-process file lock next to the artefact and builds it; the others block on the
lock (with a timeout), then find it finished::

    from escnet.utils.locking import create_once, file_lock

    with file_lock("/cache/text_features/abc.pt"):      # lock file: /cache/text_features/.abc.pt.lock
        if not os.path.exists(path):
            build_and_write_atomically(path)

    create_once(folder, build)   # build(folder) once; later callers see folder/.complete and return

The locks are ``filelock`` locks (``fcntl.flock`` on Linux): they are released by the kernel when
the holding process dies, so a killed creator never blocks the others for good. Write the artefact
under a temporary name and rename it into place (``escnet.utils.io.atomic_path``): readers then see
either nothing or the whole file.
"""
import contextlib
import os

import filelock

from .errors import EscnetError

# Seconds a process waits for another one to finish creating an artefact before giving up.
# Long enough for a large weight download; overridable with $ESCNET_LOCK_TIMEOUT.
DEFAULT_LOCK_TIMEOUT = 3600.0
COMPLETE_MARKER = ".complete"


def lock_path(path):
    """The lock file guarding ``path``: ``<folder>/.<name>.lock`` (a hidden sibling)."""
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path.rstrip(os.sep))
    return os.path.join(folder, f".{name}.lock")


def default_timeout():
    """``$ESCNET_LOCK_TIMEOUT`` seconds if set, else ``DEFAULT_LOCK_TIMEOUT``."""
    value = os.environ.get("ESCNET_LOCK_TIMEOUT", "")
    try:
        return float(value) if value else DEFAULT_LOCK_TIMEOUT
    except ValueError:
        raise EscnetError(f"ESCNET_LOCK_TIMEOUT must be a number of seconds, not {value!r}") from None


@contextlib.contextmanager
def file_lock(path, timeout=None):
    """Hold an exclusive inter-process lock on ``path`` (a file or folder that may not exist yet).

    The lock file is ``lock_path(path)``; its folder is created. Blocks until the lock is free or
    ``timeout`` seconds (default ``default_timeout()``) have passed, then raises a one-line
    ``EscnetError`` naming the lock. Re-entrant within one process.
    """
    lock_file = lock_path(path)
    os.makedirs(os.path.dirname(lock_file), exist_ok=True)
    timeout = default_timeout() if timeout is None else timeout
    lock = filelock.FileLock(lock_file, timeout=timeout)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise EscnetError(
            f"waited {timeout:.0f} s for another process creating {path} (lock {lock_file}); "
            "if no other run is active, delete the lock file, or raise $ESCNET_LOCK_TIMEOUT"
        ) from None
    try:
        yield
    finally:
        lock.release()


def is_complete(folder):
    """True when ``folder`` carries the completion marker written by ``create_once``."""
    return os.path.isfile(os.path.join(folder, COMPLETE_MARKER))


def create_once(folder, build, timeout=None):
    """Run ``build(folder)`` unless ``folder`` is already complete; safe across processes.

    Fast path: the marker ``folder/.complete`` exists, return at once. Otherwise take
    ``file_lock(folder)``, re-check, run ``build`` (which should write files atomically, so an
    interrupted build can resume), then write the marker. Waiters return after the creator has
    written the marker, so they read a finished result.
    """
    if is_complete(folder):
        return
    with file_lock(folder, timeout):
        if is_complete(folder):
            return
        os.makedirs(folder, exist_ok=True)
        build(folder)
        marker = os.path.join(folder, COMPLETE_MARKER)
        tmp = f"{marker}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write("complete\n")
        os.replace(tmp, marker)
