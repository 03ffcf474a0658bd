"""Layer specs from an ONNX file: ``Conv``, ``Gemm`` and ``MatMul`` with a constant weight.

Shapes come from ONNX shape inference, so any exporter's graph works (PyTorch's, TF2ONNX,
…). Layers are named after their weight initializer without ``.weight`` (PyTorch exports keep
parameter names, so ``layer1.0.conv1.weight`` gives ``layer1.0.conv1``, the same name the
module path gives), else after the node. Only the ``onnx`` package is needed, never torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from perfmodel.layers import Conv2dSpec, LinearSpec

if TYPE_CHECKING:
    import onnx

Layer = Conv2dSpec | LinearSpec
_DTYPE_BYTES = {1: 4, 10: 2, 11: 8, 16: 2}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


class OnnxImportError(ValueError):
    """The file is not a readable ONNX model, or a layer's shapes cannot be determined."""


def load_onnx(source: str | Path | bytes) -> onnx.ModelProto:
    """Parse an ONNX model from a path or raw bytes, with a clear error when it is not one."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        if isinstance(source, bytes):
            model = onnx.load_from_string(source)
        else:
            model = onnx.load(str(source), load_external_data=False)
    except FileNotFoundError:
        raise OnnxImportError(f"ONNX file {source} does not exist") from None
    except (DecodeError, ValueError, RuntimeError, OSError) as error:
        raise OnnxImportError(f"not a valid ONNX model: {error}") from None
    if not model.graph.node:
        raise OnnxImportError("not a valid ONNX model: the graph has no nodes")
    return model


def check_onnx(model: onnx.ModelProto) -> None:
    """Run the ONNX checker on ``model``'s graph, with a clear error when it rejects it.

    Tensors stored as external data (PyTorch's default export writes its weights to
    ``model.onnx.data`` next to ``model.onnx``) are checked without their bytes: only their
    shapes are ever used, and the checker would otherwise look for the data file on this
    machine (relative to the working directory). A copy is checked with each such tensor
    replaced by an empty one of the same name and type; a malformed reference (no
    ``location``, or inline data as well) is left for the checker to refuse.
    """
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in _all_tensors(copy.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        keys = {entry.key for entry in tensor.external_data}
        inline = tensor.HasField("raw_data") or any(
            len(getattr(tensor, field)) for field in _VALUE_FIELDS
        )
        if "location" not in keys or inline:
            continue
        placeholder = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=[0])
        tensor.CopyFrom(placeholder)
    try:
        onnx.checker.check_model(copy)
    except onnx.checker.ValidationError as error:
        raise OnnxImportError(f"the ONNX checker rejected the model: {error}") from None


_VALUE_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data",
                 "uint64_data")  # fmt: skip


def _all_tensors(graph: onnx.GraphProto):
    """Every tensor of ``graph``: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _all_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _all_tensors(subgraph)


def layers_from_onnx(source: str | Path | bytes, batch: int | None = None) -> list[Layer]:
    """Specs of every convolution and fully connected layer of an ONNX model, in graph order.

    Args:
        source: path to a ``.onnx`` file, or its bytes.
        batch: batch size for the specs; by default the model's own when its batch dimension
            is fixed, else 1.
    """
    import onnx

    model = load_onnx(source)
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as error:  # onnx raises several internal error types
        raise OnnxImportError(f"ONNX shape inference failed: {error}") from None
    graph = model.graph
    weights = {init.name: (tuple(init.dims), init.data_type) for init in graph.initializer}
    for node in graph.node:  # weights folded into Constant nodes
        if node.op_type == "Constant" and node.attribute and node.attribute[0].t.dims:
            tensor = node.attribute[0].t
            weights[node.output[0]] = (tuple(tensor.dims), tensor.data_type)
    shapes: dict[str, tuple] = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)

    layers: list[Layer] = []
    seen: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        weight_name = node.input[1]
        if weight_name not in weights:
            continue  # a MatMul of two activations (attention) has no weight to prune
        name = _layer_name(weight_name, node, index)
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}#{seen[name]}"
        w_shape, w_type = weights[weight_name]
        dtype_bytes = _DTYPE_BYTES.get(w_type, 4)
        x_shape = shapes.get(node.input[0])
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if x_shape and node.op_type == "Gemm" and attrs.get("transA", 0) and len(x_shape) == 2:
            x_shape = [x_shape[1], x_shape[0]]  # A is (features, rows): rows may be dynamic
        if x_shape is None or any(d is None for d in x_shape[1:]):
            raise OnnxImportError(
                f"layer {name}: the shape of its input {node.input[0]!r} is unknown after shape "
                "inference (export the model with a fixed input size)"
            )
        rows = x_shape[0] if x_shape and x_shape[0] else 1
        n = batch or rows
        if node.op_type == "Conv":
            layers.append(_conv_spec(name, n, x_shape, w_shape, attrs, dtype_bytes))
        else:
            layers.append(_linear_spec(name, node.op_type, n, x_shape, w_shape, attrs, dtype_bytes))
    if not layers:
        raise OnnxImportError("the ONNX model has no Conv, Gemm or MatMul layer with a weight")
    return layers


def _layer_name(weight_name: str, node: onnx.NodeProto, index: int) -> str:
    if weight_name.endswith(".weight"):
        return weight_name[: -len(".weight")]
    return node.name or f"{node.op_type.lower()}_{index}"


def _conv_spec(name, batch, x_shape, w_shape, attrs, dtype_bytes) -> Conv2dSpec:
    if len(x_shape) != 4 or len(w_shape) != 4:
        raise OnnxImportError(f"layer {name}: only 2-D convolutions are supported, got {x_shape}")
    _, channels, height, width = x_shape
    kernel = tuple(attrs.get("kernel_shape", w_shape[2:]))
    stride = tuple(attrs.get("strides", (1, 1)))
    dilation = tuple(attrs.get("dilations", (1, 1)))
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # Output ceil(in / stride): the total padding is split in half, the odd pixel going
        # to the end (UPPER) or to the beginning (LOWER).
        totals = [
            max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            for size, s, k, d in zip((height, width), stride, kernel, dilation, strict=True)
        ]
        small = [total // 2 for total in totals]
        large = [total - total // 2 for total in totals]
        begin, end = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    elif auto_pad == "VALID":
        begin = end = [0, 0]
    elif auto_pad in ("NOTSET", ""):
        pads = list(attrs.get("pads", (0, 0, 0, 0)))
        if len(pads) != 4:
            raise OnnxImportError(f"layer {name}: pads must have 4 entries, got {pads}")
        begin, end = pads[:2], pads[2:]  # [top, left, bottom, right]
    else:
        raise OnnxImportError(f"layer {name}: unknown auto_pad {auto_pad!r}")
    padding, padding_end = tuple(begin), tuple(end)
    groups = attrs.get("group", 1)
    if channels != w_shape[1] * groups:  # onnx's shape inference lets it through
        raise OnnxImportError(
            f"layer {name}: its input has {channels} channels, its weight {w_shape} with "
            f"group={groups} takes {w_shape[1] * groups}"
        )
    try:
        return Conv2dSpec(
            name=name, batch=batch, in_channels=channels, out_channels=w_shape[0],
            in_height=height, in_width=width, kernel=kernel, stride=stride, padding=padding,
            padding_end=padding_end, dilation=dilation, groups=groups,
            dtype_bytes=dtype_bytes,
        )  # fmt: skip
    except ValidationError as error:  # one line, without pydantic's URLs
        problems = "; ".join(
            (f"{'.'.join(map(str, e['loc']))}: " if e["loc"] else "")
            + e["msg"].removeprefix("Value error, ")
            for e in error.errors(include_url=False)
        )
        raise OnnxImportError(f"layer {name}: {problems}") from None


def _linear_spec(name, op, batch, x_shape, w_shape, attrs, dtype_bytes) -> LinearSpec:
    if len(w_shape) != 2:
        raise OnnxImportError(f"layer {name}: {op} weight must be 2-D, got {w_shape}")
    if op == "Gemm" and attrs.get("transB", 0):
        out_features, in_features = w_shape
    else:
        in_features, out_features = w_shape
    if x_shape and x_shape[-1] and x_shape[-1] != in_features:
        raise OnnxImportError(
            f"layer {name}: its input has {x_shape[-1]} features, its {op} weight {w_shape} "
            f"takes {in_features}"
        )
    per_example = 1
    for dim in x_shape[1:-1]:  # MatMul on (N, T, D) inputs: every row is a product
        per_example *= dim or 1
    return LinearSpec(
        name=name, batch=batch * per_example, per_example=per_example,
        in_features=in_features, out_features=out_features,
        dtype_bytes=dtype_bytes,
    )  # fmt: skip
