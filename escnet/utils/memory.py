"""Process memory helpers."""
import ctypes
import ctypes.util
import functools


# glibc's mallopt parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


@functools.lru_cache(maxsize=1)
def _libc():
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_heap() -> bool:
    """Return the heap's free pages to the operating system (glibc ``malloc_trim(0)``).

    CPU tensors of a few MiB live in malloc's heap; once freed, their pages stay in the
    process (and in its RSS) until something reuses them. Call this after freeing many such
    tensors that later allocations will not reuse (e.g. per-class features once decoded).
    Returns False where it is not available (no effect there).
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def _mallopt(parameter: int, megabytes: float) -> bool:
    """glibc ``mallopt(parameter, megabytes MiB)``; False where unavailable or ``megabytes <= 0``."""
    if megabytes <= 0:
        return False
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    if mallopt is None:
        return False
    return bool(mallopt(parameter, int(megabytes * 2**20)))


def set_mmap_threshold(megabytes: float) -> bool:
    """Serve every allocation of at least ``megabytes`` MiB with its own ``mmap`` (glibc).

    Such blocks go back to the system as soon as they are freed. Small values give the lowest
    peak memory, but every large tensor then costs fresh zeroed pages (1 MiB: inference about
    2x slower on this project's CPU). Process-wide; like any ``mallopt`` it turns glibc's
    adaptive thresholds off. ``megabytes <= 0`` changes nothing. Returns whether it was applied.
    """
    return _mallopt(M_MMAP_THRESHOLD, megabytes)


def set_trim_threshold(megabytes: float) -> bool:
    """Keep up to ``megabytes`` MiB of free space at the top of the heap instead of returning it
    to the system at every ``free`` (glibc's ``M_TRIM_THRESHOLD``).

    Under glibc's adaptive thresholds (trim: at most 64 MiB) the transients of each class chunk
    went back to the system once freed and were faulted in again by the next chunk; fixed
    together with :func:`set_mmap_threshold` they stay for reuse (either alone did not help).
    :func:`release_free_heap` still returns everything free when called. Process-wide;
    ``megabytes <= 0`` changes nothing. Returns whether it was applied.
    """
    return _mallopt(M_TRIM_THRESHOLD, megabytes)


def apply_memory_settings(cfg) -> bool:
    """``MODEL.CPU_MMAP_THRESHOLD_MB`` and ``MODEL.CPU_TRIM_THRESHOLD_MB`` (see
    :func:`set_mmap_threshold`, :func:`set_trim_threshold`) when the model runs on the CPU.
    Returns whether any was applied."""
    if not str(cfg.MODEL.DEVICE).startswith("cpu"):
        return False
    applied = set_mmap_threshold(cfg.MODEL.CPU_MMAP_THRESHOLD_MB)
    return set_trim_threshold(cfg.MODEL.CPU_TRIM_THRESHOLD_MB) or applied
