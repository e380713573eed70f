"""Process memory helpers."""
import ctypes
import ctypes.util
import functools


# glibc's mallopt parameter number of M_MMAP_THRESHOLD (malloc.h).
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


def set_mmap_threshold(megabytes: float) -> bool:
    """Serve every allocation of at least ``megabytes`` MiB with its own ``mmap`` (glibc).

    Such blocks go back to the system as soon as they are freed, so the RSS follows the live
    tensors (lowest peak memory), but every large tensor then costs fresh zeroed pages: on this
    project's CPU, inference ran about 2x slower. Process-wide and one-way (glibc's adaptive
    threshold stays off). ``megabytes <= 0`` changes nothing. Returns whether it was applied.
    """
    if megabytes <= 0:
        return False
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, int(megabytes * 2**20)))


def apply_memory_settings(cfg) -> bool:
    """``MODEL.CPU_MMAP_THRESHOLD_MB`` (see :func:`set_mmap_threshold`) when the model runs on the CPU."""
    if str(cfg.MODEL.DEVICE).startswith("cpu"):
        return set_mmap_threshold(cfg.MODEL.CPU_MMAP_THRESHOLD_MB)
    return False
