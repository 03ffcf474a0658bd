"""Convert a model's layers to sparse ones according to a per-layer plan.

The plan maps qualified module names (as in ``model.named_modules()``) to ``"sparse"`` or
``"dense"``. Later the performance model's recommendations produce it: layers whose sparsity
is below their break-even stay dense, so the converted model is never slower than the dense
one by construction of the plan (this function just follows it).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

from torch import nn

from model.sparse.functional import Implementation
from model.sparse.layers import SparseConv2d, SparseLinear

CHOICES = ("sparse", "dense")


def convertible_layers(model: nn.Module) -> list[str]:
    """Qualified names of the layers :func:`convert_model` can make sparse."""
    return [
        name for name, module in model.named_modules() if isinstance(module, nn.Conv2d | nn.Linear)
    ]


def convert_model(
    model: nn.Module,
    plan: Mapping[str, str],
    implementation: Implementation = "auto",
) -> nn.Module:
    """A copy of ``model`` with every layer the plan marks ``"sparse"`` replaced.

    ``nn.Conv2d`` becomes :class:`SparseConv2d`, ``nn.Linear`` becomes :class:`SparseLinear`
    (same outputs, inference only); ``"dense"`` layers and layers not in the plan are kept.
    The input model is never modified, and nothing is converted unless the whole plan is valid.

    Raises:
        ValueError: a name is not a Conv2d/Linear layer of ``model`` (the message lists the
            valid names), or a choice is not ``"sparse"``/``"dense"``.
    """
    modules = dict(model.named_modules())
    valid = convertible_layers(model)
    unknown = sorted(name for name in plan if name not in valid)
    if unknown:
        detail = [
            f"{name!r} ({type(modules[name]).__name__})" if name in modules else repr(name)
            for name in unknown
        ]
        raise ValueError(
            f"plan names layers that are not Conv2d/Linear modules of the model: "
            f"{', '.join(detail)}; valid names: {', '.join(valid) or '(none)'}"
        )
    bad = {name: choice for name, choice in plan.items() if choice not in CHOICES}
    if bad:
        raise ValueError(f"plan choices must be 'sparse' or 'dense', got {bad}")

    converted = copy.deepcopy(model)
    copies = dict(converted.named_modules())
    replacements: dict[str, nn.Module] = {}
    for name, choice in plan.items():  # build everything first: all-or-nothing
        if choice != "sparse":
            continue
        layer = copies[name]
        if isinstance(layer, nn.Conv2d):
            replacements[name] = SparseConv2d.from_dense(layer, implementation=implementation)
        else:
            replacements[name] = SparseLinear.from_dense(layer, implementation=implementation)
    if "" in replacements:  # the model itself is the layer
        return replacements[""]
    for name, replacement in replacements.items():
        parent_name, _, child = name.rpartition(".")
        parent = copies[parent_name] if parent_name else converted
        setattr(parent, child, replacement)
    return converted
