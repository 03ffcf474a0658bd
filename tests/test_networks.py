"""Built-in networks against the published FLOP and parameter counts (docs/research.md §1, §5)."""

from __future__ import annotations

import pytest
import torch

from model.analysis import network_layers
from model.networks import NETWORKS, UnknownNetworkError, create_model, register
from model.networks.vgg import VGG16


def _macs(name: str, exclude: str | None = None) -> int:
    return sum(s.macs for s in network_layers(name) if not (exclude and exclude in s.name))


def _params(module: torch.nn.Module, exclude: str | None = None) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if not (exclude and exclude in n))


def test_registry_has_the_documented_names():
    expected = {"lenet5", "alexnet", "googlenet", "vgg16", "resnet50", "resnet20", "resnet56"}
    assert expected <= set(NETWORKS)


def test_unknown_network_lists_valid_names():
    with pytest.raises(UnknownNetworkError, match="valid names: alexnet, alexnet_cifar, cifar"):
        create_model("alexnext")


def test_duplicate_registration_warns():
    original = NETWORKS["lenet5"]
    try:
        with pytest.warns(UserWarning, match="registered twice"):
            register("lenet5", input_shape=(1, 28, 28), num_classes=10, paper="x")(VGG16)
    finally:
        NETWORKS["lenet5"] = original


def test_alexnet_layers_follow_caffe():
    layers = {s.name: s for s in network_layers("alexnet")}
    assert list(layers) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    assert layers["conv5"].flops == pytest.approx(149.5e6, rel=1e-3)
    assert (layers["conv2"].groups, layers["conv4"].groups, layers["conv5"].groups) == (2, 2, 2)
    assert layers["fc6"].in_features == 9216
    assert _macs("alexnet") == pytest.approx(724e6, rel=0.01)  # CaffeNet: 724M MACs
    assert _params(create_model("alexnet")) == pytest.approx(61.0e6, rel=0.01)


def test_googlenet_layer_names_and_cost():
    layers = {s.name: s for s in network_layers("googlenet")}
    reduce = layers["inception_4a.5x5_reduce"]
    assert (reduce.in_channels, reduce.out_channels, reduce.in_height) == (480, 16, 14)
    assert layers["inception_4a.5x5"].kernel == (5, 5)
    assert len(layers) == 2 + 1 + 9 * 6 + 1  # stem convs, 9 inceptions × 6 convs, classifier
    assert _macs("googlenet") == pytest.approx(1.5e9, rel=0.06)  # Szegedy: ~1.5G mult-adds
    assert _params(create_model("googlenet")) == pytest.approx(7.0e6, rel=0.02)


def test_vgg16_cifar_matches_li_et_al_table_1():
    assert _macs("vgg16") == pytest.approx(3.13e8, rel=0.005)
    assert _params(create_model("vgg16")) == pytest.approx(1.5e7, rel=0.01)


def test_vgg16_pruned_a_matches_li_et_al_table_1():
    # Pruned-A: conv1 and conv8-13 at half width (32 and 256 maps).
    widths = (32, 64, 128, 128, 256, 256, 256, 256, 256, 256, 256, 256, 256)
    module = VGG16(10, widths=widths)
    from perfmodel.extract import extract_layers

    macs = sum(s.macs for s in extract_layers(module, (3, 32, 32)))
    assert macs == pytest.approx(2.06e8, rel=0.005)
    conv_linear = sum(p.numel() for n, p in module.named_parameters() if "bn" not in n)
    assert conv_linear == pytest.approx(5.4e6, rel=0.01)


@pytest.mark.parametrize(
    ("name", "macs", "params"),
    [("resnet56", 1.25e8, 8.5e5), ("resnet110", 2.53e8, 1.72e6)],
)
def test_cifar_resnets_match_li_et_al_table_1(name, macs, params):
    assert _macs(name) == pytest.approx(macs, rel=0.005)
    assert _params(create_model(name)) == pytest.approx(params, rel=0.005)


def test_resnet20_depth_and_cost():
    layers = network_layers("resnet20")
    assert len(layers) == 20  # 19 convs + fc, option-A shortcuts have no weights
    assert _macs("resnet20") == pytest.approx(40.6e6, rel=0.005)  # conv + fc MACs


def test_resnet34_matches_li_et_al_without_projections():
    assert _macs("resnet34", exclude="downsample") == pytest.approx(3.64e9, rel=0.005)
    assert _params(create_model("resnet34"), "downsample") == pytest.approx(2.16e7, rel=0.005)


def test_resnet50_follows_the_paper():
    layers = {s.name: s for s in network_layers("resnet50")}
    assert layers["layer2.0.conv1"].stride == (2, 2)  # stride on the 1×1, as in He et al.
    assert layers["layer2.0.conv2"].stride == (1, 1)
    assert _macs("resnet50") == pytest.approx(3.86e9, rel=0.01)
    assert _params(create_model("resnet50")) == pytest.approx(25.56e6, rel=0.005)


def test_lenet5_is_caffes():
    layers = network_layers("lenet5")
    assert [s.name for s in layers] == ["conv1", "conv2", "fc1", "fc2"]
    assert _params(create_model("lenet5")) == 431_080


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_every_network_runs_and_predicts_its_classes(name):
    info = NETWORKS[name]
    with torch.device("meta"):
        module = create_model(name, num_classes=7).eval()
        out = module(torch.empty(2, *info.input_shape))
    assert tuple(out.shape) == (2, 7)
