"""Surgery: the cut network computes what the masked network computes (eval mode)."""

from __future__ import annotations

import pytest
import torch
from tests_support import preact_resnet, randomise_norms
from torch import nn

from model.networks import create_model
from model.surgery import SurgeryError, channel_groups, cut, plan_architecture, rebuild


def _zero_filters(layer: nn.Module, index: list[int]) -> None:
    with torch.no_grad():
        layer.weight[index] = 0


def _zero_channels(layer: nn.Module, index: list[int]) -> None:
    with torch.no_grad():
        layer.weight[:, index] = 0


def _assert_same(model: nn.Module, cut_model: nn.Module, shape: tuple[int, ...]) -> None:
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, actual = model.eval()(x), cut_model.eval()(x)
    assert (expected - actual).abs().max().item() <= 1e-5


@pytest.fixture
def resnet20() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet20")
    randomise_norms(model, torch.Generator().manual_seed(1))
    return model.eval()


@pytest.fixture
def vgg16() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("vgg16")
    randomise_norms(model, torch.Generator().manual_seed(1))
    return model.eval()


def test_resnet20_filters_channels_and_depth_cut_exactly(resnet20):
    _zero_filters(resnet20.layer1[0].conv1, [0, 3, 5])  # BN constants of removed filters folded
    _zero_channels(resnet20.layer2[1].conv2, [1, 2, 30])  # unused channels go, filters too
    _zero_filters(resnet20.layer2[0].conv1, list(range(32)))  # a whole layer: depth
    _zero_filters(resnet20.layer3[2].conv2, list(range(64)))  # the other conv of a branch
    result = cut(resnet20, (3, 32, 32))
    assert result.removed_blocks == ["layer2.0", "layer3.2"]
    assert result.kept["layer1.0.conv1"] == 13 and result.model.layer1[0].conv2.in_channels == 13
    assert result.kept["layer2.1.conv1"] == 29
    assert result.model.layer1[0].conv2.out_channels == 16  # residual stream keeps its width
    _assert_same(resnet20, result.model, (3, 32, 32))
    params = sum(p.numel() for p in result.model.parameters())
    assert params < sum(p.numel() for p in resnet20.parameters())


def test_vgg16_filters_and_channels_cut_exactly(vgg16):
    _zero_filters(vgg16.conv1, [0, 1, 2, 10])  # conv bias + BN constant through zero padding
    _zero_channels(vgg16.conv5, list(range(40)))
    _zero_filters(vgg16.conv13, list(range(0, 512, 3)))  # folded into fc1's bias
    _zero_filters(vgg16.fc1, [5, 6])  # through bn_fc1 into fc2
    result = cut(vgg16, (3, 32, 32))
    assert result.kept["conv1"] == 60 and result.model.conv2.in_channels == 60
    assert result.kept["conv4"] == 88
    assert result.model.fc1.in_features == 512 - 171
    assert result.architecture.layers["conv2"]["bias_map"] == [64, 32, 32]
    _assert_same(vgg16, result.model, (3, 32, 32))


def test_lenet5_channels_cut_exactly_and_rebuild():
    torch.manual_seed(0)
    model = create_model("lenet5").eval()
    _zero_filters(model.conv1, [1, 4, 7])
    _zero_filters(model.conv2, list(range(0, 50, 2)))
    result = cut(model, (1, 28, 28))
    assert result.model.fc1.in_features == 25 * 16
    _assert_same(model, result.model, (1, 28, 28))
    again = rebuild("lenet5", 10, result.architecture.to_dict())
    again.load_state_dict(result.model.state_dict())
    _assert_same(model, again, (1, 28, 28))


def test_rebuild_resnet_with_bias_maps_and_constant_blocks(resnet20):
    _zero_filters(resnet20.layer1[1].conv1, [0, 1])
    _zero_filters(resnet20.layer3[0].conv1, list(range(64)))
    result = cut(resnet20, (3, 32, 32))
    assert result.architecture.layers["layer1.1.conv2"]["bias_map"] == [16, 32, 32]
    again = rebuild("resnet20", 10, result.architecture.to_dict())
    again.load_state_dict(result.model.state_dict())
    _assert_same(resnet20, again, (3, 32, 32))


def test_plan_architecture_narrows_vgg_like_its_widths_argument():
    from model.networks.vgg import VGG16

    with torch.device("meta"):
        model = create_model("vgg16")
        narrowed = plan_architecture(model, (3, 32, 32), {"conv1": 32, "conv13": 256})
        assert narrowed.layers["conv2"]["in"] == 32 and narrowed.layers["fc1"]["in"] == 256
        from model.surgery import narrow

        narrow(model, narrowed)
        widths = (32, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 256)
        reference = VGG16(10, widths=widths)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes == {n: tuple(p.shape) for n, p in reference.named_parameters()}


def test_unsupported_networks_are_refused():
    with torch.device("meta"):
        model = create_model("alexnet_cifar")
    with pytest.raises(SurgeryError, match="not AlexNetCifar"):
        channel_groups(model, (3, 32, 32))


def test_stream_groups_are_the_stages_that_start_with_a_projection():
    from model.surgery import stream_groups

    with torch.device("meta"):
        resnet18, resnet50 = create_model("resnet18"), create_model("resnet50")
        resnet20, vgg16 = create_model("resnet20"), create_model("vgg16")
    streams = stream_groups(resnet18, (3, 64, 64))
    assert [s.projection for s in streams] == [f"layer{i}.0.downsample.0" for i in (2, 3, 4)]
    assert streams[0].producers == ("layer2.0.downsample.0", "layer2.0.conv2", "layer2.1.conv2")
    assert streams[0].norms == ("layer2.0.downsample.1", "layer2.0.bn2", "layer2.1.bn2")
    assert streams[0].consumers == ("layer2.1.conv1", "layer3.0.conv1", "layer3.0.downsample.0")
    assert streams[2].consumers == ("layer4.1.conv1", "fc")
    bottlenecks = stream_groups(resnet50, (3, 64, 64))  # layer1 widens 64 → 256: a projection
    assert [s.blocks[0] for s in bottlenecks] == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    assert bottlenecks[3].producers[1:] == ("layer4.0.conv3", "layer4.1.conv3", "layer4.2.conv3")
    assert stream_groups(resnet20, (3, 32, 32)) == []  # option A: zero-padding shortcuts
    assert stream_groups(vgg16, (3, 32, 32)) == []


def _zero_stream(model: nn.Module, stage: str, index: list[int]) -> None:
    """Zero stream channels ``index`` of a stage: projection, every second conv, BN affine."""
    blocks = model.get_submodule(stage)
    pairs = [(blocks[0].downsample[0], blocks[0].downsample[1])]
    pairs += [(block.conv2, block.bn2) for block in blocks]
    with torch.no_grad():
        for conv, bn in pairs:
            conv.weight[index] = 0
            bn.weight[index] = 0
            bn.bias[index] = 0


def test_resnet18_stream_channels_cut_exactly_with_removed_blocks():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10)
    randomise_norms(model, torch.Generator().manual_seed(1))
    model.eval()
    _zero_stream(model, "layer2", list(range(0, 128, 2)))
    with torch.no_grad():
        model.layer2[1].bn2.bias[0] = 0.5  # channel 0 is a constant, not 0: it stays
    _zero_stream(model, "layer3", list(range(100)))
    _zero_filters(model.layer3[0].conv1, list(range(256)))  # block 0 goes, its projection stays
    _zero_filters(model.layer3[1].conv1, [3, 4])  # constants into a narrowed block
    _zero_stream(model, "layer4", list(range(12, 512, 3)))
    _zero_filters(model.layer4[1].conv1, list(range(512)))  # a removed block in a cut stream
    result = cut(model, (3, 64, 64))
    assert result.removed_blocks == ["layer3.0", "layer4.1"]
    assert result.kept["layer2.0.downsample.0"] == result.kept["layer2.1.conv2"] == 65
    assert result.kept["layer3.0.downsample.0"] == 156 and "layer3.0.conv2" not in result.kept
    assert result.model.layer4[0].conv1.in_channels == 156
    assert result.model.fc.in_features == 512 - 167
    assert result.architecture.constant_blocks["layer4.1"] == [512 - 167, 2, 2]
    assert result.model.layer1[1].conv2.out_channels == 64  # no projection: full width
    _assert_same(model, result.model, (3, 64, 64))
    again = rebuild("resnet18", 10, result.architecture.to_dict())
    again.load_state_dict(result.model.state_dict())
    _assert_same(model, again, (3, 64, 64))


def _pruned_preact(widen: bool) -> nn.Module:
    torch.manual_seed(0)
    model = preact_resnet(widen=widen)
    randomise_norms(model, torch.Generator().manual_seed(1))
    for module in model.modules():
        if hasattr(module, "shortcut"):
            _zero_filters(module.conv1, list(range(0, module.conv1.out_channels, 3)))
    return model.eval()


@pytest.mark.parametrize("widen", [True, False], ids=["16-to-32", "equal-widths"])
def test_a_pre_activation_block_is_refused_not_misread(widen):
    """bn1 of a pre-activation block normalises the block input, not conv1's output: surgery
    crashed with an IndexError (16 → 32) or returned a network that fails when called (equal
    widths). It refuses it by its data flow, on the meta device too (l1-filter's check)."""
    model = _pruned_preact(widen)
    with pytest.raises(SurgeryError, match=r"layer1\.0 \(PreActBlock\) is not a post-activation"):
        cut(model, (3, 32, 32))
    with torch.device("meta"):
        meta = preact_resnet(widen=widen)
    with pytest.raises(SurgeryError, match="conv1 does not read the block input"):
        channel_groups(meta, (3, 32, 32))


@pytest.mark.parametrize("widen", [True, False], ids=["16-to-32", "equal-widths"])
def test_the_safety_net_catches_a_misread_structure(monkeypatch, widen):
    """Without the block check, the cut itself is checked: an error while cutting names the
    layer, a cut network that does not run (or computes something else) is refused."""
    import model.surgery as surgery

    monkeypatch.setattr(surgery, "_block_flow_error", lambda *_: None)
    model = _pruned_preact(widen)
    message = r"surgery failed at layer2\.0\.bn1 \(IndexError" if widen else \
        r"the cut network does not run in layer1\.0\.bn1 \(RuntimeError"  # fmt: skip
    with pytest.raises(SurgeryError, match=message):
        cut(model, (3, 32, 32))


def test_check_equivalent_refuses_a_network_computing_something_else(resnet20):
    from model.surgery import check_equivalent

    other = create_model("resnet20").eval()
    with pytest.raises(SurgeryError, match="does not compute what the original computes"):
        check_equivalent(resnet20, other, (3, 32, 32))
    check_equivalent(resnet20, resnet20, (3, 32, 32))
    with torch.device("meta"):
        meta = create_model("resnet20")
    check_equivalent(meta, meta, (3, 32, 32))  # no values on the meta device: nothing to check


def test_a_chain_is_recognised_by_its_class_not_its_name():
    """A user's ``VGG16`` with two parallel convs is not our VGG-16 chain."""

    class VGG16(nn.Module):
        def __init__(self):
            super().__init__()
            self.left = nn.Conv2d(3, 8, 3, padding=1)
            self.right = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(16 * 8 * 8, 10)

        def forward(self, x):
            x = torch.cat([self.left(x), self.right(x)], 1)
            return self.fc(torch.flatten(x, 1))

    model = VGG16().eval()
    _zero_filters(model.left, [0, 1])
    with pytest.raises(SurgeryError, match="not VGG16 \\(a class of that name from"):
        cut(model, (3, 8, 8))


class _LookalikeBlock(nn.Module):
    """conv1/bn1/conv2/bn2 and a shortcut, equal widths, computing ``variant``."""

    def __init__(self, variant: str):
        super().__init__()
        self.variant = variant
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.shortcut = nn.Identity()

    def forward(self, x):
        inner = self.conv1(x)
        if self.variant == "conv2 skips bn1":
            out = self.bn2(self.conv2(torch.relu(inner))) + self.bn1(inner)
            return torch.relu(out + self.shortcut(x))
        out = self.bn2(self.conv2(torch.relu(self.bn1(inner))))
        if self.variant == "no final relu":
            return out + self.shortcut(x)
        if self.variant == "scaled shortcut":
            return torch.relu(out + 2 * self.shortcut(x))
        return torch.relu(out + self.shortcut(x))  # "post-activation"


@pytest.mark.parametrize("variant", ["conv2 skips bn1", "no final relu", "scaled shortcut"])
def test_blocks_that_only_look_post_activation_are_refused(variant):
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _LookalikeBlock(variant))
    with pytest.raises(SurgeryError, match=r"1 \(_LookalikeBlock\) is not a post-activation"):
        channel_groups(model, (3, 8, 8))
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _LookalikeBlock("post-activation"))
    assert [g.producer for g in channel_groups(model, (3, 8, 8))] == ["1.conv1"]


def test_checking_a_network_with_a_module_registered_twice_keeps_its_weights():
    """The meta run (functional_call, per name) left the second name's module with meta
    tensors: the classifier's weights were gone after surgery's checks."""
    from model.surgery import checked_blocks

    net = create_model("resnet20").eval()
    net.head = net.fc
    weight = net.fc.weight.detach().clone()
    checked_blocks(net, (3, 32, 32))
    assert net.fc.weight.device.type == "cpu" and net.head is net.fc
    assert torch.equal(net.fc.weight, weight)
