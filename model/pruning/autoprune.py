"""AutoPrune: pruning by regularising auxiliary mask parameters (Xiao, Wang, Rajasekaran,
"AutoPrune: Automatic Network Pruning by Regularizing Auxiliary Parameters", NeurIPS 2019, §3;
docs/research.md §6).

Each pruned layer computes with ``W ⊙ h(M)`` where ``h`` is the unit step (``h(m) = 1`` for
``m > 0``): the weights are never changed by pruning, a separate parameter ``m`` per weight (or
per filter) decides whether it is used. Gradients reach ``M`` through a straight-through
estimator (STE) ``h'``. The paper's exact equations are not available to us (docs/research.md §6);
the rules below are ours, chosen so that the properties the paper states hold. Each choice is
marked **ours** and documented in ``docs/methods.md``.

Update of the masks (the paper replaces ``w`` by ``sgn(w)`` in the mask gradient so the update
keeps the sign of the weight's; **ours** as written)::

    g      = ∂L/∂(w·h(m))                     the gradient on the effective weight
    ∂m     = g · sgn(w) · h'(m)  +  λ · h'(m)  data term + regulariser R(M) = λ·Σ h(m)
    m     ← m − η_m · ∂m                      plain SGD: no momentum, no weight decay (ours)

So ``m`` grows when the pull on the weight (``−g``) points away from zero (the data wants the
weight larger) and shrinks when it points towards zero or when the regulariser wins: the mask
update follows the sign of the weight's pull. For filter-level masks the data term sums over
the filter.

Estimators ``h'(m)`` the paper compares (its finding: the plain linear one is worse):

``linear``       1 everywhere (identity STE)
``leaky``        1 for ``m > 0``, ``leak`` (0.1) otherwise (leaky-ReLU-like)
``softplus``     σ(m/τ), the derivative of softplus, τ = ``temperature``

What the estimator can change under these rules (**ours**, derived, measured, and pinned by
the tests): both terms of ``∂m`` carry the same ``h'(m) > 0``, so the estimator sets how fast a
mask moves, never which way. With small steps, ``dm = −η_m·u·h'(m)`` is ``dφ = −η_m·u`` in
``φ(m) = ∫₀^m ds / h'(s)`` (``u`` depends on ``m`` only through ``h(m)``, the sign of ``φ``): one
algorithm in other coordinates. Softplus is the linear estimator with masks started at
``φ(m₀) = m₀ + τ(1 − e^{−m₀/τ})`` instead of ``m₀``, which is why it prunes less at equal λ.
Leaky is linear above 0 and linear slowed tenfold below 0; the one step it treats differently
is the one that crosses 0, taken at ``h' = 1``: its overshoot takes 10× the evidence to undo,
a hysteresis that holds a just-pruned mask off. On LeNet-300-100 / digits the linear
estimator turns 4–7× more pruned masks back on than leaky, at the same accuracy for the same
compression (3 seeds; docs/methods.md): it is *not* the weak one here. While ``h'`` multiplies
the whole mask update no rule can single it out, since softplus, continuous at 0 like it, is
the same algorithm.

``regularizer="live"`` (**ours**, an option): the regulariser pulls only live masks
(``λ·h'(m)·h(m)``); a pruned mask then moves by the data term alone, so the estimator's
``h'`` below 0 decides how easily it flips back. Under this rule the paper's finding holds:
the linear estimator, which lets every pruned mask answer the data at full speed, is the
weakest (LeNet-300-100 / digits, 3 seeds: linear 146× at −3.2 points, softplus 130× at −2.2,
leaky 142× at −1.3; docs/methods.md), at the cost of masks cycling on and off during pruning.

Weights (``∂w = g · h(m)``): a masked weight gets no data gradient, and the trainer's weight
decay and momentum are undone for it after every step (values restored, momentum zeroed), so it
keeps its value exactly and comes back unchanged when its ``m`` turns positive (recoverable).

Initialisation (**ours**): ``m = |w| / mean|w|`` of the layer (per filter: the filter's L1 norm
over the layer's mean), so masks start on a common scale (≈1) and the small weights are the
first candidates; the data term then decides.

Variants: ``granularity="weight"`` (unstructured: the sparse-kernel path) and ``"filter"`` (one
mask per output filter: structured, cut by surgery). Fine-tuning freezes ``h(M)`` into the
weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.training import Callback
from perfmodel.predict import LayerPrediction

ESTIMATORS = ("linear", "leaky", "softplus")
GRANULARITIES = ("weight", "filter")
REGULARIZERS = ("all", "live")


@dataclass
class AutoPruneConfig:
    """AutoPrune hyperparameters; every default has its reason (ours, tuned on digits)."""

    estimator: str = "leaky"  # the only one with a jump at 0: 4–7× fewer masks flip back
    granularity: str = "weight"  # "weight": unstructured; "filter": structured
    strength: float = 0.004  # λ: 86× on LeNet-300 / digits, −0.9 points (0.003: 21×, +0.4)
    mask_lr: float = 2.0  # η_m: masks start ≈1; η_m·λ = 0.008 per step, ~125 steps to cross 0
    leak: float = 0.1  # slope of the leaky estimator below 0
    temperature: float = 0.5  # τ of the softplus-derivative estimator (mask units)
    regularizer: str = "all"  # "all": λ·h'(m) on every mask; "live": λ·h'(m)·h(m), live ones
    layers: list[str] = field(default_factory=list)  # restrict to these paths (empty: all)
    layer_strength: dict[str, float] = field(default_factory=dict)  # per-layer λ overrides
    inference_batch: int = 1  # batch size the speedups are predicted and measured for

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}")
        if self.regularizer not in REGULARIZERS:
            raise ValueError(f"regularizer must be one of {', '.join(REGULARIZERS)}")
        if self.strength < 0 or self.mask_lr <= 0 or self.temperature <= 0:
            raise ValueError("strength must be >= 0, mask_lr and temperature > 0")
        if not 0 <= self.leak <= 1:
            raise ValueError(f"leak must be in [0, 1], got {self.leak}")
        negative = sorted(k for k, v in self.layer_strength.items() if not v >= 0)
        if negative:
            raise ValueError(f"layer_strength values must be >= 0, got {negative}")


def step(m: torch.Tensor) -> torch.Tensor:
    """h(m): 1 where the mask is on (m > 0), else 0."""
    return (m > 0).to(m.dtype)


def estimator_derivative(m: torch.Tensor, kind: str, leak: float = 0.1,
                         temperature: float = 0.5) -> torch.Tensor:  # fmt: skip
    """h'(m) of the straight-through estimator ``kind``."""
    if kind == "linear":
        return torch.ones_like(m)
    if kind == "leaky":
        return torch.where(m > 0, torch.ones_like(m), torch.full_like(m, leak))
    return torch.sigmoid(m / temperature)  # derivative of τ·softplus(m/τ)


class _MaskedWeight(torch.autograd.Function):
    """``w·h(m)`` forward; backward ``∂w = g·h(m)``, ``∂m = Σ g·sgn(w)·h'(m)`` (see above)."""

    @staticmethod
    def forward(ctx, weight, mask, kind, leak, temperature):
        ctx.save_for_backward(weight, mask)
        ctx.settings = (kind, leak, temperature)
        return weight * step(mask)

    @staticmethod
    def backward(ctx, grad):
        weight, mask = ctx.saved_tensors
        kind, leak, temperature = ctx.settings
        grad_weight = grad * step(mask)
        pull = grad * torch.sign(weight)  # the weight replaced by its sign (consistency)
        if mask.shape != weight.shape:  # filter masks (K, 1, …): sum over the filter
            pull = pull.sum(dim=tuple(range(1, weight.dim())), keepdim=True)
        grad_mask = pull * estimator_derivative(mask, kind, leak, temperature)
        return grad_weight, grad_mask, None, None, None


def masked_weight(weight: torch.Tensor, mask: torch.Tensor, config: AutoPruneConfig
                  ) -> torch.Tensor:  # fmt: skip
    """The effective weight ``W ⊙ h(M)`` with AutoPrune's gradients."""
    return _MaskedWeight.apply(weight, mask, config.estimator, config.leak, config.temperature)


def _masked_forward(module: nn.Module, mask: torch.Tensor, config: AutoPruneConfig):
    def forward(x: torch.Tensor) -> torch.Tensor:
        weight = masked_weight(module.weight, mask, config)
        if isinstance(module, nn.Conv2d):
            return module._conv_forward(x, weight, module.bias)
        return F.linear(x, weight, module.bias)

    return forward


class AutoPrune:
    """AutoPrune as training hooks (:class:`model.training.PruningHooks`).

    The mask parameters live here, not in the network: the trainer's optimizer gets them as a
    parameter group of their own (``attach``), and the prune-phase forward pass of each pruned
    layer is replaced by one using ``W ⊙ h(M)``; the network's state dict never changes.
    """

    name = "autoprune"

    def __init__(self, predictions: dict[str, LayerPrediction], config: AutoPruneConfig):
        self.config = config
        self.predictions = predictions
        self.mask_params: dict[str, torch.Tensor] = {}  # layer path → m
        self.optimizer: torch.optim.Optimizer | None = None
        self._held: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._patched: list[nn.Module] = []

    @property
    def structured(self) -> bool:
        return self.config.granularity == "filter"

    def _init_mask(self, weight: torch.Tensor) -> torch.Tensor:
        magnitude = weight.detach().abs()
        if self.config.granularity == "filter":
            magnitude = magnitude.sum(dim=tuple(range(1, weight.dim())), keepdim=True)
        return (magnitude / magnitude.mean().clamp_min(1e-12)).clone().requires_grad_(True)

    def start(self, model: nn.Module, emit: Callback) -> None:
        for name, module in model.named_modules():
            if not isinstance(module, nn.Conv2d | nn.Linear):
                continue
            if self.config.layers and name not in self.config.layers:
                emit({"type": "decision", "epoch": 0, "layer": name, "action": "exclude",
                      "reason": "not selected"})  # fmt: skip
                continue
            self.mask_params[name] = self._init_mask(module.weight)
            emit({"type": "decision", "epoch": 0, "layer": name, "action": "prune",
                  "reason": f"{self.config.granularity} masks, {self.config.estimator} STE, "
                            f"λ={self.strength(name)}"})  # fmt: skip

    def strength(self, name: str) -> float:
        return self.config.layer_strength.get(name, self.config.strength)

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, phase: str) -> None:
        """Prune phase: patch the forward passes and give the masks their own SGD group."""
        self._unpatch()
        self.optimizer = optimizer
        if phase != "prune" or not self.mask_params:
            return
        for name, mask in self.mask_params.items():
            module = model.get_submodule(name)
            module.forward = _masked_forward(module, mask, self.config)
            self._patched.append(module)
        optimizer.add_param_group({"params": list(self.mask_params.values()),
                                   "lr": self.config.mask_lr, "momentum": 0.0,
                                   "weight_decay": 0.0, "nesterov": False})  # fmt: skip

    def _unpatch(self) -> None:
        for module in self._patched:
            if "forward" in module.__dict__:
                del module.forward
        self._patched = []

    def _hold_mask(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        return (step(self.mask_params[name].detach()) == 0).expand_as(weight)

    def tracked_parameters(self) -> set[str]:
        return set()

    def regularize(self, model: nn.Module) -> None:
        self._held = {}
        for name, mask in self.mask_params.items():
            derivative = estimator_derivative(
                mask.detach(), self.config.estimator, self.config.leak, self.config.temperature
            )
            regulariser = self.strength(name) * derivative  # ∂/∂m of λ·h(m) through the STE
            if self.config.regularizer == "live":  # pruned masks left to the data alone
                regulariser = regulariser * step(mask.detach())
            mask.grad = regulariser if mask.grad is None else mask.grad + regulariser
            weight = model.get_submodule(name).weight
            hold = self._hold_mask(name, weight)
            self._held[name] = (hold, weight.detach()[hold].clone())

    def after_step(self, model: nn.Module, updates: dict[str, torch.Tensor]) -> None:
        """Masked weights keep their values: undo weight decay and momentum on them."""
        with torch.no_grad():
            for name, (hold, values) in self._held.items():
                weight = model.get_submodule(name).weight
                weight[hold] = values
                state = self.optimizer.state.get(weight, {}) if self.optimizer else {}
                buffer = state.get("momentum_buffer")
                if buffer is not None:
                    buffer[hold] = 0.0

    def sparsity(self, model: nn.Module) -> dict[str, float]:
        return {name: 1.0 - step(mask.detach()).mean().item()
                for name, mask in self.mask_params.items()}  # fmt: skip

    def end_epoch(self, model: nn.Module, epoch: int, emit: Callback) -> bool:
        return False

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """h(M) frozen into the weights for fine-tuning."""
        self._unpatch()
        return {
            f"{name}.weight": step(mask.detach())
            .expand_as(model.get_submodule(name).weight)
            .clone()
            for name, mask in self.mask_params.items()
        }

    def layer_states(self) -> dict[str, str]:
        return {n: "pruned" if n in self.mask_params else "excluded" for n in self.predictions}

    def state_dict(self) -> dict[str, Any]:
        return {"masks": {name: mask.detach().clone() for name, mask in self.mask_params.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mask_params = {name: mask.clone().requires_grad_(True)
                            for name, mask in state["masks"].items()}  # fmt: skip
