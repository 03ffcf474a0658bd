"""ONNX import: an export of a built-in network gives the same layers as the module path."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from onnx import TensorProto, helper
from tests_support import onnx_bytes

from model.analysis import network_layers
from model.networks import NETWORKS, create_model
from perfmodel.onnx_import import OnnxImportError, layers_from_onnx


def _export(name: str) -> bytes:
    """The network exported by PyTorch's (dynamo) ONNX exporter, as bytes."""
    module = create_model(name).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, (torch.zeros(1, *NETWORKS[name].input_shape),), dynamo=True, verbose=False
        )
    program.save(buffer)
    return buffer.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet20", "alexnet"])
def test_export_gives_the_same_layer_list_as_the_module(name, tmp_path):
    data = _export(name)
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(data)
    assert layers_from_onnx(path) == network_layers(name)
    assert layers_from_onnx(data, batch=8) == network_layers(name, batch=8)


@pytest.mark.parametrize("auto_pad", ["NOTSET", "SAME_UPPER"])
def test_handmade_graph_with_symbolic_batch(auto_pad):
    conv, fc = layers_from_onnx(onnx_bytes(auto_pad), batch=2)
    assert conv.name == "my_conv"
    assert (conv.out_channels, conv.stride, conv.padding, conv.batch) == (8, (2, 2), (1, 1), 2)
    assert (conv.out_height, conv.out_width) == (5, 5)
    assert (fc.name, fc.in_features, fc.out_features, fc.batch) == ("fc", 200, 6, 2)


def test_not_an_onnx_file(tmp_path):
    with pytest.raises(OnnxImportError, match="not a valid ONNX model"):
        layers_from_onnx(b"\x00garbage\xff" * 10)
    with pytest.raises(OnnxImportError, match="does not exist"):
        layers_from_onnx(tmp_path / "nope.onnx")


def test_graph_without_layers():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )  # fmt: skip
    data = helper.make_model(graph).SerializeToString()
    with pytest.raises(OnnxImportError, match="no Conv, Gemm or MatMul"):
        layers_from_onnx(data)


def _one_layer(op: str, x_shape: list, weight_name: str, weight: torch.Tensor, **attrs):
    """x → one ``op`` node whose weight is the initializer ``weight_name``, as an ONNX model."""
    graph = helper.make_graph(
        [helper.make_node(op, ["x", weight_name], ["y"], **attrs)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[helper.make_tensor(weight_name, TensorProto.FLOAT, list(weight.shape),
                                        weight.flatten().tolist())],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _zero_layer(op: str, x_shape: list, weight_name: str, weight_shape: tuple, **attrs) -> bytes:
    """The bytes of :func:`_one_layer` with an all-zero weight of ``weight_shape``."""
    return _one_layer(op, x_shape, weight_name, torch.zeros(weight_shape),
                      **attrs).SerializeToString()  # fmt: skip


def _conv_graph(size: tuple[int, int], kernel: tuple[int, int], attrs: dict, seed: int = 0):
    """x (1, 3, H, W) → one Conv 'w' (4×3×R×S, random) with ``attrs``; the model and the
    weight as a tensor."""
    weight = torch.randn(4, 3, *kernel, generator=torch.Generator().manual_seed(seed))
    return _one_layer("Conv", [1, 3, *size], "w.weight", weight, **attrs), weight


@pytest.mark.parametrize(
    ("size", "kernel", "attrs", "begin", "end"),
    [
        ((8, 8), (3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (0, 0), (1, 1)),
        ((8, 8), (3, 3), {"auto_pad": "SAME_LOWER", "strides": [2, 2]}, (1, 1), (0, 0)),
        ((224, 224), (7, 7), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (2, 2), (3, 3)),
        ((9, 7), (4, 2), {"auto_pad": "SAME_UPPER", "dilations": [1, 2]}, (1, 1), (2, 1)),
        ((9, 7), (4, 2), {"auto_pad": "SAME_LOWER", "strides": [1, 2]}, (2, 1), (1, 0)),
        ((8, 8), (1, 1), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (0, 0), (0, 0)),
        ((8, 8), (3, 3), {"auto_pad": "VALID", "strides": [2, 2]}, (0, 0), (0, 0)),
        ((8, 8), (3, 3), {"pads": [0, 0, 1, 1], "strides": [2, 2]}, (0, 0), (1, 1)),
        ((10, 9), (3, 3), {"pads": [2, 0, 1, 3]}, (2, 0), (1, 3)),
    ],
)
def test_conv_padding_is_imported_exactly(size, kernel, attrs, begin, end):
    """Asymmetric ONNX padding (auto_pad SAME_*, or begin ≠ end pads) gives the output size
    and the outputs of the ONNX reference runtime; it was halved into a symmetric pair."""
    from onnx.reference import ReferenceEvaluator

    model, weight = _conv_graph(size, kernel, {"kernel_shape": list(kernel), **attrs})
    (conv,) = layers_from_onnx(model.SerializeToString())
    assert (conv.padding, conv.end_padding) == (begin, end)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    (expected,) = ReferenceEvaluator(model).run(None, {"x": x.numpy()})
    assert (1, 4, conv.out_height, conv.out_width) == expected.shape
    # The spec's pads, applied by torch, compute what ONNX does (UPPER vs LOWER included).
    (top, left), (bottom, right) = conv.padding, conv.end_padding
    padded = torch.nn.functional.pad(x, (left, right, top, bottom))
    y = torch.nn.functional.conv2d(padded, weight, stride=conv.stride, dilation=conv.dilation)
    torch.testing.assert_close(y, torch.from_numpy(expected), rtol=1e-4, atol=1e-4)


def test_a_weight_that_does_not_fit_its_input_is_an_error():
    """A 5-channel input into a 3-channel weight, or a Gemm fed 10 features with an 11-feature
    weight, passed onnx's shape inference and were predicted as if they ran."""
    with pytest.raises(OnnxImportError, match=r"layer w: its input has 5 channels, its weight "
                                              r"\(4, 3, 3, 3\) with group=1 takes 3"):
        layers_from_onnx(_zero_layer("Conv", [1, 5, 8, 8], "w.weight", (4, 3, 3, 3)))
    with pytest.raises(OnnxImportError, match="its input has 10 features, its Gemm weight"):
        layers_from_onnx(_zero_layer("Gemm", [1, 10], "fc.weight", (6, 11), transB=1))


@pytest.mark.parametrize(("strides", "message"), [
    ([0, 1], "layer w: stride: must be >= 1, got (0, 1)"),
    ([1, 1], "layer w: kernel (5, 5) (dilation (1, 1)) does not fit the padded input 2x2"),
])  # fmt: skip
def test_a_spec_the_layer_cannot_have_is_one_line(strides, message):
    """pydantic's multi-line text with errors.pydantic.dev links was passed through."""
    with pytest.raises(OnnxImportError) as raised:
        layers_from_onnx(_zero_layer("Conv", [1, 3, 2, 2], "w.weight", (4, 3, 5, 5),
                                     strides=strides))  # fmt: skip
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value) and "pydantic.dev" not in str(raised.value)


def test_gemm_with_a_transposed_input():
    """transA=1 (A is features × rows) was refused by the features check ("its input has 4
    features, its Gemm weight (16, 8) takes 16"), and its rows were read from the wrong axis."""
    (fc,) = layers_from_onnx(_zero_layer("Gemm", [16, 4], "fc.weight", (16, 8), transA=1))
    assert (fc.in_features, fc.out_features, fc.batch) == (16, 8, 4)
    dynamic = _zero_layer("Gemm", [16, "N"], "fc.weight", (16, 8), transA=1)
    (fc,) = layers_from_onnx(dynamic, batch=2)
    assert (fc.in_features, fc.batch) == (16, 2)  # the rows' axis is the dynamic one
