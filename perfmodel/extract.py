"""Layer specs of a ``torch.nn.Module``: every Conv2d and Linear call, in execution order.

Forward hooks record the input shape of each call while the module runs once on a fake
(meta, shape-only) tensor, so nested modules, residual blocks, grouped convolutions and modules
called twice are all seen as they really execute, and nothing is computed. If fake tensors
cannot run the module (custom ops), it falls back to a real forward on zeros of batch 1.
That run also counts every convolution and matrix multiply torch executes
(``torch.utils.flop_counter``): work outside ``nn.Conv2d``/``nn.Linear`` modules (``F.conv2d``
on a bare parameter, attention's projections, Conv1d/Conv3d, transposed convolutions) has no
spec, and a warning says how much of the network's work the specs leave out.

This is the only part of :mod:`perfmodel` that imports torch, and it does so when called.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from perfmodel.layers import Conv2dSpec, LinearSpec

if TYPE_CHECKING:
    from torch import nn

# Work outside Conv2d/Linear modules, as a share of all counted FLOPs, above which a warning
# says the specs leave it out (exact counts agree on every built-in network: 0%).
UNSEEN_WORK_WARNING = 0.001

Layer = Conv2dSpec | LinearSpec


def extract_layers(
    module: nn.Module, input_shape: Sequence[int], batch: int = 1
) -> list[Layer]:
    """Specs of every ``nn.Conv2d`` and ``nn.Linear`` call of ``module`` on one input.

    Args:
        module: the network; its training mode is restored afterwards, weights untouched.
        input_shape: shape of one example without the batch dimension, e.g. ``(3, 224, 224)``.
        batch: batch size written into the specs.

    Returns:
        Specs named by qualified module name (``layer1.0.conv1``); a module called more than
        once gets ``#2``, ``#3`` … on its later calls.
    """
    import torch
    from torch import nn

    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    compiled = sys.modules.get("torch._dynamo.eval_frame")  # loaded once torch.compile ran
    if compiled is not None and isinstance(module, compiled.OptimizedModule):
        module = module._orig_mod  # the meta run failed inside dynamo; the layers are m's
    names = {m: name for name, m in module.named_modules()}
    specs: list[Layer] = []
    calls: dict[str, int] = {}

    def record(layer: nn.Module, args: tuple) -> None:
        name = names.get(layer, type(layer).__name__)
        calls[name] = calls.get(name, 0) + 1
        if calls[name] > 1:
            name = f"{name}#{calls[name]}"
        shape = tuple(args[0].shape)
        dtype_bytes = layer.weight.element_size()
        if isinstance(layer, nn.Conv2d):
            if isinstance(layer.padding, str):  # "same" / "valid"
                padding, padding_end = _explicit_padding(layer)
            else:
                padding = padding_end = tuple(layer.padding)
            if len(shape) not in (3, 4):  # conv2d would refuse it; say what input_shape means
                raise ValueError(
                    f"{name} got a {len(shape)}-D input {shape}; input_shape is the shape of "
                    "one example without the batch dimension, e.g. (3, 224, 224)"
                )
            n, c, h, w = shape if len(shape) == 4 else (1, *shape)
            specs.append(
                Conv2dSpec(
                    name=name, batch=n * batch, per_example=n, in_channels=c,
                    out_channels=layer.out_channels,
                    in_height=h, in_width=w, kernel=tuple(layer.kernel_size),
                    stride=tuple(layer.stride), padding=padding, padding_end=padding_end,
                    dilation=tuple(layer.dilation), groups=layer.groups, dtype_bytes=dtype_bytes,
                )
            )  # fmt: skip
        else:
            rows = 1
            for dim in shape[:-1]:
                rows *= dim
            specs.append(
                LinearSpec(
                    name=name, batch=rows * batch, per_example=rows, in_features=layer.in_features,
                    out_features=layer.out_features, dtype_bytes=dtype_bytes,
                )
            )  # fmt: skip

    handles = [
        m.register_forward_pre_hook(record)
        for m in module.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    was_training = module.training
    module.eval()
    counter = _work_counter()
    try:
        example_shape = (1, *input_shape)
        dtype = _input_dtype(module)
        try:
            with counter:
                _run_fake(module, example_shape, dtype)
        except Exception:
            specs.clear()
            calls.clear()
            counter = _work_counter()
            with counter, torch.no_grad():
                module(torch.zeros(example_shape, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        module.train(was_training)
    if not specs:
        raise ValueError("the module has no Conv2d or Linear layer that runs on this input")
    counted = counter.flops  # of one example; the specs' are of `batch`
    left_out = counted - sum(spec.flops for spec in specs) / batch
    if counted and left_out > UNSEEN_WORK_WARNING * counted:
        warnings.warn(
            f"{left_out / counted:.1%} of the network's convolution and matrix-multiply FLOPs "
            "run outside nn.Conv2d/nn.Linear modules (F.conv2d or F.linear on bare weights, "
            "attention, Conv1d/Conv3d, transposed convolutions): they have no layer spec, so "
            "predictions leave them out",
            stacklevel=2,
        )
    return specs


def _work_counter():
    """A dispatch mode summing the FLOPs of the convolutions and matrix multiplies that run
    under it, by torch's own formulas (``torch.utils.flop_counter``). FlopCounterMode itself
    also tracks the module hierarchy with hooks on every module: extracting ResNet-50 (built on
    the meta device, median of 12 calls) took 61 ms with it, 51 ms with this and 44 ms with no
    counting."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class WorkCounter(TorchDispatchMode):
        flops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            count = flop_registry.get(func._overloadpacket)
            if count is not None:
                self.flops += count(*args, **kwargs, out_val=out)
            return out

    return WorkCounter()


def _input_dtype(module: nn.Module):
    """The dtype of the module's floating-point weights (a float32 input made fp16, bf16 and
    fp64 models fail: "Input type (float) and bias type (c10::Half) should be the same")."""
    import torch

    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _run_fake(module: nn.Module, shape: tuple[int, ...], dtype) -> None:
    """Run ``module`` on meta tensors: shapes propagate, nothing is computed or allocated.

    Parameters and buffers are swapped for meta stand-ins (:func:`on_meta`) and put back, so
    the user's module is never copied or changed.
    """
    import torch

    with torch.no_grad(), on_meta(module):
        module(torch.empty(shape, dtype=dtype, device="meta"))


@contextmanager
def on_meta(module: nn.Module) -> Iterator[None]:
    """Inside, every parameter and buffer of ``module`` is a meta tensor like it (one per
    tensor, so tied weights stay tied); after, the module's own are back, untouched. Each
    module object is visited once: ``torch.func.functional_call`` saved and restored per
    name, and a module registered under two names came back with the meta stand-ins (its
    weights were gone)."""
    import torch
    from torch.nn.parameter import UninitializedTensorMixin

    owners = list(module.modules())  # every module object once, however many names it has
    if any(isinstance(t, UninitializedTensorMixin)
           for owner in owners for t in (*owner._parameters.values(), *owner._buffers.values())):
        # A lazy module would materialise its weights on the meta device, for good.
        raise ValueError("the module has lazy (uninitialised) parameters")  # fmt: skip
    stand_ins: dict[int, torch.Tensor] = {}
    saved = []
    try:
        for owner in owners:
            for tensors in (owner._parameters, owner._buffers):
                for key, tensor in tensors.items():
                    if tensor is not None:
                        meta = stand_ins.get(id(tensor))
                        if meta is None:
                            meta = stand_ins[id(tensor)] = torch.empty_like(tensor, device="meta")
                        saved.append((tensors, key, tensor))
                        tensors[key] = meta
        yield
    finally:
        for tensors, key, tensor in reversed(saved):
            tensors[key] = tensor


def _explicit_padding(conv: nn.Module) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(top, left)`` and ``(bottom, right)`` zero padding of a "same" / "valid" ``conv``."""
    if conv.padding == "valid":
        return (0, 0), (0, 0)
    # "same" (stride 1 only in torch): total padding d·(k−1), the smaller half first (an even
    # kernel extent pads one more row and column at the bottom and right).
    totals = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]
    begin = tuple(total // 2 for total in totals)
    end = tuple(total - total // 2 for total in totals)
    return begin, end
