"""Guided Sparsity Learning (Park et al., "Faster CNNs with Direct Sparse Convolutions and
Guided Pruning", ICLR 2017, §2.3; docs/research.md §3).

Element-wise lasso prunes only the layers the performance model predicts to speed up, and a
controller watches each layer's sparsity against its sweet spot:

1. Before training, layers with no sweet spot (or one out of reach) are excluded.
2. Candidate layers get ``λ · multiplier · sign(w)`` added to their gradient (SkimCaffe's
   element-wise lasso; multipliers default to 1 for convolutions, 0.1 for fully connected
   layers, as its AlexNet recipe), and after every update weight ``i`` is zeroed when
   ``|w_i| ≤ 1 / (|d_i|/t0 + 1/(k·t0))`` with ``d_i`` the update just applied: small weights
   that are not moving fast are cut (t0 = 1e-4, k = 10 as in SkimCaffe).
3. Every ``check_every`` epochs the controller re-projects: a layer past the upper bound of its
   sweet spot stops being pruned (its zero pattern is frozen: past it the kernel is memory
   bound and more sparsity saves only weight traffic, a little speed for accuracy); a
   layer whose sparsity has stabilised below the lower bound stops and gets its dense weights
   back (it would only cost accuracy). Pruning converges when no layer is left to prune.
   When the prune phase's epochs run out first, every layer still being pruned is settled the
   same way: inside its sweet spot it stops, below it its dense weights come back.
4. The trainer then fine-tunes with the zero pattern frozen.

With ``guided=False`` the same mechanics run on every layer without the controller: the
unguided lasso baseline the paper compares against.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from model.training import Callback
from perfmodel.predict import LayerPrediction

PRUNING, EXCLUDED, STOPPED, RESTORED = "pruning", "excluded", "stopped", "restored"


@dataclass
class GSLConfig:
    """GSL hyperparameters; every default has its reason."""

    lasso: float = 2e-3  # λ: SkimCaffe's 5e-5 needs ~450K ImageNet steps; digits gets ~2K
    threshold_t0: float = 1e-4  # SkimCaffe's t0
    threshold_k: float = 10.0  # SkimCaffe's k: weights below k·t0 = 1e-3 that do not move
    conv_multiplier: float = 1.0  # decay multiplier of conv layers (SkimCaffe conv2-5: 1)
    linear_multiplier: float = 0.1  # of fully connected layers (SkimCaffe fc6/fc7: 0.1)
    multipliers: dict[str, float] = field(default_factory=dict)  # per-layer overrides
    guided: bool = True  # False: unguided element-wise lasso on every layer
    check_every: int = 1  # epochs between controller checks
    patience: int = 3  # checks over which sparsity must stay within stable_tol
    stable_tol: float = 0.01  # "stabilised": sparsity moved less than this over patience
    inference_batch: int = 1  # batch size the speedups are predicted for

    def __post_init__(self) -> None:
        if self.lasso < 0:
            raise ValueError(f"lasso must be >= 0, got {self.lasso}")
        if self.threshold_t0 <= 0 or self.threshold_k <= 0:
            raise ValueError("threshold_t0 and threshold_k must be > 0")
        if self.check_every < 1 or self.patience < 1:
            raise ValueError("check_every and patience must be >= 1")
        if not self.stable_tol > 0:
            raise ValueError(f"stable_tol must be > 0, got {self.stable_tol}")
        multipliers = {"conv_multiplier": self.conv_multiplier,
                       "linear_multiplier": self.linear_multiplier, **self.multipliers}  # fmt: skip
        negative = sorted(k for k, v in multipliers.items() if not v >= 0)
        if negative:  # a negative multiplier grows weights instead of shrinking them
            raise ValueError(f"multipliers must be >= 0, got {negative}")


@dataclass(frozen=True)
class Decision:
    """A controller decision about one layer, with its reason (emitted as an event)."""

    layer: str
    action: str  # prune | exclude | stop | restore
    reason: str

    def event(self, epoch: int) -> dict[str, Any]:
        return {"type": "decision", "epoch": epoch, **asdict(self)}


class GuidedController:
    """Decides per layer from its predicted sweet spot; knows nothing of training.

    Args:
        predictions: the performance model's prediction for every prunable layer, by name.
        config: thresholds of the "stabilised" test.
    """

    def __init__(self, predictions: dict[str, LayerPrediction], config: GSLConfig):
        self.predictions = predictions
        self.config = config
        self.state: dict[str, str] = {}
        self.history: dict[str, list[float]] = {}

    def start(self) -> list[Decision]:
        decisions = []
        for name, prediction in self.predictions.items():
            if not self.config.guided:
                self.state[name] = PRUNING
                decisions.append(Decision(name, "prune", "unguided lasso prunes every layer"))
            elif prediction.recommendation == "sparse":
                self.state[name] = PRUNING
                spot = prediction.sweet_spot
                decisions.append(Decision(name, "prune", (
                    f"sweet spot {100 * spot.min_sparsity:.1f}–{100 * spot.max_sparsity:.1f}%: "
                    f"{prediction.reason}"
                )))  # fmt: skip
            else:
                self.state[name] = EXCLUDED
                decisions.append(Decision(name, "exclude", f"no speedup: {prediction.reason}"))
            self.history[name] = []
        return decisions

    def check(self, sparsity: dict[str, float]) -> list[Decision]:
        """Re-project with the current sparsity of every layer still being pruned."""
        if not self.config.guided:
            return []
        decisions = []
        for name, state in self.state.items():
            if state != PRUNING:
                continue
            current = sparsity[name]
            history = self.history[name]
            history.append(current)
            spot = self.predictions[name].sweet_spot
            if spot is None:  # cannot happen for a "sparse" recommendation; be safe
                continue
            window = history[-(self.config.patience + 1) :]
            stable = (
                len(window) > self.config.patience
                and max(window) - min(window) < self.config.stable_tol
            )
            if current >= spot.max_sparsity:
                decisions.append(self._decide(name, "stop", (
                    f"sparsity {100 * current:.1f}% passed the upper bound of its sweet spot "
                    f"({100 * spot.max_sparsity:.1f}%), where the kernel turns memory bound: "
                    "more sparsity saves only weight traffic, little speed for accuracy"
                )))  # fmt: skip
            elif stable and current < spot.min_sparsity:
                decisions.append(self._decide(name, "restore", (
                    f"sparsity stabilised at {100 * current:.1f}%, below the lower bound of its "
                    f"sweet spot ({100 * spot.min_sparsity:.1f}%): sparse would be slower, "
                    "dense weights restored"
                )))  # fmt: skip
        return decisions

    def finish(self, sparsity: dict[str, float]) -> list[Decision]:
        """The prune phase's budget ran out: settle every layer still being pruned. At or past
        the lower bound of its sweet spot it stops (pruned as far as it got); below it, sparse
        would be slower than dense, so its dense weights come back (the pruning would only
        cost accuracy). The unguided baseline keeps every layer pruned."""
        if not self.config.guided:
            return []
        decisions = []
        for name, state in self.state.items():
            spot = self.predictions[name].sweet_spot
            if state != PRUNING or spot is None:
                continue
            current = sparsity[name]
            budget = f"the pruning budget ended at {100 * current:.1f}% sparsity"
            if current >= spot.min_sparsity:
                decisions.append(self._decide(name, "stop", (
                    f"{budget}, inside its sweet spot ({100 * spot.min_sparsity:.1f}–"
                    f"{100 * spot.max_sparsity:.1f}%)"
                )))  # fmt: skip
            else:
                decisions.append(self._decide(name, "restore", (
                    f"{budget}, below the lower bound of its sweet spot "
                    f"({100 * spot.min_sparsity:.1f}%): sparse would be slower, dense weights "
                    "restored"
                )))  # fmt: skip
        return decisions

    def _decide(self, name: str, action: str, reason: str) -> Decision:
        """A stop or restore of ``name``, its state moved to match the action."""
        self.state[name] = STOPPED if action == "stop" else RESTORED
        return Decision(name, action, reason)

    @property
    def converged(self) -> bool:
        return self.config.guided and PRUNING not in self.state.values()


class GSL:
    """Guided Sparsity Learning as training hooks (see :class:`model.training.PruningHooks`).

    Args:
        predictions: performance-model predictions of the model's Conv2d/Linear layers, keyed
            by module path (from :func:`perfmodel.predict_network`).
        config: GSL hyperparameters.
    """

    name = "gsl"

    def __init__(self, predictions: dict[str, LayerPrediction], config: GSLConfig):
        self.config = config
        self.controller = GuidedController(predictions, config)
        self.dense_weights: dict[str, torch.Tensor] = {}
        self.frozen: dict[str, torch.Tensor] = {}
        self._modules: dict[str, nn.Module] = {}

    # ------------------------------------------------------------------------- helpers

    def _module(self, model: nn.Module, name: str) -> nn.Module:
        if name not in self._modules:
            self._modules[name] = model.get_submodule(name)
        return self._modules[name]

    def _pruning(self) -> list[str]:
        return [n for n, s in self.controller.state.items() if s == PRUNING]

    def multiplier(self, model: nn.Module, name: str) -> float:
        if name in self.config.multipliers:
            return self.config.multipliers[name]
        module = self._module(model, name)
        if isinstance(module, nn.Linear):
            return self.config.linear_multiplier
        return self.config.conv_multiplier

    def threshold(self, update: torch.Tensor) -> torch.Tensor:
        """SkimCaffe's adaptive threshold ``1 / (|d|/t0 + 1/(k·t0))`` per weight."""
        t0, k = self.config.threshold_t0, self.config.threshold_k
        return 1.0 / (update.abs() / t0 + 1.0 / (k * t0))

    # --------------------------------------------------------------------------- hooks

    def start(self, model: nn.Module, emit: Callback) -> None:
        for decision in self.controller.start():
            emit(decision.event(0))
            if decision.action == "prune":
                weight = self._module(model, decision.layer).weight
                self.dense_weights[decision.layer] = weight.detach().clone()

    def tracked_parameters(self) -> set[str]:
        return {f"{name}.weight" for name in self._pruning()}

    def regularize(self, model: nn.Module) -> None:
        for name in self._pruning():
            weight = self._module(model, name).weight
            if weight.grad is not None:
                scale = self.config.lasso * self.multiplier(model, name)
                weight.grad.add_(torch.sign(weight.detach()), alpha=scale)

    def after_step(self, model: nn.Module, updates: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name in self._pruning():
                weight = self._module(model, name).weight
                update = updates.get(f"{name}.weight")
                if update is None:
                    continue
                weight.masked_fill_(weight.abs() <= self.threshold(update), 0.0)
            for name, mask in self.frozen.items():
                weight = self._module(model, name).weight
                weight.mul_(mask)

    def end_epoch(self, model: nn.Module, epoch: int, emit: Callback) -> bool:
        if epoch % self.config.check_every:
            return False
        self._apply(model, self.controller.check(self._sparsity(model)), epoch, emit)
        return self.controller.converged

    def end_prune(self, model: nn.Module, epoch: int, emit: Callback) -> None:
        """The prune phase ended (its epochs ran out or it converged): settle the layers still
        being pruned (:meth:`GuidedController.finish`)."""
        self._apply(model, self.controller.finish(self._sparsity(model)), epoch, emit)

    def _sparsity(self, model: nn.Module) -> dict[str, float]:
        return {
            name: (self._module(model, name).weight == 0).float().mean().item()
            for name in self._pruning()
        }

    def _apply(self, model: nn.Module, decisions: list[Decision], epoch: int,
               emit: Callback) -> None:  # fmt: skip
        for decision in decisions:
            weight = self._module(model, decision.layer).weight
            with torch.no_grad():
                if decision.action == "stop":
                    self.frozen[decision.layer] = (weight != 0).float()
                elif decision.action == "restore":
                    weight.copy_(self.dense_weights[decision.layer])
            emit(decision.event(epoch))

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Zero patterns to freeze for fine-tuning: every layer pruned or stopped."""
        return {
            f"{name}.weight": (self._module(model, name).weight != 0).float()
            for name, state in self.controller.state.items()
            if state in (PRUNING, STOPPED)
        }

    def layer_states(self) -> dict[str, str]:
        return dict(self.controller.state)

    def state_dict(self) -> dict[str, Any]:
        return {
            "state": dict(self.controller.state),
            "history": {k: list(v) for k, v in self.controller.history.items()},
            "dense_weights": self.dense_weights,
            "frozen": self.frozen,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.state = dict(state["state"])
        self.controller.history = {k: list(v) for k, v in state["history"].items()}
        self.dense_weights = dict(state["dense_weights"])
        self.frozen = dict(state["frozen"])
