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
