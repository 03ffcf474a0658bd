"""Gradual magnitude pruning (Zhu & Gupta, "To prune, or not to prune", ICLR-W 2018, eq. 1):
the common baseline users know.

The target sparsity rises from ``s_i`` to ``s_f`` over ``n`` pruning steps on a cubic schedule,
pruning fast while there are many redundant weights and slowly near the end::

    s_t = s_f + (s_i − s_f) · (1 − t/n)³,   t = 0, 1, …, n

Here one pruning step is one prune epoch (``t`` = epochs done; ours: the hooks see epochs, and
a digits epoch is ~20 SGD steps). At each step the smallest-magnitude weights of every pruned
layer (``scope="layer"``) or of all of them together (``"global"``) are masked until the layer
reaches ``s_t``; masked weights stay at zero (gradients masked, weights re-masked after every
step) and pruning ends after step ``n``; the trainer then fine-tunes with the masks frozen.
Unstructured: the result runs on the sparse kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from model.pruning.masking import MaskedWeights
from model.training import Callback
from perfmodel.predict import LayerPrediction

SCOPES = ("layer", "global")


@dataclass
class MagnitudeConfig:
    """Gradual magnitude pruning hyperparameters; every default has its reason."""

    final_sparsity: float = 0.9  # s_f: the usual target where sparse kernels start to pay
    initial_sparsity: float = 0.0  # s_i: Zhu & Gupta start from the dense network
    ramp_epochs: int = 10  # n: prune epochs the schedule spans (then pruning has converged)
    scope: str = "layer"  # every layer to s_t (predictable per-layer speedups)
    layers: list[str] = field(default_factory=list)  # restrict to these paths (empty: all)
    inference_batch: int = 1  # batch size the speedups are predicted and measured for

    def __post_init__(self) -> None:
        if not 0 <= self.initial_sparsity <= self.final_sparsity < 1:
            raise ValueError("need 0 <= initial_sparsity <= final_sparsity < 1")
        if self.ramp_epochs < 1:
            raise ValueError("ramp_epochs must be >= 1")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}")


def cubic_schedule(t: int, n: int, initial: float, final: float) -> float:
    """Zhu & Gupta's target sparsity after ``t`` of ``n`` pruning steps."""
    t = min(max(t, 0), n)
    return final + (initial - final) * (1 - t / n) ** 3


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """0/1 mask zeroing the ``round(sparsity·n)`` smallest |w| (ties broken by position)."""
    count = round(sparsity * weight.numel())
    mask = torch.ones(weight.numel(), dtype=weight.dtype, device=weight.device)
    if count > 0:
        order = torch.argsort(weight.detach().abs().flatten(), stable=True)
        mask[order[:count]] = 0
    return mask.reshape(weight.shape)


class Magnitude(MaskedWeights):
    """Gradual magnitude pruning as training hooks (:class:`model.training.PruningHooks`)."""

    name = "magnitude"
    structured = False

    def __init__(self, predictions: dict[str, LayerPrediction], config: MagnitudeConfig):
        self.config = config
        self.predictions = predictions
        self.param_masks: dict[str, torch.Tensor] = {}
        self.target = 0.0

    def _weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {f"{name}.weight": module.weight for name, module in model.named_modules()
                if isinstance(module, nn.Conv2d | nn.Linear)
                and (not self.config.layers or name in self.config.layers)}  # fmt: skip

    def _prune_to(self, model: nn.Module, sparsity: float) -> None:
        self.target = sparsity
        weights = self._weights(model)
        if self.config.scope == "global":
            magnitudes = torch.cat([w.detach().abs().flatten() for w in weights.values()])
            count = round(sparsity * magnitudes.numel())
            threshold = torch.kthvalue(magnitudes, count).values if count else -1.0
            self.param_masks = {n: (w.detach().abs() > threshold).to(w.dtype)
                                for n, w in weights.items()}  # fmt: skip
        else:
            self.param_masks = {n: magnitude_mask(w, sparsity) for n, w in weights.items()}
        self._apply(model)

    def start(self, model: nn.Module, emit: Callback) -> None:
        for name in self._weights(model):
            emit({"type": "decision", "epoch": 0, "layer": name.removesuffix(".weight"),
                  "action": "prune", "reason": f"gradual magnitude pruning to "
                  f"{self.config.final_sparsity:.0%} ({self.config.scope} scope)"})  # fmt: skip
        self._prune_to(model, self.config.initial_sparsity)

    def end_epoch(self, model: nn.Module, epoch: int, emit: Callback) -> bool:
        c = self.config
        target = cubic_schedule(epoch, c.ramp_epochs, c.initial_sparsity, c.final_sparsity)
        self._prune_to(model, target)
        emit({"type": "log", "message": f"magnitude: target sparsity {target:.1%} "
              f"(step {min(epoch, c.ramp_epochs)}/{c.ramp_epochs})"})  # fmt: skip
        return epoch >= c.ramp_epochs

    def layer_states(self) -> dict[str, str]:
        pruned = {n.removesuffix(".weight") for n in self.param_masks}
        return {n: "pruned" if n in pruned else "excluded" for n in self.predictions}

    def state_dict(self) -> dict[str, Any]:
        return {"masks": self.param_masks, "target": self.target}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.param_masks = dict(state["masks"])
        self.target = float(state["target"])
