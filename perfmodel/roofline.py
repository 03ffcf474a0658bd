"""Roofline models of dense and direct-sparse layer time (Park et al., ICLR 2017, §2.2).

Per layer, with ``C`` dense FLOPs, ``S_A`` activation bytes, ``S_W`` dense weight bytes and
density ``x`` (fraction of non-zero weights)::

    t_dense          = C / F
    t_sparse_compute = α · x · C / F
    t_sparse_memory  = (S_A + β · x · S_W) / B
    t_sparse         = max(t_sparse_compute, t_sparse_memory)
    speedup(x)       = t_dense / t_sparse

The seam for better models is :class:`PerformanceModel`: anything that maps (layer, hardware,
density) to a dense time and a split sparse time. :class:`RooflineModel` derives the sweet spot
from those two numerically, so a calibrated model (issue: calibration) only overrides the time
functions; :class:`PaperRoofline` also has the paper's closed forms, which tests check against
the numeric search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from perfmodel.hardware import HardwareProfile
from perfmodel.layers import Conv2dSpec, LinearSpec

Layer = Conv2dSpec | LinearSpec
Bound = Literal["compute", "memory"]


@dataclass(frozen=True, slots=True)
class SparseTime:
    """Predicted time of the sparse kernel, split into its roofline terms (seconds)."""

    compute_s: float
    memory_s: float

    @property
    def total_s(self) -> float:
        return max(self.compute_s, self.memory_s)

    @property
    def bound(self) -> Bound:
        return "compute" if self.compute_s >= self.memory_s else "memory"


@dataclass(frozen=True, slots=True)
class SweetSpot:
    """The sparsity range in which the sparse kernel beats dense.

    ``min_sparsity``: below it sparse is slower than dense (break-even).
    ``max_sparsity``: past it the sparse kernel is memory bound and more sparsity buys almost
    no time, only accuracy risk (1.0 when the layer never turns memory bound).
    ``max_speedup``: predicted speedup at ``max_sparsity``.
    """

    min_sparsity: float
    max_sparsity: float
    max_speedup: float


class PerformanceModel(Protocol):
    """What every performance model provides; predictions only use these methods."""

    name: str

    def dense_time_s(self, layer: Layer, hw: HardwareProfile) -> float: ...

    def sparse_time(self, layer: Layer, hw: HardwareProfile, density: float) -> SparseTime: ...

    def sweet_spot(self, layer: Layer, hw: HardwareProfile) -> SweetSpot | None: ...

    def dense_bound(self, layer: Layer, hw: HardwareProfile) -> Bound: ...


class RooflineModel:
    """Base class: speedups and a numeric sweet-spot search over any dense/sparse time model.

    Subclasses implement ``dense_time_s`` and ``sparse_time``. The search assumes what holds
    for roofline-like models: sparse time never decreases as density grows.
    """

    name = "roofline"
    _BISECTION_STEPS = 60  # 2^-60 of the unit interval: exact to float precision

    def dense_time_s(self, layer: Layer, hw: HardwareProfile) -> float:
        raise NotImplementedError

    def sparse_time(self, layer: Layer, hw: HardwareProfile, density: float) -> SparseTime:
        raise NotImplementedError

    def speedup(self, layer: Layer, hw: HardwareProfile, density: float) -> float:
        """Dense time over sparse time at ``density`` (> 1: sparse is faster)."""
        return self.dense_time_s(layer, hw) / self.sparse_time(layer, hw, density).total_s

    def dense_bound(self, layer: Layer, hw: HardwareProfile) -> Bound:
        """Roofline bound of the dense layer: compute ``C/F`` against traffic ``(S_A+S_W)/B``."""
        compute = layer.flops / hw.dense_flops_per_s
        memory = (layer.activation_bytes + layer.weight_bytes) / hw.memory_bandwidth_bytes_per_s
        return "compute" if compute >= memory else "memory"

    def _bisect(self, predicate, low: float, high: float) -> float:
        """Largest x in [low, high] with ``predicate(x)`` true, given it is true at ``low``."""
        for _ in range(self._BISECTION_STEPS):
            mid = 0.5 * (low + high)
            if predicate(mid):
                low = mid
            else:
                high = mid
        return low

    def sweet_spot(self, layer: Layer, hw: HardwareProfile) -> SweetSpot | None:
        dense = self.dense_time_s(layer, hw)

        def faster(x: float) -> bool:
            return self.sparse_time(layer, hw, x).total_s < dense

        if not faster(0.0):
            return None  # even with no weights at all sparse is not faster
        # Break-even density: the largest density at which sparse still wins.
        x_useful = 1.0 if faster(1.0) else self._bisect(faster, 0.0, 1.0)

        def compute_bound(x: float) -> bool:
            return self.sparse_time(layer, hw, x).bound == "compute"

        # Saturation density: below it the kernel is memory bound; more sparsity barely helps.
        if compute_bound(0.0) or not compute_bound(x_useful):
            # Compute bound everywhere, or memory bound over the whole useful range: every bit
            # of sparsity still shortens the binding term, so the range extends to 1.0.
            x_sat = 0.0
        else:
            # Memory bound at 0, compute bound at x_useful: find the crossing.
            x_sat = self._bisect(lambda x: not compute_bound(x), 0.0, x_useful)
        return _sweet_spot(dense, self.sparse_time(layer, hw, x_sat).total_s, x_useful, x_sat)


def _sweet_spot(dense_s: float, sat_s: float, x_useful: float, x_sat: float) -> SweetSpot:
    return SweetSpot(
        min_sparsity=1.0 - x_useful,
        max_sparsity=1.0 - x_sat,
        max_speedup=dense_s / sat_s,
    )


class PaperRoofline(RooflineModel):
    """The model exactly as stated in Park et al. §2.2, with its closed-form sweet spot."""

    name = "paper"

    def dense_time_s(self, layer: Layer, hw: HardwareProfile) -> float:
        return layer.flops / hw.dense_flops_per_s

    def sparse_time(self, layer: Layer, hw: HardwareProfile, density: float) -> SparseTime:
        compute = hw.sparse_overhead * density * layer.flops / hw.dense_flops_per_s
        # NB: CSR row pointers are ignored, as in the paper (β counts value + column index).
        weights = hw.sparse_bytes_per_nonzero * density * layer.weight_bytes
        memory = (layer.activation_bytes + weights) / hw.memory_bandwidth_bytes_per_s
        return SparseTime(compute_s=compute, memory_s=memory)

    def sweet_spot(self, layer: Layer, hw: HardwareProfile) -> SweetSpot | None:
        C, S_A, S_W = layer.flops, layer.activation_bytes, layer.weight_bytes
        F, B = hw.dense_flops_per_s, hw.memory_bandwidth_bytes_per_s
        alpha, beta = hw.sparse_overhead, hw.sparse_bytes_per_nonzero
        # Memory traffic of the activations alone already exceeds dense compute: never wins.
        if S_A / B >= C / F:
            return None
        # Largest useful density: sparse compute and sparse memory both under t_dense.
        x_useful = min(1.0, 1.0 / alpha, (B * C / F - S_A) / (beta * S_W))
        # Saturation: α·x·C/F = (S_A + β·x·S_W)/B  ⇔  x = S_A / (α·C·B/F − β·S_W).
        # If it lies beyond x_useful the layer is memory bound over the whole useful range.
        denominator = alpha * C * B / F - beta * S_W
        x_sat = S_A / denominator if denominator > 0 else 1.0
        if x_sat >= x_useful:
            x_sat = 0.0
        dense = C / F
        return _sweet_spot(dense, self.sparse_time(layer, hw, x_sat).total_s, x_useful, x_sat)


MODELS: dict[str, type[RooflineModel]] = {"paper": PaperRoofline}
"""Registered performance models by name (calibrated models register here too)."""


def get_model(name: str = "paper") -> RooflineModel:
    """A performance model instance by registered name."""
    try:
        return MODELS[name]()
    except KeyError:
        raise LookupError(
            f"unknown performance model {name!r}; valid names: {', '.join(sorted(MODELS))}"
        ) from None
