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

from model.sparse.functional import Implementation, check_implementation
from model.sparse.layers import SparseConv2d, SparseLinear, _padding_of

CHOICES = ("sparse", "dense")


def _why_not(module: nn.Module, parent: nn.Module | None) -> str | None:
    """Why ``module`` cannot be made sparse, or None when it can. Only layers that compute
    exactly what ``nn.Conv2d``/``nn.Linear`` compute are replaced: a subclass with its own
    forward (weight standardisation, "same" padding done by hand) would silently lose it, and
    ``nn.MultiheadAttention`` (its ``out_proj``) and ``nn.TransformerEncoderLayer`` (its fast
    path, ``linear1``/``linear2``) read the weights directly instead of calling the layers."""
    if isinstance(module, nn.Conv2d):
        kind, own = nn.Conv2d, ("forward", "_conv_forward")
    elif isinstance(module, nn.Linear):
        kind, own = nn.Linear, ("forward",)
    else:
        return f"a {type(module).__name__}, not a Conv2d/Linear"
    if any(getattr(type(module), m) is not getattr(kind, m) for m in own):
        return f"a {type(module).__name__} with its own forward"
    if kind is nn.Conv2d:
        try:
            _padding_of(module)  # the kernel pads with zeros, the same on both sides
        except ValueError as error:
            return str(error)
    if isinstance(parent, nn.MultiheadAttention | nn.TransformerEncoderLayer):
        return f"part of a {type(parent).__name__}, which reads its weight directly"
    return None


def _parents(model: nn.Module) -> dict[str, nn.Module]:
    modules = dict(model.named_modules(remove_duplicate=False))
    return {name: modules[name.rpartition(".")[0]] for name in modules if name}


def _merged(plan: Mapping[str, str], modules: Mapping[str, nn.Module]) -> dict[str, str]:
    """The plan by module: a module used more than once appears in predictions once per call
    (``conv``, ``conv#2``: :func:`perfmodel.extract.extract_layers`), and a module under two
    names once per name. It has one weight, so it is made sparse only if every entry for it
    says ``"sparse"``; the choice is keyed by the first of its names."""
    first: dict[int, str] = {}
    for name, module in modules.items():
        first.setdefault(id(module), name)
    merged: dict[str, str] = {}
    for name, choice in plan.items():
        base = name.partition("#")[0] if name not in modules else name
        key = first.get(id(modules[base]), base) if base in modules else name
        merged[key] = choice if merged.get(key, choice) == choice else "dense"
    return merged


def convertible_layers(model: nn.Module) -> list[str]:
    """Qualified names of the layers :func:`convert_model` can make sparse: ``nn.Conv2d`` and
    ``nn.Linear`` modules (or subclasses that keep their forward)."""
    return [name for name, reason in _refusals(model).items() if reason is None]


def unconvertible_layers(model: nn.Module) -> dict[str, str]:
    """The ``nn.Conv2d``/``nn.Linear`` layers :func:`convert_model` cannot make sparse, with
    why (reflect padding, an even kernel's "same" padding, their own forward, ...): a plan
    keeps them dense."""
    modules = dict(model.named_modules())
    return {name: reason for name, reason in _refusals(model).items()
            if reason is not None and isinstance(modules[name], nn.Conv2d | nn.Linear)}  # fmt: skip


def _refusals(model: nn.Module) -> dict[str, str | None]:
    """Every module's reason it cannot be made sparse (None: it can), by qualified name."""
    parents = _parents(model)
    return {name: _why_not(module, parents.get(name)) for name, module in model.named_modules()}


def convert_model(
    model: nn.Module,
    plan: Mapping[str, str],
    implementation: Implementation = "auto",
) -> nn.Module:
    """A copy of ``model`` with every layer the plan marks ``"sparse"`` replaced.

    ``nn.Conv2d`` becomes :class:`SparseConv2d`, ``nn.Linear`` becomes :class:`SparseLinear`
    (same outputs, inference only); ``"dense"`` layers and layers not in the plan are kept.
    The input model is never modified, and nothing is converted unless the whole plan is valid.
    A layer the kernel cannot run may be planned ``"dense"`` (:func:`unconvertible_layers`).
    The names of a prediction can be passed as they are: a module called more than once
    (``conv``, ``conv#2``) or registered under two names is one weight, made sparse only if
    every entry for it is ``"sparse"``, and replaced wherever it is used.

    Raises:
        TypeError: ``plan`` is not a mapping.
        ValueError: a name is not a convertible layer of ``model`` (the message says why and
            lists the valid names), a choice is not ``"sparse"``/``"dense"``, an unknown
            ``implementation``, or a model that cannot be copied (a ``torch.nn.utils.prune``
            reparametrisation still in place).
    """
    if not isinstance(plan, Mapping):
        raise TypeError(
            f"plan must be a mapping of layer names to 'sparse' or 'dense', got "
            f"{type(plan).__name__}"
        )
    check_implementation(implementation)
    modules = dict(model.named_modules(remove_duplicate=False))
    refusals = _refusals(model)
    valid = [name for name, reason in refusals.items() if reason is None]
    bad = {name: choice for name, choice in plan.items() if choice not in CHOICES}
    if bad:
        raise ValueError(f"plan choices must be 'sparse' or 'dense', got {bad}")
    plan = _merged(plan, modules)
    # A Conv2d/Linear the kernel cannot run may be planned dense: it is simply not converted.
    unknown = sorted(name for name, choice in plan.items()
                     if refusals.get(name, "") is not None
                     and not (choice == "dense" and isinstance(modules.get(name),
                                                               nn.Conv2d | nn.Linear)))  # fmt: skip
    if unknown:
        detail = [f"{name!r} ({refusals.get(name) or 'no such module'})" for name in unknown]
        raise ValueError(
            f"plan names layers that cannot be made sparse: {', '.join(detail)}; valid names: "
            f"{', '.join(valid) or '(none)'} (plan the others 'dense')"
        )
    try:
        converted = copy.deepcopy(model)
    except RuntimeError as error:  # non-leaf tensors, e.g. torch.nn.utils.prune's weight
        raise ValueError(
            f"the model cannot be copied for conversion ({error}); if it was pruned with "
            "torch.nn.utils.prune, make the pruning permanent first with "
            "torch.nn.utils.prune.remove(module, 'weight')"
        ) from None
    copies = dict(converted.named_modules(remove_duplicate=False))
    replacements: dict[str, nn.Module] = {}
    for name, choice in plan.items():  # build everything first: all-or-nothing
        if choice != "sparse":
            continue
        layer = copies[name]
        if isinstance(layer, nn.Conv2d):
            replacements[name] = SparseConv2d.from_dense(layer, implementation=implementation)
        else:
            replacements[name] = SparseLinear.from_dense(layer, implementation=implementation)
    return _replaced(converted, replacements)


def to_dense_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every :class:`SparseConv2d` and :class:`SparseLinear` back as
    the ``nn.Conv2d``/``nn.Linear`` it computes (same outputs, zeros in the weights): the way
    to trace or export (``torch.jit.trace``, ``torch.onnx.export``, ``torch.export``) or to
    train a converted model, which the sparse layers refuse. A layer with a fused ReLU becomes
    ``nn.Sequential(layer, nn.ReLU())``. The input model is never modified."""
    converted = copy.deepcopy(model)
    replacements = {}
    for name, module in converted.named_modules():
        if isinstance(module, SparseConv2d | SparseLinear):
            dense = module.to_dense()
            if module.fuse_relu:
                dense = nn.Sequential(dense, nn.ReLU())
            replacements[name] = dense.train(module.training)  # an eval model stays in eval
    return _replaced(converted, replacements)


def _replaced(model: nn.Module, replacements: Mapping[str, nn.Module]) -> nn.Module:
    """``model`` (a copy the caller owns) with the modules named in ``replacements`` swapped,
    under every name they have (a module registered twice is one module)."""
    if "" in replacements:  # the model itself is the layer
        return replacements[""]
    modules = dict(model.named_modules(remove_duplicate=False))
    by_id = {id(modules[name]): replacement for name, replacement in replacements.items()}
    for name, module in list(modules.items()):
        if name and id(module) in by_id:
            parent_name, _, child = name.rpartition(".")
            setattr(modules[parent_name], child, by_id[id(module)])
    return model
