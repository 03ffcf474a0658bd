"""Surgery: turn structured zeros into a smaller dense network (Wen et al. 2016, §3 and §4;
Li et al. 2017, §3.2; docs/research.md §4–5).

Structured pruning only pays when the zeros are physically removed and an ordinary dense kernel
runs on the smaller tensors. This module removes:

- **channels**: output channel ``c`` of a producer layer (a conv filter or a linear neuron) and
  the matching input channel of every consumer. A channel goes when its filter is all zero (it
  carries a constant) or when every consumer ignores it (all-zero input columns).
- **residual branches** (depth): a block whose conv1 or conv2 is all zero computes a branch
  that no longer depends on its input; the block becomes ``relu(shortcut(x) + constant)``.

Exactness. A removed filter still emits a constant through its bias, BatchNorm (β − γμ/σ) and
ReLU. Its contribution to every consumer is computed once from the masked network and added to
the consumer: into the bias when it is spatially uniform (no padding effect, or a linear
consumer), otherwise as a per-position ``bias_map`` (zero-padding makes the border outputs
differ). So, in eval mode, the cut network computes the same function as the masked one.

Which channels may change width (ours, documented in ``docs/methods.md``): the channels inside a
residual block (conv1 → conv2, and conv2 → conv3 in a bottleneck) and every channel of a plain
chain (LeNet-5, LeNet-300-100, VGG-16, the SSL CIFAR ConvNet). Residual-stream channels keep
their width (identity shortcuts add them), except in a stage that starts with a 1×1 projection
shortcut (:class:`StreamGroup`): there a stream channel goes when *every* producer writing the
stream (the projection and the last conv of each block, with their BatchNorms) has it all zero
with zero BN scale and shift, so the channel is exactly 0 everywhere in the stage and identity
additions keep it 0 (Li et al. 2017 §3.3, second convs following the projection). The stem, the
stages before the first projection (ResNet-18/34 ``layer1``) and the option-A CIFAR ResNets
(zero-padding shortcuts, no projection) keep their stream width. Grouped convolutions and
cross-channel LRN (AlexNet) are not cut. Shape-fibre zeros are left to the sparse path.

Checks (ours): a residual block is recognised by its attributes and then by its data flow
(:func:`checked_blocks`: a pre-activation block has the same attribute names), a plain chain by
its class, and :func:`cut` compares the cut network with the original on a fixed random batch
(:func:`check_equivalent`); a network surgery misreads is a :class:`SurgeryError`, never a
wrong network or another exception.

The result is described by an :class:`Architecture` (per-layer widths, norms, bias maps,
constant blocks), stored in the manifest, from which :func:`rebuild` builds the cut network
again before loading its safetensors weights.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from perfmodel.extract import on_meta

CHAIN_FAMILIES = ("LeNet5", "LeNet300", "VGG16", "CifarConvNet")
# The classes themselves: a user's class of the same name may have another topology.
_CHAIN_CLASSES = frozenset({"model.networks.lenet.LeNet5", "model.networks.lenet300.LeNet300",
                            "model.networks.vgg.VGG16",
                            "model.networks.cifar_convnet.CifarConvNet"})  # fmt: skip


class SurgeryError(ValueError):
    """The network has a structure surgery does not support (the message says which)."""


@dataclass(frozen=True)
class ChannelGroup:
    """Channels a producer emits and its consumers read; they are cut together.

    Attributes:
        producer: the Conv2d/Linear whose output channels these are (module path).
        norm: the BatchNorm normalising them, if any.
        consumers: layers reading them (conv input channels, or linear input features; a
            linear consumer after a flatten reads ``in_features / channels`` features each).
    """

    producer: str
    norm: str | None
    consumers: tuple[str, ...]


@dataclass(frozen=True)
class StreamGroup:
    """Residual-stream channels of one stage that starts with a projection shortcut; cut together.

    In ``x_{b+1} = relu(branch_b(x_b) + x_b)`` the stage's stream is written by the projection
    (block 0's shortcut) and by the last conv of every block, and carried by identity
    shortcuts; the first conv of every block but block 0 (which, like the projection, reads the
    previous stage's stream) reads it, and so does the next stage (its first conv and
    projection) or the classifier.

    Attributes:
        blocks: the stage's residual blocks (module paths), the projection's block first.
        producers: the projection conv, then the last conv of each block.
        norms: the BatchNorm after each producer (``None`` where there is none).
        consumers: layers reading the stream (conv input channels or linear input features).
    """

    blocks: tuple[str, ...]
    producers: tuple[str, ...]
    norms: tuple[str | None, ...]
    consumers: tuple[str, ...]

    @property
    def projection(self) -> str:
        """The 1×1 projection conv whose filters rank the stream's channels (Li et al. §3.3)."""
        return self.producers[0]


class BiasMapConv2d(nn.Conv2d):
    """A Conv2d plus a fixed per-position bias ``bias_map`` (K, P, Q): the exact contribution of
    removed constant input channels through zero padding (see the module docstring)."""

    def __init__(self, *args: Any, map_shape: tuple[int, int, int], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.register_buffer("bias_map", torch.zeros(map_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.bias_map  # (N, K, P, Q)


class ConstantBranch(nn.Module):
    """A residual block whose branch was removed: ``relu(shortcut(x) + constant)``."""

    def __init__(self, shortcut: nn.Module | None, shape: tuple[int, int, int]):
        super().__init__()
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.register_buffer("constant", torch.zeros(shape))  # (K, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.shortcut(x) + self.constant)


@dataclass
class Architecture:
    """What surgery changed, enough to rebuild the cut network from the registered one.

    Attributes:
        layers: Conv2d/Linear path → ``{"in": int, "out": int, "bias": bool,
            "bias_map": [K, P, Q] | None}``
            for every layer whose shape changed (or that gained a bias map).
        norms: BatchNorm path → number of features kept.
        constant_blocks: residual block path → shape of its constant branch (K, H, W).
    """

    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    norms: dict[str, int] = field(default_factory=dict)
    constant_blocks: dict[str, list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "norms": self.norms,
                "constant_blocks": self.constant_blocks}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        return cls(dict(data.get("layers", {})), dict(data.get("norms", {})),
                   dict(data.get("constant_blocks", {})))  # fmt: skip


# ------------------------------------------------------------------------ structure


def residual_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Modules that look like residual blocks: attributes ``conv1``, ``bn1``, ``conv2``, ``bn2``
    [, ``conv3``, ``bn3``] and a ``shortcut`` or ``downsample``. The names alone do not say how
    the block computes; :func:`checked_blocks` verifies that too before surgery relies on it."""
    return {
        name: module
        for name, module in model.named_modules()
        if all(hasattr(module, a) for a in ("conv1", "bn1", "conv2", "bn2"))
        and (hasattr(module, "shortcut") or hasattr(module, "downsample"))
    }


def checked_blocks(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, nn.Module]:
    """:func:`residual_blocks`, each verified to be a post-activation residual block by the data
    flow of one forward pass on the meta device (:func:`_block_flow_error`).

    Raises:
        SurgeryError: a block computes something else (a pre-activation block, whose ``bn1``
            normalises the block input, say), or the network does not run on the meta device.
    """
    blocks = residual_blocks(model)
    if not blocks:
        return blocks
    calls = _record_calls(model, input_shape, blocks)
    for name, block in blocks.items():
        reason = _block_flow_error(block, calls)
        if reason is not None:
            raise SurgeryError(
                f"{name} ({type(block).__name__}) is not a post-activation residual block "
                "(x → conv1 → bn1 → ReLU → conv2 → bn2 [→ ReLU → conv3 → bn3], plus x or the "
                f"shortcut of x, then ReLU), which is what surgery cuts: {reason}"
            )
    return blocks


@dataclass
class _Call:
    """One call of a module: its first input and its output with their autograd nodes (taken
    when the call starts and ends: in-place operations later replace a tensor's node)."""

    input: torch.Tensor | None
    input_fn: Any
    output: Any = None
    output_fn: Any = None


def _record_calls(
    model: nn.Module, input_shape: tuple[int, ...], blocks: dict[str, nn.Module]
) -> dict[nn.Module, list[_Call]]:
    """The calls of every block and of its convs, norms and shortcut in one forward pass on
    meta tensors with autograd on (the nodes record which value each operation read)."""

    watched: list[nn.Module] = []
    for block in blocks.values():
        watched.append(block)
        for attr in (*block_convs(block), *_block_norms(block), "shortcut", "downsample"):
            module = getattr(block, attr, None)
            if isinstance(module, nn.Module):
                watched.append(module)
    calls: dict[nn.Module, list[_Call]] = {module: [] for module in watched}

    def before(module: nn.Module, args: tuple) -> None:
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        calls[module].append(_Call(x, x.grad_fn if x is not None else None))

    def after(module: nn.Module, _args: tuple, output: Any) -> None:
        call = calls[module][-1]
        call.output = output
        call.output_fn = output.grad_fn if isinstance(output, torch.Tensor) else None

    handles = [h for module in calls for h in (module.register_forward_pre_hook(before),
                                                module.register_forward_hook(after))]  # fmt: skip
    example = torch.empty((1, *input_shape), device="meta", requires_grad=True)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad(), on_meta(model):
            model(example)
    except Exception as error:
        raise SurgeryError(
            "the network does not run on the meta device, so its residual blocks cannot be "
            f"checked ({type(error).__name__}: {error})"
        ) from error
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return calls


# Autograd nodes of element-wise activations that may sit between a block's BN and its next
# conv (a removed filter's constant passes through them channel by channel; surgery captures
# it after them), and of the ReLU that ends a block (a removed branch becomes ConstantBranch).
_ELEMENTWISE_NODES = frozenset({
    "ReluBackward0", "ReluBackward1", "ThresholdBackward0", "ThresholdBackward1",
    "HardtanhBackward0", "HardtanhBackward1", "LeakyReluBackward0", "LeakyReluBackward1",
    "EluBackward0", "EluBackward1", "GeluBackward0", "SiluBackward0", "HardswishBackward0",
    "MishBackward0", "SigmoidBackward0", "TanhBackward0",
})  # fmt: skip
_RELU_NODES = frozenset({"ReluBackward0", "ReluBackward1"})


def _block_norms(block: nn.Module) -> list[str]:
    return [f"bn{conv[-1]}" for conv in block_convs(block)]


def _inputs(node: Any) -> list[Any]:
    """The autograd nodes ``node`` reads (None where an input needs no gradient)."""
    return [n for n, _ in node.next_functions]


def _block_flow_error(block: nn.Module, calls: dict[nn.Module, list[_Call]]) -> str | None:
    """Why ``block`` does not compute ``relu(bn_k(conv_k(… act(bn1(conv1(x))) …)) + s)``, where
    ``s`` is ``x`` or the block's shortcut applied to ``x`` and ``act`` is element-wise (None
    when it does), from the recorded calls: conv1 reads ``x`` itself, each BN its conv's output
    itself, and the autograd nodes link the rest."""

    def once(module: nn.Module, label: str) -> tuple[_Call | None, str | None]:
        made = calls.get(module, [])
        if len(made) != 1:
            return None, f"{label} runs {len(made)} times in the network's forward, not once"
        return made[0], None

    call, reason = once(block, "the block")
    if call is None:
        return reason
    x = call.input
    if x is None:
        return "its input is not a tensor"
    previous: _Call | None = None
    previous_name = ""
    for conv_name, norm_name in zip(block_convs(block), _block_norms(block), strict=True):
        conv, reason = once(getattr(block, conv_name), conv_name)
        norm, reason = (None, reason) if conv is None else once(getattr(block, norm_name),
                                                                  norm_name)  # fmt: skip
        if conv is None or norm is None:
            return reason
        if previous is None:
            if conv.input is not x:
                return f"{conv_name} does not read the block input"
        else:
            node = conv.input_fn
            while node is not None and node is not previous.output_fn and \
                    type(node).__name__ in _ELEMENTWISE_NODES:  # fmt: skip
                inputs = [n for n in _inputs(node) if n is not None]
                node = inputs[0] if len(inputs) == 1 else None
            if node is None or node is not previous.output_fn:
                return (f"{conv_name} does not read {previous_name}'s output (through "
                        "element-wise activations only)")  # fmt: skip
        if norm.input is not conv.output:
            return f"{norm_name} does not normalise {conv_name}'s output"
        previous, previous_name = norm, norm_name
    assert previous is not None
    relu = call.output_fn
    if type(relu).__name__ not in _RELU_NODES:
        return "it does not return a ReLU"
    add = _inputs(relu)[0] if len(_inputs(relu)) == 1 else None
    terms = _inputs(add) if type(add).__name__ == "AddBackward0" else []
    if getattr(add, "_saved_alpha", 1) != 1 or len(terms) != 2 or \
            not any(term is previous.output_fn for term in terms):  # fmt: skip
        return f"it does not return ReLU of {previous_name}'s output plus a shortcut"
    other = terms[1] if terms[0] is previous.output_fn else terms[0]
    if call.input_fn is not None:
        identity = other is call.input_fn
    else:  # the block reads the network input: a leaf, accumulated by an AccumulateGrad node
        identity = getattr(other, "variable", None) is x
    projected = False
    for attr in ("shortcut", "downsample"):
        shortcut = getattr(block, attr, None)
        made = calls.get(shortcut, []) if isinstance(shortcut, nn.Module) else []
        if len(made) == 1 and made[0].input is x and other is made[0].output_fn:
            projected = True
    if not identity and not projected:
        return "the residual sum's other term is neither the block input nor its shortcut of it"
    return None


def _block_shortcut(block: nn.Module) -> nn.Module | None:
    return getattr(block, "shortcut", None) or getattr(block, "downsample", None)


def block_convs(block: nn.Module) -> list[str]:
    """Attribute names of a residual block's branch convs in order (``conv1``, ``conv2`` [,
    ``conv3``]); the last one writes the residual stream."""
    return [n for n in ("conv1", "conv2", "conv3") if hasattr(block, n)]


def _projection_paths(block: nn.Module) -> tuple[str, str | None] | None:
    """(conv, norm) attribute paths of a block's 1×1 projection shortcut ``Sequential(conv[,
    BN])``, or None for an identity, a parameter-free (option A) or any other shortcut."""
    attr = "shortcut" if getattr(block, "shortcut", None) is not None else "downsample"
    shortcut = getattr(block, attr, None)
    if not isinstance(shortcut, nn.Sequential) or not 1 <= len(shortcut) <= 2:
        return None
    conv = shortcut[0]
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        return None
    if len(shortcut) == 2 and not isinstance(shortcut[1], nn.BatchNorm2d):
        return None
    return f"{attr}.0", f"{attr}.1" if len(shortcut) == 2 else None


def _is_identity(block: nn.Module) -> bool:
    shortcut = _block_shortcut(block)
    return shortcut is None or isinstance(shortcut, nn.Identity)


def _execution_order(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Paths of Conv2d, Linear and BatchNorm modules in the order they run (meta tensors)."""

    order: list[str] = []
    names = {m: n for n, m in model.named_modules()}
    kinds = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)
    handles = [m.register_forward_pre_hook(lambda m, _a: order.append(names[m]))
               for m in model.modules() if isinstance(m, kinds)]  # fmt: skip
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), on_meta(model):
            model(torch.empty((1, *input_shape), device="meta"))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return order


def channel_groups(model: nn.Module, input_shape: tuple[int, ...]) -> list[ChannelGroup]:
    """The channel groups surgery may cut (see the module docstring for which ones).

    Raises:
        SurgeryError: an unsupported family (grouped convs, cross-channel LRN, concatenations),
            a chain that is not one of ours, or a block that is not a post-activation residual
            block (:func:`checked_blocks`).
    """
    blocks = checked_blocks(model, input_shape)
    if blocks:
        groups = []
        for name, block in blocks.items():
            convs = block_convs(block)
            for first, second in itertools.pairwise(convs):
                bn = f"bn{first[-1]}"
                groups.append(ChannelGroup(f"{name}.{first}", f"{name}.{bn}",
                                           (f"{name}.{second}",)))  # fmt: skip
        return groups
    cls = type(model)
    if f"{cls.__module__}.{cls.__qualname__}" not in _CHAIN_CLASSES:
        same_name = f" (a class of that name from {cls.__module__}, not ours)" \
            if cls.__name__ in CHAIN_FAMILIES else ""  # fmt: skip
        raise SurgeryError(
            f"surgery supports residual networks and the plain chains {', '.join(CHAIN_FAMILIES)};"
            f" not {cls.__name__}{same_name}"
        )
    modules = dict(model.named_modules())
    order = _execution_order(model, input_shape)
    layers = [n for n in order if isinstance(modules[n], nn.Conv2d | nn.Linear)]
    groups = []
    for producer, consumer in itertools.pairwise(layers):
        norms = [n for n in order[order.index(producer) + 1 : order.index(consumer)]
                 if isinstance(modules[n], nn.BatchNorm1d | nn.BatchNorm2d)]  # fmt: skip
        groups.append(ChannelGroup(producer, norms[0] if norms else None, (consumer,)))
    return groups


def stream_groups(model: nn.Module, input_shape: tuple[int, ...]) -> list[StreamGroup]:
    """The residual streams that may change width: one per stage starting with a projection.

    A stage runs from a block with a projection shortcut through the identity-shortcut blocks
    after it. Stages that start otherwise (after the stem, or with a zero-padding shortcut) are
    left out, and so is a stage whose stream flows into a shortcut that is neither an identity
    nor a projection. Networks without residual blocks have none.

    Raises:
        SurgeryError: a block that is not a post-activation residual block (:func:`checked_blocks`).
    """
    blocks = checked_blocks(model, input_shape)
    if not blocks:
        return []
    # Stages as (blocks, projection conv, its norm); one starting without a projection: None.
    stages: list[tuple[list[str], str, str | None] | None] = []
    for name, block in blocks.items():
        paths = _projection_paths(block)
        if paths is not None:
            norm = f"{name}.{paths[1]}" if paths[1] else None
            stages.append(([name], f"{name}.{paths[0]}", norm))
        elif _is_identity(block) and stages:
            if stages[-1] is not None:
                stages[-1][0].append(name)
        else:
            stages.append(None)
    modules = dict(model.named_modules())
    names = list(blocks)
    order = _execution_order(model, input_shape)
    groups = []
    for stage_info in stages:
        if stage_info is None:
            continue
        stage, projection, projection_norm = stage_info
        producers, norms = [projection], [projection_norm]
        for name in stage:
            last = block_convs(blocks[name])[-1]
            producers.append(f"{name}.{last}")
            norms.append(f"{name}.bn{last[-1]}")
        consumers = [f"{name}.conv1" for name in stage[1:]]  # block 0 reads the previous stream
        following = names.index(stage[-1]) + 1
        if following < len(names):
            after = blocks[names[following]]
            paths = _projection_paths(after)
            if paths is None:  # the stream flows on into a shortcut we cannot narrow
                continue
            consumers += [f"{names[following]}.conv1", f"{names[following]}.{paths[0]}"]
        else:  # the first layer after the last block reads the stream (the classifier)
            inside = {n for n in order if n.startswith(f"{stage[-1]}.")}
            last_index = max(order.index(n) for n in inside)
            rest = [n for n in order[last_index + 1 :]
                    if isinstance(modules[n], nn.Conv2d | nn.Linear)]  # fmt: skip
            if not rest:
                continue
            consumers.append(rest[0])
        groups.append(StreamGroup(tuple(stage), tuple(producers), tuple(norms), tuple(consumers)))
    return groups


def stream_keep(group: StreamGroup, keep: dict[str, int]) -> int | None:
    """Channels a plan keeps in ``group``'s stream (None when the plan leaves it alone).

    Raises:
        ValueError: the plan gives the stream's producers different widths.
    """
    widths = {keep[p] for p in group.producers if p in keep}
    if len(widths) > 1:
        raise ValueError(
            f"the residual stream of {group.blocks[0]} must keep one width in all of "
            f"{', '.join(group.producers)}; the plan gives {sorted(widths)}"
        )
    return widths.pop() if widths else None


def zero_stream_channels(model: nn.Module, group: StreamGroup) -> torch.Tensor:
    """Boolean (C,): stream channels that are exactly 0 everywhere in the stage — every
    producer's filter and bias are zero and its BatchNorm's scale and shift are zero."""
    modules = dict(model.named_modules())
    zero = torch.ones(_out_channels(modules[group.producers[0]]), dtype=torch.bool)
    for producer, norm in zip(group.producers, group.norms, strict=True):
        layer = modules[producer]
        zero &= filter_norms(layer) == 0
        if layer.bias is not None:
            zero &= layer.bias.detach() == 0
        if norm is not None:
            bn = modules[norm]
            if not bn.affine:  # β = 0 but the normalised constant −μ/σ is not
                return torch.zeros_like(zero)
            zero &= (bn.weight.detach() == 0) & (bn.bias.detach() == 0)
    return zero


def _out_channels(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def _in_channels(module: nn.Module) -> int:
    return module.in_channels if isinstance(module, nn.Conv2d) else module.in_features


def _column_norms(consumer: nn.Module, channels: int) -> torch.Tensor:
    """Sum of |w| of each input channel's columns of ``consumer`` (over outputs and positions)."""
    weight = consumer.weight.detach()
    if isinstance(consumer, nn.Conv2d):
        return weight.abs().sum(dim=(0, 2, 3))  # (C,)
    per_channel = consumer.in_features // channels
    return weight.abs().reshape(weight.shape[0], channels, per_channel).sum(dim=(0, 2))


def filter_norms(module: nn.Module) -> torch.Tensor:
    """Sum of |w| of each output filter/neuron (L1 norm, Li et al. 2017 eq. 1)."""
    return module.weight.detach().abs().reshape(_out_channels(module), -1).sum(1)


def kept_channels(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """Boolean (C,): channels that survive — non-zero filter and read by some consumer."""
    modules = dict(model.named_modules())
    producer = modules[group.producer]
    channels = _out_channels(producer)
    read = torch.zeros(channels, dtype=torch.bool)
    for name in group.consumers:
        read |= _column_norms(modules[name], channels) > 0
    keep = (filter_norms(producer) > 0) & read
    if not keep.any():  # keep one channel so every layer stays a valid module (exact anyway)
        keep[int(torch.argmax(filter_norms(producer) + read.float()))] = True
    return keep


# --------------------------------------------------------------------------- the cut


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _new_layer(
    old: nn.Module, n_in: int, n_out: int, map_shape: list[int] | None, bias: bool | None = None
) -> nn.Module:
    """An empty layer like ``old`` with new widths (weights are copied by the caller)."""
    device = old.weight.device
    bias = old.bias is not None if bias is None else bias
    if isinstance(old, nn.Conv2d):
        kwargs = {
            "stride": old.stride,
            "padding": old.padding,
            "dilation": old.dilation,
            "bias": bias,
            "device": device,
        }
        if map_shape is not None:
            return BiasMapConv2d(n_in, n_out, old.kernel_size, map_shape=tuple(map_shape),
                                 **kwargs)  # fmt: skip
        return nn.Conv2d(n_in, n_out, old.kernel_size, **kwargs)
    return nn.Linear(n_in, n_out, bias=bias, device=device)


def _new_norm(old: nn.Module, features: int) -> nn.Module:
    return type(old)(features, eps=old.eps, momentum=old.momentum, affine=old.affine,
                     device=old.weight.device if old.affine else None)  # fmt: skip


def _narrowed_norm(old: nn.Module, rows: torch.Tensor) -> nn.Module:
    """A copy of BatchNorm ``old`` keeping only the features ``rows`` (eval mode)."""
    new = _new_norm(old, len(rows))
    with torch.no_grad():
        for attr in ("weight", "bias", "running_mean", "running_var"):
            source = getattr(old, attr)
            if source is not None:
                getattr(new, attr).copy_(source.detach()[rows])
        new.num_batches_tracked.copy_(old.num_batches_tracked)
    return new.eval()


def narrow(model: nn.Module, architecture: Architecture) -> nn.Module:
    """Replace ``model``'s modules in place by empty ones of the recorded shapes; returns it.

    Used by :func:`rebuild` (then weights are loaded) and, on the meta device, to count the
    FLOPs and parameters of a pruning plan (Li et al. Table 1).
    """
    for path, spec in architecture.layers.items():
        old = model.get_submodule(path)
        layer = _new_layer(old, spec["in"], spec["out"], spec.get("bias_map"), spec.get("bias"))
        _set_module(model, path, layer)
    for path, features in architecture.norms.items():
        _set_module(model, path, _new_norm(model.get_submodule(path), features))
    for path, shape in architecture.constant_blocks.items():
        block = model.get_submodule(path)
        _set_module(model, path, ConstantBranch(_block_shortcut(block), tuple(shape)))
    return model


def rebuild(model_name: str, num_classes: int, architecture: dict[str, Any]) -> nn.Module:
    """The cut network of a manifest: the registered network narrowed to ``architecture``
    (load the cut weights into it with ``load_state_dict``)."""
    from model.networks import create_model

    return narrow(create_model(model_name, num_classes=num_classes),
                  Architecture.from_dict(architecture))  # fmt: skip


def plan_architecture(
    model: nn.Module, input_shape: tuple[int, ...], keep: dict[str, int]
) -> Architecture:
    """The architecture of ``model`` with producer ``name`` narrowed to ``keep[name]`` channels
    (its norm and consumers follow); for counting the cost of a plan without weights.

    A residual stream (:class:`StreamGroup`) narrows when the plan names its projection or any
    of its producers (all with the same width): every producer, norm and consumer follows.
    """
    modules = dict(model.named_modules())
    arch = Architecture()
    shapes: dict[str, list[int]] = {}
    units: list[tuple[tuple[str, ...], tuple[str | None, ...], tuple[str, ...], int]] = []
    for group in channel_groups(model, input_shape):
        if group.producer in keep:
            units.append(((group.producer,), (group.norm,), group.consumers, keep[group.producer]))
    for stream in stream_groups(model, input_shape):
        width = stream_keep(stream, keep)
        if width is not None:
            units.append((stream.producers, stream.norms, stream.consumers, width))
    for producers, norms, consumers, kept in units:
        channels = _out_channels(modules[producers[0]])
        for name in producers:
            shapes.setdefault(name, [_in_channels(modules[name]), channels])[1] = kept
        for norm in norms:
            if norm:
                arch.norms[norm] = kept
        for name in consumers:
            consumer = modules[name]
            per_channel = _in_channels(consumer) // channels
            shapes.setdefault(name, [_in_channels(consumer), _out_channels(consumer)])[0] = (
                kept * per_channel
            )
    arch.layers = {name: {"in": s[0], "out": s[1], "bias_map": None} for name, s in shapes.items()}
    return arch


@dataclass
class CutResult:
    """The cut network and what was removed."""

    model: nn.Module
    architecture: Architecture
    kept: dict[str, int]  # producer path → channels kept
    removed_blocks: list[str]


def capture_activations(
    model: nn.Module, example: torch.Tensor, paths: set[str], output: bool = False
) -> dict[str, torch.Tensor]:
    """Input (or output) of each named module when ``model`` runs on ``example`` (eval)."""
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for path in paths:
        module = model.get_submodule(path)
        if output:
            handles.append(
                module.register_forward_hook(
                    lambda _m, _a, out, p=path: captured.setdefault(p, out.detach().clone())
                )
            )
        else:
            handles.append(
                module.register_forward_pre_hook(
                    lambda _m, args, p=path: captured.setdefault(p, args[0].detach().clone())
                )
            )
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _branch_is_dead(block: nn.Module) -> bool:
    return any(getattr(block, conv).weight.detach().abs().sum() == 0 for conv in block_convs(block))


def cut(model: nn.Module, input_shape: tuple[int, ...], example_batch: int = 2) -> CutResult:
    """The smaller dense network computing what ``model`` (with its zeros) computes in eval mode.

    Whatever the network, the result is checked: the cut network must run and match ``model``
    on a fixed random batch (:func:`check_equivalent`), and any other failure while cutting
    (an index or shape error on a structure surgery misreads) is a :class:`SurgeryError`.

    Args:
        model: the masked/pruned network; not modified.
        input_shape: (C, H, W) of one example (bias maps and constants are for this size).
        example_batch: images used to capture the constants (they do not depend on the input).

    Raises:
        SurgeryError: unsupported network structure, or a cut that is not exact (the reason,
            with the layer where known).
    """
    model = model.eval()
    where: list[str] = []  # the layer being cut, for the message of an unexpected error
    with _not_understood("surgery failed", "at", where):
        result = _cut(model, input_shape, example_batch, where)
    check_equivalent(model, result.model, input_shape)
    return result


@contextmanager
def _not_understood(what: str, preposition: str, where: list[str]) -> Iterator[None]:
    """An unexpected error inside (not a SurgeryError, not running out of memory) is a
    SurgeryError saying ``what`` happened ``preposition`` the last layer in ``where``: the
    network has a structure surgery misread."""
    try:
        yield
    except (SurgeryError, MemoryError, torch.cuda.OutOfMemoryError):
        raise
    except Exception as error:
        at = f" {preposition} {where[-1]}" if where else ""
        raise SurgeryError(
            f"{what}{at} ({type(error).__name__}: {error}); the network has a structure "
            "surgery does not understand"
        ) from error


# Tolerance of check_equivalent: |cut − original| ≤ ATOL + RTOL · max|original| on the outputs.
# Removing all-zero filters/channels and folding their constants changes only the float32
# summation order (≤ 1e-5 on the tested networks); a misread structure differs by O(1).
EQUIVALENCE_RTOL = 1e-3
EQUIVALENCE_ATOL = 1e-4


def check_equivalent(
    model: nn.Module, cut_model: nn.Module, input_shape: tuple[int, ...], batch: int = 2
) -> None:
    """Check that ``cut_model`` computes what ``model`` computes (eval mode) on a fixed random
    batch of ``input_shape``; skipped for a model on the meta device (no values to compare).

    Raises:
        SurgeryError: the cut network fails to run (naming the module it was in) or its
            outputs differ by more than the tolerance.
    """
    reference = next(itertools.chain(model.parameters(), model.buffers()), None)
    if reference is not None and reference.is_meta:
        return
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() \
        else torch.float32  # fmt: skip
    x = torch.randn((batch, *input_shape), generator=torch.Generator().manual_seed(0))
    x = x.to(device=device, dtype=dtype)
    model.eval()
    cut_model.eval()
    names = {m: n for n, m in cut_model.named_modules()}
    entered: list[str] = []
    handles = [m.register_forward_pre_hook(lambda m, _a: entered.append(names[m]))
               for m in cut_model.modules() if m is not cut_model]  # fmt: skip
    with torch.no_grad():
        expected = _tensors(model(x))
        try:
            with _not_understood("the cut network does not run", "in", entered):
                actual = _tensors(cut_model(x))
        finally:
            for handle in handles:
                handle.remove()
    if [t.shape for t in actual] != [t.shape for t in expected]:
        raise SurgeryError(
            f"the cut network's output shapes {[tuple(t.shape) for t in actual]} differ from "
            f"the original's {[tuple(t.shape) for t in expected]}"
        )
    for want, got in zip(expected, actual, strict=True):
        scale = want.abs().max().item() if want.numel() else 0.0
        error = (want - got).abs().max().item() if want.numel() else 0.0
        if not error <= EQUIVALENCE_ATOL + EQUIVALENCE_RTOL * scale:  # NaN fails too
            raise SurgeryError(
                f"the cut network does not compute what the original computes (largest output "
                f"difference {error:.3g} at output scale {scale:.3g}); the network has a "
                "structure surgery does not understand"
            )


def _tensors(output: Any) -> list[torch.Tensor]:
    """The tensors of a model's output (a tensor, or tuples/lists/dicts of them), in order."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, list | tuple):
        return [t for item in output for t in _tensors(item)]
    return []


def _cut(
    model: nn.Module, input_shape: tuple[int, ...], example_batch: int, where: list[str]
) -> CutResult:
    """:func:`cut` without its checks; appends each layer it works on to ``where``."""
    example = torch.randn(example_batch, *input_shape)
    blocks = residual_blocks(model)  # checked by channel_groups
    dead = [name for name, block in blocks.items() if _branch_is_dead(block)]
    groups = [g for g in channel_groups(model, input_shape)
              if not any(g.producer.startswith(f"{b}.") for b in dead)]  # fmt: skip
    modules = dict(model.named_modules())
    keeps = {g.producer: kept_channels(model, g) for g in groups}
    streams = []  # (group, channels kept) of the residual streams that lose channels
    for stream in stream_groups(model, input_shape):
        keep = ~zero_stream_channels(model, stream)
        if not keep.any():  # keep one channel so every layer stays a valid module (it is 0)
            keep[0] = True
        if not keep.all():
            streams.append((stream, keep))

    def survives(path: str) -> bool:
        """Not inside a removed branch (a removed block keeps its shortcut)."""
        for block in dead:
            if path.startswith(f"{block}."):
                return path[len(block) + 1 :].startswith(("shortcut.", "downsample."))
        return True

    # Inputs of every consumer (for the constants of removed filters) and dead branches' outputs.
    last_norm = {b: f"{b}.bn{block_convs(blocks[b])[-1][-1]}" for b in dead}
    inputs = capture_activations(model, example, {c for g in groups for c in g.consumers})
    branch_out = capture_activations(model, example, set(last_norm.values()), output=True)

    cut_model = copy.deepcopy(model)
    arch = Architecture()
    out_index: dict[str, torch.Tensor] = {}
    in_index: dict[str, tuple[torch.Tensor, int]] = {}
    extra_bias: dict[str, torch.Tensor] = {}
    bias_maps: dict[str, torch.Tensor] = {}
    for group in groups:
        where.append(group.producer)
        keep = keeps[group.producer]
        out_index[group.producer] = keep.nonzero().flatten()
        producer = modules[group.producer]
        constant = (~keep) & (filter_norms(producer) == 0)  # zero filters still emit a constant
        for name in group.consumers:
            consumer = modules[name]
            in_index[name] = (keep.nonzero().flatten(), _out_channels(producer))
            if not constant.any():
                continue
            x = inputs[name][:1]
            columns = constant  # (C,) or, for a linear consumer after a flatten, (features,)
            if isinstance(consumer, nn.Linear):
                columns = constant.repeat_interleave(consumer.in_features // len(constant))
            if not x[:, columns].any():  # the removed channels are exactly 0: nothing to add
                continue
            weight = consumer.weight.detach()
            if isinstance(consumer, nn.Conv2d):
                contribution = F.conv2d(
                    x[:, columns],
                    weight[:, columns],
                    None,
                    consumer.stride,
                    consumer.padding,
                    consumer.dilation,
                )[0]  # (K, P, Q)
                flat = contribution.flatten(1)
                if (flat.max(1).values - flat.min(1).values).abs().max() <= 1e-7:
                    extra_bias[name] = contribution.mean(dim=(1, 2))
                else:
                    bias_maps[name] = contribution
            else:
                extra_bias[name] = (x[:, columns] @ weight[:, columns].T)[0]  # (K,)

    for stream, keep in streams:
        index = keep.nonzero().flatten()
        channels = len(keep)
        for name in filter(survives, stream.producers):
            out_index[name] = index
        for name in filter(survives, stream.consumers):
            in_index[name] = (index, channels)

    layer_names = set(out_index) | set(in_index)
    with torch.no_grad():
        for name in sorted(layer_names):
            where.append(name)
            old = modules[name]
            rows = out_index.get(name, torch.arange(_out_channels(old)))
            weight = old.weight.detach()[rows]
            if name in in_index:
                columns, channels = in_index[name]
                if isinstance(old, nn.Linear):
                    per = old.in_features // channels
                    columns = (columns[:, None] * per + torch.arange(per)).flatten()
                weight = weight[:, columns]
            map_shape = None
            if name in bias_maps:
                map_shape = [len(rows), *bias_maps[name].shape[1:]]
            has_bias = old.bias is not None or name in extra_bias
            new = _new_layer(old, weight.shape[1], weight.shape[0], map_shape, has_bias)
            new.weight.copy_(weight)
            if new.bias is not None:
                bias = old.bias.detach()[rows] if old.bias is not None else torch.zeros(len(rows))
                if name in extra_bias:
                    bias = bias + extra_bias[name][rows]
                new.bias.copy_(bias)
            if map_shape is not None:
                new.bias_map.copy_(bias_maps[name][rows])
            _set_module(cut_model, name, new)
            arch.layers[name] = {"in": weight.shape[1], "out": weight.shape[0],
                                 "bias": has_bias, "bias_map": map_shape}  # fmt: skip
        for group in groups:
            if group.norm is None:
                continue
            where.append(group.norm)
            rows = out_index[group.producer]
            _set_module(cut_model, group.norm, _narrowed_norm(modules[group.norm], rows))
            arch.norms[group.norm] = len(rows)
        for stream, _ in streams:
            for producer, norm in zip(stream.producers, stream.norms, strict=True):
                if norm is None or not survives(norm):
                    continue
                where.append(norm)
                rows = out_index[producer]
                _set_module(cut_model, norm, _narrowed_norm(modules[norm], rows))
                arch.norms[norm] = len(rows)
        stream_rows = {block: keep for stream, keep in streams for block in stream.blocks}
        for name in dead:
            where.append(name)
            constant = branch_out[last_norm[name]][0]  # (K, H, W): the branch ignores its input
            if name in stream_rows:  # its stream channels that go are 0 in the constant too
                constant = constant[stream_rows[name]]
            shortcut = _block_shortcut(cut_model.get_submodule(name))
            replacement = ConstantBranch(shortcut, tuple(constant.shape))
            replacement.constant.copy_(constant)
            _set_module(cut_model, name, replacement)
            arch.constant_blocks[name] = list(constant.shape)
    kept = {name: len(index) for name, index in out_index.items()}
    return CutResult(cut_model.eval(), arch, kept, dead)
