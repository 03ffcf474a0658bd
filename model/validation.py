"""``sweetspot validate``: measure the sparse kernel against dense on layers calibration never
saw, and score the performance model's predicted speedups against the measurements.

The validation set (:data:`VALIDATION_LAYERS`): the 3×3 convolutions of ResNet-50 (one per
stage), GoogLeNet's 3×3 and 5×5 inception branches, VGG-16 (CIFAR) convolutions and CIFAR
ResNet layers (incl. a stride-2 transition), at sparsities :data:`VALIDATION_SPARSITIES`
(disjoint from calibration's) and batch 1 and 32. Timing is calibration's
(:func:`model.calibration.measure_passes`): the best dense backend and the sparse kernel
interleaved, the whole set in passes whose samples pool into medians.

Scores (docs/calibration.md):

- ``mape``: mean of ``|predicted − measured| / measured`` speedup over the cases;
- ``within_10pct``, ``within_20pct``: fraction of cases with that relative error at most;
- ``breakeven_error_pp``: per (layer, batch), the break-even sparsity interpolated from the
  predicted and from the measured speedups on the same sparsity grid
  (:func:`model.sparse.bench.break_even`); a curve that never reaches 1 counts as break-even
  at 100%, one above 1 everywhere at the lowest sparsity; mean absolute difference in
  percentage points.
- ``repeatability_10pct``, ``repeatability_20pct`` (several passes): the fraction of pairs of
  passes whose speedups for the same case agree that closely.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from model.calibration import pool_timings, square_conv
from perfmodel import Conv2dSpec, HardwareProfile, ProfileError, UnknownProfileError, get_profile
from perfmodel.predict import resolve_model
from perfmodel.roofline import Layer

Progress = Callable[[dict], None]


VALIDATION_LAYERS: tuple[Conv2dSpec, ...] = (
    square_conv("resnet50.layer1.conv2", 64, 64, 56, 3),
    square_conv("resnet50.layer2.conv2", 128, 128, 28, 3),
    square_conv("resnet50.layer3.conv2", 256, 256, 14, 3),
    square_conv("resnet50.layer4.conv2", 512, 512, 7, 3),
    square_conv("googlenet.3a.3x3", 96, 128, 28, 3),
    square_conv("googlenet.3a.5x5", 16, 32, 28, 5),
    square_conv("googlenet.4a.3x3", 96, 208, 14, 3),
    square_conv("googlenet.4a.5x5", 16, 48, 14, 5),
    square_conv("googlenet.5b.3x3", 192, 384, 7, 3),
    square_conv("googlenet.5b.5x5", 48, 128, 7, 5),
    square_conv("vgg16.conv1_2", 64, 64, 32, 3),
    square_conv("vgg16.conv2_2", 128, 128, 16, 3),
    square_conv("vgg16.conv3_3", 256, 256, 8, 3),
    square_conv("vgg16.conv4_3", 512, 512, 4, 3),
    square_conv("resnet20.layer1", 16, 16, 32, 3),
    square_conv("resnet20.layer2.down", 16, 32, 32, 3, stride=2),
    square_conv("resnet20.layer2", 32, 32, 16, 3),
    square_conv("resnet20.layer3", 64, 64, 8, 3),
)
VALIDATION_SPARSITIES = (0.3, 0.4, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97)
VALIDATION_BATCHES = (1, 32)
QUICK_CASES = (("resnet20.layer2", (0.5, 0.9)), ("googlenet.4a.5x5", (0.5, 0.9)))


def _break_even(points: list[tuple[float, float]]) -> float:
    from model.sparse.bench import break_even

    value = break_even(points)
    return 1.0 if value is None else value


def score(cases: Sequence[dict]) -> dict:
    """The accuracy figures of a list of cases (see the module docstring)."""
    errors = [
        abs(c["predicted_speedup"] - c["measured_speedup"]) / c["measured_speedup"] for c in cases
    ]
    groups: dict[tuple[str, int], list[dict]] = {}
    for case in cases:
        groups.setdefault((case["layer"], case["batch"]), []).append(case)
    breakeven = []
    for group in groups.values():
        predicted = _break_even([(c["sparsity"], c["predicted_speedup"]) for c in group])
        measured = _break_even([(c["sparsity"], c["measured_speedup"]) for c in group])
        breakeven.append(abs(predicted - measured) * 100)
    return {
        "mape": statistics.fmean(errors) if errors else 0.0,
        "within_10pct": sum(e <= 0.10 for e in errors) / len(errors) if errors else 0.0,
        "within_20pct": sum(e <= 0.20 for e in errors) / len(errors) if errors else 0.0,
        "breakeven_error_pp": statistics.fmean(breakeven) if breakeven else 0.0,
    }


def repeatability(cases: Sequence[dict]) -> dict:
    """How well the measurement agrees with itself: over every case and every pair of its
    passes, the fraction whose two speedups agree within 10% and 20% (larger / smaller − 1);
    ``None`` with one pass.

    Low values say the machine was too busy at the time to judge the model by; the model is
    scored against the pool of all passes, which is steadier than any one of them
    (docs/calibration.md, "Why passes").
    """
    ratios = [
        max(a, b) / min(a, b) - 1.0
        for c in cases
        for a, b in itertools.combinations(c.get("pass_speedups", ()), 2)
    ]
    if not ratios:
        return {"repeatability_10pct": None, "repeatability_20pct": None}
    return {
        "repeatability_10pct": sum(r <= 0.10 for r in ratios) / len(ratios),
        "repeatability_20pct": sum(r <= 0.20 for r in ratios) / len(ratios),
    }


def validation_plan(quick: bool) -> list[tuple[Layer, tuple[float, ...]]]:
    """(layer with its batch, sparsities) to measure."""
    by_name = {layer.name: layer for layer in VALIDATION_LAYERS}
    if quick:
        return [(by_name[name].with_batch(1), sparsities) for name, sparsities in QUICK_CASES]
    return [
        (layer.with_batch(batch), VALIDATION_SPARSITIES)
        for batch in VALIDATION_BATCHES
        for layer in VALIDATION_LAYERS
    ]


def validate(
    hardware: HardwareProfile,
    quick: bool = False,
    threads: int | None = None,
    performance_model: str = "auto",
    progress: Progress | None = None,
    repeats: int | None = None,
    passes: int | None = None,
) -> dict:
    """Measure the validation set on this host and compare with the model's predictions.

    ``threads`` defaults to the thread count the profile was calibrated with. The set is
    measured ``passes`` times (3 in the full run, 1 with ``quick``), whole passes one after
    the other, and each case's timings pool the samples of all passes
    (:func:`model.calibration.pool_timings`).
    """
    import torch

    from model.calibration import (
        load_summary,
        measure_passes,
        measurements_of,
        measuring,
        noise_of,
    )
    from model.sparse import kernel_info

    model = resolve_model(performance_model, hardware)
    if threads is None:
        threads = hardware.refined.threads if hardware.refined else torch.get_num_threads()
    repeats = repeats or (3 if quick else 7)
    passes = passes or (1 if quick else 3)
    plan = validation_plan(quick)
    layers = [layer for layer, _ in plan]
    total = passes * len(plan)

    def step(done: int, layer: Layer) -> None:
        if progress:
            progress({"done": done, "total": total, "layer": layer.name, "batch": layer.batch})

    started = time.monotonic()
    with measuring(threads) as allocator:  # as calibration measured
        runs = measure_passes(layers, [s for _, s in plan], passes, repeats, seed=1000,
                              progress=step)  # fmt: skip
        if progress:
            progress({"done": total, "total": total})
    cases, measurements = [], []
    for (layer, sparsities), timings in zip(plan, runs, strict=True):
        per_pass = [measurements_of(layer, sparsities, t) for t in timings]
        for i, m in enumerate(measurements_of(layer, sparsities, pool_timings(timings))):
            measurements.append(m)
            cases.append(
                {
                    "layer": layer.name,
                    "shape": layer.describe(),
                    "batch": layer.batch,
                    "sparsity": round(1.0 - m.density, 6),
                    "predicted_speedup": model.speedup(layer, hardware, m.density),
                    "measured_speedup": m.speedup,
                    "pass_speedups": [run[i].speedup for run in per_pass],
                    "dense_s": m.dense.median_s,
                    "dense_backend": m.dense_backend,
                    "sparse_s": m.sparse.median_s,
                }
            )
    return {
        "hardware": hardware.name,
        "performance_model": model.name,
        "threads": threads,
        "kernel": kernel_info().implementation,
        "allocator": allocator,
        "quick": quick,
        "passes": passes,
        "load": load_summary(),
        "noise_cv": noise_of(measurements),
        "duration_s": time.monotonic() - started,
        **score(cases),
        **repeatability(cases),
        "cases": cases,
    }


def plot(result: dict, path: str | Path) -> Path:
    """Predicted against measured speedup, log-log, with the ±20% band (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = result["cases"]
    measured = [c["measured_speedup"] for c in cases]
    predicted = [c["predicted_speedup"] for c in cases]
    low = min([*measured, *predicted, 0.1]) * 0.8
    high = max([*measured, *predicted, 10.0]) * 1.25
    figure, axes = plt.subplots(figsize=(5.2, 5.0), dpi=100)
    line = [low, high]
    axes.plot(line, line, color="black", linewidth=0.8, label="exact")
    axes.fill_between(line, [v / 1.2 for v in line], [v * 1.2 for v in line], color="0.85",
                      label="±20%")  # fmt: skip
    for batch, marker in ((1, "o"), (32, "s")):
        subset = [c for c in cases if c["batch"] == batch]
        if subset:
            axes.scatter([c["measured_speedup"] for c in subset],
                         [c["predicted_speedup"] for c in subset], s=14, marker=marker,
                         c=[c["sparsity"] for c in subset], cmap="viridis", vmin=0.3, vmax=1.0,
                         label=f"batch {batch}")  # fmt: skip
    axes.axhline(1.0, color="0.6", linewidth=0.6, linestyle=":")
    axes.axvline(1.0, color="0.6", linewidth=0.6, linestyle=":")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(low, high)
    axes.set_ylim(low, high)
    axes.set_xlabel("measured speedup (sparse kernel vs best dense)")
    axes.set_ylabel(f"predicted speedup ({result['performance_model']} model)")
    axes.set_title(
        f"{result['hardware']}: within 20% {result['within_20pct']:.0%}, "
        f"MAPE {result['mape']:.0%}, break-even ±{result['breakeven_error_pp']:.1f} pp",
        fontsize=9,
    )
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    plt.close(figure)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sweetspot validate``."""
    parser.add_argument("--hardware", required=True, help="profile name or file (e.g. host)")
    parser.add_argument("--quick", action="store_true", help="a handful of cases (seconds)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads (default: the profile's calibration threads)")  # fmt: skip
    parser.add_argument("--performance-model", default="auto",
                        help="auto (refined when calibrated), refined or paper")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds per layer and pass (default 7, quick 3)")  # fmt: skip
    parser.add_argument("--passes", type=int, default=None,
                        help="measure the set N times, pooled (default 3, quick 1)")  # fmt: skip
    parser.add_argument("--plot", metavar="FILE", help="write predicted vs measured as a PNG")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def format_result(result: dict) -> str:
    """The human summary: one line per case, then the scores."""
    lines = [
        f"{'layer':<24} {'shape':<22} {'batch':>5} {'sparsity':>8} {'predicted':>9} "
        f"{'measured':>9} {'error':>7}"
    ]
    for c in result["cases"]:
        error = c["predicted_speedup"] / c["measured_speedup"] - 1
        lines.append(
            f"{c['layer']:<24} {c['shape']:<22} {c['batch']:>5} {c['sparsity']:>8.2f} "
            f"{c['predicted_speedup']:>8.2f}x {c['measured_speedup']:>8.2f}x {error:>+7.0%}"
        )
    lines += [
        "",
        f"{result['hardware']} ({result['performance_model']} model), {result['threads']} "
        f"thread(s), {len(result['cases'])} cases, noise CV {result['noise_cv']:.3f}, "
        f"{result['load']}",
        f"mape {result['mape']:.3f}  within_10pct {result['within_10pct']:.3f}  "
        f"within_20pct {result['within_20pct']:.3f}  breakeven_error_pp "
        f"{result['breakeven_error_pp']:.2f}",
    ]
    if result.get("repeatability_20pct") is not None:
        lines.append(
            f"repeatability ({result['passes']} passes: two passes of the same case agree) "
            f"within 10% {result['repeatability_10pct']:.3f}  within 20% "
            f"{result['repeatability_20pct']:.3f}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """``sweetspot validate``: exit 0 when measured, 2 for a bad name, 1 for a bad profile."""
    try:
        hardware = get_profile(args.hardware)
    except UnknownProfileError as error:
        print(f"sweetspot: {error}", file=sys.stderr)
        return 2
    except ProfileError as error:
        print(f"sweetspot: {error}", file=sys.stderr)
        return 1
    for option in ("threads", "repeats", "passes"):
        value = getattr(args, option)
        if value is not None and value < 1:
            print(f"sweetspot: --{option} must be >= 1", file=sys.stderr)
            return 2
    # Everything that can be checked is checked before the measuring (≈70 s in full).
    try:
        resolve_model(args.performance_model, hardware)
    except (LookupError, ProfileError) as error:
        print(f"sweetspot: {error}", file=sys.stderr)
        return 2 if isinstance(error, LookupError) else 1
    if args.plot:
        problem = _plot_path_error(Path(args.plot))
        if problem:
            print(f"sweetspot: --plot {args.plot}: {problem}", file=sys.stderr)
            return 2
    calibrated = hardware.refined.threads if hardware.refined else None
    if args.threads is not None and calibrated is not None and args.threads != calibrated:
        print(f"sweetspot: warning: {hardware.name!r} was calibrated with {calibrated} thread(s); "
              f"its predictions hold for that count, not for --threads {args.threads}",
              file=sys.stderr)  # fmt: skip
    bar = None
    progress = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=1, desc="validate", unit="layer", file=sys.stderr, leave=False)

        def progress(event: dict) -> None:
            bar.total = event["total"]
            bar.n = event["done"]
            if "layer" in event:
                bar.set_postfix_str(f"{event['layer']} batch {event['batch']}")
            bar.refresh()

    try:
        result = validate(hardware, args.quick, args.threads, args.performance_model, progress,
                          args.repeats, args.passes)  # fmt: skip
    except (LookupError, ProfileError) as error:
        print(f"sweetspot: {error}", file=sys.stderr)
        return 2 if isinstance(error, LookupError) else 1
    finally:
        if bar is not None:
            bar.close()
    print(json.dumps(result, indent=2) if args.json else format_result(result))
    if args.plot:  # after the results: a failure here must not lose them
        try:
            plot(result, args.plot)
        except OSError as error:
            print(f"sweetspot: cannot write the plot {args.plot}: {error}", file=sys.stderr)
            return 1
    return 0


def _plot_path_error(path: Path) -> str | None:
    """Why the plot could not be written to ``path``, or None. The file is opened for appending
    (what it holds stays; it is removed again when it was not there), so the reason is the
    system's own: no such folder, a file where a folder should be, no permission to write
    there, a read-only file system."""
    if path.suffix.lower() != ".png":
        return "the plot is a PNG: name a file ending in .png"
    if path.is_dir():
        return "that is a folder"
    existed = path.exists() or path.is_symlink()
    try:
        with path.open("ab"):
            pass
    except NotADirectoryError:
        blocking = next((p for p in reversed(path.parents) if p.is_file()), path.parent)
        return f"{blocking} is a file, not a folder"
    except FileNotFoundError as error:
        if not path.parent.exists():
            return f"the folder {path.parent} does not exist"
        return f"cannot write it: {error.strerror}"
    except OSError as error:  # permission denied, a read-only file system
        return f"cannot write it: {error.strerror or error}"
    if not existed:
        path.unlink(missing_ok=True)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.validation", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
