"""``sweetspot calibrate``: measure this host and fit the refined performance model.

What runs (docs/calibration.md has the details and the equations of :mod:`perfmodel.refined`):

1. wait (bounded) until enough CPUs are idle, from ``/proc/stat``;
2. microbenchmarks: read bandwidth from L1, L2 and DRAM, a copy, a large SGEMM (the paper's
   ``F``), and the per-call overhead of a tiny dense and sparse call;
3. a sweep over calibration layers (shape families 1×1, 3×3, 5×5, 7×7 stride 2, strided and
   grouped convolutions, fully connected) × batch × sparsity: the best dense backend (faster
   of PyTorch's default and oneDNN; both kept) and the direct sparse kernel, timed interleaved
   in rounds after a warm-up, the whole sweep in passes whose samples pool into medians;
   glibc is told to keep freed memory first (:mod:`model.allocator`: otherwise large calls
   page-fault their buffers in on every call, by the history of allocations);
4. noise check: the median coefficient of variation of all timings must stay under
   ``max_cv``, else :class:`NoisyRunError` and no profile;
5. fit (:class:`DenseTimeRegressor`, :class:`NativeDenseTimeRegressor`,
   :class:`SparseTimeRegressor`: scikit-learn estimators,
   non-negative least squares on relative error; the sparse kernel's FMA latency floor by a
   grid search around them, :func:`fit_sparse`) and build a :class:`HardwareProfile`
   (schema 3) with provenance and the ``refined`` block.

The validation layers of :mod:`model.validation` are never among the calibration layers, nor
are its sparsities.

For the REST service: :func:`calibrate` runs all of it and returns the profile without
writing anything; the caller saves it (:func:`perfmodel.save_profile`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.linear_model import LinearRegression

from model.allocator import freed_memory_kept
from model.threads import torch_threads
from perfmodel import Conv2dSpec, HardwareProfile, LinearSpec, save_profile
from perfmodel.hardware import (
    MAX_NAME_LENGTH,
    MAX_RATE,
    NAME_PATTERN,
    SCHEMA_VERSION,
    DenseParameters,
    FitQuality,
    MemoryBandwidths,
    NativeDenseParameters,
    Provenance,
    RefinedParameters,
    SparseParameters,
    is_builtin_profile,
    profile_names,
    user_profile_dir,
)
from perfmodel.refined import (
    DENSE_CALL_FIELD,
    DENSE_RATE_FIELD,
    DENSE_TERMS,
    NATIVE_DENSE_TERMS,
    NATIVE_RATE_FIELD,
    SPARSE_RATE_FIELD,
    SPARSE_TERMS,
    TILE_VECTORS,
    RefinedRoofline,
    dense_features,
    native_dense_features,
    native_dense_time_s,
    onednn_dense_time_s,
    runs_native_dense,
    sparse_features,
)
from perfmodel.roofline import Layer

Progress = Callable[[dict], None]

DEFAULT_NAME = "host"
DEFAULT_MAX_CV = 0.10  # median CV of all timings; above it the medians are not trustworthy
WARN_PASS_SPREAD = 0.30  # passes whose medians differ more: the host changed speed meanwhile
EXIT_NOISY = 3


class NoisyRunError(RuntimeError):
    """The timings of a calibration were too noisy to fit; no profile was written."""

    def __init__(self, noise_cv: float, max_cv: float, load: str):
        self.noise_cv = noise_cv
        self.max_cv = max_cv
        super().__init__(
            f"timings too noisy: median coefficient of variation {noise_cv:.3f} > {max_cv:.3f} "
            f"({load}); no profile written. Retry when the machine is idle, with fewer "
            "--threads, or raise --max-cv if you accept a less accurate profile"
        )


# ------------------------------------------------------------------------------ the layers


def square_conv(name: str, c: int, k: int, size: int, kernel: int, stride: int = 1,
                groups: int = 1) -> Conv2dSpec:  # fmt: skip
    """A ``c → k`` convolution on ``size × size`` images with "same" padding (the calibration
    and validation layer lists)."""
    return Conv2dSpec(
        name=name, in_channels=c, out_channels=k, in_height=size, in_width=size, kernel=kernel,
        stride=stride, padding=kernel // 2, groups=groups,
    )  # fmt: skip


CALIBRATION_LAYERS: tuple[Layer, ...] = (
    # AlexNet (Caffe) conv2, conv3, conv5: the shapes the kernel was tuned on.
    square_conv("alexnet.conv2", 96, 256, 27, 5, groups=2),
    square_conv("alexnet.conv3", 256, 384, 13, 3),
    square_conv("alexnet.conv5", 384, 256, 13, 3, groups=2),
    # 3×3 stride 1 across channel counts (incl. ones not a multiple of 16) and image sizes.
    square_conv("c3.24@40", 24, 24, 40, 3),
    square_conv("c3.48@24", 48, 48, 24, 3),
    square_conv("c3.96-160@20", 96, 160, 20, 3),
    square_conv("c3.192@10", 192, 192, 10, 3),
    square_conv("c3.320@6", 320, 320, 6, 3),
    square_conv("c3.32-64@12", 32, 64, 12, 3),
    # One 16-channel block (oneDNN keeps a single output block in registers; at batch 1
    # PyTorch's default runs its own im2col + GEMM path), and a large image whose activations
    # (1.2 MB per image) overflow L2: the CIFAR ResNet and ResNet-50 stage-1 regimes.
    square_conv("c3.16@24", 16, 16, 24, 3),
    square_conv("c3.32@24", 32, 32, 24, 3),
    square_conv("c3.64@48", 64, 64, 48, 3),
    # Small inputs (≤ 20480 elements at batch 1, no groups, not larger than 3 in both kernel
    # dimensions): PyTorch's default runs its native im2col + GEMM path there
    # (perfmodel.refined.runs_native_dense), often faster than oneDNN at batch 1; with the
    # others in this list that qualify, enough cases to fit that path (fourteen at batch 1 on
    # more than one thread, seventeen on one; two strided ones for its strided im2col).
    square_conv("c3.16-24@28", 16, 24, 28, 3),
    square_conv("c3.48@16", 48, 48, 16, 3),
    square_conv("c3.128@10", 128, 128, 10, 3),
    square_conv("c3.384@6", 384, 384, 6, 3),
    square_conv("c3s2.32-64@24", 32, 64, 24, 3, stride=2),
    square_conv("c3s2.24-48@28", 24, 48, 28, 3, stride=2),
    # Images so small that a register tile holds two output vectors (5×5: 30 outputs with the
    # padded column), where the FMA latency floor λ would show (the smallest tiles above hold
    # three): late-stage CIFAR layers. (+0.002–0.005 within_20pct on stored runs.)
    square_conv("c3.256@5", 256, 256, 5, 3),
    square_conv("c3.128-192@5", 128, 192, 5, 3),
    # And one output vector per channel (3×3 images: 12 outputs): the kernel merges short
    # last tiles into the tile before, so without this no layer has a 1-vector tile and λ = 1
    # and λ = 2 would fit alike (they differ on 3×3 maps and 1×1 convolutions on 4×4).
    square_conv("c3.256@3", 256, 256, 3, 3),
    # Strided, 5×5 and 7×7 (the "other convolution" family).
    square_conv("c3s2.48-96@24", 48, 96, 24, 3, stride=2),
    square_conv("c3s2.16-32@40", 16, 32, 40, 3, stride=2),
    square_conv("c5.32-64@20", 32, 64, 20, 5),
    square_conv("c5.64-96@12", 64, 96, 12, 5),
    square_conv("c5.16-32@20", 16, 32, 20, 5),
    square_conv("c7s2.3-32@64", 3, 32, 64, 7, stride=2),
    # 1×1 (a GEMM for the dense backend).
    square_conv("c1.256-64@14", 256, 64, 14, 1),
    square_conv("c1.128-256@20", 128, 256, 20, 1),
    square_conv("c1.512-128@7", 512, 128, 7, 1),
    # Fully connected.
    LinearSpec(name="fc.2048-1024", in_features=2048, out_features=1024),
    LinearSpec(name="fc.4096-512", in_features=4096, out_features=512),
    LinearSpec(name="fc.1024-1024", in_features=1024, out_features=1024),
)
QUICK_LAYERS = (
    "alexnet.conv3",
    "c3.24@40",
    "c3.192@10",
    "c3s2.48-96@24",
    "c5.64-96@12",
    "c1.256-64@14",
    "fc.2048-1024",
)
CALIBRATION_SPARSITIES = (0.35, 0.6, 0.75, 0.85, 0.92, 0.96)
QUICK_SPARSITIES = (0.6, 0.85, 0.96)
CALIBRATION_BATCHES = (1, 16)


@dataclass(frozen=True)
class Plan:
    """What one calibration run measures and how hard."""

    layers: tuple[Layer, ...]
    sparsities: tuple[float, ...]
    batches: tuple[int, ...]
    repeats: int  # timed rounds per pass; medians over all rounds of all passes
    warmup: int  # untimed rounds first
    min_sample_s: float  # a timing sample loops a call until it lasts at least this
    idle_timeout_s: float  # longest wait for idle CPUs before measuring anyway
    passes: int = 1  # the whole sweep, repeated; samples pooled (see pool_timings)


# How a profile's provenance notes say it came from the quick plan (`sweetspot predict` warns)
QUICK_NOTE = "quick plan (calibrate --quick): less accurate"


def calibrated_quick(profile: HardwareProfile) -> bool:
    """Whether ``profile`` was calibrated with the quick plan (its provenance notes say so)."""
    notes = profile.provenance.notes or ""
    return profile.provenance.kind == "calibration" and notes.startswith(QUICK_NOTE)


def plan_for(quick: bool) -> Plan:
    """The full plan (≤ 3 min on 2 cores) or the quick one (≤ 60 s)."""
    if quick:
        layers = tuple(layer for layer in CALIBRATION_LAYERS if layer.name in QUICK_LAYERS)
        return Plan(layers, QUICK_SPARSITIES, CALIBRATION_BATCHES, 3, 1, 2e-3, 5.0)
    return Plan(CALIBRATION_LAYERS, CALIBRATION_SPARSITIES, CALIBRATION_BATCHES, 5, 1, 2e-3, 20.0,
                passes=3)  # fmt: skip


# ------------------------------------------------------------------------------ the host


def cpu_model() -> str:
    """The CPU model string of /proc/cpuinfo (or what the platform module knows)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, or None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cpus(interval_s: float = 0.5) -> float | None:
    """CPUs busy over the next ``interval_s`` (0 … cores), or None where unknown."""
    first = _cpu_ticks()
    time.sleep(interval_s)
    second = _cpu_ticks()
    if first is None or second is None or second[1] == first[1]:
        return None
    return (os.cpu_count() or 1) * (second[0] - first[0]) / (second[1] - first[1])


def load_summary() -> str:
    """'load 1.92 2.74 2.62 on 2 cores' from /proc/loadavg."""
    try:
        with open("/proc/loadavg") as loadavg:
            load = " ".join(loadavg.read().split()[:3])
    except OSError:
        load = "unknown"
    return f"load {load} on {os.cpu_count()} cores"


def wait_for_idle(threads: int, timeout_s: float, progress: Progress | None = None) -> float | None:
    """Wait until ``threads`` CPUs are idle (busy ≤ cores − threads + 0.25), at most
    ``timeout_s``; returns the busy CPUs last seen (the run goes on either way: the noise
    check decides whether its timings are usable)."""
    cores = os.cpu_count() or 1
    deadline = time.monotonic() + timeout_s
    while True:
        busy = busy_cpus()
        if busy is None or busy <= cores - threads + 0.25 or time.monotonic() >= deadline:
            if progress:
                progress({"stage": "idle", "busy_cpus": busy, "load": load_summary()})
            return busy


# ------------------------------------------------------------------------------ timing


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the median of the samples, their coefficient of variation and, for
    timings pooled from several passes, the spread of the passes' medians (max / min − 1)."""

    median_s: float
    cv: float
    samples: tuple[float, ...] = ()
    spread: float = 0.0
    passes: int = 1

    @classmethod
    def of(cls, samples: Sequence[float]) -> Timing:
        mean = statistics.fmean(samples)
        cv = statistics.pstdev(samples) / mean if len(samples) > 1 and mean > 0 else 0.0
        return cls(statistics.median(samples), cv, tuple(samples))


def time_interleaved(
    functions: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    min_sample_s: float = 2e-3,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
    """Time every function once per round, ``repeats`` rounds after ``warmup`` rounds.

    A sample loops a function enough times to last ``min_sample_s`` (short calls are
    otherwise all timer noise) and reports seconds per call. Interleaving makes machine noise
    hit every contender alike (docs/research.md §7).

    The loop counts come from warm calls: a function's first call is untimed (it builds caches,
    e.g. the sparse kernel's offsets, and can be 1000× a steady call), then a burst of calls
    lasting a quarter of ``min_sample_s`` gives the time per call. Counting from the first call
    made samples of one or two cold calls for small layers (a batch-1 CIFAR layer's first
    sparse case read 40–70% slow).
    """
    loops = {}
    for name, function in functions.items():
        function()
        calls, started = 0, clock()
        while True:
            function()
            calls += 1
            elapsed = clock() - started
            if elapsed >= min_sample_s / 4 or calls >= 100_000:  # a clock that stands still
                break
        loops[name] = max(1, math.ceil(min_sample_s * calls / max(elapsed, 1e-9)))
    for _ in range(max(warmup - 1, 0)):
        for function in functions.values():
            function()
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            n = loops[name]
            started = clock()
            for _ in range(n):
                function()
            samples[name].append((clock() - started) / n)
    return {name: Timing.of(values) for name, values in samples.items()}


# ------------------------------------------------------------------------------ measurements


@dataclass(frozen=True)
class Measurement:
    """One (layer, batch, density) case: the best dense backend against the sparse kernel."""

    layer: Layer  # carries the batch
    density: float
    dense: Timing
    dense_backend: str
    sparse: Timing
    # Every dense backend's timing by name ("default": F.conv2d, "onednn"); `dense` is the
    # fastest. The refined model fits PyTorch's native path from "default" where it runs.
    dense_backends: dict[str, Timing] = field(default_factory=dict, compare=False)

    @property
    def speedup(self) -> float:
        return self.dense.median_s / self.sparse.median_s


def _prune_exact(weight, sparsity: float, generator):
    """A copy of ``weight`` with exactly ``round(sparsity · numel)`` zeros at random places."""
    import torch

    flat = weight.clone().reshape(-1)
    zeros = round(sparsity * flat.numel())
    flat[torch.randperm(flat.numel(), generator=generator)[:zeros]] = 0.0
    return flat.reshape(weight.shape)


def layer_functions(
    layer: Layer, sparsities: Sequence[float], seed: int = 0
) -> dict[str, Callable[[], object]]:
    """The calls to time for one layer: dense (both backends) and sparse at every sparsity, on
    one input and one set of weights drawn from ``seed``.

    Keys: ``dense:default``, ``dense:onednn`` (when PyTorch has it), ``sparse:{sparsity}``.
    """
    import torch
    import torch.nn.functional as F

    from model.sparse import (
        conv_weight_to_csr,
        linear_weight_to_csr,
        sparse_conv2d,
        sparse_linear,
    )

    generator = torch.Generator().manual_seed(seed)
    N = layer.batch
    functions: dict[str, Callable[[], object]] = {}
    if isinstance(layer, LinearSpec):
        x = torch.randn(N, layer.in_features, generator=generator)
        weight = torch.randn(layer.out_features, layer.in_features, generator=generator)
        bias = torch.randn(layer.out_features, generator=generator)
        functions["dense:default"] = lambda: F.linear(x, weight, bias)
        for s in sparsities:
            csr = linear_weight_to_csr(_prune_exact(weight, s, generator))
            functions[f"sparse:{s}"] = lambda csr=csr: sparse_linear(x, csr, bias)
    else:
        x = torch.randn(N, layer.in_channels, layer.in_height, layer.in_width, generator=generator)
        weight = torch.randn(
            layer.out_channels, layer.in_channels // layer.groups, *layer.kernel,
            generator=generator,
        )  # fmt: skip
        bias = torch.randn(layer.out_channels, generator=generator)
        st, pd, dl, g = layer.stride, layer.padding, layer.dilation, layer.groups
        if layer.padding_end is not None:  # asymmetric: the ops pad symmetrically, pad x first
            (top, left), (bottom, right) = layer.padding, layer.padding_end
            x, pd = F.pad(x, (left, right, top, bottom)), (0, 0)
        functions["dense:default"] = lambda: F.conv2d(x, weight, bias, st, pd, dl, g)
        if torch.backends.mkldnn.is_available():
            functions["dense:onednn"] = lambda: torch.ops.aten.mkldnn_convolution(
                x, weight, bias, list(pd), list(st), list(dl), g
            )
        for s in sparsities:
            csr = conv_weight_to_csr(_prune_exact(weight, s, generator), g)
            functions[f"sparse:{s}"] = lambda csr=csr: sparse_conv2d(x, csr, bias, st, pd, dl)
    return functions


def time_layer(
    functions: dict[str, Callable[[], object]], repeats: int, warmup: int, min_sample_s: float
) -> dict[str, Timing]:
    """One layer's :func:`layer_functions`, all interleaved in one set of rounds (no autograd)."""
    import torch

    with torch.no_grad():
        return time_interleaved(functions, repeats, warmup, min_sample_s)


def pool_timings(passes: Sequence[dict[str, Timing]]) -> dict[str, Timing]:
    """One timing per function from several passes: the median of all their samples; ``cv``
    the mean within-pass CV (the noise of the machine during a pass, comparable to one pass's),
    ``spread`` how far the passes' medians lie apart.

    Passes spread over a run sample the machine's slow and fast phases (on a shared 2-core
    host a 2-thread batch-1 call can run at half speed for seconds: docs/calibration.md,
    "Why passes"), where one pass would catch just one.
    """
    if len(passes) == 1:
        return dict(passes[0])
    pooled = {}
    for name in passes[0]:
        timings = [run[name] for run in passes]
        medians = [t.median_s for t in timings]
        pooled[name] = Timing(
            median_s=statistics.median([s for t in timings for s in t.samples]),
            cv=statistics.fmean(t.cv for t in timings),
            samples=tuple(s for t in timings for s in t.samples),
            spread=max(medians) / min(medians) - 1.0 if min(medians) > 0 else 0.0,
            passes=len(timings),
        )
    return pooled


def fastest(backends: dict[str, Timing]) -> tuple[str, Timing]:
    """The backend with the least median time, and its timing."""
    return min(backends.items(), key=lambda item: item[1].median_s)


def measurements_of(
    layer: Layer, sparsities: Sequence[float], timings: dict[str, Timing]
) -> list[Measurement]:
    """The cases of one layer from its timings (:func:`time_layer`); the dense backend is the one
    with the faster median, shared by the layer's cases."""
    backends = {
        name.split(":", 1)[1]: t for name, t in timings.items() if name.startswith("dense:")
    }
    backend, dense = fastest(backends)
    return [
        Measurement(layer, 1.0 - s, dense, backend, timings[f"sparse:{s}"], backends)
        for s in sparsities
    ]


@contextmanager
def measuring(threads: int) -> Iterator[str]:
    """The state every timing here runs in: ``threads`` torch threads (restored afterwards)
    and freed memory kept (:mod:`model.allocator`); yields the allocator's state."""

    with freed_memory_kept() as allocator, torch_threads(threads):
        yield allocator


def measure_passes(
    layers: Sequence[Layer],
    sparsities: Sequence[Sequence[float]],
    passes: int,
    repeats: int,
    warmup: int = 1,
    min_sample_s: float = 2e-3,
    seed: int = 0,
    progress: Callable[[int, Layer], None] | None = None,
) -> list[list[dict[str, Timing]]]:
    """Time every layer ``passes`` times, whole passes one after the other (every other pass in
    reverse order); result ``[layer][pass]`` timings. ``progress(step, layer)`` before each.

    Each layer's input and pruned weights (seed ``seed + index + 1``) are built once, on its
    first pass, and kept until its last: drawing and converting them again would cost as much
    per pass as a third of the timing (the random pruning's permutations, the CSR builds).
    """
    runs: list[list[dict[str, Timing]]] = [[] for _ in layers]
    built: list[dict[str, Callable[[], object]] | None] = [None] * len(layers)
    step = 0
    for p in range(passes):
        order = range(len(layers)) if p % 2 == 0 else reversed(range(len(layers)))
        for i in order:
            if progress:
                progress(step, layers[i])
            step += 1
            functions = built[i]
            if functions is None:
                functions = layer_functions(layers[i], sparsities[i], seed + i + 1)
            built[i] = functions if p + 1 < passes else None
            runs[i].append(time_layer(functions, repeats, warmup, min_sample_s))
    return runs


def measure_memory(threads: int) -> tuple[MemoryBandwidths, float]:
    """Read bandwidth from L1, L2 and DRAM, a copy, and the SGEMM rate (the paper's F).

    Cache levels: ``buffer.expand(reps, n).sum()`` reads the same ``n`` floats ``reps`` times
    without materialising them, so a small buffer stays in its cache level.
    """
    import torch

    def read_rate(n_floats: int, total_bytes: int) -> float:
        buffer = torch.randn(n_floats)
        reps = max(1, total_bytes // (n_floats * 4))
        view = buffer.expand(reps, n_floats)
        timing = time_interleaved({"sum": view.sum}, repeats=5, min_sample_s=5e-3)["sum"]
        return reps * n_floats * 4 / timing.median_s

    l1 = read_rate(4096, 64 << 20)  # 16 KiB
    l2 = read_rate(131072, 64 << 20)  # 512 KiB
    dram = read_rate(64 << 20, 256 << 20)  # 256 MiB, read once
    source = torch.randn(16 << 20)
    target = torch.empty_like(source)
    copy = time_interleaved({"copy": lambda: target.copy_(source)}, repeats=5)["copy"]
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    gemm = time_interleaved({"mm": lambda: torch.mm(a, b)}, repeats=5)["mm"]
    memory = MemoryBandwidths(
        l1_bytes_per_s=l1,
        l2_bytes_per_s=l2,
        dram_bytes_per_s=dram,
        dram_copy_bytes_per_s=2 * source.numel() * 4 / copy.median_s,
    )
    return memory, 2 * 1024**3 / gemm.median_s


def _size_bytes(text: str) -> int | None:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    try:
        return int(text[:-1]) * units[text[-1]] if text[-1:] in units else int(text)
    except (ValueError, IndexError):
        return None


def l2_cache_bytes(
    threads: int = 1, root: Path = Path("/sys/devices/system/cpu")
) -> int | None:
    """The L2 cache the first ``threads`` CPUs this process may run on have between them, from
    sysfs: each distinct L2 once (SMT siblings and core clusters share one); ``None`` where the
    kernel does not say."""
    try:
        cpus = sorted(os.sched_getaffinity(0))[:threads]
    except (AttributeError, OSError):
        cpus = list(range(threads))
    caches: dict[str, int] = {}
    for cpu in cpus:
        for index in sorted((root / f"cpu{cpu}" / "cache").glob("index*")):
            try:
                level = (index / "level").read_text().strip()
                kind = (index / "type").read_text().strip()
                size = _size_bytes((index / "size").read_text())
                shared = index / "shared_cpu_list"
                owner = shared.read_text().strip() if shared.exists() else f"cpu{cpu}"
            except OSError:
                continue
            if level == "2" and kind in {"Unified", "Data"} and size:
                caches[owner] = size
                break
    return sum(caches.values()) or None


# ------------------------------------------------------------------------------ the fit


def _design(rows: Sequence[dict[str, float]], terms: Sequence[str]) -> np.ndarray:
    return np.array([[row[t] for t in terms] for row in rows], dtype=float)


class _NonNegativeTimeRegressor(RegressorMixin, BaseEstimator):
    """Time = Σ coefficient·feature with every coefficient ≥ 0, fitted on relative error.

    Columns are scaled to unit maximum (the features span 1 to 1e10) and weighted by
    ``1/y²`` so that a 20 µs layer counts as much as a 200 ms one. One pass of outlier
    removal: cases whose relative residual exceeds ``outlier_factor`` × the median one (and
    ``min_outlier_error``) are dropped and the fit repeated. Learned attributes: ``coef_``
    (seconds per unit of each term, in ``terms`` order), ``outliers_`` (dropped rows).
    """

    terms: tuple[str, ...] = ()

    def __init__(self, outlier_factor: float = 4.0, min_outlier_error: float = 0.25):
        self.outlier_factor = outlier_factor
        self.min_outlier_error = min_outlier_error

    def _fit_once(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:  # noqa: N803
        scale = X.max(axis=0)
        scale[scale <= 0] = 1.0
        regression = LinearRegression(fit_intercept=False, positive=True)
        regression.fit(X / scale, y, sample_weight=1.0 / y**2)
        return regression.coef_ / scale

    def fit(self, X, y):  # noqa: N803 - scikit-learn's names
        X = np.asarray(X, dtype=float)
        y = np.asarray(y, dtype=float)
        if X.ndim != 2 or X.shape[1] != len(self.terms) or len(y) != len(X):
            raise ValueError(f"X must be (n, {len(self.terms)}) and y (n,)")
        if np.any(y <= 0):
            raise ValueError("times must be positive")
        coef = self._fit_once(X, y)
        errors = np.abs(X @ coef - y) / y
        limit = max(self.min_outlier_error, self.outlier_factor * float(np.median(errors)))
        keep = errors <= limit
        self.outliers_ = np.flatnonzero(~keep)
        if len(self.outliers_) > 0 and keep.sum() >= len(self.terms):
            coef = self._fit_once(X[keep], y[keep])
        self.coef_ = coef
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X):  # noqa: N803
        return np.asarray(X, dtype=float) @ self.coef_

    def coefficients(self) -> dict[str, float]:
        """Seconds per unit of each term, by name (after :meth:`fit`)."""
        return dict(zip(self.terms, self.coef_.tolist(), strict=True))


def _rate(seconds_per_unit: float) -> float | None:
    """The rate of a fitted term; None (negligible) beyond the fastest rate a profile holds
    (``MAX_RATE``, 1e18 per second: under a nanosecond for a billion units)."""
    return 1.0 / seconds_per_unit if seconds_per_unit * MAX_RATE > 1.0 else None


class DenseTimeRegressor(_NonNegativeTimeRegressor):
    """Fits :class:`perfmodel.hardware.DenseParameters` (columns: ``DENSE_TERMS``)."""

    terms = DENSE_TERMS

    def parameters(self) -> DenseParameters:
        c = self.coefficients()
        rates = {field: _rate(c[term]) for term, field in DENSE_RATE_FIELD.items()}
        calls = {field: c[term] for term, field in DENSE_CALL_FIELD.items()}
        return DenseParameters(call_overhead_s=c["call"], **calls, **rates)


class NativeDenseTimeRegressor(_NonNegativeTimeRegressor):
    """Fits :class:`perfmodel.hardware.NativeDenseParameters` (columns:
    ``NATIVE_DENSE_TERMS``)."""

    terms = NATIVE_DENSE_TERMS

    def parameters(self) -> NativeDenseParameters:
        c = self.coefficients()
        rates = {field: _rate(c[term]) for term, field in NATIVE_RATE_FIELD.items()}
        return NativeDenseParameters(call_overhead_s=c["call"], **rates)


class SparseTimeRegressor(_NonNegativeTimeRegressor):
    """Fits :class:`perfmodel.hardware.SparseParameters` (columns: ``SPARSE_TERMS``, built with
    some FMA latency floor: :func:`fit_sparse` picks it)."""

    terms = SPARSE_TERMS

    def parameters(self, fma_latency_vectors: float) -> SparseParameters:
        """The fitted rates, with the latency floor the design matrix was built with."""
        c = self.coefficients()
        rates = {field: _rate(c[term]) for term, field in SPARSE_RATE_FIELD.items()}
        return SparseParameters(
            call_overhead_s=c["call"], fma_latency_vectors=fma_latency_vectors, **rates
        )


# Candidate FMA latency floors of a register tile, in vectors (1 = none): the FMA latency
# (4–5 cycles) over the loop's cycles per vector (1–1.5 unaligned loads) on the x86 cores we
# know, up to the 12-vector tile itself.
LATENCY_VECTORS = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, float(TILE_VECTORS))


def fit_sparse(
    measurements: Sequence[Measurement],
    vector_width: int = 16,
    latency_vectors: Sequence[float] = LATENCY_VECTORS,
    cache_bytes: int | None = None,
    threads: int = 1,
) -> tuple[SparseTimeRegressor, float, np.ndarray]:
    """The sparse fit at the latency floor whose fit has the least RMS relative error.

    The floor enters the features non-linearly, so each candidate gets its own linear fit;
    returns the regressor, the floor and the design matrix it was fitted on.
    """
    if not latency_vectors:
        raise ValueError("fit_sparse needs at least one latency floor to try")
    y = np.array([m.sparse.median_s for m in measurements])
    best = None
    for floor in latency_vectors:
        X = _design(
            [
                sparse_features(
                    m.layer, m.density, vector_width, floor, cache_bytes, threads=threads
                )
                for m in measurements
            ],
            SPARSE_TERMS,
        )
        fit = SparseTimeRegressor().fit(X, y)
        error = float(np.sqrt(np.mean((fit.predict(X) / y - 1.0) ** 2)))
        if best is None or error < best[0] - 1e-12:
            best = (error, fit, floor, X)
    return best[1], best[2], best[3]


def _timings(measurements: Sequence[Measurement]) -> list[Timing]:
    """Every timing of a run once: each layer's dense timing (shared by its cases), then the
    sparse ones."""
    dense = {id(m.dense): m.dense for m in measurements}
    return [*dense.values(), *(m.sparse for m in measurements)]


def noise_of(measurements: Sequence[Measurement]) -> float:
    """The run's noise: median coefficient of variation over every dense and sparse timing."""
    values = [t.cv for t in _timings(measurements)]
    return statistics.median(values) if values else 0.0


def spread_of(measurements: Sequence[Measurement]) -> float | None:
    """Median spread of the passes' medians over every timing (``None`` for one pass)."""
    if all(m.sparse.passes == 1 for m in measurements):
        return None
    return statistics.median([t.spread for t in _timings(measurements)])


def fit_refined(
    measurements: Sequence[Measurement],
    memory: MemoryBandwidths,
    threads: int,
    vector_width: int = 16,
    isa: str | None = None,
    duration_s: float | None = None,
    cache_bytes: int | None = None,
) -> RefinedParameters:
    """Fit the refined model's parameters to calibration measurements (``cache_bytes``: the
    L2 of the cores measured, for the sparse cold-activation term; ``None``: no such term).

    Dense: oneDNN's model on every layer (on layers where ``F.conv2d`` runs PyTorch's native
    path, on the forced-oneDNN timing); the native path's own model on the default backend's
    timings of those layers, when there are enough of them. The dense prediction is the faster
    of the two, as the measurement is.
    """
    dense_cases = list({id(m.dense): m for m in measurements}.values())
    dense_X = _design([dense_features(m.layer, vector_width) for m in dense_cases], DENSE_TERMS)
    native_cases = [
        (i, m) for i, m in enumerate(dense_cases)
        if runs_native_dense(m.layer, threads) and {"default", "onednn"} <= m.dense_backends.keys()
    ]  # fmt: skip
    if len(native_cases) <= len(NATIVE_DENSE_TERMS):
        native_cases = []  # too few to fit the native path: oneDNN's model takes the best time
    onednn_y = np.array([m.dense.median_s for m in dense_cases])
    for i, m in native_cases:
        onednn_y[i] = m.dense_backends["onednn"].median_s
    dense_fit = DenseTimeRegressor().fit(dense_X, onednn_y)
    dense_predicted = dense_fit.predict(dense_X)
    native_fit = None
    if native_cases:
        native_X = _design([native_dense_features(m.layer) for _, m in native_cases],
                           NATIVE_DENSE_TERMS)  # fmt: skip
        native_y = np.array([m.dense_backends["default"].median_s for _, m in native_cases])
        native_fit = NativeDenseTimeRegressor().fit(native_X, native_y)
        for (i, _), native in zip(native_cases, native_fit.predict(native_X), strict=True):
            dense_predicted[i] = min(dense_predicted[i], native)
    dense_y = np.array([m.dense.median_s for m in dense_cases])
    sparse_y = np.array([m.sparse.median_s for m in measurements])
    sparse_fit, latency_vectors, sparse_X = fit_sparse(
        measurements, vector_width, cache_bytes=cache_bytes, threads=threads
    )

    def mape(predicted: np.ndarray, measured: np.ndarray) -> float:
        return float(np.mean(np.abs(predicted - measured) / measured))

    dense_by_id = dict(zip([id(m.dense) for m in dense_cases], dense_predicted, strict=True))
    fits = [dense_fit, sparse_fit, *([native_fit] if native_fit is not None else [])]
    dropped = sum(len(fit.outliers_) for fit in fits)
    predicted_speedup = np.array([dense_by_id[id(m.dense)] for m in measurements]) / (
        sparse_fit.predict(sparse_X)
    )
    measured_speedup = np.array([m.speedup for m in measurements])
    return RefinedParameters(
        threads=threads,
        vector_width=vector_width,
        isa=isa,
        memory=memory,
        dense=dense_fit.parameters(),
        native_dense=native_fit.parameters() if native_fit is not None else None,
        sparse=sparse_fit.parameters(latency_vectors),
        cache_bytes=cache_bytes,
        fit=FitQuality(
            dense_mape=mape(dense_predicted, dense_y),
            sparse_mape=mape(sparse_fit.predict(sparse_X), sparse_y),
            speedup_mape=mape(predicted_speedup, measured_speedup),
            noise_cv=noise_of(measurements),
            pass_spread=spread_of(measurements),
            measurements=len(measurements),
            outliers_dropped=dropped,
            duration_s=duration_s,
        ),
    )


def simulate(
    profile: HardwareProfile,
    plan: Plan,
    noise_cv: float = 0.0,
    seed: int = 0,
) -> list[Measurement]:
    """The measurements ``profile``'s refined model predicts for ``plan`` (tests, examples).

    With ``noise_cv`` > 0 every timing gets ``plan.repeats`` samples with that relative
    spread (their median stays at the prediction).
    """
    rng = np.random.default_rng(seed)
    model = RefinedRoofline()

    def timing(seconds: float) -> Timing:
        if noise_cv <= 0:
            return Timing(seconds, 0.0, (seconds,))
        spread = rng.normal(0.0, noise_cv, plan.repeats)
        spread -= np.median(spread)
        return Timing.of([seconds * max(1.0 + v, 0.05) for v in spread])

    measurements = []
    for batch in plan.batches:
        for spec in plan.layers:
            layer = spec.with_batch(batch)
            backends = {"onednn": timing(onednn_dense_time_s(layer, profile))}
            native = native_dense_time_s(layer, profile)
            if native is not None:
                backends["default"] = timing(native)
            backend, dense = fastest(backends)
            for s in plan.sparsities:
                sparse = timing(model.sparse_time(layer, profile, 1.0 - s).total_s)
                measurements.append(Measurement(layer, 1.0 - s, dense, backend, sparse, backends))
    return measurements


# ------------------------------------------------------------------------------ the profile


@dataclass
class CalibrationData:
    """Everything one run measured: the input of :func:`build_profile`."""

    measurements: list[Measurement]
    memory: MemoryBandwidths
    gemm_flops_per_s: float
    threads: int
    vector_width: int = 16
    isa: str | None = None
    kernel: str = "native"
    load: str = field(default_factory=load_summary)
    duration_s: float | None = None
    allocator: str = "unknown"  # what model.allocator.freed_memory_kept() said
    cache_bytes: int | None = None  # L2 of the cores measured (l2_cache_bytes(threads))


REFERENCE_LAYER = Conv2dSpec(
    name="alexnet.conv3", in_channels=256, out_channels=384, in_height=13, in_width=13,
    kernel=3, padding=1,
)  # fmt: skip


def build_profile(
    data: CalibrationData, name: str, max_cv: float = DEFAULT_MAX_CV, quick: bool = False
) -> HardwareProfile:
    """Check the noise, fit, and assemble the profile (nothing is written). ``quick``: the
    data came from the quick plan, which the provenance notes then say first (:data:`QUICK_NOTE`).

    Raises:
        NoisyRunError: the median coefficient of variation of the timings exceeds ``max_cv``.
    """
    noise = noise_of(data.measurements)
    if noise > max_cv:
        raise NoisyRunError(noise, max_cv, data.load)
    refined = fit_refined(
        data.measurements, data.memory, data.threads, data.vector_width, data.isa,
        data.duration_s, data.cache_bytes,
    )  # fmt: skip
    import torch

    F = data.gemm_flops_per_s
    # The paper's α, for the paper model on this profile: the sparse kernel's density-dependent
    # time per useful FLOP on AlexNet conv3 (batch 1), relative to SGEMM's time per FLOP.
    draft = HardwareProfile(
        schema_version=SCHEMA_VERSION,
        name=name,
        dense_flops_per_s=F,
        memory_bandwidth_bytes_per_s=data.memory.dram_bytes_per_s,
        sparse_overhead=1.0,
        provenance=Provenance(kind="calibration", source="sweetspot calibrate"),
        refined=refined,
    )
    variable = RefinedRoofline().sparse_time(REFERENCE_LAYER, draft, 1.0).compute_s
    alpha = max(variable * F / REFERENCE_LAYER.flops, 1e-3)
    host = platform.node() or "unknown"
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("sweetspot")
    except PackageNotFoundError:
        ours = "unknown"
    return draft.model_copy(
        update={
            "description": f"{cpu_model()}, calibrated with {data.threads} thread(s)",
            "sparse_overhead": alpha,
            "cores": os.cpu_count(),
            "simd_width_fp32": data.vector_width,
            "provenance": Provenance(
                kind="calibration",
                source=f"sweetspot calibrate {ours} (model.calibration)",
                host=host,
                cpu=cpu_model(),
                date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                threads=data.threads,
                torch=torch.__version__,
                notes=(
                    (f"{QUICK_NOTE} ({len(QUICK_LAYERS)} layers, {len(QUICK_SPARSITIES)} "
                     "sparsities, 1 pass); " if quick else "")
                    + f"F: 1024² SGEMM; B: DRAM read; α: sparse kernel on AlexNet conv3 vs F; "
                    f"{data.kernel} kernel ({data.isa}); allocator: {data.allocator}; "
                    f"{data.load} at the end; "
                    f"noise CV {noise:.3f}; fit speedup MAPE {refined.fit.speedup_mape:.3f}"
                ),
            ),
        }
    )


def run_benchmarks(
    plan: Plan, threads: int, progress: Progress | None = None, seed: int = 0
) -> CalibrationData:
    """Measure this host as ``plan`` says (module docstring, steps 1–3)."""
    from model.sparse import kernel_info

    def report(event: dict) -> None:
        if progress:
            progress(event)

    started = time.monotonic()
    with measuring(threads) as allocator:
        info = kernel_info()
        wait_for_idle(threads, plan.idle_timeout_s, progress)
        layers = [layer.with_batch(b) for b in plan.batches for layer in plan.layers]
        total = plan.passes * len(layers) + 1
        report({"stage": "memory", "done": 0, "total": total})
        memory, gemm = measure_memory(threads)

        def step(done: int, layer: Layer) -> None:
            report({"stage": "layers", "done": done + 1, "total": total, "layer": layer.name,
                    "batch": layer.batch})  # fmt: skip

        runs = measure_passes(
            layers, [plan.sparsities] * len(layers), plan.passes, plan.repeats, plan.warmup,
            plan.min_sample_s, seed, step,
        )  # fmt: skip
        measurements: list[Measurement] = []
        for layer, timings in zip(layers, runs, strict=True):
            measurements += measurements_of(layer, plan.sparsities, pool_timings(timings))
        report({"stage": "done", "done": total, "total": total})
    return CalibrationData(
        measurements=measurements,
        memory=memory,
        gemm_flops_per_s=gemm,
        threads=threads,
        vector_width=info.vector_width or 16,
        isa=info.isa,
        kernel=info.implementation,
        duration_s=time.monotonic() - started,
        allocator=allocator,
        cache_bytes=l2_cache_bytes(threads),
    )


def calibrate(
    name: str = DEFAULT_NAME,
    quick: bool = False,
    threads: int | None = None,
    progress: Progress | None = None,
    *,
    max_cv: float = DEFAULT_MAX_CV,
) -> HardwareProfile:
    """Measure this host and fit a profile; writes nothing (the caller saves it).

    For the REST service's calibration job: run it in a worker process (it keeps the CPUs
    busy for up to 3 minutes, 60 s with ``quick``), pass ``progress`` to receive events
    ``{"stage": "idle"|"memory"|"layers"|"done", "done": i, "total": n, ...}``, then
    :func:`perfmodel.save_profile` the result.

    Args:
        name: profile name (``host`` by default: ``--hardware host`` then finds it).
        quick: the reduced plan (fewer layers, sparsities and repeats).
        threads: threads to measure with (default: ``torch.get_num_threads()``); the profile
            predicts for this thread count.
        progress: called with one event dict per step.
        max_cv: refuse the run when the median coefficient of variation exceeds this.

    Raises:
        NoisyRunError: the timings were too noisy to trust.
        RuntimeError: the native sparse kernel is unavailable (the reference would be timed).
    """
    import torch

    from model.sparse import kernel_info

    threads = threads or torch.get_num_threads()
    if not kernel_info().native:
        raise RuntimeError(
            f"the native sparse kernel is not available ({kernel_info().reason}); "
            "calibrating the reference implementation would describe nothing useful"
        )
    data = run_benchmarks(plan_for(quick), threads, progress)
    return build_profile(data, name, max_cv, quick=quick)


# ------------------------------------------------------------------------------ the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sweetspot calibrate``."""
    parser.add_argument(
        "--name", default=DEFAULT_NAME, help=f"profile name to write (default: {DEFAULT_NAME})"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"the quick plan: 1 pass over {len(QUICK_LAYERS)} layers and "
        f"{len(QUICK_SPARSITIES)} sparsities, about 5 s instead of 30-40 s (budget 60 s); "
        "less accurate, and recorded in the profile (predict warns)",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="overwrite an existing custom profile of that name (else: refused, exit 2)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads to measure with (default: all torch uses)",
    )
    parser.add_argument(
        "--max-cv",
        type=float,
        default=DEFAULT_MAX_CV,
        help=f"refuse runs noisier than this median coefficient of variation ({DEFAULT_MAX_CV})",
    )
    parser.add_argument("--json", action="store_true", help="print the profile as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _progress_bar(quiet: bool) -> tuple[Progress | None, Callable[[], None]]:
    if quiet:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=1, desc="calibrate", unit="step", file=sys.stderr, leave=False)

    def progress(event: dict) -> None:
        if event.get("stage") == "idle":
            busy = event.get("busy_cpus")
            busy_text = "unknown" if busy is None else f"{busy:.1f}"
            bar.write(f"busy CPUs before measuring: {busy_text} ({event['load']})", file=sys.stderr)
            return
        bar.total = event.get("total", bar.total)
        bar.n = event.get("done", bar.n)
        if "layer" in event:
            bar.set_postfix_str(f"{event['layer']} batch {event['batch']}")
        bar.refresh()

    return progress, bar.close


def pass_spread_warning(profile: HardwareProfile) -> str | None:
    """What to tell the user when the calibration's passes disagreed (``None`` if they did
    not, or the run had one pass)."""
    spread = profile.refined.fit.pass_spread if profile.refined else None
    if spread is None or spread <= WARN_PASS_SPREAD:
        return None
    return (
        f"the passes' medians differ by {spread:.0%} (median over all timings): this host's "
        "speed changed during calibration; the profile pools the passes, but a rerun on a "
        "quieter machine gives a steadier fit"
    )


def _argument_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, found before any measuring (which takes 5–40 s)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if args.threads is not None and not 1 <= args.threads <= (cpus or args.threads):
        return (
            f"--threads must be from 1 to {cpus} (the CPUs this process may use), got "
            f"{args.threads}: more would time an oversubscribed host"
        )
    if not re.fullmatch(NAME_PATTERN, args.name) or len(args.name) > MAX_NAME_LENGTH:
        return (
            f"--name {args.name!r} is not a profile name: lower-case letters, digits, '.', '_' "
            f"and '-', starting with a letter or digit, at most {MAX_NAME_LENGTH} characters"
        )
    if is_builtin_profile(args.name):
        return (
            f"--name {args.name!r} is a built-in profile (one of the paper's platforms); "
            "a calibration must not shadow it: choose another name"
        )
    if not args.max_cv > 0:
        return f"--max-cv must be > 0, got {args.max_cv}"
    if not getattr(args, "replace", False) and args.name in profile_names():
        return (
            f"a custom profile named {args.name!r} already exists (in {user_profile_dir()}): "
            "pass --replace to recalibrate it, or choose another --name"
        )
    return None


def _profile_dir_error() -> str | None:
    directory = user_profile_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"cannot create the profile directory {directory}: {error.strerror}"
    if not os.access(directory, os.W_OK):
        return f"the profile directory {directory} is not writable"
    return None


def run(args: argparse.Namespace) -> int:
    """``sweetspot calibrate``: measure, fit, save to the user profile directory."""
    problem = _argument_error(args)
    if problem:
        print(f"sweetspot: {problem}", file=sys.stderr)
        return 2
    problem = _profile_dir_error()
    if problem:
        print(f"sweetspot: {problem} (set SWEETSPOT_PROFILE_DIR to write elsewhere)",
              file=sys.stderr)  # fmt: skip
        return 1
    progress, close = _progress_bar(args.quiet)
    try:
        profile = calibrate(args.name, args.quick, args.threads, progress, max_cv=args.max_cv)
    except NoisyRunError as error:
        close()
        print(f"sweetspot: {error}", file=sys.stderr)
        return EXIT_NOISY
    except (RuntimeError, ValueError) as error:
        close()
        print(f"sweetspot: {error}", file=sys.stderr)
        return 1
    close()
    try:
        path = save_profile(profile)
    except OSError as error:
        print(f"sweetspot: cannot write the profile: {error}", file=sys.stderr)
        return 1
    warning = pass_spread_warning(profile)
    if warning:
        print(f"sweetspot: warning: {warning}", file=sys.stderr)
    if args.json:
        print(profile.model_dump_json(indent=2, exclude_none=True))
        return 0
    print(format_profile(profile, path))
    return 0


def format_profile(profile: HardwareProfile, path) -> str:
    """A short human summary of a calibrated profile."""
    r = profile.refined
    assert r is not None
    d, n, s, m, f = r.dense, r.native_dense, r.sparse, r.memory, r.fit

    def g(rate: float | None, unit: float, suffix: str) -> str:
        return "negligible" if rate is None else f"{rate / unit:.3g} {suffix}"

    lines = [
        f"profile {profile.name!r} written to {path}",
        f"  (use: sweetspot predict --hardware {profile.name}; user profiles live in "
        f"{user_profile_dir()}, $SWEETSPOT_PROFILE_DIR overrides)",
        f"host {profile.provenance.host}, {profile.provenance.cpu}, {r.threads} thread(s), "
        f"{r.isa} kernel",
        f"paper model:  F {profile.dense_flops_per_s / 1e9:.1f} GFLOP/s (SGEMM), "
        f"B {profile.memory_bandwidth_bytes_per_s / 1e9:.1f} GB/s (DRAM read), "
        f"α {profile.sparse_overhead:.2f}",
        f"memory:       L1 {m.l1_bytes_per_s / 1e9:.0f} GB/s, "
        f"L2 {m.l2_bytes_per_s / 1e9:.0f} GB/s, "
        f"DRAM {m.dram_bytes_per_s / 1e9:.1f} GB/s",
        f"dense:        overhead {d.call_overhead_s * 1e6:.1f} µs (+ 1x1 "
        f"{d.conv1x1_call_s * 1e6:.1f}, 3x3 {d.conv3x3_call_s * 1e6:.1f}, other conv "
        f"{d.conv_call_s * 1e6:.1f}); 1x1 "
        f"{g(d.conv1x1_flops_per_s, 1e9, 'GF/s')}, 3x3 {g(d.conv3x3_flops_per_s, 1e9, 'GF/s')}, "
        f"other conv {g(d.conv_flops_per_s, 1e9, 'GF/s')}, "
        f"fc {g(d.linear_flops_per_s, 1e9, 'GF/s')}; "
        f"layout {g(d.layout_bytes_per_s, 1e9, 'GB/s')}, "
        f"output {g(d.output_bytes_per_s, 1e9, 'GB/s')}",
        *(
            [
                f"dense native: overhead {n.call_overhead_s * 1e6:.1f} µs; im2col "
                f"{g(n.columns_bytes_per_s, 1e9, 'GB/s')} (strided "
                f"{g(n.strided_columns_bytes_per_s, 1e9, 'GB/s')}), GEMM "
                f"{g(n.gemm_flops_per_s, 1e9, 'GF/s')}, weights "
                f"{g(n.weight_bytes_per_s, 1e9, 'GB/s')}, output "
                f"{g(n.output_bytes_per_s, 1e9, 'GB/s')} (PyTorch's own path, small batch-1 "
                "inputs)"
            ]
            if n is not None
            else []
        ),
        f"sparse:       overhead {s.call_overhead_s * 1e6:.1f} µs; inner loop "
        f"{g(s.inner_loop_bytes_per_s, 1e9, 'GB/s')} (latency floor "
        f"{s.fma_latency_vectors:g} vectors), row pairs' shared loads "
        f"{g(s.pair_loop_bytes_per_s, 1e9, 'GB/s')}, visits "
        f"{g(s.nonzero_visits_per_s, 1e9, 'G/s')}, "
        f"per-call non-zeros {g(s.call_nonzeros_per_s, 1e9, 'G/s')}, packing "
        f"{g(s.pack_bytes_per_s, 1e9, 'GB/s')}, output {g(s.output_bytes_per_s, 1e9, 'GB/s')}"
        + (
            f", activations beyond L2 ({r.cache_bytes / 2**20:g} MiB) "
            f"{g(s.cold_activation_bytes_per_s, 1e9, 'GB/s')}"
            if r.cache_bytes
            else ""
        ),
        f"fit:          {f.measurements} cases, noise CV {f.noise_cv:.3f}"
        + (f", pass spread {f.pass_spread:.3f}" if f.pass_spread is not None else "")
        + ", MAPE dense "
        f"{f.dense_mape:.1%}, sparse {f.sparse_mape:.1%}, speedup {f.speedup_mape:.1%}"
        + (f", {f.duration_s:.0f} s" if f.duration_s else ""),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.calibration", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
