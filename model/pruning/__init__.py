"""Pruning methods behind one registry: ``METHODS[name]`` builds the training hooks.

Each method is a :class:`model.training.PruningHooks` implementation with a typed config
dataclass. ``make_config`` validates the user's hyperparameters against that dataclass: a
misspelt key is an error that lists the valid ones, and a value of the wrong type (``guided=3``,
``multipliers=3``, ``lasso="abc"``) is refused before any training, with pydantic's usual
conversions (``"false"``/``"False"``/``"no"`` for a bool, ``2`` for a float).
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError
from torch import nn

from model.pruning.autoprune import AutoPrune, AutoPruneConfig
from model.pruning.gsl import GSL, GSLConfig, GuidedController
from model.pruning.l1_filter import L1Filter, L1FilterConfig
from model.pruning.magnitude import Magnitude, MagnitudeConfig
from model.pruning.ssl import SSL, SSLConfig
from perfmodel.predict import LayerPrediction


@dataclass(frozen=True)
class MethodInfo:
    """A registered pruning method: its config type and how to build its hooks."""

    name: str
    config_type: type
    build: Callable[[dict[str, LayerPrediction], Any], Any]
    summary: str


METHODS: dict[str, MethodInfo] = {
    "gsl": MethodInfo(
        "gsl", GSLConfig, GSL,
        "Guided Sparsity Learning: element-wise lasso only where the sparse kernel pays "
        "(Park et al. 2017)",
    ),
    "ssl": MethodInfo(
        "ssl", SSLConfig, SSL,
        "Structured Sparsity Learning: group lasso on filters, channels, shapes, depth; "
        "cut to a smaller dense network (Wen et al. 2016)",
    ),
    "l1-filter": MethodInfo(
        "l1-filter", L1FilterConfig, L1Filter,
        "L1-norm filter pruning with skip lists and per-stage ratios, then retraining; "
        "cut to a smaller dense network (Li et al. 2017)",
    ),
    "autoprune": MethodInfo(
        "autoprune", AutoPruneConfig, AutoPrune,
        "AutoPrune: auxiliary masks trained through straight-through estimators, recoverable "
        "(Xiao et al. 2019)",
    ),
    "magnitude": MethodInfo(
        "magnitude", MagnitudeConfig, Magnitude,
        "Gradual magnitude pruning on Zhu & Gupta's cubic schedule (the common baseline)",
    ),
}  # fmt: skip


class UnknownMethodError(LookupError):
    def __init__(self, name: str):
        self.valid = sorted(METHODS)
        super().__init__(f"unknown pruning method {name!r}; valid names: {', '.join(self.valid)}")


def method_info(name: str) -> MethodInfo:
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownMethodError(name) from None


def config_fields(config_type: type) -> dict[str, Any]:
    """Field name → default of a config dataclass (for help texts and the API catalogue)."""
    fields = {}
    for f in dataclasses.fields(config_type):
        if f.default is not dataclasses.MISSING:
            fields[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            fields[f.name] = f.default_factory()
    return fields


def listed(names: Sequence[object], most: int = 10) -> str:
    """``a, b, c`` — the first ``most`` of ``names`` and how many more: a request with 200,000
    unknown keys got all of them back in its error (1.7 MB)."""
    shown = ", ".join(str(name)[:64] for name in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def make_config(config_type: type, values: dict[str, Any]) -> Any:
    """Build ``config_type`` from ``values``; unknown keys and bad values raise ValueError."""
    valid = config_fields(config_type)
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown {config_type.__name__} key(s) {listed(unknown)}; "
            f"valid keys: {', '.join(sorted(valid))}"
        )
    try:
        return _adapter(config_type).validate_python(values)
    except ValidationError as error:
        problems = "; ".join(_problem(e) for e in error.errors(include_url=False))
        raise ValueError(f"invalid {config_type.__name__}: {problems}") from None
    except TypeError as error:  # raised by a __post_init__ (pydantic passes it through)
        raise ValueError(f"invalid {config_type.__name__}: {error}") from None


def _problem(error: dict) -> str:
    """One pydantic error as a line: the field, what is wrong and the value given; a check of
    the dataclass's own ``__post_init__`` (no field) as its message alone."""
    if not error["loc"] and "error" in error.get("ctx", {}):
        return str(error["ctx"]["error"])
    field_name = ".".join(str(part) for part in error["loc"]) or "value"
    return f"{field_name}: {error['msg']} (got {error['input']!r})"


# Config fields that name layers by module path (``skip`` takes Li's layer ids too).
LAYER_FIELDS = ("layers", "layer_strength", "multipliers", "layer_ratios", "skip")


def check_network(method: str, config: Any, model: nn.Module, input_shape: tuple) -> None:
    """Refuse, before any training, a config that names layers ``model`` does not have (they
    were silently ignored: the job pruned something else, or nothing) and ``l1-filter`` on a
    network surgery cannot cut (it needs surgery's channel groups to choose its filters, so it
    failed only after the dense epochs). ``model`` may live on the meta device.

    Raises:
        ValueError: the unknown names with the valid ones, or surgery's reason
            (:class:`model.surgery.SurgeryError`).
    """
    if method == "l1-filter":
        from model.pruning.l1_filter import layer_ids, prunable_layers

        prunable_layers(model, input_shape)  # SurgeryError: not a network surgery can cut
        valid = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        ids = {str(i) for i in layer_ids(model).values()}
    else:
        valid = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        ids = set()
    for key in LAYER_FIELDS:
        names = getattr(config, key, None)
        if not names:
            continue
        unknown = [str(n) for n in names if n not in valid and str(n) not in ids]
        if unknown:
            what = f"Li layer ids 1-{len(ids)} or " if key == "skip" else ""
            raise ValueError(
                f"{key} names layer(s) {listed([repr(n) for n in unknown])} that "
                f"{type(model).__name__} does not have; valid: {what}{', '.join(valid)}"
            )
        counts = Counter(str(n) for n in names) if isinstance(names, list | tuple) else {}
        if twice := sorted(name for name, count in counts.items() if count > 1):
            raise ValueError(f"{key} names layer(s) more than once: {listed(twice)}")


@functools.cache
def _adapter(config_type: type) -> TypeAdapter:
    return TypeAdapter(config_type)


__all__ = [
    "GSL",
    "METHODS",
    "SSL",
    "AutoPrune",
    "AutoPruneConfig",
    "GSLConfig",
    "GuidedController",
    "L1Filter",
    "L1FilterConfig",
    "Magnitude",
    "MagnitudeConfig",
    "MethodInfo",
    "SSLConfig",
    "UnknownMethodError",
    "check_network",
    "config_fields",
    "make_config",
    "method_info",
]
