"""Layer extraction from arbitrary torch modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model.networks import create_model
from perfmodel import Conv2dSpec, LinearSpec
from perfmodel.extract import extract_layers


class Shared(nn.Module):
    """A conv used twice, a nested block with groups, a linear on a 3-D input."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding="same", groups=4), nn.ReLU())
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.block(self.stem(x))
        x = x + self.block(x)  # the block runs twice
        x = x.flatten(2).transpose(1, 2)  # (N, H·W, 8)
        return self.head(x)


class NumpyInside(nn.Module):
    """Leaves torch for numpy, which meta tensors cannot do: extraction must fall back."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        y = self.conv(x)
        return torch.from_numpy(y.detach().numpy() * 2)


def test_nested_shared_grouped_and_3d_linear():
    specs = extract_layers(Shared(), (3, 6, 6), batch=4)
    assert [s.name for s in specs] == ["stem", "block.0", "block.0#2", "head"]
    block = specs[1]
    assert isinstance(block, Conv2dSpec)
    assert (block.groups, block.padding, block.batch) == (4, (1, 1), 4)
    head = specs[-1]
    assert isinstance(head, LinearSpec)
    assert head.batch == 4 * 36  # every one of the 36 positions is a row


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize(
    ("kernel", "dilation", "padding", "size", "begin", "end"),
    [
        (4, 1, "same", (9, 9), (1, 1), (2, 2)),
        (2, 1, "same", (8, 8), (0, 0), (1, 1)),
        ((2, 4), (3, 1), "same", (7, 10), (1, 1), (2, 2)),
        (3, 2, "same", (6, 6), (2, 2), (2, 2)),
        (3, 1, "valid", (6, 6), (0, 0), (0, 0)),
    ],
)
def test_same_padding_with_an_even_kernel_is_asymmetric(
    kernel, dilation, padding, size, begin, end
):
    """PyTorch's "same" pads an even kernel extent one more at the bottom and right: the
    spec's output is the module's (it kept the low side only, one row and column short)."""
    generator = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(8, 8, kernel, padding=padding, dilation=dilation)
    (spec,) = extract_layers(conv, (8, *size))
    assert (spec.padding, spec.end_padding) == (begin, end)
    x = torch.randn(1, 8, *size, generator=generator)
    with torch.no_grad():
        y = conv(x)
    assert (1, 8, spec.out_height, spec.out_width) == tuple(y.shape)
    assert spec.macs == y.numel() * 8 * conv.kernel_size[0] * conv.kernel_size[1]
    (top, left), (bottom, right) = spec.padding, spec.end_padding
    padded = torch.nn.functional.pad(x, (left, right, top, bottom))
    with torch.no_grad():
        expected = torch.nn.functional.conv2d(padded, conv.weight, conv.bias,
                                              dilation=conv.dilation)  # fmt: skip
    torch.testing.assert_close(y, expected)


def test_training_mode_and_weights_are_preserved():
    module = create_model("resnet20").train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    extract_layers(module, (3, 32, 32))
    assert module.training
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not module._forward_pre_hooks
    assert all(not m._forward_pre_hooks for m in module.modules())


class _MetaOnly(nn.Module):
    """Fails unless run on the meta device: the extraction must not fall back to a real run."""

    def forward(self, x):
        assert x.device.type == "meta"
        return x


def test_a_module_registered_twice_keeps_its_weights():
    """functional_call saved and restored per name: a module registered under two names came
    out of extraction with meta tensors for weights (and tied weights made it refuse, so the
    extraction fell back to a real run)."""
    module = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), _MetaOnly())
    module.add_module("again", module[0])
    weight = module[0].weight.detach().clone()
    assert [s.name for s in extract_layers(module, (4,))] == ["0", "0#2"]
    assert module[0].weight.device.type == "cpu" and module.again is module[0]
    assert torch.equal(module[0].weight, weight)
    tied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), _MetaOnly())
    tied[1].weight = tied[0].weight
    assert [s.name for s in extract_layers(tied, (4,))] == ["0", "1"]
    assert tied[1].weight is tied[0].weight and tied[0].weight.device.type == "cpu"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_half_bfloat_and_double_models(dtype):
    """The example input was always float32: "Input type (float) and bias type (c10::Half)
    should be the same"."""
    module = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(),
                           nn.Linear(8 * 4 * 4, 2)).to(dtype)  # fmt: skip
    specs = extract_layers(module, (3, 6, 6))
    assert [s.dtype_bytes for s in specs] == [torch.finfo(dtype).bits // 8] * 2
    assert (specs[0].out_height, specs[1].in_features) == (4, 128)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_a_compiled_module_gives_the_layers_of_the_original():
    """torch.compile(m) failed inside dynamo with an internal AssertionError."""
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(64, 2))
    compiled = torch.compile(module)
    assert extract_layers(compiled, (3, 6, 6)) == extract_layers(module, (3, 6, 6))


def test_a_lazy_module_is_extracted_and_keeps_its_weights():
    """The meta swap raised on the uninitialised parameter after swapping the others, which
    stayed meta; the real run then failed ("on device meta")."""
    module = nn.Sequential(nn.Linear(4, 4), nn.LazyLinear(3))
    assert [s.name for s in extract_layers(module, (4,))] == ["0", "1"]
    assert module[0].weight.device.type == "cpu" and module[1].weight.shape == (3, 4)


def test_a_batch_in_input_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"got a 5-D input \(1, 1, 3, 8, 8\); input_shape is "
                                         r"the shape of one example without the batch"):
        extract_layers(nn.Sequential(nn.Conv2d(3, 4, 3)), (1, 3, 8, 8))


class _Functional(nn.Module):
    """A conv done with F.conv2d on a bare parameter: no module, no hook, no spec."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(8, 3, 3, 3))
        self.conv, self.fc = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(torch.nn.functional.conv2d(x, self.w1, padding=1))
        return self.fc(self.conv(x).mean((2, 3)))


def test_work_outside_conv_and_linear_modules_is_named():
    """It was left out silently: the specs' FLOPs understated the network's."""
    with pytest.warns(UserWarning, match=r"27\.3% of the network's convolution and "
                                         r"matrix-multiply FLOPs run outside"):
        specs = extract_layers(_Functional(), (3, 16, 16), batch=4)
    assert [s.name for s in specs] == ["conv", "fc"]
    with pytest.warns(UserWarning, match="outside nn.Conv2d/nn.Linear"):
        extract_layers(nn.Sequential(nn.Conv1d(3, 4, 3), nn.Flatten(), nn.Linear(16, 2)), (3, 6))


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("name", ["alexnet", "googlenet", "resnet50", "vgg16", "lenet300"])
def test_built_in_networks_have_all_their_work_in_specs(name):
    from model.networks.registry import NETWORKS

    extract_layers(create_model(name), NETWORKS[name].input_shape, batch=3)


def test_falls_back_to_a_real_forward_when_meta_tensors_fail():
    specs = extract_layers(NumpyInside(), (1, 5, 5))
    assert [(s.name, s.in_height) for s in specs] == [("conv", 5)]


def test_module_without_layers_is_an_error():
    with pytest.raises(ValueError, match="no Conv2d or Linear"):
        extract_layers(nn.ReLU(), (3, 4, 4))
