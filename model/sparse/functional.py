"""The sparse ops as functions: validate inputs in Python, then run native or reference.

``implementation="auto"`` runs the native kernel when :func:`model.sparse.native.load`
succeeded and the pure-PyTorch reference otherwise; ``"native"`` insists on the kernel (and
raises if it is unavailable); ``"reference"`` always runs the reference.
"""

from __future__ import annotations

import functools
from typing import Literal, get_args

import torch

from model.sparse import native, reference
from model.sparse.csr import ConvCSR, ConvLayout, LinearCSR, Pair, conv_layout
from perfmodel.refined import images_per_unit

Implementation = Literal["auto", "native", "reference"]
IMPLEMENTATIONS: tuple[str, ...] = get_args(Implementation)
BatchLayout = Literal["auto", "spatial", "blocked"]
_BATCH_LAYOUTS = {"auto": 0, "spatial": 1, "blocked": 2}


def _pair(value: int | Pair, name: str) -> Pair:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if (
        isinstance(value, tuple | list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return (int(value[0]), int(value[1]))
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def _check_tensor(x: object, what: str, dims: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"{what} must be float32, got {x.dtype} (the sparse kernel is fp32 only)")
    if x.device.type != "cpu":
        raise ValueError(f"{what} must be on the CPU, got {x.device}")
    if x.is_sparse or x.is_nested or x.layout != torch.strided:
        raise ValueError(f"{what} must be a dense (strided) tensor, got a "
                         f"{'nested' if x.is_nested else str(x.layout)} one")
    if dims is not None and x.dim() != dims:
        raise ValueError(f"{what} must be {dims}-D, got shape {tuple(x.shape)}")
    if not x.is_contiguous():
        raise ValueError(f"{what} must be contiguous; call .contiguous() first")
    return x


# Layouts are immutable and cheap to key; building one costs ≈3 µs, a visible share of a
# small layer's sparse op at batch 1.
_conv_layout = functools.lru_cache(maxsize=1024)(conv_layout)


@functools.lru_cache(maxsize=1024)
def _stacked_layout(layout: ConvLayout, batch: int, threads: int) -> ConvLayout:
    """``layout`` for the native kernel's units: small images stacked at batch > 1 (only
    called once the kernel has loaded)."""
    vector_width = int(native.load().vector_width())
    stack = images_per_unit(batch, layout.out_height, layout.image_pitch, vector_width, threads)
    if stack == 1:
        return layout
    return _conv_layout(
        layout.channels, layout.height, layout.width, layout.kernel, layout.stride,
        layout.padding, layout.dilation, stack,
    )  # fmt: skip


def _check_bias(bias: torch.Tensor | None, dimension: str, expected: int) -> None:
    if bias is None:
        return
    _check_tensor(bias, "bias", dims=1)
    if bias.numel() != expected:
        raise ValueError(f"bias has {bias.numel()} elements, expected {dimension}={expected}")


def check_implementation(implementation: object) -> None:
    """Raise ``ValueError`` unless ``implementation`` is one of :data:`IMPLEMENTATIONS`."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"implementation must be one of {', '.join(IMPLEMENTATIONS)}, got {implementation!r}"
        )


def _module(implementation: Implementation):  # -> ModuleType | None
    check_implementation(implementation)
    if implementation == "reference":
        return None
    module = native.load()
    if module is None and implementation == "native":
        raise RuntimeError(
            f"native sparse kernel unavailable: {native.kernel_info().reason}; "
            "use implementation='reference' or fix the build (python -m model.sparse)"
        )
    return module


def sparse_conv2d(
    input: torch.Tensor,
    weight: ConvCSR,
    bias: torch.Tensor | None = None,
    stride: int | Pair = 1,
    padding: int | Pair = 0,
    dilation: int | Pair = 1,
    fuse_relu: bool = False,
    implementation: Implementation = "auto",
    batch_layout: BatchLayout = "auto",
    row_pairs: bool | None = None,
) -> torch.Tensor:
    """Direct sparse 2-D convolution, same result as ``F.conv2d`` (with ``relu`` if fused).

    Args:
        input: ``(N, C, H, W)`` float32, contiguous, CPU.
        weight: the CSR weight (groups and kernel size come from it).
        bias: ``(K,)`` float32 or None.
        stride, padding, dilation: as for ``F.conv2d`` (zero padding, no strings).
        fuse_relu: apply ReLU to the output inside the op.
        implementation: ``auto``, ``native`` or ``reference``.
        batch_layout: native kernel only: ``spatial`` (vectors along each image's output
            plane; from batch 2, small images stacked side by side,
            :func:`perfmodel.refined.images_per_unit`), ``blocked`` (16 images per vector for
            every full block of 16; never stacked) or ``auto`` (spatial: faster on the
            development machine, docs/sparse-kernel.md).
        row_pairs: native kernel only: compute output channels two at a time, loading the
            input of the columns both use once (:class:`~model.sparse.csr.RowPairs`); ``None``
            decides by :meth:`ConvCSR.pairs_pay`. Needs an even number of output channels per
            group (``True`` raises ``ValueError`` otherwise).

    Returns:
        ``(N, K, P, Q)`` float32, without autograd history (inference only).

    Raises:
        TypeError: wrong dtype or argument types. ValueError: wrong shapes or layout.
        RuntimeError: ``implementation="native"`` but the kernel is unavailable.
    """
    # Fast path: the last native plan, when this call passes the very same option objects
    # (identity, so that True or 1.0 never take the plan of 1). The plan checks in C++ the
    # input shape, thread count, tracing and the CSR's version counters, and returns None
    # where it does not apply; on any error the slow path below runs and raises the typed one.
    # Right after another layer has run, each Python step costs microseconds: the slow path's
    # key, checks and lookup cost 25–40 µs a call (docs/sparse-kernel.md, "The Python call").
    try:
        fast = weight._fast[0]
    except (AttributeError, IndexError):
        fast = None
    if (
        fast is not None
        and fast[0] is stride
        and fast[1] is padding
        and fast[2] is dilation
        and fast[3] is implementation
        and fast[4] is batch_layout
        and fast[5] is row_pairs
    ):
        try:
            out = fast[6](input, bias, fuse_relu)
        except (RuntimeError, TypeError):
            out = None
        if out is not None:
            return out
    # The plan (layout, offsets, the op's arguments) depends on the call's shapes and options
    # only, so it is cached per weight; the op's own checks stand in for the Python ones (on
    # a failure those run, to raise the typed error below). Building the plan and checking
    # the input cost ≈40 µs a call cold (AlexNet conv3 at batch 1, ≈10%).
    key = _plan_key(input, weight, stride, padding, dilation, implementation, batch_layout,
                    row_pairs)  # fmt: skip
    _check_flag(fuse_relu, "fuse_relu")
    _refuse_tracing("sparse_conv2d")
    if isinstance(weight, ConvCSR):
        weight.forget_if_changed()  # values or indices written in place since the plan
    plan = weight._plans.get(key) if key is not None else None
    if plan is None or plan[0] is None:
        if not isinstance(weight, ConvCSR):
            raise TypeError(f"weight must be a ConvCSR, got {type(weight).__name__}")
        _check_tensor(input, "input", dims=4)
        _check_bias(bias, "out_channels", weight.out_channels)
        if plan is None:
            plan = _conv_plan(input.shape, weight, _pair(stride, "stride"),
                              _pair(padding, "padding"), _pair(dilation, "dilation"),
                              implementation, batch_layout, row_pairs)  # fmt: skip
            if key is not None:
                if len(weight._plans) >= _MAX_PLANS:
                    weight._plans.clear()  # and what was derived per input size with them
                    weight.forget_layouts()
                weight._plans[key] = plan
    module, head, tail, call = plan
    if module is None:
        with torch.no_grad():
            return reference.sparse_conv2d(input, weight, head, bias, fuse_relu)
    if key is not None:
        weight.__dict__.setdefault("_fast", [])[:] = [
            (stride, padding, dilation, implementation, batch_layout, row_pairs, call)
        ]
    try:
        # The extension op records no autograd history, so no no_grad() context (≈3 µs a call).
        return module.sparse_conv2d_forward(input, *head, bias, *tail[:6], fuse_relu, *tail[6:])
    except (RuntimeError, TypeError) as error:
        failure = error
    # The typed error, where a Python check has one (raised here, outside the handler, so it
    # is not shown as raised "during handling" of the op's error).
    _check_tensor(input, "input", dims=4)
    _check_bias(bias, "out_channels", weight.out_channels)
    raise failure


def _check_flag(value: object, name: str) -> None:
    """A flag is True or False (or what equals them: 1, 0, NumPy's bools); anything else made
    the native op raise pybind's dump of its 19 parameters, and the reference take its
    truthiness."""
    if value not in (True, False):
        raise TypeError(f"{name} must be True or False, not {value!r}")


def _refuse_tracing(op: str) -> None:
    """The native op is a plain extension function, invisible to torch.jit.trace (and so to
    tracing-based ONNX export): the trace kept only the output's allocation, and the traced
    module returned uninitialised memory. torch.export (non-strict, its default) ran the
    plan's Python on fake tensors and failed deep inside with a data-dependent guard. Refuse
    both instead. (Strict export stops at the extension call with torch's own message;
    torch.compile runs the op eagerly, as a graph break.)"""
    if torch._C._get_tracing_state() is not None or torch.compiler.is_exporting():
        raise RuntimeError(
            f"{op} cannot be traced or exported (torch.jit.trace, torch.onnx.export, "
            "torch.export): its native kernel is not a TorchScript or ATen op. Trace or export "
            "the dense model (SparseConv2d and SparseLinear have to_dense(); "
            "model.sparse.to_dense_model converts a whole model), and run the sparse one eagerly"
        )


def _exact_pair(value: object) -> object:
    """``value`` if it is an int or a pair of ints (bools excluded), else None: a cache key
    must not let ``True`` or ``1.0`` hit the plan of ``1``."""
    if type(value) is int:
        return value
    if type(value) is tuple and len(value) == 2 and type(value[0]) is type(value[1]) is int:
        return value
    return None


def _plan_key(input, weight, stride, padding, dilation, implementation, batch_layout, row_pairs):
    """The key of :func:`sparse_conv2d`'s plan cache, or None where the call is not cached
    (not a ConvCSR or a tensor, options of other types)."""
    geometry = (_exact_pair(stride), _exact_pair(padding), _exact_pair(dilation))
    if None in geometry or type(weight) is not ConvCSR or not isinstance(input, torch.Tensor):
        return None
    if input.is_nested:  # no shape to key on: _check_tensor refuses it
        return None
    if type(implementation) is not str or type(batch_layout) is not str:
        return None
    if row_pairs is not None and type(row_pairs) is not bool:
        return None
    return (input.shape, *geometry, implementation, batch_layout, row_pairs,
            torch.get_num_threads())  # fmt: skip


# Segment-major CSR (ConvCSR.segment_major) from this many bytes of values and offsets, where
# the kernel has more than one channel block. It pays where the CSR comes from memory on every
# call: AlexNet conv3–5 at batch 1 and 90% sparsity 27–38% faster (1 thread; 8–11% at 2),
# 7–18% at 50–70% (row pairs), conv2 (245 KB, read once per output strip) ±2%, batch 32 0–6%.
# A CSR of a few KB stays in cache, and there the segment-major call measured 5–9% slower
# (CIFAR 64@8×8 stacked at batch 32: 30 KB), so it keeps row order.
SEGMENT_MAJOR_MIN_BYTES = 64 * 1024

# Plans kept per weight (distinct input shapes, options and thread counts) before starting over.
_MAX_PLANS = 64


def _conv_plan(shape, weight, stride_, padding_, dilation_, implementation, batch_layout,
               row_pairs):  # fmt: skip
    """(module, head, tail, call) for :func:`sparse_conv2d`: the native module (None for the
    reference), the op's arguments before and after the bias (relu goes after the first six
    of ``tail``; for the reference, ``head`` is the layout) and the extension's ``ConvCall``
    holding them for this input shape (None for the reference). Raises as the op documents."""
    if min(stride_) < 1 or min(dilation_) < 1 or min(padding_) < 0:
        raise ValueError(
            f"stride and dilation must be >= 1 and padding >= 0, got stride={stride_}, "
            f"padding={padding_}, dilation={dilation_}"
        )
    if shape[1] != weight.in_channels:
        raise ValueError(
            f"input has {shape[1]} channels but the weight expects {weight.in_channels}"
        )
    if batch_layout not in _BATCH_LAYOUTS:
        raise ValueError(f"batch_layout must be auto, spatial or blocked, not {batch_layout!r}")
    layout = _conv_layout(
        weight.in_channels // weight.groups,
        shape[2],
        shape[3],
        tuple(weight.kernel),
        stride_,
        padding_,
        dilation_,
    )
    if row_pairs is not None and type(row_pairs) is not bool:  # 1 == True, but is no flag
        raise TypeError(f"row_pairs must be True, False or None, not {row_pairs!r}")
    if row_pairs and weight.row_pairs() is None:
        raise ValueError(
            f"row_pairs=True needs an even number of output channels per group, got "
            f"{weight.out_channels // weight.groups}"
        )
    module = _module(implementation)
    if module is None:
        return None, layout, (), None
    kernel, groups = list(weight.kernel), weight.groups
    geometry = (kernel, list(stride_), list(padding_), list(dilation_))
    use_pairs = row_pairs or (row_pairs is None and weight.pairs_pay())
    blocking = None  # channel blocks for a segment-major CSR, where the op wants one
    if batch_layout != "blocked":  # the batch-blocked layout stacks nothing
        layout = _stacked_layout(layout, shape[0], torch.get_num_threads())
    # The op's own limit, before any work: a huge padding made gigabytes of layout numbers.
    vector_width = int(module.vector_width())
    if layout.channels * layout.plane + layout.flat_outputs >= 2**31 // vector_width:
        raise ValueError(
            f"input too large for the sparse kernel's 32-bit offsets: its padded layout has "
            f"{layout.channels * layout.plane} elements per group (input {shape[2]}x{shape[3]}, "
            f"padding {padding_}, stride {stride_}, dilation {dilation_})"
        )
    if batch_layout != "blocked":  # the batch-blocked layout reads the CSR in row order
        blocks, block_channels = module.conv_blocking(
            layout.channels, layout.height, layout.width, *geometry, weight.out_channels,
            layout.stack, tiles=False,
        )  # fmt: skip
        # One block is row order already; a small CSR stays in cache (SEGMENT_MAJOR_MIN_BYTES).
        if blocks > 1 and weight.nnz * 8 >= SEGMENT_MAJOR_MIN_BYTES:
            blocking = (layout, blocks, block_channels)
    segments: tuple = (None, None)
    if use_pairs:
        pairs = weight.row_pairs()
        assert pairs is not None
        if blocking:
            values, offsets, own, pair_values, pair_offsets, shared = pairs.segment_major(
                *blocking
            )
            segments = (own, shared)
        else:
            values, pair_values = pairs.values, pairs.pair_values
            offsets, pair_offsets = pairs.input_offsets(layout)
        head = (values, offsets, pairs.row_ptr)
        pair_args = (pair_values, pair_offsets, pairs.pair_row_ptr)
    else:
        if blocking:
            values, offsets, own = weight.segment_major(*blocking)
            segments = (own, None)
        else:
            values, offsets = weight.values, weight.input_offsets(layout)
        head = (values, offsets, weight.row_ptr)
        pair_args = (None, None, None)
    tail = (weight.out_channels, *geometry, groups, _BATCH_LAYOUTS[batch_layout], *pair_args,
            layout.stack, *segments)  # fmt: skip
    call = module.ConvCall(list(shape), torch.get_num_threads(),
                           [weight.values, weight.kernel_index, weight.row_ptr], *head, *tail)
    return module, head, tail, call


def _native_cols(weight: LinearCSR) -> torch.Tensor:
    """Column indices for the native kernel: unsigned 16-bit (stored as int16) when
    ``in_features <= 65536``, a quarter less memory traffic at batch 1 (built once per weight,
    kept in its native plan)."""
    if weight.in_features > 65536:
        return weight.cols
    cols = weight.cols.to(torch.int32)
    return torch.where(cols >= 32768, cols - 65536, cols).to(torch.int16).contiguous()


def sparse_linear(
    input: torch.Tensor,
    weight: LinearCSR,
    bias: torch.Tensor | None = None,
    fuse_relu: bool = False,
    implementation: Implementation = "auto",
) -> torch.Tensor:
    """``F.linear`` with a CSR weight: ``(*, in_features) → (*, out_features)``.

    Raises:
        TypeError: wrong dtype or argument types. ValueError: wrong shapes or layout.
    """
    # Fast path, as in sparse_conv2d: a 2-D input with a native plan for this weight goes to
    # the extension's LinearCall, which checks in C++ what the Python checks below would and
    # returns None where it does not apply (cold, those checks cost ≈100 µs of AlexNet fc6's
    # 1.5 ms at batch 1). On any error the slow path runs and raises the typed one.
    try:
        fast = weight._fast[0]
    except (AttributeError, IndexError):
        fast = None
    if fast is not None and fast[0] is implementation:
        try:
            out = fast[1](input, bias, fuse_relu)
        except (RuntimeError, TypeError):
            out = None
        if out is not None:
            return out
    _refuse_tracing("sparse_linear")
    _check_flag(fuse_relu, "fuse_relu")
    if not isinstance(weight, LinearCSR):
        raise TypeError(f"weight must be a LinearCSR, got {type(weight).__name__}")
    weight.forget_if_changed()  # the plan's 16-bit columns copy the old indices
    _check_tensor(input, "input")
    if input.dim() < 1 or input.shape[-1] != weight.in_features:
        raise ValueError(
            f"input's last dimension must be in_features={weight.in_features}, "
            f"got shape {tuple(input.shape)}"
        )
    _check_bias(bias, "out_features", weight.out_features)
    lead = input.shape[:-1]
    x = input.reshape(-1, weight.in_features)  # (N, F)
    module = _module(implementation)
    if module is None:
        with torch.no_grad():
            out = reference.sparse_linear(x, weight, bias, fuse_relu)
    else:  # the extension op records no autograd history
        plan = weight._plans.get("native")
        if plan is None:  # one plan serves auto and native: both run this module
            arrays = (weight.values, _native_cols(weight), weight.row_ptr)
            call = module.LinearCall(
                weight.in_features,
                [weight.values, weight.cols, weight.row_ptr],
                *arrays,
                weight.out_features,
            )
            plan = weight._plans["native"] = (module, *arrays, call)
        out = module.sparse_linear_forward(x, *plan[1:4], bias, weight.out_features, fuse_relu)
        if type(weight) is LinearCSR:
            weight.__dict__.setdefault("_fast", [])[:] = [(implementation, plan[4])]
    return out.reshape(*lead, weight.out_features)
