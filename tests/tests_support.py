"""Small builders shared by tests (no fixtures: plain functions)."""

from __future__ import annotations

from hypothesis import strategies as st
from onnx import TensorProto, helper

from perfmodel import Conv2dSpec, LinearSpec

conv_specs = st.builds(
    Conv2dSpec,
    name=st.just("c"),
    batch=st.integers(1, 64),
    in_channels=st.sampled_from([3, 16, 32, 64, 192, 512]),
    out_channels=st.sampled_from([16, 32, 64, 128, 256, 1024]),
    in_height=st.integers(7, 64),
    in_width=st.integers(7, 64),
    kernel=st.sampled_from([1, 3, 5]),
    stride=st.sampled_from([1, 2]),
    padding=st.integers(0, 2),
    padding_end=st.none() | st.tuples(st.integers(0, 2), st.integers(0, 2)),
)
"""Convolution specs across the shapes real CNNs have, asymmetric padding included
(hypothesis)."""
linear_specs = st.builds(
    LinearSpec, name=st.just("fc"), batch=st.integers(1, 512),
    in_features=st.integers(8, 8192), out_features=st.integers(8, 8192),
)  # fmt: skip


def onnx_bytes(auto_pad: str = "NOTSET") -> bytes:
    """x(N,4,9,9) → Conv 3×3 /2 'my_conv' → Reshape → MatMul 'fc.weight' (200×6); the
    convolution pads 1 explicitly, or by ``auto_pad`` ("SAME_UPPER", …)."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [8, 4, 3, 3], [0.0] * 288)
    fc = helper.make_tensor("fc.weight", TensorProto.FLOAT, [200, 6], [0.0] * 1200)
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 200])
    padding = {"pads": [1, 1, 1, 1]} if auto_pad == "NOTSET" else {"auto_pad": auto_pad}
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["y"], name="my_conv", strides=[2, 2],
                             kernel_shape=[3, 3], **padding),
            helper.make_node("Reshape", ["y", "shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "fc.weight"], ["out"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 9, 9])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 6])],
        initializer=[weight, fc, shape],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def randomise_norms(model, generator) -> None:
    """Non-trivial BN statistics and affine parameters, so removed channels carry constants."""
    import torch
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.5)


def preact_resnet(num_classes: int = 10, widen: bool = True):
    """A tiny pre-activation ResNet (kuangliu pytorch-cifar ``PreActBlock``): its blocks have
    ``conv1``, ``bn1``, ``conv2``, ``bn2`` and a ``shortcut`` like a post-activation block, but
    ``bn1`` normalises the block input. Stem 3→16, ``layer1`` two 16→16 blocks, ``layer2`` a
    16→32 block with stride 2 and a 1×1 projection, then 32→32 (``widen=False``: 16 wide, no
    projection), BN, pool, ``fc``. Input (3, 32, 32)."""
    import torch.nn.functional as F
    from torch import nn

    class PreActBlock(nn.Module):
        def __init__(self, cin: int, planes: int, stride: int = 1):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(cin)
            self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.shortcut = nn.Sequential()
            if stride != 1 or cin != planes:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False))

        def forward(self, x):
            out = F.relu(self.bn1(x))
            shortcut = self.shortcut(out) if len(self.shortcut) else x
            return self.conv2(F.relu(self.bn2(self.conv1(out)))) + shortcut

    class PreActResNet(nn.Module):
        def __init__(self):
            super().__init__()
            width = 32 if widen else 16
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.layer1 = nn.Sequential(PreActBlock(16, 16), PreActBlock(16, 16))
            self.layer2 = nn.Sequential(PreActBlock(16, width, 2 if widen else 1),
                                        PreActBlock(width, width))  # fmt: skip
            self.bn = nn.BatchNorm2d(width)
            self.fc = nn.Linear(width, num_classes)

        def forward(self, x):
            x = self.layer2(self.layer1(self.conv1(x)))
            return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1).flatten(1))

    return PreActResNet()
