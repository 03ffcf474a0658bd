"""Per-layer predictions: sweet spot, bound, recommendation and reason for a whole network.

This is the product's answer before any training (Park et al., ICLR 2017, §2.2-2.3): for every
layer, the sparsity range in which a direct sparse kernel beats dense on a given hardware
profile, and whether to prune it. The JSON form (:meth:`NetworkPrediction.to_dict`) is the
contract shared by ``sweetspot predict --json`` and the REST API.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from perfmodel.hardware import HardwareProfile
from perfmodel.refined import MissingRefinedParametersError  # also registers "refined"
from perfmodel.roofline import MODELS, Bound, Layer, PerformanceModel, SweetSpot, get_model

REPORTED_SPARSITIES: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95)
"""Sparsities at which every prediction reports a speedup (JSON keys "0.5" … "0.95")."""


@dataclass(frozen=True)
class Policy:
    """When a layer with a sweet spot is worth pruning.

    Attributes:
        max_reachable_sparsity: element-wise pruning of CNN layers rarely keeps accuracy past
            this (GSL's pruned CaffeNet reaches 85-93% on conv2-5), so a sweet spot that starts
            beyond it is not worth the accuracy risk.
        min_speedup: the speedup at ``max_reachable_sparsity`` must at least reach this;
            smaller gains disappear in framework overhead.
    """

    max_reachable_sparsity: float = 0.95
    min_speedup: float = 1.2


@dataclass(frozen=True)
class LayerPrediction:
    """Everything predicted for one layer."""

    layer: Layer
    dense_time_s: float
    bound: Bound
    sweet_spot: SweetSpot | None
    speedup: dict[float, float]
    recommendation: str  # "sparse" or "dense"
    reason: str

    @property
    def name(self) -> str:
        return self.layer.name

    def time_at(self, sparsity: float) -> float:
        """Predicted time when this layer follows its recommendation at ``sparsity``."""
        gain = self.speedup.get(sparsity, 1.0)
        if self.recommendation == "sparse" and gain > 1.0:
            return self.dense_time_s / gain
        return self.dense_time_s

    def to_dict(self) -> dict:
        layer = self.layer
        return {
            "name": layer.name,
            "kind": layer.kind,
            "shape": layer.describe(),
            "flops": layer.flops,
            "activation_bytes": layer.activation_bytes,
            "weight_bytes": layer.weight_bytes,
            "dense_time_s": self.dense_time_s,
            "bound": self.bound,
            "sweet_spot": None
            if self.sweet_spot is None
            else {
                "min_sparsity": self.sweet_spot.min_sparsity,
                "max_sparsity": self.sweet_spot.max_sparsity,
                "max_speedup": self.sweet_spot.max_speedup,
            },
            "speedup": {_key(s): v for s, v in self.speedup.items()},
            "recommendation": self.recommendation,
            "reason": self.reason,
            "spec": layer.model_dump(mode="json"),
        }


@dataclass(frozen=True)
class NetworkPrediction:
    """Predictions for all layers of a network, in network order, with totals."""

    model: str
    hardware: HardwareProfile
    batch: int
    layers: list[LayerPrediction]
    performance_model: str = "paper"
    sparsities: tuple[float, ...] = field(default=REPORTED_SPARSITIES)

    @property
    def dense_time_s(self) -> float:
        return sum(p.dense_time_s for p in self.layers)

    def network_speedup(self, sparsity: float) -> float:
        """Whole-network speedup when recommended layers are pruned to ``sparsity``."""
        pruned = sum(p.time_at(sparsity) for p in self.layers)
        return self.dense_time_s / pruned if pruned > 0 else 1.0

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "hardware": self.hardware.name,
            "batch": self.batch,
            "performance_model": self.performance_model,
            "layers": [p.to_dict() for p in self.layers],
            "totals": {
                "flops": sum(p.layer.flops for p in self.layers),
                "weight_bytes": sum(p.layer.weight_bytes for p in self.layers),
                "dense_time_s": self.dense_time_s,
                "sparse_layers": sum(p.recommendation == "sparse" for p in self.layers),
                "speedup": {_key(s): self.network_speedup(s) for s in self.sparsities},
            },
        }


def _key(sparsity: float) -> str:
    return f"{sparsity:g}"


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.3g} µs"


def predict_layer(
    layer: Layer,
    hw: HardwareProfile,
    model: PerformanceModel | None = None,
    policy: Policy = Policy(),
    sparsities: Sequence[float] = REPORTED_SPARSITIES,
) -> LayerPrediction:
    """Predict one layer: sweet spot, bound, speedups at ``sparsities``, recommendation."""
    model = model or get_model("paper")
    dense = model.dense_time_s(layer, hw)
    spot = model.sweet_spot(layer, hw)
    speedup = {s: dense / model.sparse_time(layer, hw, 1.0 - s).total_s for s in sparsities}
    if spot is None:
        floor = model.sparse_time(layer, hw, 0.0).total_s
        reason = (
            f"memory traffic of its activations alone ({_us(floor)}) exceeds dense compute "
            f"({_us(dense)}): no sparsity makes it faster"
        )
        recommendation = "dense"
    else:
        reach = policy.max_reachable_sparsity
        gain_at_reach = dense / model.sparse_time(layer, hw, 1.0 - reach).total_s
        saturation = (
            f", memory bound past {_pct(spot.max_sparsity)}" if spot.max_sparsity < 1.0 else ""
        )
        if spot.min_sparsity >= reach:
            recommendation = "dense"
            reason = (
                f"sparse pays only beyond {_pct(spot.min_sparsity)} sparsity, more than "
                f"pruning reaches without accuracy loss ({_pct(reach)})"
            )
        elif gain_at_reach < policy.min_speedup:
            recommendation = "dense"
            reason = (
                f"at most {gain_at_reach:.2f}x even at {_pct(reach)} sparsity, "
                f"below the {policy.min_speedup:g}x worth pruning for"
            )
        else:
            recommendation = "sparse"
            reason = (
                f"sparse beats dense from {_pct(spot.min_sparsity)} sparsity; "
                f"{gain_at_reach:.1f}x at {_pct(reach)}{saturation}"
            )
    return LayerPrediction(
        layer=layer,
        dense_time_s=dense,
        bound=model.dense_bound(layer, hw),
        sweet_spot=spot,
        speedup=speedup,
        recommendation=recommendation,
        reason=reason,
    )


def resolve_model(model: PerformanceModel | str, hw: HardwareProfile) -> PerformanceModel:
    """A model instance: a registered name, an instance, or ``"auto"`` — the refined model
    when ``hw`` carries calibrated parameters (``sweetspot calibrate``), the paper's otherwise.

    Raises:
        LookupError: an unknown name.
        MissingRefinedParametersError: ``"refined"`` for a profile never calibrated, here
            rather than at the first layer (callers check before measuring anything).
    """
    if not isinstance(model, str):
        return model
    if model == "auto":
        name = "refined" if hw.refined is not None else "paper"
    elif model in MODELS:
        name = model
    else:
        raise LookupError(
            f"unknown performance model {model!r}; valid names: auto, {', '.join(sorted(MODELS))}"
        )
    if name == "refined" and hw.refined is None:
        raise MissingRefinedParametersError(hw.name)
    return get_model(name)


def predict_network(
    layers: Iterable[Layer],
    hw: HardwareProfile,
    *,
    name: str = "custom",
    batch: int | None = None,
    model: PerformanceModel | str = "paper",
    policy: Policy = Policy(),
    sparsities: Sequence[float] = REPORTED_SPARSITIES,
) -> NetworkPrediction:
    """Predict every layer; ``batch`` (if given) sets the network's batch: each spec then runs
    ``batch · per_example`` images or rows.

    ``model``: a registered name (``"paper"``, ``"refined"``), ``"auto"`` (refined for a
    calibrated profile, paper otherwise) or a :class:`PerformanceModel` instance.
    """
    performance_model = resolve_model(model, hw)
    specs = [layer.with_batch(batch) if batch else layer for layer in layers]
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"layer names must be unique; repeated: {', '.join(duplicates)}")
    return NetworkPrediction(
        model=name,
        hardware=hw,
        batch=batch or (specs[0].examples if specs else 1),
        layers=[
            predict_layer(spec, hw, performance_model, policy, sparsities) for spec in specs
        ],
        performance_model=performance_model.name,
        sparsities=tuple(sparsities),
    )
