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
does not keep the measurement's peak. glibc releases before 2.35 or so refuse an mmap
threshold above 32 MiB: there blocks up to 32 MiB are kept.

Nothing is changed, and the yielded state says so, with ``SWEETSPOT_KEEP_FREED_MEMORY=0``,
when ``malloc`` is not glibc's (jemalloc or tcmalloc preloaded, musl, macOS), or when the
environment already tunes glibc's malloc (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
``GLIBC_TUNABLES`` with ``glibc.malloc``): the user's own settings win.
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
KEPT_BELOW_32_MIB = "glibc, freed memory kept below 32 MiB (older glibc)"
# mallopt parameters (malloc.h) and the values glibc's dynamic thresholds settle at.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_MAX_INT = 2**31 - 1
_SETTLED_MMAP = 32 << 20
_SETTLED_TRIM = 64 << 20
USER_TUNING = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

_lock = threading.Lock()
_depth = 0
_state = ""


@cache
def _libc():
    """glibc's ``mallopt`` and ``malloc_trim`` when ``malloc`` is glibc's, else a reason."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is None or not hasattr(libc, "gnu_get_libc_version"):
            return "not glibc: unchanged"  # musl, macOS, Windows: their own allocators
        mallopt, trim = libc.mallopt, libc.malloc_trim
        process_malloc = ctypes.cast(ctypes.CDLL(None).malloc, ctypes.c_void_p).value
        glibc_malloc = ctypes.cast(libc.malloc, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return "not glibc: unchanged"
    if process_malloc != glibc_malloc:
        return "malloc is not glibc's (preloaded allocator): unchanged"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return mallopt, trim


def _unchanged_because() -> str | None:
    if os.environ.get(ENV, "1").strip().lower() in {"0", "false", "no", "off"}:
        return f"glibc as it is ({ENV}=0)"
    if any(v in os.environ for v in USER_TUNING) or "glibc.malloc" in os.environ.get(
        "GLIBC_TUNABLES", ""
    ):
        return "glibc as the environment tunes it (MALLOC_*/GLIBC_TUNABLES): unchanged"
    return None


def _keep(mallopt) -> str:
    if mallopt(M_TRIM_THRESHOLD, _MAX_INT) != 1:
        return ""
    if mallopt(M_MMAP_THRESHOLD, _MAX_INT) == 1:
        return KEPT
    if mallopt(M_MMAP_THRESHOLD, _SETTLED_MMAP) == 1:  # HEAP_MAX_SIZE / 2 before glibc 2.35
        return KEPT_BELOW_32_MIB
    mallopt(M_TRIM_THRESHOLD, _SETTLED_TRIM)
    return ""


@contextmanager
def freed_memory_kept() -> Iterator[str]:
    """While inside, glibc keeps freed memory for reuse (nestable, thread-safe); yields how the
    allocator behaves, for the provenance of measurements: :data:`KEPT`,
    :data:`KEPT_BELOW_32_MIB`, or a sentence saying why nothing was changed."""
    global _depth, _state
    reason = _unchanged_because()
    functions = _libc()
    if reason is None and isinstance(functions, str):
        reason = functions
    if reason is not None:
        yield reason
        return
    mallopt, trim = functions
    entered = False
    try:
        with _lock:
            if _depth == 0:
                _state = _keep(mallopt) or "glibc: mallopt refused, unchanged"
            if _state in (KEPT, KEPT_BELOW_32_MIB):
                _depth += 1
                entered = True
            state = _state
        yield state
    finally:
        if entered:
            with _lock:
                _depth -= 1
                if _depth == 0:
                    mallopt(M_MMAP_THRESHOLD, _SETTLED_MMAP)
                    mallopt(M_TRIM_THRESHOLD, _SETTLED_TRIM)
                    trim(0)
