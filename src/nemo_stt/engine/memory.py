"""Handing the memory that freed tensors leave in the allocator back to the system.

Under jemalloc (how `nemo-stt` runs by default) freed pages are kept for reuse, never purged on a
timer: purging as it goes made every forward fault its memory in again (a 60-s forward took 1.5x as
long). So the pages are released once the engine has been idle for a while. Under glibc's malloc,
`malloc_trim` does the same for the free memory that its arenas keep.
"""

import ctypes

_ALL_ARENAS = 4096  # MALLCTL_ARENAS_ALL


def _allocator():
    process = ctypes.CDLL(None)
    try:
        mallctl = process.mallctl
    except AttributeError:
        pass
    else:
        mallctl.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        return "jemalloc", lambda: mallctl(f"arena.{_ALL_ARENAS}.purge".encode(), None, None, None, 0)
    try:
        malloc_trim = process.malloc_trim
    except AttributeError:
        return None, None
    malloc_trim.argtypes = [ctypes.c_size_t]
    return "glibc", lambda: malloc_trim(0)


ALLOCATOR, _release = _allocator()


def release_free_memory() -> None:
    """Return the allocator's free pages to the system (a no-op on allocators it does not know)."""
    if _release is not None:
        _release()
