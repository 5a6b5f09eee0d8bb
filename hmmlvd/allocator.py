"""Let glibc's malloc keep freed memory for the next EM step.

An EM step allocates and frees hundreds of temporaries of 100 KiB to tens of MiB (a circuit
layer's values are [regions, B, K] floats). glibc serves every allocation above its *mmap
threshold* with a fresh ``mmap``: the kernel zero-fills its pages on first touch, and ``free``
hands them straight back, so every step pays those page faults again. The threshold starts at
128 KiB and only creeps up as large blocks are freed, so how fast a step runs depended on what
the process happened to do before (a fresh process ran the same circuit EM step up to 1.5x
slower than one that had built a Chow–Liu tree first).

:func:`keep_freed_memory` fixes both thresholds once per process: allocations up to 32 MiB
come from the heap, and the heap is trimmed back to the OS only above 256 MiB of free space.
The EM loop (:func:`hmmlvd.em.loop.run_epochs`) calls it; ``HMMLVD_MALLOPT=0`` in the
environment leaves malloc as it is. Elsewhere than Linux with glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
TRIM_THRESHOLD = 256 * 2**20

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (see the module docstring), once per process;
    True if they are set (now or before)."""
    global _applied
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux") and os.environ.get("HMMLVD_MALLOPT", "1") != "0":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
                return False
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
