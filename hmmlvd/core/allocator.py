"""Let glibc's malloc keep freed memory for the next EM step.

An EM step allocates and frees hundreds of temporaries of 100 KiB to hundreds of MiB (a circuit
layer's values are [regions, B, K] floats; an LVD patch circuit's widest layers at K = 32 are
~100 MiB each). glibc serves every allocation above its *mmap threshold* with a fresh ``mmap``:
the kernel zero-fills its pages on first touch, and ``free`` hands them straight back, so every
step pays those page faults again. The threshold starts at 128 KiB and only creeps up as large
blocks are freed, and it cannot go above 32 MiB; blocks freed at the top of the heap are also
handed back (*trimmed*) once more than 128 KiB is free there. So how fast a step ran depended
on what the process happened to do before, and an LVD K = 32 stage-(c) step spent half its
time in ~700,000 page faults (2.7 GiB of fresh pages a step).

:func:`keep_freed_memory` sets malloc once per process so that nothing is handed back: no
allocation is served by ``mmap`` (``M_MMAP_MAX`` = 0: all come from the heap, which glibc
still falls back to ``mmap`` for if it cannot grow) and the heap is never trimmed
(``M_TRIM_THRESHOLD`` = -1). From the second EM step on, a step reuses the memory of the one
before and faults in nothing (``tests/test_allocator.py`` counts the faults). The price: the
process keeps the heap of its largest step until it exits (that memory is needed again at
the next step anyway). A process-wide setting is the program's choice, not a side effect of
a library call: the pipelines call it when they start (:func:`hmmlvd.pipelines.text.train_text`,
:func:`hmmlvd.pipelines.image_models.train_image_model` and ``image_bpd``, hence every
``hmmlvd`` training and image scoring command), and so do the scripts that train or time EM; a
program calling ``fit`` itself may call it once first. ``HMMLVD_MALLOPT=0`` in the environment
leaves malloc as it is. Elsewhere than Linux with glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_MAX = -4
#: (parameter, value) pairs set by :func:`keep_freed_memory`.
SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))
#: The same settings as glibc's environment variables (for a child process).
ENVIRONMENT = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**63 - 1)}

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Stop glibc's malloc from handing freed memory back (see the module docstring), once
    per process; True if it is set (now or before)."""
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
            _applied = all(bool(mallopt(parameter, value)) for parameter, value in SETTINGS)
    return _applied
