"""LeNet-300-100 (Han et al. 2015), the SSL CIFAR-10 ConvNet (Caffe cifar10_full) and the
CIFAR-sized AlexNet: forward shapes, parameter counts and the layer names predictions use."""

from __future__ import annotations

import pytest
import torch

from model.analysis import network_layers
from model.networks import NETWORKS, create_model
from model.networks.cifar_convnet import WithinChannelLRN


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("name", "shape"),
    [("lenet300", (1, 28, 28)), ("cifar_convnet", (3, 32, 32)), ("alexnet_cifar", (3, 32, 32))],
)
def test_forward_shape(name, shape):
    assert NETWORKS[name].input_shape == shape
    module = create_model(name).eval()
    with torch.no_grad():
        assert module(torch.randn(2, *shape)).shape == (2, 10)
        assert create_model(name, num_classes=3).eval()(torch.randn(1, *shape)).shape == (1, 3)


def test_lenet300_is_han_et_al():
    layers = network_layers("lenet300")
    assert [(s.name, s.in_features, s.out_features) for s in layers] == [
        ("fc1", 784, 300),
        ("fc2", 300, 100),
        ("fc3", 100, 10),
    ]
    assert _params(create_model("lenet300")) == 266_610  # Han et al. 2015, Table 1: 267K


def test_cifar_convnet_follows_caffe_cifar10_full():
    layers = {s.name: s for s in network_layers("cifar_convnet")}
    assert list(layers) == ["conv1", "conv2", "conv3", "ip1"]
    shapes = {
        n: (s.in_channels, s.out_channels, s.kernel, s.in_height, s.out_height)
        for n, s in layers.items()
        if n != "ip1"
    }
    assert shapes == {
        "conv1": (3, 32, (5, 5), 32, 32),
        "conv2": (32, 32, (5, 5), 16, 16),
        "conv3": (32, 64, (5, 5), 8, 8),
    }
    assert layers["ip1"].in_features == 64 * 4 * 4
    assert _params(create_model("cifar_convnet")) == 89_578
    assert sum(s.macs for s in layers.values()) == 12_298_240


def test_within_channel_lrn_divides_by_the_full_window():
    x = torch.full((1, 1, 5, 5), 2.0)
    out = WithinChannelLRN(3, alpha=0.5, beta=0.75)(x)
    # interior: mean of 9 squares = 4; corner: 4 of 9 in bounds → 16/9 (Caffe pads with 0)
    assert float(out[0, 0, 2, 2]) == pytest.approx(2.0 * (1 + 0.5 * 4.0) ** -0.75)
    assert float(out[0, 0, 0, 0]) == pytest.approx(2.0 * (1 + 0.5 * 16 / 9) ** -0.75)
    assert torch.equal(out[0, 0, 2, 2], out[0, 0, 1, 2])  # same channel, same window


def test_alexnet_cifar_keeps_alexnet_names_and_groups():
    layers = {s.name: s for s in network_layers("alexnet_cifar")}
    assert list(layers) == [s.name for s in network_layers("alexnet")]
    convs = [layers[f"conv{k}"] for k in range(1, 6)]
    assert [s.groups for s in convs] == [1, 2, 1, 2, 2]
    assert [s.in_height for s in convs] == [32, 16, 8, 8, 8]
    assert [s.out_channels for s in convs] == [48, 128, 192, 192, 128]
    assert (layers["fc6"].in_features, layers["fc8"].out_features) == (128 * 4 * 4, 10)
    assert _params(create_model("alexnet_cifar")) == 3_736_778
