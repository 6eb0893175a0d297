"""Keep freed memory inside the process: the C allocator setting that removes a training step's page faults.

A training step at LeRobot's ACT shape (batch 8, one 480x640 camera) allocates and frees activations of tens of
MiB each. glibc serves every block above its mmap threshold with a fresh ``mmap`` and gives it back with
``munmap`` on free, and trims the top of the heap whenever more than ``M_TRIM_THRESHOLD`` is free there. So the
next step gets new zero-filled pages from the kernel and touches each of them once: measured on the 2-core box
(2 threads), ~100k minor page faults per step once warm (150k-370k in the first steps) and ~0.2 s of system time
in ~10 CPU-seconds. With mmap off for large blocks and no trimming, the freed blocks stay in the heap and the next
step reuses them: ~0 faults from the fourth step on. The cost is that the process keeps its peak heap until it
exits, which is what a training loop of fixed shapes needs anyway.

This is what ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` in the environment do, applied from inside the
process (``mallopt``), so ``python -m lit_imit fit`` can switch it on for itself (``--keep_freed_memory``).
PyTorch's CPU launcher (``torch.backends.xeon.run_cpu``) reaches the same end by preloading jemalloc or tcmalloc;
this needs no extra library. Settings already made are not undone, and blocks allocated before the call keep the
behaviour they were allocated with.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

#: glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: the largest trim threshold mallopt takes (an int): 2 GiB - 1 of free heap top before anything is returned
NEVER_TRIM = 2**31 - 1


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (mallopt and its parameters are glibc's), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Ask glibc to serve large blocks from the heap and never trim it. True when both settings took; False (with
    a log line saying why) on another C library or when glibc refused one, leaving the allocator as it was
    before the refused setting."""
    libc = _glibc()
    if libc is None:
        log.info("keep_freed_memory: not glibc (%s, %s); the allocator is left as it is",
                 platform.system(), platform.libc_ver()[0] or "unknown libc")
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    for name, param, value in (("M_MMAP_MAX", M_MMAP_MAX, 0), ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, NEVER_TRIM)):
        if libc.mallopt(param, value) != 1:
            log.warning("keep_freed_memory: glibc refused mallopt(%s, %d); the allocator is left as it is",
                        name, value)
            return False
    return True
