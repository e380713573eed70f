"""Process memory helpers."""
import ctypes
import ctypes.util
import functools


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
