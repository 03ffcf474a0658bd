"""Small builders shared by tests (no fixtures: plain functions)."""

from __future__ import annotations

from onnx import TensorProto, helper


def onnx_bytes() -> bytes:
    """x(N,4,9,9) → Conv 3×3 /2 'my_conv' → Reshape → MatMul 'fc.weight' (200×6)."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [8, 4, 3, 3], [0.0] * 288)
    fc = helper.make_tensor("fc.weight", TensorProto.FLOAT, [200, 6], [0.0] * 1200)
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 200])
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["y"], name="my_conv", strides=[2, 2],
                             kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("Reshape", ["y", "shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "fc.weight"], ["out"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 9, 9])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 6])],
        initializer=[weight, fc, shape],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
