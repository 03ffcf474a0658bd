"""Measured speedup of a pruned model on this host, to set next to the prediction.

Per layer: each Conv2d/Linear of the pruned model is timed as it is (dense kernel) and as a
:class:`model.sparse.SparseConv2d`/``SparseLinear`` on the input it really receives, in the
same process, interleaved, after a warm-up, taking medians (RESEARCH.md §7: shared machines are
noisy; only ratios measured together mean anything), with freed memory kept as calibration
measures (:mod:`model.allocator`). Whole model: the pruned network with
dense kernels against the same network converted by the plan.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from model.allocator import freed_memory_kept
from model.surgery import capture_activations


def median_times(
    functions: Sequence[Callable[[], object]], repeats: int, warmup: int = 1
) -> list[float]:
    """Median seconds per call of each function, timed round-robin after ``warmup`` rounds,
    with freed memory kept (:mod:`model.allocator`)."""
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
    return [statistics.median(s) for s in samples]


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
        ``{"layers": {name: {"dense_s", "sparse_s", "speedup"}}, "model": {"dense_s",
        "converted_s", "speedup"}, "kernel": str, "threads": int, "batch": int}``.
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
            dense_s, sparse_s = median_times(
                [lambda d=dense, x=x: d(x), lambda s=sparse, x=x: s(x)], repeats
            )
            layers[name] = {"dense_s": dense_s, "sparse_s": sparse_s, "speedup": dense_s / sparse_s}
        converted = convert_model(model, plan)
        dense_s, converted_s = median_times(
            [lambda: model(example), lambda: converted(example)], repeats
        )
    info = kernel_info()
    return {
        "layers": layers,
        "model": {"dense_s": dense_s, "converted_s": converted_s, "speedup": dense_s / converted_s},
        "kernel": getattr(info, "implementation", str(info)),
        "threads": torch.get_num_threads(),
        "batch": batch,
    }


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
        ``{"layers": {name: {"dense_s", "cut_s", "speedup"}}, "model": {"dense_s",
        "converted_s", "speedup"}, "kernel": "dense (torch)", "threads": int, "batch": int}``.
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
            dense_s, cut_s = median_times(
                [lambda m=before[name], x=x: m(x), lambda m=after[name], y=y: m(y)], repeats
            )
            layers[name] = {"dense_s": dense_s, "cut_s": cut_s, "speedup": dense_s / cut_s}
        dense_s, cut_s = median_times([lambda: original(example), lambda: cut(example)], repeats)
    return {
        "layers": layers,
        "model": {"dense_s": dense_s, "converted_s": cut_s, "speedup": dense_s / cut_s},
        "kernel": "dense (torch)",
        "threads": torch.get_num_threads(),
        "batch": batch,
    }
