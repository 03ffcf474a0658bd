"""The report of a pruning run: ``report.md`` and three PNG plots, from the run's manifest and
its event stream (the events the training loop emits; GSL controller decisions among them).

- ``accuracy.png``: test (and training) accuracy and loss per epoch over every phase — dense
  training, pruning, fine-tuning — on one axis of consecutive epochs, phases shaded.
- ``sparsity.png``: per-layer sparsity per epoch, controller decisions marked where they fell.
- ``speedup.png``: predicted vs measured speedup per layer and for the whole model (grouped
  bars; only the predicted bar where nothing was measured).

Inputs (both plain JSON-able data; accuracies and sparsities are fractions in [0, 1]):

- events: dicts with a ``type``. ``epoch``: ``phase`` (``dense``/``prune``/``finetune``),
  ``epoch``, ``step``, ``loss``, ``train_accuracy``, ``test_accuracy``, ``sparsity``
  (layer → fraction), ``time``. ``decision``: ``epoch``, ``step``, ``layer``, ``action``
  (``exclude``/``prune``/``stop``/``restore``/``freeze``), ``reason``. Other types are ignored.
- manifest: ``method``, ``model``, ``dataset``, ``hardware``, ``config``, ``accuracy``
  (``dense``, ``pruned``), ``layers`` (``name``, ``kind``, ``sparsity``, ``format``,
  ``sweet_spot`` null or ``min_sparsity``/``max_sparsity``/``max_speedup``,
  ``predicted_speedup``, ``measured_speedup`` or null), ``model_speedup`` (``predicted``,
  ``measured`` or null), ``artifacts`` (name → relative path).

Plots are drawn with matplotlib's object API on a bare ``Figure`` (Agg canvas): no display, no
pyplot global state, safe in worker processes. A plot with no data is skipped and the report
says so instead of linking a missing file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPORT_NAME = "report.md"
ACCURACY_PNG = "accuracy.png"
SPARSITY_PNG = "sparsity.png"
SPEEDUP_PNG = "speedup.png"
REPORT_FILES = (REPORT_NAME, ACCURACY_PNG, SPARSITY_PNG, SPEEDUP_PNG)  # all write_report writes

PHASE_COLORS = {"dense": "#dddddd", "prune": "#fde3c8", "finetune": "#d6eadf"}


def write_report(out_dir: Path, manifest: dict, events: list[dict]) -> Path:
    """Write ``report.md`` and its plots into ``out_dir`` (created if needed).

    Returns:
        The path of ``report.md``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    epochs = [e for e in events if e.get("type") == "epoch"]
    decisions = [e for e in events if e.get("type") == "decision"]
    layers = list(manifest.get("layers") or [])

    plots = {
        ACCURACY_PNG: plot_accuracy(out_dir / ACCURACY_PNG, epochs),
        SPARSITY_PNG: plot_sparsity(out_dir / SPARSITY_PNG, epochs, decisions),
        SPEEDUP_PNG: plot_speedup(
            out_dir / SPEEDUP_PNG, layers, manifest.get("model_speedup") or {}
        ),
    }
    path = out_dir / REPORT_NAME
    path.write_text(render_markdown(manifest, epochs, decisions, plots), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- markdown


def _pct(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * float(value):.{digits}f}%"


def noise_note(measured: dict | None) -> str | None:
    """One line for the user where a measurement has noisy timings (``model.measure.noisy``),
    else None (also for measurements made before timings carried their spread)."""
    if not measured or not measured.get("noisy"):
        return None
    q1, q3 = measured["model"]["speedup_iqr"]
    return (
        f"measured on a busy host: the rounds of {', '.join(measured['noisy'])} disagree by more "
        f"than {measured.get('noisy_spread', 0.5):.0%} of the speedup (whole model: the middle "
        f"half of its rounds {q1:.2f}–{q3:.2f}x); rerun on a quieter machine to trust these "
        "figures"
    )


def _times(value: Any) -> str:
    return "–" if value is None else f"{float(value):.2f}×"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _sweet_spot(spot: dict | None) -> str:
    if not spot:
        return "none"
    return (
        f"{_pct(spot.get('min_sparsity'))}–{_pct(spot.get('max_sparsity'))} "
        f"({_times(spot.get('max_speedup'))} at its upper bound)"
    )


def render_markdown(
    manifest: dict, epochs: list[dict], decisions: list[dict], plots: dict[str, bool]
) -> str:
    """The text of ``report.md``; ``plots`` says which PNG files were written."""
    model = manifest.get("model", "?")
    dataset = manifest.get("dataset", "?")
    method = manifest.get("method", "?")
    accuracy = manifest.get("accuracy") or {}
    speedup = manifest.get("model_speedup") or {}
    dense, pruned = accuracy.get("dense"), accuracy.get("pruned")
    change = "" if dense is None or pruned is None else f" ({100 * (pruned - dense):+.2f} points)"

    lines = [f"# {method.upper()} pruning report: {model} on {dataset}", ""]
    lines += _table(
        ["quantity", "value"],
        [
            ["method", method],
            ["model", model],
            ["dataset", dataset],
            ["hardware profile", manifest.get("hardware", "?")],
            ["accuracy (dense → pruned)", f"{_pct(dense, 2)} → {_pct(pruned, 2)}{change}"],
            ["model speedup, predicted", _times(speedup.get("predicted"))],
            [
                "model speedup, measured",
                _times(speedup["measured"])
                if speedup.get("measured") is not None
                else "not measured" + (f" ({manifest['not_measured']})"
                                       if manifest.get("not_measured") else ""),
            ],
        ],
    )

    note = noise_note(manifest.get("measurement"))
    if note:
        lines += ["", f"**Note:** {note}."]

    layers = manifest.get("layers") or []
    lines += ["", "## Layers", ""]
    if layers:
        lines += _table(
            ["layer", "kind", "sparsity", "format", "sweet spot", "predicted", "measured"],
            [
                [
                    f"`{layer.get('name', '?')}`",
                    layer.get("kind", ""),
                    _pct(layer.get("sparsity")),
                    layer.get("format", ""),
                    _sweet_spot(layer.get("sweet_spot")),
                    _times(layer.get("predicted_speedup")),
                    _times(layer.get("measured_speedup")),
                ]
                for layer in layers
            ],
        )
    else:
        lines.append("No layers in the manifest.")

    lines += ["", "## Controller decisions", ""]
    if decisions:
        for d in decisions:
            lines.append(
                f"- epoch {d.get('epoch', '?')} (step {d.get('step', '?')}): "
                f"`{d.get('layer', '?')}` **{d.get('action', '?')}** — {d.get('reason', '')}"
            )
    else:
        lines.append("No controller decisions were recorded.")

    lines += ["", "## Training", ""]
    captions = {
        ACCURACY_PNG: ("accuracy and loss", "no epoch was recorded"),
        SPARSITY_PNG: ("per-layer sparsity", "no per-layer sparsity was recorded"),
        SPEEDUP_PNG: ("predicted vs measured speedup", "no layer speedups in the manifest"),
    }
    if epochs:
        last = epochs[-1]
        lines.append(
            f"{len(epochs)} epochs recorded; last: phase {last.get('phase', '?')}, "
            f"test accuracy {_pct(last.get('test_accuracy'), 2)}, loss "
            f"{float(last.get('loss', float('nan'))):.4f}."
        )
        lines.append("")
    for name, (caption, missing) in captions.items():
        if plots.get(name):
            lines += [f"![{caption}]({name})", ""]
        else:
            lines += [f"*{caption.capitalize()}: not plotted ({missing}).*", ""]

    config = manifest.get("config") or {}
    if config:
        lines += ["## Configuration", ""]
        lines += [f"- `{key}`: `{json.dumps(value, ensure_ascii=False)}`"  # null, not None
                  for key, value in config.items()]  # fmt: skip
        lines.append("")
    # the files next to this one (not itself, nor a plot that was not drawn)
    artifacts = {key: value for key, value in (manifest.get("artifacts") or {}).items()
                 if value and value != REPORT_NAME and plots.get(value, True)}  # fmt: skip
    if artifacts:
        lines += ["## Artifacts", ""]
        lines += [f"- {key}: [{value}]({value})" for key, value in artifacts.items()]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- plots


def _figure(rows: int = 1, height: float = 3.2) -> tuple[Any, Any]:
    from matplotlib.figure import Figure  # imported here: only drawing needs matplotlib

    fig = Figure(figsize=(8, height * rows), dpi=100, layout="constrained")
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    return fig, axes


def _shade_phases(ax: Any, epochs: list[dict]) -> None:
    """Shade consecutive runs of the same phase; x = 1 … len(epochs)."""
    start = 0
    for i in range(1, len(epochs) + 1):
        if i == len(epochs) or epochs[i].get("phase") != epochs[start].get("phase"):
            phase = epochs[start].get("phase", "?")
            ax.axvspan(start + 0.5, i + 0.5, color=PHASE_COLORS.get(phase, "#eeeeff"), zorder=0)
            ax.text(
                (start + i + 1) / 2,
                1.0,
                phase,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=8,
            )
            start = i


def plot_accuracy(path: Path, epochs: list[dict]) -> bool:
    """Accuracy (top) and loss (bottom) per recorded epoch, all phases; False if none."""
    if not epochs:
        return False
    x = list(range(1, len(epochs) + 1))
    fig, (acc, loss) = _figure(rows=2)
    for key, label, style in (("test_accuracy", "test", "-o"), ("train_accuracy", "train", "--")):
        values = [100 * e[key] if e.get(key) is not None else float("nan") for e in epochs]
        acc.plot(x, values, style, label=label, markersize=3)
    loss.plot(x, [e.get("loss", float("nan")) for e in epochs], "-o", color="C3", markersize=3)
    for ax in (acc, loss):
        _shade_phases(ax, epochs)
        ax.set_xlim(0.5, len(epochs) + 0.5)
        ax.grid(alpha=0.3)
    acc.set_ylabel("accuracy (%)")
    acc.legend(loc="lower right", fontsize=8)
    loss.set_ylabel("training loss")
    loss.set_xlabel("epoch (all phases)")
    fig.savefig(path, format="png")
    return True


def plot_sparsity(path: Path, epochs: list[dict], decisions: list[dict]) -> bool:
    """Per-layer sparsity per epoch with decision markers; False if no sparsity recorded."""
    names: list[str] = []
    for e in epochs:
        names += [n for n in (e.get("sparsity") or {}) if n not in names]
    if not names:
        return False
    x = list(range(1, len(epochs) + 1))
    steps = [e.get("step", 0) for e in epochs]
    fig, (ax,) = _figure(height=4.0)
    colors = {}
    for name in names:
        values = [100 * (e.get("sparsity") or {}).get(name, float("nan")) for e in epochs]
        (line,) = ax.plot(x, values, "-", label=name)
        colors[name] = line.get_color()
    stacked: dict[tuple[int, int], int] = {}  # labels already at a point: the next goes above
    for d in decisions:
        layer = d.get("layer")
        if layer not in colors:
            continue
        # the decision falls in the first recorded epoch that ends at or after its step
        i = next((k for k, s in enumerate(steps) if s >= d.get("step", 0)), len(epochs) - 1)
        y = 100 * (epochs[i].get("sparsity") or {}).get(layer, 0.0)
        ax.plot([x[i]], [y], "v", color=colors[layer], markersize=7, markeredgecolor="black")
        # several layers decided in one epoch at one sparsity (all excluded or pruned at 0%)
        # had their labels drawn on top of each other
        point = (i, round(y))
        above = stacked[point] = stacked.get(point, -1) + 1
        ax.annotate(
            f"{layer}: {d.get('action', '')}" if above or len(colors) > 1 else d.get("action", ""),
            (x[i], y),
            textcoords="offset points",
            xytext=(0, 7 + 9 * above),
            fontsize=7,
            ha="center",
            color=colors[layer],
        )
    _shade_phases(ax, epochs)
    ax.set_xlim(0.5, len(epochs) + 0.5)
    ax.set_ylim(-2, 102)
    ax.set_ylabel("sparsity (%)")
    ax.set_xlabel("epoch (all phases); ▼ controller decision")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=max(1, len(names) // 8), loc="center left", bbox_to_anchor=(1, 0.5))
    fig.savefig(path, format="png")
    return True


def plot_speedup(path: Path, layers: list[dict], model_speedup: dict) -> bool:
    """Grouped bars of predicted and measured speedup per layer plus the whole model."""
    rows = [
        (layer.get("name", "?"), layer.get("predicted_speedup"), layer.get("measured_speedup"))
        for layer in layers
    ]
    if model_speedup.get("predicted") is not None or model_speedup.get("measured") is not None:
        rows.append(("model", model_speedup.get("predicted"), model_speedup.get("measured")))
    rows = [r for r in rows if r[1] is not None or r[2] is not None]
    if not rows:
        return False
    measured_any = any(r[2] is not None for r in rows)
    width = 0.4 if measured_any else 0.6
    positions = list(range(len(rows)))
    fig, (ax,) = _figure(height=3.6)

    def bars(values: list[Any], offset: float, label: str, color: str) -> None:
        xs = [p + offset for p, v in zip(positions, values, strict=True) if v is not None]
        ys = [float(v) for v in values if v is not None]
        ax.bar(xs, ys, width, label=label, color=color)

    offset = width / 2 if measured_any else 0.0
    bars([r[1] for r in rows], -offset, "predicted", "C0")
    if measured_any:
        bars([r[2] for r in rows], offset, "measured", "C2")
        for p, row in zip(positions, rows, strict=True):
            if row[2] is None:  # a layer that was not measured: say so instead of a gap
                ax.text(p + offset, 0.05, "not\nmeasured", ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
    ax.set_xticks(
        positions,
        [r[0] for r in rows],
        rotation=45 if len(rows) > 8 else 0,
        ha="right" if len(rows) > 8 else "center",
        fontsize=8,
    )
    ax.set_ylabel("speedup over dense (×)")
    ax.set_title(
        "predicted vs measured" if measured_any else "predicted (nothing measured)", fontsize=9
    )
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, format="png")
    return True
