"""Measured speedup of a pruned model on this host, to set next to the prediction.

Per layer: each Conv2d/Linear of the pruned model is timed as it is (dense kernel) and as a
:class:`model.sparse.SparseConv2d`/``SparseLinear`` on the input it really receives, in the
same process, interleaved, after a warm-up, taking medians (docs/research.md §7: shared machines are
noisy; only ratios measured together mean anything), with freed memory kept as calibration
measures (:mod:`model.allocator`). Whole model: the pruned network with
dense kernels against the same network converted by the plan.

Every speedup comes with the spread of its rounds: each round times both contenders back to
back, so ``speedup_iqr`` is the interquartile range of the per-round ratios. Where it is wider
than :data:`NOISY_SPREAD` of the speedup the host was too busy to trust the figure, and the
measurement names it under ``noisy``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from model.allocator import freed_memory_kept
from model.surgery import capture_activations

# A speedup whose per-round ratios have an interquartile range wider than this fraction of it
# is reported as noisy (docs/gsl.md, "Measured speedups and their noise").
NOISY_SPREAD = 0.5


def timed_rounds(
    functions: Sequence[Callable[[], object]], repeats: int, warmup: int = 1
) -> list[list[float]]:
    """Seconds of each call of each function, timed round-robin after ``warmup`` rounds,
    with freed memory kept (:mod:`model.allocator`): ``repeats`` samples per function."""
    samples: list[list[float]] = [[] for _ in functions]
    with freed_memory_kept():
        for _ in range(warmup):
            for function in functions:
                function()
        for _ in range(repeats):
            for index, function in enumerate(functions):
                start = time.perf_counter()
                function()
                samples[index].append(time.perf_counter() - start)
    return samples


def median_times(
    functions: Sequence[Callable[[], object]], repeats: int, warmup: int = 1
) -> list[float]:
    """Median seconds per call of each function (see :func:`timed_rounds`)."""
    return [statistics.median(s) for s in timed_rounds(functions, repeats, warmup)]


def compare(before: Callable[[], object], after: Callable[[], object], repeats: int,
            names: tuple[str, str]) -> dict:  # fmt: skip
    """``{names[0]: s, names[1]: s, "speedup", "speedup_iqr": [q1, q3]}``: median times of the
    two, their ratio, and the interquartile range of the per-round ratios."""
    slow, fast = timed_rounds([before, after], repeats)
    ratios = [a / b for a, b in zip(slow, fast, strict=True)]
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    median_slow, median_fast = statistics.median(slow), statistics.median(fast)
    return {names[0]: median_slow, names[1]: median_fast, "speedup": median_slow / median_fast,
            "speedup_iqr": [q1, q3]}  # fmt: skip


def noisy(measured: dict) -> list[str]:
    """Names of the timings in a measurement (its layers, then ``model``) whose per-round
    speedups spread wider than :data:`NOISY_SPREAD` of the speedup."""
    timings = {**measured["layers"], "model": measured["model"]}
    return [
        name for name, t in timings.items()
        if (t["speedup_iqr"][1] - t["speedup_iqr"][0]) > NOISY_SPREAD * t["speedup"]
    ]  # fmt: skip


def measure_speedups(
    model: nn.Module,
    plan: Mapping[str, str],
    input_shape: Sequence[int],
    batch: int = 1,
    repeats: int = 20,
) -> dict:
    """Time dense against sparse kernels for every layer the plan marks ``"sparse"``.

    Args:
        model: the pruned network (zeros in place); not modified.
        plan: layer name → ``"sparse"`` or ``"dense"``.
        input_shape: (C, H, W) of one example.
        batch: inference batch size to time at.
        repeats: timed rounds (medians are reported).

    Returns:
        ``{"layers": {name: {"dense_s", "sparse_s", "speedup", "speedup_iqr"}}, "model":
        {"dense_s", "converted_s", "speedup", "speedup_iqr"}, "kernel": str, "threads": int,
        "batch": int, "noisy": [names]}`` (see :func:`compare`, :func:`noisy`).
    """
    from model.sparse import SparseConv2d, SparseLinear, convert_model, kernel_info

    model = model.eval()
    example = torch.randn(batch, *input_shape)
    sparse_names = {name for name, choice in plan.items() if choice == "sparse"}
    inputs = capture_activations(model, example, sparse_names)
    layers = {}
    with torch.no_grad():
        for name in sorted(sparse_names, key=list(plan).index):
            dense = model.get_submodule(name)
            if isinstance(dense, nn.Conv2d):
                sparse = SparseConv2d.from_dense(dense)
            else:
                sparse = SparseLinear.from_dense(dense)
            x = inputs[name]
            layers[name] = compare(lambda d=dense, x=x: d(x), lambda s=sparse, x=x: s(x),
                                   repeats, ("dense_s", "sparse_s"))  # fmt: skip
        converted = convert_model(model, plan)
        whole = compare(lambda: model(example), lambda: converted(example), repeats,
                        ("dense_s", "converted_s"))  # fmt: skip
    info = kernel_info()
    measured = {
        "layers": layers,
        "model": whole,
        "kernel": getattr(info, "implementation", str(info)),
        "threads": torch.get_num_threads(),
        "batch": batch,
    }
    measured["noisy"], measured["noisy_spread"] = noisy(measured), NOISY_SPREAD
    return measured


def measure_cut(
    original: nn.Module,
    cut: nn.Module,
    input_shape: Sequence[int],
    batch: int = 1,
    repeats: int = 20,
) -> dict:
    """Time the original (masked) network against its cut, smaller dense network.

    Both run ordinary dense kernels; the gain comes only from the smaller tensors. Per layer,
    every Conv2d/Linear the cut network kept with a changed shape is timed against the
    original layer, each on the input it really receives; then the whole networks. Same
    process, interleaved, medians (see :func:`median_times`).

    Returns:
        ``{"layers": {name: {"dense_s", "cut_s", "speedup", "speedup_iqr"}}, "model":
        {"dense_s", "converted_s", "speedup", "speedup_iqr"}, "kernel": "dense (torch)",
        "threads": int, "batch": int, "noisy": [names]}``.
    """
    original, cut = original.eval(), cut.eval()
    example = torch.randn(batch, *input_shape)
    before = {n: m for n, m in original.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    from model.fibres import FibreConv2d

    layer_types = nn.Conv2d | nn.Linear | FibreConv2d
    after = {n: m for n, m in cut.named_modules() if isinstance(m, layer_types)}
    changed = {n for n in after if n in before and after[n].weight.shape != before[n].weight.shape}
    original_inputs = capture_activations(original, example, changed)
    cut_inputs = capture_activations(cut, example, changed)
    layers = {}
    with torch.no_grad():
        for name in (n for n in before if n in changed):
            x, y = original_inputs[name], cut_inputs[name]
            layers[name] = compare(lambda m=before[name], x=x: m(x),
                                   lambda m=after[name], y=y: m(y), repeats,
                                   ("dense_s", "cut_s"))  # fmt: skip
        whole = compare(lambda: original(example), lambda: cut(example), repeats,
                        ("dense_s", "converted_s"))  # fmt: skip
    measured = {
        "layers": layers,
        "model": whole,
        "kernel": "dense (torch)",
        "threads": torch.get_num_threads(),
        "batch": batch,
    }
    measured["noisy"], measured["noisy_spread"] = noisy(measured), NOISY_SPREAD
    return measured
