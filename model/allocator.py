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
tuned deployment runs them. :func:`freed_memory_kept` raises glibc's mmap and trim
thresholds to their maximum while calibration, validation, the kernel benchmark or a pruning
report's measurement runs; on leaving, it fixes them at the ceiling of glibc's own dynamic
adjustment (mmap from 32 MiB, trim above 64 MiB: blocks below that are reused, larger ones
returned) and hands the freed memory back (``malloc_trim``), so a long-lived service worker
does not keep the measurement's peak.
``SWEETSPOT_KEEP_FREED_MEMORY=0`` measures with the allocator as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

ENV = "SWEETSPOT_KEEP_FREED_MEMORY"
KEPT = "glibc, freed memory kept"
# mallopt parameters (malloc.h) and the values glibc's dynamic thresholds settle at.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_MAX_INT = 2**31 - 1
_SETTLED_MMAP = 32 << 20
_SETTLED_TRIM = 64 << 20

_lock = threading.Lock()
_depth = 0


@cache
def _libc():
    """glibc's ``mallopt`` and ``malloc_trim``, or ``None`` on another C library."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is None or not hasattr(libc, "gnu_get_libc_version"):
            return None  # musl, macOS, Windows: their own allocators
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return mallopt, trim


def _disabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() in {"0", "false", "no", "off"}


@contextmanager
def freed_memory_kept() -> Iterator[str]:
    """While inside, glibc keeps freed memory for reuse (nestable, thread-safe); yields how the
    allocator behaves, for the provenance of measurements: ``"glibc, freed memory kept"``,
    ``"glibc defaults (SWEETSPOT_KEEP_FREED_MEMORY=0)"``, ``"not glibc: unchanged"`` or
    ``"glibc defaults (mallopt refused)"``."""
    global _depth
    functions = _libc()
    if _disabled():
        yield f"glibc defaults ({ENV}=0)"
        return
    if functions is None:
        yield "not glibc: unchanged"
        return
    mallopt, trim = functions
    with _lock:
        if _depth == 0:
            kept = mallopt(M_MMAP_THRESHOLD, _MAX_INT) == 1
            kept = kept and mallopt(M_TRIM_THRESHOLD, _MAX_INT) == 1
            if not kept:
                mallopt(M_MMAP_THRESHOLD, _SETTLED_MMAP)
                mallopt(M_TRIM_THRESHOLD, _SETTLED_TRIM)
                state = "glibc defaults (mallopt refused)"
            else:
                state = KEPT
        else:
            state = KEPT
        if state == KEPT:
            _depth += 1
    try:
        yield state
    finally:
        if state == KEPT:
            with _lock:
                _depth -= 1
                if _depth == 0:
                    mallopt(M_MMAP_THRESHOLD, _SETTLED_MMAP)
                    mallopt(M_TRIM_THRESHOLD, _SETTLED_TRIM)
                    trim(0)
