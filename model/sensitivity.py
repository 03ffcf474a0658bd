"""Per-layer pruning sensitivity (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017,
§3.3 and Fig. 2): prune each layer alone at a range of ratios, without retraining, and evaluate.

Each prunable conv (see :func:`model.pruning.l1_filter.prunable_layers`) loses the filters with
the smallest L1 norms (the method), random filters, or the largest ones (the paper's baselines),
with their bias and BN channel, as L1-filter pruning does. Accuracy is measured on the test set;
random selection is averaged over ``random_repeats`` draws. Layers whose accuracy falls fast are
the sensitive ones to put in the ``skip`` list of ``sweetspot prune --method l1-filter``.

Outputs: a JSON-able :class:`Sensitivity`, a markdown table (:func:`to_markdown`) and a PNG
plot (:func:`plot`). ``add_arguments``/``run`` are the ``sweetspot sensitivity`` command.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from model.pruning.l1_filter import parameter_masks, prunable_layers, select_filters
from model.training import evaluate

RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
CRITERIA = ("smallest", "random", "largest")


@dataclass
class Sensitivity:
    """Accuracy with one layer pruned: ``layers[name][criterion][i]`` at ``ratios[i]``."""

    baseline: float
    ratios: list[float]
    layers: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def mean_drop(self, criterion: str) -> float:
        """Accuracy drop averaged over layers and ratios (the summary of Fig. 2)."""
        values = [a for curves in self.layers.values() for a in curves[criterion]]
        return self.baseline - sum(values) / len(values)


def analyse(
    model: nn.Module,
    test_set: Dataset,
    input_shape: Sequence[int],
    ratios: Sequence[float] = RATIOS,
    layers: Sequence[str] | None = None,
    random_repeats: int = 3,
    seed: int = 0,
) -> Sensitivity:
    """Prune each layer alone at each ratio by each criterion and evaluate (no retraining).

    The model's weights are restored after every evaluation.
    """
    model.eval()
    baseline = evaluate(model, test_set)[1]
    result = Sensitivity(baseline, list(ratios))
    params = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(seed)
    for name in layers or prunable_layers(model, input_shape):
        channels = model.get_submodule(name).out_channels
        curves: dict[str, list[float]] = {c: [] for c in CRITERIA}
        for ratio in ratios:
            keep = {name: max(1, int(channels * (1 - ratio) + 1e-9))}
            for criterion in CRITERIA:
                accuracies = []
                for _ in range(random_repeats if criterion == "random" else 1):
                    filters = select_filters(model, input_shape, keep, criterion=criterion,
                                             generator=generator)  # fmt: skip
                    masks = parameter_masks(model, input_shape, filters)
                    saved = {n: params[n].detach().clone() for n in masks}
                    with torch.no_grad():
                        for n, mask in masks.items():
                            params[n].mul_(mask)
                    accuracies.append(evaluate(model, test_set)[1])
                    with torch.no_grad():
                        for n, value in saved.items():
                            params[n].copy_(value)
                curves[criterion].append(sum(accuracies) / len(accuracies))
        result.layers[name] = curves
    return result


def to_markdown(result: Sensitivity) -> str:
    """One table per criterion: layers × ratios, accuracy in %, plus the mean drops."""
    lines = [f"Baseline accuracy {100 * result.baseline:.2f}%. Accuracy (%) with one layer "
             "pruned, no retraining.", ""]  # fmt: skip
    header = "| layer | " + " | ".join(f"{r:.0%}" for r in result.ratios) + " |"
    rule = "|---|" + "---|" * len(result.ratios)
    for criterion in CRITERIA:
        lines += [f"**{criterion} L1 norms pruned**" if criterion != "random"
                  else "**random filters pruned**", "", header, rule]  # fmt: skip
        for name, curves in result.layers.items():
            cells = " | ".join(f"{100 * a:.1f}" for a in curves[criterion])
            lines.append(f"| `{name}` | {cells} |")
        lines.append("")
    lines += ["| criterion | mean accuracy drop (points) |", "|---|---|"]
    lines += [f"| {c} | {100 * result.mean_drop(c):.2f} |" for c in CRITERIA]
    return "\n".join(lines) + "\n"


def plot(result: Sensitivity, path: Path) -> None:
    """Accuracy against pruning ratio per layer (columns: smallest, random, largest L1)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(CRITERIA), sharey=True)
    for ax, criterion in zip(axes, CRITERIA, strict=True):
        for name, curves in result.layers.items():
            ax.plot([100 * r for r in result.ratios], [100 * a for a in curves[criterion]],
                    "-o", markersize=3, label=name)  # fmt: skip
        ax.axhline(100 * result.baseline, color="black", linestyle=":", linewidth=0.8)
        ax.set_title(f"{criterion} L1 norms pruned" if criterion != "random" else "random")
        ax.set_xlabel("filters pruned (%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[-1].legend(fontsize=7, loc="lower left")
    fig.savefig(path, format="png")


# ------------------------------------------------------------------------ the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``sweetspot sensitivity``."""
    parser.add_argument("--model", required=True, help="built-in network name")
    parser.add_argument("--dataset", default="digits", metavar="NAME|PATH",
                        help="digits (default), synthetic, or a folder (MNIST, CIFAR-10, images)")
    parser.add_argument("--checkpoint", metavar="FILE",
                        help="trained weights (.safetensors or weights-only .pt); "
                             "otherwise the dense network is trained first")  # fmt: skip
    parser.add_argument("--dense-epochs", type=int, default=10, help="training without a "
                        "checkpoint (default 10)")  # fmt: skip
    parser.add_argument("--ratios", default=",".join(str(r) for r in RATIOS),
                        help="comma-separated fractions of filters to prune (default "
                             f"{','.join(str(r) for r in RATIOS)})")  # fmt: skip
    parser.add_argument("--layers", help="comma-separated layer paths (default: all prunable)")
    parser.add_argument("--random-repeats", type=int, default=3,
                        help="draws averaged for the random-filter baseline (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--device", default="auto", help="where the dense network trains: auto "
                        "(a CUDA GPU when there is one, default), cpu, cuda, cuda:N")  # fmt: skip
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="writes sensitivity.json, sensitivity.md, sensitivity.png",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _ratios(text: str) -> list[float]:
    try:
        ratios = [float(r) for r in text.split(",")]
    except ValueError:
        raise ValueError(
            f"--ratios takes comma-separated fractions of filters to prune, got {text!r}"
        ) from None
    if not all(0 < r < 1 for r in ratios):
        raise ValueError(f"--ratios must each be above 0 and below 1, got {text!r}")
    return ratios


def _argument_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, found before any training."""
    for option, least in (("random_repeats", 1), ("threads", 1), ("dense_epochs", 0)):
        value = getattr(args, option)
        if value is not None and value < least:
            return f"--{option.replace('_', '-')} must be >= {least}, got {value}"
    from model.training.distributed import check_device_spec, resolve_device

    try:  # a valid value, and, when the network is trained here, the GPU it names is here
        check_device_spec(args.device) if args.checkpoint else resolve_device(args.device)
    except ValueError as error:
        return str(error)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        return f"--out {args.out} is a file; it names the folder the outputs go to"
    return None


def _no_prunable_conv(model: str) -> str | None:
    """Why ``model`` cannot be analysed, if it has no prunable conv layer (LeNet-300-100 made
    ``mean_drop`` divide by zero after the training); built on the meta device, so before the
    output folder is made. Unknown names are left to :func:`model.pipeline.build_network`."""
    from model.networks import UnknownNetworkError, create_model, network_info

    try:
        info = network_info(model)
    except UnknownNetworkError:
        return None
    with torch.device("meta"):
        net = create_model(model)
    try:
        if prunable_layers(net, info.input_shape):
            return None
    except ValueError as error:  # SurgeryError: no channel groups to rank filters in
        return f"{model}: {error}"
    has = [f"{name} ({type(m).__name__})" for name, m in net.named_modules()
           if isinstance(m, nn.Conv2d | nn.Linear)]  # fmt: skip
    return (f"{model} has no prunable conv layers (it has {', '.join(has) or 'none'}); "
            "filter-pruning sensitivity needs a network with convolutions")


def run(args: argparse.Namespace) -> int:
    """``sweetspot sensitivity``: train (or load) a network, analyse it, write the outputs.
    Exit 2 for bad arguments or names, 1 for a data set or checkpoint that does not load;
    everything is checked before the training."""
    from model.data.bundle import DatasetError
    from model.networks import UnknownNetworkError
    from model.pipeline import build_network
    from model.training import TrainConfig, Trainer

    problem = _argument_error(args)
    try:
        ratios = _ratios(args.ratios)
    except ValueError as error:
        problem = problem or str(error)
    if problem:
        print(f"sweetspot: {problem}", file=sys.stderr)
        return 2
    problem = _no_prunable_conv(args.model)
    if problem:
        print(f"sweetspot: {problem}", file=sys.stderr)
        return 2
    out = Path(args.out)
    created = not out.exists()
    try:  # the folder first: a failure here must not come after the training
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"sweetspot: cannot create --out {args.out}: {error.strerror}", file=sys.stderr)
        return 1

    def refuse(message: str, code: int) -> int:
        """Refused before anything was written: no empty folder is left behind."""
        if created and not any(out.iterdir()):
            out.rmdir()
        print(f"sweetspot: {message}", file=sys.stderr)
        return code

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, data, info = build_network(args.model, args.dataset, args.seed, args.checkpoint)
    except UnknownNetworkError as error:
        return refuse(str(error), 2)
    except (DatasetError, ValueError, FileNotFoundError, LookupError) as error:
        return refuse(str(error), 1)
    prunable = prunable_layers(model, info.input_shape)
    layers = args.layers.split(",") if args.layers else None
    unknown = [name for name in layers or () if name not in prunable]
    if unknown:
        return refuse(f"--layers {', '.join(unknown)}: not prunable conv layers of "
                      f"{args.model}; valid: {', '.join(prunable)}", 2)  # fmt: skip
    if not args.checkpoint:
        config = TrainConfig(dense_epochs=args.dense_epochs, seed=args.seed, log_every=0,
                             checkpoint_every=0, threads=args.threads,
                             device=args.device)  # fmt: skip
        Trainer(model, data.train, data.test, config).fit(resume=False)
    result = analyse(model, data.test, info.input_shape, ratios, layers,
                     args.random_repeats, args.seed)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "sensitivity.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    (out / "sensitivity.md").write_text(to_markdown(result))
    plot(result, out / "sensitivity.png")
    print(json.dumps(asdict(result), indent=2) if args.json else to_markdown(result))
    return 0
