"""glibc's allocator for one large CPU inference per process: keep freed memory for reuse.

A command line's choice for its own process (``infer.py`` without ``--max-memory``), never the library's.
"""

import ctypes
import ctypes.util
import platform

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_INT_MAX = 2 ** 31 - 1


def retain_freed_memory() -> bool:
    """Serve every allocation from the heap and never give freed memory back to the system (glibc; a no-op returning
    False elsewhere). Returns whether it took effect.

    By default glibc maps every block above 32 MB (each full-size activation of a 1024 x 768 output) from fresh
    pages and unmaps it on free, so the next one faults in and zeroes new pages in the kernel: on the 2-core machine
    about 0.5 s per GB, and a 1024 x 768 inference of the demo model goes through ~10 GB of them (half its system
    time). With ``mmap`` off (``M_MMAP_MAX`` 0) and trimming off, freed blocks are reused instead: the main network
    ran 2.2-2.6 s instead of 4.0 s, the whole run about 10% faster, at a peak RSS about 15% higher (blocks that
    cannot be reused exactly; docs/large_images.md). Memory budgets (``max_memory``) are planned for glibc's
    default, so the command lines leave it alone there."""
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, _INT_MAX))


def trim_freed_memory() -> bool:
    """Give the memory glibc keeps after frees back to the system (``malloc_trim(0)``; a no-op returning False
    elsewhere). For a loop of many mid-size allocations per step (C2-Matching's tiles: each below glibc's mmap
    threshold, so they come from the heap and fragment it), which otherwise raises the RSS step after step above
    what is in use (measured: 2.4 GiB RSS for 0.9 GiB in use after 90 tiles)."""
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False
