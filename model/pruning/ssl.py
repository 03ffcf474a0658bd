"""Structured Sparsity Learning (Wen et al., "Learning Structured Sparsity in Deep Neural
Networks", NIPS 2016; docs/research.md §4).

The objective is the data loss plus weight decay plus group lasso (the paper's eq. 1–2)::

    E(W) = E_D(W) + λ·R(W) + λ_g · Σ_l Σ_g ‖W_g^(l)‖₂

with the plain L2 norm of each group (the square root matters: without it the term is weight
decay). Groups of a conv weight ``(K, C, R, S)`` (eq. 3–5 of the paper):

``filter``   K groups ``W[k, :, :, :]`` (rows of the lowered weight matrix; removes filters)
``channel``  C groups ``W[:, c, :, :]`` (removes input channels)
``shape``    C·R·S fibres ``W[:, c, r, s]`` (columns of the lowered matrix)
``kernel``   K·C 2D kernels ``W[k, c, :, :]``
``depth``    the whole weight of a conv between the shortcut endpoints of a residual block
             (stem and 1×1 projections are never depth groups)

For a fully connected layer (``linear=True``) ``filter`` = rows and ``channel`` = columns.

Mechanics, as the reference Caffe code: the subgradient ``λ_g·w/‖w_g‖`` (0 when the group norm
is 0: zero-safe) is added to the gradient and goes through momentum SGD; after every step each
weight with ``|w| < 1e-4`` is set to exactly 0; zeros may revive while pruning. Fine-tuning
freezes every all-zero group (the trainer masks the update and the momentum).

``mode="proximal"`` (ours, documented in ``docs/methods.md``): no subgradient; after each SGD
step every group is shrunk by the proximal operator of the group lasso,
``w_g ← w_g · max(0, 1 − lr·λ_g/‖w_g‖)``, applied kind by kind when groups overlap. It makes
exact zeros without the threshold and does not oscillate around zero.

The zeros become speed through surgery (:mod:`model.surgery`): removed filters, channels and
residual branches leave a smaller dense network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from model.surgery import residual_blocks
from model.training import Callback
from perfmodel.predict import LayerPrediction

KINDS = ("filter", "channel", "shape", "kernel", "depth")
MODES = ("subgradient", "proximal")


@dataclass
class SSLConfig:
    """SSL hyperparameters; every default has its reason."""

    groups: list[str] = field(default_factory=lambda: ["filter", "channel"])  # Wen's LeNet runs
    strength: float = 0.03  # λ_g: digits gets ~2K steps, not the paper's ~100K; tuned on LeNet-5
    kind_strength: dict[str, float] = field(default_factory=dict)  # per-kind λ_g overrides
    linear: bool = False  # also regularise fully connected layers (paper: conv layers only)
    layers: list[str] = field(default_factory=list)  # restrict to these paths (empty: all)
    threshold: float = 1e-4  # the reference code zeroes |w| < 1e-4 after each step
    mode: str = "subgradient"  # the reference mechanics; "proximal" is our variant
    inference_batch: int = 1  # batch size the speedups are predicted and measured for

    def __post_init__(self) -> None:
        unknown = set(self.groups) - set(KINDS)
        if unknown or not self.groups:
            raise ValueError(f"groups must be a non-empty subset of {', '.join(KINDS)}")
        ignored = sorted(set(self.kind_strength) - set(self.groups))
        if ignored:  # a kind that is not regularised would silently keep the default λ_g
            raise ValueError(
                f"kind_strength keys must be group kinds in groups ({', '.join(self.groups)}); "
                f"got {', '.join(map(repr, ignored))}"
            )
        if self.strength < 0 or any(v < 0 for v in self.kind_strength.values()):
            raise ValueError("strength must be >= 0")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if self.threshold < 0:
            raise ValueError("threshold must be >= 0")


def group_dims(weight: torch.Tensor, kind: str) -> tuple[int, ...]:
    """Dimensions a group of ``kind`` spans (the norm is taken over them, keepdim)."""
    if weight.dim() == 2:  # linear (O, I): rows and columns
        return {"filter": (1,), "channel": (0,), "shape": (0,), "depth": (0, 1)}[kind]
    return {"filter": (1, 2, 3), "channel": (0, 2, 3), "shape": (0,), "kernel": (2, 3),
            "depth": (0, 1, 2, 3)}[kind]  # fmt: skip


def group_norms(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """‖w_g‖₂ of every group, broadcastable against ``weight``."""
    return weight.pow(2).sum(dim=group_dims(weight, kind), keepdim=True).sqrt()


def group_lasso_gradient(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """∂/∂w of Σ_g ‖w_g‖₂: ``w/‖w_g‖``, and 0 for a group whose norm is 0 (zero-safe)."""
    norms = group_norms(weight, kind)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    return torch.where(norms > 0, weight / safe, torch.zeros_like(weight))


def group_lasso(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """Σ_g ‖w_g‖₂ (the regulariser's value)."""
    return group_norms(weight, kind).sum()


def zero_group_mask(weight: torch.Tensor, kinds: list[str]) -> torch.Tensor:
    """1 where the weight may move in fine-tuning, 0 inside every all-zero group of ``kinds``."""
    mask = torch.ones_like(weight)
    for kind in kinds:
        mask = mask * (group_norms(weight, kind) > 0).to(weight.dtype)
    return mask


class SSL:
    """Group lasso as training hooks (:class:`model.training.PruningHooks`)."""

    name = "ssl"
    structured = True

    def __init__(self, predictions: dict[str, LayerPrediction], config: SSLConfig):
        self.config = config
        self.predictions = predictions
        self.kinds: dict[str, list[str]] = {}  # layer path → group kinds regularised
        self.lr = 0.0
        self._modules: dict[str, nn.Module] = {}

    def _layers(self, model: nn.Module) -> dict[str, list[str]]:
        depth_ok = {f"{b}.{c}" for b, block in residual_blocks(model).items()
                    for c in ("conv1", "conv2", "conv3") if hasattr(block, c)}  # fmt: skip
        kinds = {}
        for name, module in model.named_modules():
            if self.config.layers and name not in self.config.layers:
                continue
            if isinstance(module, nn.Conv2d) and module.groups == 1:
                chosen = [k for k in self.config.groups if k != "depth" or name in depth_ok]
            elif isinstance(module, nn.Linear) and self.config.linear:
                chosen = [k for k in self.config.groups if k in ("filter", "channel")]
            else:
                continue
            if chosen:
                kinds[name] = chosen
        return kinds

    def strength(self, kind: str) -> float:
        return self.config.kind_strength.get(kind, self.config.strength)

    def start(self, model: nn.Module, emit: Callback) -> None:
        self.kinds = self._layers(model)
        self._modules = {name: model.get_submodule(name) for name in self.kinds}
        for name in (n for n in self.predictions if n not in self.kinds):
            emit(
                {
                    "type": "decision",
                    "epoch": 0,
                    "layer": name,
                    "action": "exclude",
                    "reason": "not regularised (fully connected, grouped, or not selected)",
                }
            )
        for name, kinds in self.kinds.items():
            emit(
                {
                    "type": "decision",
                    "epoch": 0,
                    "layer": name,
                    "action": "prune",
                    "reason": f"group lasso ({self.config.mode}) on {', '.join(kinds)} groups",
                }
            )

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, phase: str) -> None:
        self.lr = optimizer.param_groups[0]["lr"]  # the proximal step needs the step size

    def tracked_parameters(self) -> set[str]:
        return set()

    def regularize(self, model: nn.Module) -> None:
        if self.config.mode != "subgradient":
            return
        for name, kinds in self.kinds.items():
            weight = self._module(model, name).weight
            if weight.grad is None:
                continue
            for kind in kinds:
                weight.grad.add_(group_lasso_gradient(weight.detach(), kind),
                                 alpha=self.strength(kind))  # fmt: skip

    def after_step(self, model: nn.Module, updates: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, kinds in self.kinds.items():
                weight = self._module(model, name).weight
                if self.config.mode == "proximal":
                    for kind in kinds:
                        norms = group_norms(weight, kind)
                        shrink = 1 - self.lr * self.strength(kind) / norms.clamp_min(1e-30)
                        weight.mul_(shrink.clamp_min(0))
                weight.masked_fill_(weight.abs() < self.config.threshold, 0.0)

    def zero_groups(self, model: nn.Module) -> dict[str, dict[str, tuple[int, int]]]:
        """Per layer and kind: (all-zero groups, groups)."""
        counts = {}
        for name, kinds in self.kinds.items():
            weight = model.get_submodule(name).weight.detach()
            counts[name] = {}
            for kind in kinds:
                norms = group_norms(weight, kind)
                counts[name][kind] = (int((norms == 0).sum()), norms.numel())
        return counts

    def end_epoch(self, model: nn.Module, epoch: int, emit: Callback) -> bool:
        parts = [f"{name} " + ", ".join(f"{kind} {zero}/{total}" for kind, (zero, total)
                                        in counts.items())
                 for name, counts in self.zero_groups(model).items()]  # fmt: skip
        emit({"type": "log", "message": f"ssl epoch {epoch}: zero groups: " + "; ".join(parts)})
        return False

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Fine-tuning freezes every all-zero group (other zeros may revive)."""
        return {
            f"{name}.weight": zero_group_mask(model.get_submodule(name).weight.detach(), kinds)
            for name, kinds in self.kinds.items()
        }

    def layer_states(self) -> dict[str, str]:
        return {name: "pruned" if name in self.kinds else "excluded" for name in self.predictions}

    def state_dict(self) -> dict[str, Any]:
        return {"kinds": {k: list(v) for k, v in self.kinds.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kinds = {k: list(v) for k, v in state["kinds"].items()}
        self._modules = {}

    def _module(self, model: nn.Module, name: str) -> nn.Module:
        return self._modules.setdefault(name, model.get_submodule(name))
