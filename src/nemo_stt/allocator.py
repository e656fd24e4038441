"""Running the service on jemalloc.

PyTorch allocates tensors with malloc. After forwards of many input lengths (the speech segments of
long files, requests of every duration) glibc's malloc keeps the freed memory fragmented in its
arenas: a process that had transcribed an hour of speech stayed ~800 MB above one that had
transcribed five minutes. jemalloc reuses that memory, and with its pages kept instead of purged on
a timer, forwards ran faster too (a 60-s forward of the benchmark-size model: 0.45 s against 0.61 s).
The engine hands the pages back once it is idle (engine/memory.py).

The allocator has to be in place before the process allocates anything, so `nemo-stt` starts
itself again with jemalloc preloaded.
"""

import ctypes.util
import logging
import os
import sys

from .settings import Settings

log = logging.getLogger(__name__)

# Keep freed pages for reuse (purging them on a timer made each forward fault its memory in again),
# in one arena: with an arena per thread, each kept the high-water mark of its own threads, and peak
# memory for the same hour of audio went from 1.4 to 2.4 GB when other work slowed the inference down.
JEMALLOC_CONF = "narenas:1,dirty_decay_ms:-1,muzzy_decay_ms:-1"


def jemalloc_loaded() -> bool:
    with open("/proc/self/maps") as maps:
        return any("libjemalloc" in line for line in maps)


def relaunch_on_jemalloc(command: list[str], settings: Settings) -> None:
    """With MEMORY_ALLOCATOR=jemalloc, replace this process by `command` (an argv) with jemalloc preloaded.

    Returns when that is not possible or not needed: jemalloc already there, or LD_PRELOAD set by the
    user (their choice stands). A MALLOC_CONF that the user set is kept; otherwise JEMALLOC_CONF applies.
    """
    if settings.MEMORY_ALLOCATOR != "jemalloc" or settings.LD_PRELOAD or not sys.platform.startswith("linux"):
        return
    if jemalloc_loaded():
        return
    library = ctypes.util.find_library("jemalloc")
    if library is None:
        log.warning("jemalloc not found: using the C library's malloc, whose memory grows with the variety of "
                    "inputs (install libjemalloc2, or set MEMORY_ALLOCATOR=system)")
        return
    # Once preloaded, LD_PRELOAD is set: the new process does not start itself again.
    os.environ["LD_PRELOAD"] = library
    os.environ["MALLOC_CONF"] = settings.MALLOC_CONF or JEMALLOC_CONF
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
