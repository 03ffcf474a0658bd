"""Keep freed memory in the process while Sweetspot times kernels (glibc ``mallopt``).

glibc's ``malloc`` serves large blocks with ``mmap`` and gives freed memory back to the
system (``munmap``, and trimming the top of the heap). A convolution allocates its output
and, for oneDNN, blocked copies of its input and output on every call; when those blocks are
handed back after each call, the next call page-faults all of them in again, zeroed by the
kernel. Measured on the 2-core development VM (1 thread, batch 32, oneDNN 3×3 convolution):
16→16 channels at 20×20 ran at 27–53 GF/s with glibc's defaults and 164 GF/s with freed memory
kept; 32→32 at 32×32 at 62–67 against 150 GF/s. Which calls fault depends on the history of
allocations (glibc moves its thresholds as blocks are freed), so the same layer timed twice
could differ by 2× and the dense "best backend" was not the best PyTorch can do.

Caching allocators (jemalloc, tcmalloc, which the PyTorch CPU tuning guides recommend for
inference) keep freed memory as well, so this measures the dense and sparse kernels as a
tuned deployment runs them. :func:`keep_freed_memory` raises glibc's mmap and trim thresholds
to their maximum for the rest of the process; calibration, validation and the benchmarks call
it first. ``SWEETSPOT_KEEP_FREED_MEMORY=0`` measures with the allocator as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import cache

ENV = "SWEETSPOT_KEEP_FREED_MEMORY"
# mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_MAX_INT = 2**31 - 1


@cache
def keep_freed_memory() -> str:
    """Make glibc keep freed memory for reuse (idempotent); returns how the allocator now
    behaves, for the provenance of measurements: ``"glibc, freed memory kept"``,
    ``"glibc defaults (SWEETSPOT_KEEP_FREED_MEMORY=0)"`` or ``"not glibc: unchanged"``."""
    if os.environ.get(ENV, "1").strip().lower() in {"0", "false", "no", "off"}:
        return f"glibc defaults ({ENV}=0)"
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
        version = libc.gnu_get_libc_version if libc is not None else None
    except (OSError, AttributeError):
        mallopt = version = None
    if mallopt is None or version is None:  # musl, macOS, Windows: their own allocators
        return "not glibc: unchanged"
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    kept = mallopt(M_MMAP_THRESHOLD, _MAX_INT) == 1 and mallopt(M_TRIM_THRESHOLD, _MAX_INT) == 1
    return "glibc, freed memory kept" if kept else "glibc defaults (mallopt refused)"
