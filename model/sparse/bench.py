"""``sweetspot bench kernel``: the direct sparse kernel against dense and ``torch.sparse``.

For every layer × batch × threads × sparsity it times, in one process and interleaved (one
call of each contender per round, so machine noise hits all alike), after warm-up:

- the best dense backend: PyTorch's default ``F.conv2d`` and oneDNN forced
  (``aten.mkldnn_convolution``); the faster of the two is reported, and which it was;
- ``torch.sparse``: CSR weight × ``F.unfold`` input (the unfold and layout work included);
- ours: :func:`model.sparse.sparse_conv2d`, the whole op (padding and layout fused inside).

Medians over ``--repeats`` rounds. ``torch.sparse`` runs in rounds of its own with ours
(``ours_vs_torch_sparse_s``), not in the dense rounds: its unfold writes R·S copies of the
input (9 for 3×3, 25 for 5×5), and the dirty cache lines it leaves slowed whatever ran
next (CIFAR 32@16×16 at batch 32: dense calls 12%, ours 27–33%), which no network does to
its layers. In its own rounds ours follows it, so ``speedup_vs_torch_sparse`` errs low.
Sparse weights are random unstructured patterns. Output is a table, or
``{"results": [...], "summary": [...], "kernel": {...}}`` with ``--json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from model.allocator import freed_memory_kept
from model.arguments import integer
from model.sparse.csr import conv_weight_to_csr, linear_weight_to_csr
from model.sparse.functional import sparse_conv2d, sparse_linear
from model.sparse.native import kernel_info


@dataclass(frozen=True)
class BenchLayer:
    """One layer shape to benchmark (square inputs and kernels; batch comes from --batch)."""

    name: str
    in_channels: int
    out_channels: int
    size: int  # input height = width (1 for fully connected layers)
    kernel: int = 1
    padding: int = 0
    stride: int = 1
    groups: int = 1
    linear: bool = False

    def describe(self) -> str:
        if self.linear:
            return f"{self.in_channels}→{self.out_channels} fc"
        text = f"{self.in_channels}→{self.out_channels} {self.kernel}x{self.kernel}"
        if self.stride != 1:
            text += f" /{self.stride}"
        if self.groups != 1:
            text += f" g{self.groups}"
        return text + f" @{self.size}"


LAYER_SETS: dict[str, tuple[BenchLayer, ...]] = {
    # SkimCaffe / CaffeNet shapes (GSL paper, docs/research.md §1).
    "alexnet": (
        BenchLayer("conv2", 96, 256, 27, 5, 2, groups=2),
        BenchLayer("conv3", 256, 384, 13, 3, 1),
        BenchLayer("conv4", 384, 384, 13, 3, 1, groups=2),
        BenchLayer("conv5", 384, 256, 13, 3, 1, groups=2),
    ),
    # CIFAR ResNet 3×3 layers, one per stage.
    "cifar": (
        BenchLayer("res16@32", 16, 16, 32, 3, 1),
        BenchLayer("res32@16", 32, 32, 16, 3, 1),
        BenchLayer("res64@8", 64, 64, 8, 3, 1),
    ),
    # ResNet-50's 3×3 convolutions, one per stage.
    "resnet50": (
        BenchLayer("res2 3x3", 64, 64, 56, 3, 1),
        BenchLayer("res3 3x3", 128, 128, 28, 3, 1),
        BenchLayer("res4 3x3", 256, 256, 14, 3, 1),
        BenchLayer("res5 3x3", 512, 512, 7, 3, 1),
    ),
    # VGG-16 (CIFAR, Li et al.'s network) one 3×3 layer per stage: the late stages have the
    # most weights on the smallest images (stacked by the kernel from batch 2).
    "vgg16": (
        BenchLayer("conv1_2", 64, 64, 32, 3, 1),
        BenchLayer("conv2_2", 128, 128, 16, 3, 1),
        BenchLayer("conv3_3", 256, 256, 8, 3, 1),
        BenchLayer("conv4_3", 512, 512, 4, 3, 1),
        BenchLayer("conv5_3", 512, 512, 2, 3, 1),
    ),
    # AlexNet's fully connected layers (SparseLinear).
    "fc": (
        BenchLayer("fc6", 9216, 4096, 1, linear=True),
        BenchLayer("fc7", 4096, 4096, 1, linear=True),
        BenchLayer("fc8", 4096, 1000, 1, linear=True),
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sweetspot bench kernel``; argparse refuses a value out of range (usage on
    stderr, exit 2) before anything is built or timed."""
    parser.add_argument(
        "--layers",
        nargs="+",
        choices=sorted(LAYER_SETS),
        default=["alexnet"],
        help="layer sets to run (default: alexnet conv2–5)",
    )
    parser.add_argument(
        "--batch", nargs="+", type=integer(1), default=[1, 32], help="batch sizes (>= 1)"
    )
    parser.add_argument(
        "--threads", nargs="+", type=integer(1), default=[1, 2], help="thread counts (>= 1)"
    )
    parser.add_argument(
        "--sparsity",
        nargs="+",
        type=_sparsity,
        default=[0.5, 0.7, 0.8, 0.9, 0.95],
        help="fractions of zero weights, in [0, 1)",
    )
    parser.add_argument(
        "--repeats", type=integer(1), default=9, help="timed rounds (median taken; >= 1)"
    )
    parser.add_argument("--warmup", type=integer(0), default=2, help="untimed rounds first (>= 0)")
    parser.add_argument(
        "--no-torch-sparse",
        action="store_true",
        help="skip the torch.sparse baseline (it needs the large unfolded input)",
    )
    parser.add_argument(
        "--seed", type=integer(0, 2**64 - 1), default=0, help="of the inputs and the patterns"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _sparsity(text: str) -> float:
    """An argparse ``type``: a fraction of zero weights in ``[0, 1)``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (a fraction), got {text}")
    return value


def _interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict:
    """Median seconds per function, calling each once per round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def _prune(weight: torch.Tensor, sparsity: float, generator: torch.Generator) -> torch.Tensor:
    pruned = weight.clone()
    pruned[torch.rand(weight.shape, generator=generator) < sparsity] = 0.0
    return pruned


def _conv_contenders(layer: BenchLayer, x, bias, pruned, with_torch_sparse: bool):
    k, p, s, g = layer.kernel, layer.padding, layer.stride, layer.groups
    N = x.shape[0]
    csr = conv_weight_to_csr(pruned, g)
    fns: dict[str, Callable[[], object]] = {
        "ours": lambda: sparse_conv2d(x, csr, bias, s, p),
    }
    if with_torch_sparse:
        P = (layer.size + 2 * p - k) // s + 1
        Kg, CgRS = layer.out_channels // g, pruned[0].numel()
        sparse_weights = [
            pruned[i * Kg : (i + 1) * Kg].reshape(Kg, CgRS).to_sparse_csr() for i in range(g)
        ]

        def torch_sparse() -> torch.Tensor:
            cols = F.unfold(x, k, padding=p, stride=s)  # (N, C·R·S, L)
            cols = cols.view(N, g, CgRS, -1).permute(1, 2, 0, 3).reshape(g, CgRS, -1)
            outs = [torch.sparse.mm(w, cols[i]) for i, w in enumerate(sparse_weights)]
            out = torch.cat(outs).view(layer.out_channels, N, P, P).permute(1, 0, 2, 3)
            return out.contiguous() + bias.view(1, -1, 1, 1)

        fns["torch_sparse"] = torch_sparse
    return fns, lambda: F.conv2d(x, pruned, bias, s, p, 1, g), csr.pairs_pay()


def _linear_contenders(x, bias, pruned, with_torch_sparse: bool):
    csr = linear_weight_to_csr(pruned)
    fns: dict[str, Callable[[], object]] = {"ours": lambda: sparse_linear(x, csr, bias)}
    if with_torch_sparse:
        sparse_weight = pruned.to_sparse_csr()
        fns["torch_sparse"] = lambda: torch.sparse.mm(sparse_weight, x.t()).t() + bias
    return fns, lambda: F.linear(x, pruned, bias), False


def bench_layer(
    layer: BenchLayer,
    batch: int,
    threads: int,
    sparsities: list[float],
    repeats: int,
    warmup: int,
    with_torch_sparse: bool,
    seed: int,
) -> list[dict]:
    """Results of one layer at one batch size and thread count, one row per sparsity."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(seed)
    if layer.linear:
        x = torch.randn(batch, layer.in_channels, generator=generator)
        weight = torch.randn(layer.out_channels, layer.in_channels, generator=generator)
    else:
        x = torch.randn(batch, layer.in_channels, layer.size, layer.size, generator=generator)
        weight = torch.randn(
            layer.out_channels, layer.in_channels // layer.groups, layer.kernel, layer.kernel,
            generator=generator,
        )  # fmt: skip
    bias = torch.randn(layer.out_channels, generator=generator)
    p, s, g = layer.padding, layer.stride, layer.groups
    if layer.linear:
        dense = {"default": lambda: F.linear(x, weight, bias)}
    else:
        dense = {"default": lambda: F.conv2d(x, weight, bias, s, p, 1, g)}
        if torch.backends.mkldnn.is_available():
            dense["onednn"] = lambda: torch.ops.aten.mkldnn_convolution(
                x, weight, bias, [p, p], [s, s], [1, 1], g
            )
    rows = []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        for sparsity in sparsities:
            pruned = _prune(weight, sparsity, generator)
            if layer.linear:
                fns, check, paired = _linear_contenders(x, bias, pruned, with_torch_sparse)
            else:
                fns, check, paired = _conv_contenders(layer, x, bias, pruned, with_torch_sparse)
            torch.testing.assert_close(fns["ours"](), check(), rtol=1e-3, atol=1e-3)
            torch_sparse = fns.pop("torch_sparse", None)
            medians = _interleaved(
                {**{f"dense:{n}": f for n, f in dense.items()}, **fns}, repeats, warmup
            )
            versus = (
                _interleaved({"ours": fns["ours"], "torch_sparse": torch_sparse}, repeats, warmup)
                if torch_sparse is not None
                else {}
            )
            backend, dense_s = min(
                (
                    (name.split(":", 1)[1], t)
                    for name, t in medians.items()
                    if name.startswith("dense:")
                ),
                key=lambda item: item[1],
            )
            ours_s = medians["ours"]
            torch_sparse_s = versus.get("torch_sparse")
            rows.append(
                {
                    "layer": layer.name,
                    "shape": layer.describe(),
                    "batch": batch,
                    "threads": threads,
                    "sparsity": sparsity,
                    "dense_s": dense_s,
                    "dense_backend": backend,
                    "ours_s": ours_s,
                    "row_pairs": paired,  # whether our op computed output channels in pairs
                    "torch_sparse_s": torch_sparse_s,
                    # ours again, in the rounds with torch.sparse (see the module docstring)
                    "ours_vs_torch_sparse_s": versus.get("ours"),
                    "speedup_vs_dense": dense_s / ours_s,
                    "speedup_vs_torch_sparse": (
                        torch_sparse_s / versus["ours"] if torch_sparse_s is not None else None
                    ),
                }
            )
    return rows


def break_even(points: list[tuple[float, float]]) -> float | None:
    """Lowest sparsity at which speedup reaches 1, interpolated linearly between measurements.

    None when no measured sparsity is fast enough; the lowest measured one if all are.
    """
    points = sorted(points)
    if not points or points[-1][1] < 1.0:
        return None
    if points[0][1] >= 1.0:
        return points[0][0]
    for (s0, v0), (s1, v1) in itertools.pairwise(points):
        if v0 < 1.0 <= v1:
            return s0 + (1.0 - v0) * (s1 - s0) / (v1 - v0)
    return None


def summarise(results: list[dict], layer_sets: dict[str, list[str]]) -> list[dict]:
    """Per layer set × batch × threads: median speedup over its layers at each sparsity, and
    the worst (highest) per-layer break-even sparsity (``break_even_at_or_below``: that
    layer was faster than dense at every sparsity measured, so this is an upper bound)."""
    summary = []
    for set_name, names in layer_sets.items():
        rows = [r for r in results if r["layer"] in names]
        for batch, threads in sorted({(r["batch"], r["threads"]) for r in rows}):
            case = [r for r in rows if r["batch"] == batch and r["threads"] == threads]
            sparsities = sorted({r["sparsity"] for r in case})
            median = {
                str(sp): statistics.median(
                    r["speedup_vs_dense"] for r in case if r["sparsity"] == sp
                )
                for sp in sparsities
            }
            points = {
                n: [(r["sparsity"], r["speedup_vs_dense"]) for r in case if r["layer"] == n]
                for n in names
            }
            evens = {n: break_even(p) for n, p in points.items()}
            worst = None if any(e is None for e in evens.values()) else max(evens.values())
            # A layer already faster at its lowest measured sparsity has its break-even at or
            # below that sparsity, not at it: say so when such a layer is the worst.
            bound = worst is not None and any(
                evens[n] == worst and min(v for _, v in points[n]) >= 1.0 for n in names
            )
            summary.append(
                {
                    "layers": set_name,
                    "batch": batch,
                    "threads": threads,
                    "median_speedup_vs_dense": median,
                    "break_even_sparsity": worst,
                    "break_even_at_or_below": bound,
                }
            )
    return summary


def _table(results: list[dict], summary: list[dict]) -> str:
    head = (
        f"{'layer':<10} {'shape':<24} {'batch':>5} {'thr':>3} {'sparsity':>8} "
        f"{'dense ms':>9} {'backend':>8} {'ours ms':>9} {'t.sparse ms':>11} {'×dense':>7} "
        f"{'×t.sparse':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        ts = f"{r['torch_sparse_s'] * 1e3:11.3f}" if r["torch_sparse_s"] is not None else " " * 11
        vs = f"{r['speedup_vs_torch_sparse']:9.2f}" if r["torch_sparse_s"] is not None else ""
        lines.append(
            f"{r['layer']:<10} {r['shape']:<24} {r['batch']:>5} {r['threads']:>3} "
            f"{r['sparsity']:>8.2f} {r['dense_s'] * 1e3:9.3f} {r['dense_backend']:>8} "
            f"{r['ours_s'] * 1e3:9.3f} {ts} {r['speedup_vs_dense']:7.2f} {vs}"
        )
    lines.append("")
    if any(r["torch_sparse_s"] is not None for r in results):
        lines.append("×t.sparse: against our op timed in torch.sparse's own rounds, not "
                     "'ours ms' (its unfold slows what runs after it; JSON: "
                     "ours_vs_torch_sparse_s)")  # fmt: skip
    lines.append(
        "median speedup vs best dense over the layers of each set; break-even = worst layer"
    )
    for s in summary:
        speedups = "  ".join(f"{sp}: {v:.2f}×" for sp, v in s["median_speedup_vs_dense"].items())
        even = s["break_even_sparsity"]
        even_text = "none measured" if even is None else f"{even:.2f}"
        if s["break_even_at_or_below"]:
            even_text = f"≤ {even_text} (faster at every sparsity measured)"
        lines.append(
            f"{s['layers']:<9} batch {s['batch']:>3} threads {s['threads']}:  {speedups}  "
            f"break-even {even_text}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args`` (parsed by :func:`add_arguments`, which
    checked every value's range); exit status."""
    info = kernel_info()
    sets = {name: [layer.name for layer in LAYER_SETS[name]] for name in args.layers}
    cases = [
        (layer, batch, threads)
        for name in args.layers
        for batch in args.batch
        for threads in args.threads
        for layer in LAYER_SETS[name]
    ]
    results: list[dict] = []
    # dense at its best: no page faults per call
    with freed_memory_kept() as allocator:
        previous_threads = torch.get_num_threads()
        try:
            for layer, batch, threads in cases:
                results += bench_layer(
                    layer, batch, threads, sorted(args.sparsity), args.repeats, args.warmup,
                    not args.no_torch_sparse, args.seed,
                )  # fmt: skip
        finally:
            torch.set_num_threads(previous_threads)
    summary = summarise(results, sets)
    if args.json:
        document = {"kernel": asdict(info), "allocator": allocator}
        print(json.dumps({**document, "results": results, "summary": summary}, indent=2))
    else:
        print(
            f"sparse kernel: {info.implementation}"
            + (f" ({info.isa})" if info.native else f" — {info.reason}")
            + f"; allocator: {allocator}"
        )
        print(_table(results, summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.sparse.bench", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
