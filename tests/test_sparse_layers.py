"""SparseConv2d / SparseLinear against their dense layers, and convert_model's plan handling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model.sparse import (
    SparseConv2d,
    SparseLinear,
    conv_weight_to_csr,
    convert_model,
    convertible_layers,
    linear_weight_to_csr,
    native,
    sparse_linear,
    to_dense_model,
    unconvertible_layers,
)

RTOL, ATOL = 1e-4, 1e-5
IMPLEMENTATIONS = ["reference", pytest.param("native", marks=pytest.mark.native)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _need(implementation: str) -> None:
    if implementation == "native" and not native.native_available():
        pytest.skip(f"native kernel unavailable: {native.kernel_info().reason}")


def _prune(module: nn.Module, sparsity: float) -> nn.Module:
    with torch.no_grad():
        mask = torch.rand_like(module.weight) < sparsity
        module.weight[mask] = 0.0
    return module


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("fuse_relu", [False, True])
@pytest.mark.parametrize(
    "conv",
    [
        lambda: nn.Conv2d(6, 8, 3, padding=1),
        lambda: nn.Conv2d(6, 8, 3, padding="same", dilation=2, bias=False),
        lambda: nn.Conv2d(6, 9, (1, 3), stride=2, padding="valid", groups=3),
        lambda: nn.Conv2d(3, 4, 11, stride=4, padding=2),
    ],
)
def test_sparse_conv2d_matches_dense(conv, fuse_relu, implementation):
    _need(implementation)
    dense = _prune(conv(), 0.8).eval()
    sparse = SparseConv2d.from_dense(dense, fuse_relu=fuse_relu, implementation=implementation)
    x = torch.randn(3, dense.in_channels, 23, 21)
    with torch.no_grad():
        expected = dense(x)
        out = sparse(x)
    torch.testing.assert_close(
        out, expected.relu() if fuse_relu else expected, rtol=RTOL, atol=ATOL
    )
    assert sparse.sparsity == pytest.approx(float((dense.weight == 0).float().mean()))


def test_sparse_conv2d_accepts_channels_last_input():
    dense = _prune(nn.Conv2d(4, 4, 3, padding=1), 0.5).eval()
    sparse = SparseConv2d.from_dense(dense)
    x = torch.randn(2, 4, 9, 9).to(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), dense(x), rtol=RTOL, atol=ATOL)


def test_sparse_conv2d_accepts_unbatched_input_and_names_sparse_tensors():
    """(C, H, W) as nn.Conv2d takes it; a sparse COO input got 'unsupported memory format
    option Contiguous' from the layer instead of the functional API's own message."""
    dense = _prune(nn.Conv2d(4, 4, 3, padding=1), 0.5).eval()
    sparse = SparseConv2d.from_dense(dense)
    x = torch.randn(4, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), dense(x), rtol=RTOL, atol=ATOL)
        with pytest.raises(ValueError, match=r"must be a dense \(strided\) tensor"):
            sparse(torch.randn(1, 4, 9, 9).to_sparse())
        linear = SparseLinear.from_dense(_prune(nn.Linear(4, 3), 0.5))
        with pytest.raises(ValueError, match=r"must be a dense \(strided\) tensor"):
            linear(torch.randn(2, 4).to_sparse())


def test_sparse_conv2d_round_trips_to_dense_and_describes_itself():
    dense = _prune(nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), 0.9)
    sparse = SparseConv2d.from_dense(dense, fuse_relu=True)
    back = sparse.to_dense()
    torch.testing.assert_close(back.weight, dense.weight)
    torch.testing.assert_close(back.bias, dense.bias)
    text = repr(sparse)
    assert "sparsity=" in text and "groups=2" in text and "fuse_relu=True" in text


def test_sparse_conv2d_rejects_unsupported_layers_and_training():
    with pytest.raises(ValueError, match="padding_mode"):
        SparseConv2d.from_dense(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="asymmetric"):
        SparseConv2d.from_dense(nn.Conv2d(2, 2, 4, padding="same"))
    with pytest.raises(TypeError, match="Conv2d"):
        SparseConv2d.from_dense(nn.Linear(2, 2))
    sparse = SparseConv2d.from_dense(nn.Conv2d(2, 2, 3))
    with pytest.raises(RuntimeError, match="inference-only"):
        sparse(torch.randn(1, 2, 5, 5, requires_grad=True))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("sparsity", [0.0, 0.9, 1.0])
@pytest.mark.parametrize("batch", [1, 5, 32])
def test_sparse_linear_matches_dense(batch, sparsity, implementation):
    _need(implementation)
    dense = _prune(nn.Linear(70, 33), sparsity)
    x = torch.randn(batch, 70)
    for fuse_relu in (False, True):
        sparse = SparseLinear.from_dense(dense, fuse_relu=fuse_relu, implementation=implementation)
        with torch.no_grad():
            expected = dense(x)
            out = sparse(x)
        torch.testing.assert_close(
            out, expected.relu() if fuse_relu else expected, rtol=RTOL, atol=ATOL
        )


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_sparse_linear_any_leading_dims_and_no_bias(implementation):
    _need(implementation)
    dense = _prune(nn.Linear(16, 8, bias=False), 0.5)
    sparse = SparseLinear.from_dense(dense, implementation=implementation)
    x = torch.randn(2, 3, 16)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), dense(x), rtol=RTOL, atol=ATOL)
    assert "bias=False" in repr(sparse)


@pytest.mark.parametrize("warm", [False, True])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_sparse_linear_bad_inputs(implementation, warm):
    """Typed errors, also after a good call has cached the native arguments for the weight."""
    _need(implementation)
    csr = linear_weight_to_csr(torch.randn(4, 6))
    if warm:
        sparse_linear(torch.randn(2, 6), csr, implementation=implementation)
    with pytest.raises(ValueError, match="implementation"):
        sparse_linear(torch.randn(2, 6), csr, implementation=["native"])
    with pytest.raises(TypeError, match="float32"):
        sparse_linear(torch.randn(2, 6).double(), csr, implementation=implementation)
    with pytest.raises(ValueError, match="in_features"):
        sparse_linear(torch.randn(2, 5), csr, implementation=implementation)
    with pytest.raises(ValueError, match="contiguous"):
        sparse_linear(torch.randn(6, 2).t(), csr, implementation=implementation)
    with pytest.raises(ValueError, match="bias"):
        sparse_linear(torch.randn(2, 6), csr, torch.zeros(3), implementation=implementation)
    with pytest.raises(ValueError, match="2-D"):
        linear_weight_to_csr(torch.randn(4, 6, 1))


# ---------------------------------------------------------------------------------------
# convert_model


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x)) + x


def _net() -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        _Block(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    for module in net.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            _prune(module, 0.7)
    return net.eval()


def test_convert_model_follows_the_plan_and_keeps_outputs():
    net = _net()
    assert convertible_layers(net) == ["0", "2.conv", "5"]
    plan = {"0": "dense", "2.conv": "sparse", "5": "sparse"}
    converted = convert_model(net, plan)
    assert isinstance(converted[0], nn.Conv2d)
    assert isinstance(converted[2].conv, SparseConv2d)
    assert isinstance(converted[5], SparseLinear)
    assert isinstance(net[2].conv, nn.Conv2d) and isinstance(net[5], nn.Linear)  # input untouched
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), net(x), rtol=RTOL, atol=ATOL)


def test_convert_model_unknown_names_list_the_valid_ones():
    net = _net()
    with pytest.raises(ValueError, match=r"'nope'.*valid names: 0, 2\.conv, 5"):
        convert_model(net, {"2.conv": "sparse", "nope": "sparse"})
    with pytest.raises(ValueError, match=r"'1' \(a ReLU, not a Conv2d/Linear\)"):
        convert_model(net, {"1": "sparse"})
    with pytest.raises(ValueError, match="'sparse' or 'dense'"):
        convert_model(net, {"5": "fast"})
    with pytest.raises(TypeError, match="plan must be a mapping"):
        convert_model(net, ["5"])
    with pytest.raises(ValueError, match="implementation must be one of auto, native, reference"):
        convert_model(net, {"5": "sparse"}, implementation="bogus")


class _StandardisedConv(nn.Conv2d):
    """A conv whose forward is not nn.Conv2d's (weight standardisation)."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


def test_convert_model_refuses_layers_it_would_change():
    """A Conv2d subclass with its own forward was replaced by a plain sparse conv (relative
    error 0.29), and MultiheadAttention's out_proj was listed though the attention reads
    its weight directly (AttributeError after conversion)."""
    net = nn.Sequential(_StandardisedConv(3, 4, 3), nn.Conv2d(4, 4, 3))
    assert convertible_layers(net) == ["1"]
    with pytest.raises(ValueError, match=r"'0' \(a _StandardisedConv with its own forward\)"):
        convert_model(net, {"0": "sparse"})
    attention = nn.MultiheadAttention(8, 2)
    assert "out_proj" not in convertible_layers(attention)
    with pytest.raises(ValueError, match="part of a MultiheadAttention"):
        convert_model(attention, {"out_proj": "sparse"})
    encoder = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True).eval()
    assert not {"linear1", "linear2"} & set(convertible_layers(encoder))


class _Reused(nn.Module):
    """One conv called twice, and a linear registered under two names."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)
        self.alias = self.head

    def forward(self, x):
        return self.alias(self.conv(torch.relu(self.conv(self.stem(x)))).mean((2, 3)))


def test_convert_model_takes_the_names_of_a_prediction():
    """extract_layers names a module's later calls conv#2: a plan made from the predictions,
    as README shows, was refused ("'conv#2' (no such module)"), and so was a second name of
    a module ("'alias'")."""
    from perfmodel import get_profile, predict_network
    from perfmodel.extract import extract_layers

    net = _Reused().eval()
    for module in (net.stem, net.conv, net.head):
        _prune(module, 0.9)
    predictions = predict_network(extract_layers(net, (3, 8, 8)), get_profile("xeon-e5-2697v4"))
    assert "conv#2" in {p.name for p in predictions.layers}
    plan = {p.name: "sparse" for p in predictions.layers} | {"alias": "sparse"}
    converted = convert_model(net, plan)
    assert isinstance(converted.conv, SparseConv2d) and isinstance(converted.stem, SparseConv2d)
    assert isinstance(converted.head, SparseLinear) and converted.alias is converted.head
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), net(x), rtol=RTOL, atol=ATOL)
    # One weight: sparse only where every call is planned sparse.
    mixed = convert_model(net, {"conv": "sparse", "conv#2": "dense", "alias": "sparse"})
    assert type(mixed.conv) is nn.Conv2d and isinstance(mixed.head, SparseLinear)
    with pytest.raises(ValueError, match=r"'nope#2' \(no such module\)"):
        convert_model(net, {"nope#2": "sparse"})
    with pytest.raises(ValueError, match="'sparse' or 'dense'"):
        convert_model(net, {"conv": "fast", "conv#2": "sparse"})


def test_convert_model_names_layers_the_kernel_cannot_pad():
    """Reflect padding and an even kernel's 'same' padding were listed as convertible, and
    conversion then failed inside from_dense without naming the layer."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1,
                        padding_mode="reflect"), nn.Conv2d(4, 4, 4, padding="same"))
    assert convertible_layers(net) == ["0"]
    assert set(unconvertible_layers(net)) == {"1", "2"}
    dense_ok = convert_model(net, {"0": "sparse", "1": "dense", "2": "dense"})  # as predicted
    assert isinstance(dense_ok[0], SparseConv2d) and type(dense_ok[1]) is nn.Conv2d
    with pytest.raises(ValueError, match=r"'1' \(only zero padding is supported, got "
                                         r"padding_mode='reflect'\), '2' \(padding='same' with "
                                         r"an even kernel.*plan the others 'dense'"):
        convert_model(net, {"0": "sparse", "1": "sparse", "2": "sparse"})


def test_convert_model_of_a_torch_pruned_layer_says_what_to_do():
    from torch.nn.utils import prune

    net = nn.Sequential(nn.Conv2d(3, 4, 3))
    prune.l1_unstructured(net[0], "weight", amount=0.5)
    with pytest.raises(ValueError, match=r"prune\.remove\(module, 'weight'\)"):
        convert_model(net, {"0": "sparse"})
    prune.remove(net[0], "weight")
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(convert_model(net, {"0": "sparse"})(x), net(x))


def test_convert_model_of_a_bare_layer():
    conv = _prune(nn.Conv2d(2, 3, 3), 0.5)
    converted = convert_model(conv, {"": "sparse"})
    assert isinstance(converted, SparseConv2d)
    x = torch.randn(1, 2, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), F.conv2d(x, conv.weight, conv.bias))


def test_to_dense_model_undoes_convert_model():
    """The way back, to trace, export or train a converted model: dense layers with the same
    outputs, a fused ReLU kept as a module, the input untouched."""
    net = _net()
    converted = convert_model(net, {"2.conv": "sparse", "5": "sparse"})
    converted[0] = SparseConv2d.from_dense(net[0], fuse_relu=True)  # ReLU inside the kernel
    dense = to_dense_model(converted)
    assert not any(isinstance(m, SparseConv2d | SparseLinear) for m in dense.modules())
    assert isinstance(dense[0], nn.Sequential) and isinstance(dense[0][1], nn.ReLU)
    assert isinstance(dense[2].conv, nn.Conv2d) and isinstance(dense[5], nn.Linear)
    assert isinstance(converted[5], SparseLinear)  # input untouched
    assert not any(m.training for m in to_dense_model(converted.eval()).modules())
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(dense(x), net(x), rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(dense(x), converted(x), rtol=RTOL, atol=ATOL)
    assert torch.equal(dense[5].weight == 0, net[5].weight == 0)  # same zeros
    bare = to_dense_model(SparseLinear.from_dense(net[5]))
    assert type(bare) is nn.Linear


def _exactly_pruned(layer: nn.Module, sparsity: float, seed: int) -> nn.Module:
    """``layer`` with exactly ``sparsity`` of its weights zero, so two of them have the same
    number of non-zeros (and state dicts of the same shapes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g))
        flat = layer.weight.view(-1)
        flat[torch.randperm(flat.numel(), generator=g)[: int(sparsity * flat.numel())]] = 0
    return layer


@pytest.mark.parametrize("assign", [False, True])
@pytest.mark.parametrize("sparsity", [0.5, 0.9])  # row pairs / one row at a time
def test_load_state_dict_after_a_call_uses_the_new_weights(sparsity, assign):
    """The first call caches offsets, row pairs and its plan per weight; a state dict loaded
    after it (in place, or assigned) went on computing the old weights or garbage."""
    x = torch.randn(2, 16, 12, 12)
    dense_a = _exactly_pruned(nn.Conv2d(16, 32, 3, padding=1), sparsity, 1)
    dense_b = _exactly_pruned(nn.Conv2d(16, 32, 3, padding=1), sparsity, 2)
    layer = SparseConv2d.from_dense(dense_a)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), dense_a(x), rtol=1e-4, atol=1e-5)
        layer.load_state_dict(SparseConv2d.from_dense(dense_b).state_dict(), assign=assign)
        torch.testing.assert_close(layer(x), dense_b(x), rtol=1e-4, atol=1e-5)
        layer.values.mul_(3)  # written in place through the buffer
        dense_b.weight.mul_(3)
        torch.testing.assert_close(layer(x), dense_b(x), rtol=1e-4, atol=1e-4)

    x = torch.randn(1, 64)
    linear_a = _exactly_pruned(nn.Linear(64, 32), sparsity, 3)
    linear_b = _exactly_pruned(nn.Linear(64, 32), sparsity, 4)
    layer = SparseLinear.from_dense(linear_a)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), linear_a(x), rtol=1e-4, atol=1e-5)
        layer.load_state_dict(SparseLinear.from_dense(linear_b).state_dict(), assign=assign)
        torch.testing.assert_close(layer(x), linear_b(x), rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_tracing_is_refused_not_silently_wrong():
    """torch.jit.trace saw only the output's allocation: the traced module returned
    uninitialised memory (up to 1e37, inf through a network)."""
    conv = SparseConv2d.from_dense(_exactly_pruned(nn.Conv2d(4, 8, 3), 0.5, 0))
    linear = SparseLinear.from_dense(_exactly_pruned(nn.Linear(8, 4), 0.5, 0))
    for layer, x in ((conv, torch.randn(1, 4, 6, 6)), (linear, torch.randn(2, 8))):
        with torch.no_grad(), pytest.raises(RuntimeError, match="cannot be traced"):
            torch.jit.trace(layer, x)
        with torch.no_grad():
            layer(x)  # now with a fast-path plan for this shape, which checks tracing in C++
        with torch.no_grad(), pytest.raises(RuntimeError, match="cannot be traced"):
            torch.jit.trace(layer, x)
        with torch.no_grad():
            torch.jit.trace(layer.to_dense(), x)  # the way out the message names


def test_export_is_refused_with_the_way_out():
    """torch.export (non-strict, its default) ran the plan's Python on fake tensors and
    failed deep inside with a data-dependent guard ("Could not extract specialized integer
    ... csr.py in shared_fraction"); to_dense_model is the way out the message names."""
    conv = SparseConv2d.from_dense(_exactly_pruned(nn.Conv2d(4, 8, 3), 0.5, 0))
    linear = SparseLinear.from_dense(_exactly_pruned(nn.Linear(128, 4), 0.5, 0))
    for layer, x in ((conv, torch.randn(2, 4, 6, 6)), (linear, torch.randn(2, 128))):
        for _ in range(2):  # without, then with a fast-path plan for this shape
            with pytest.raises(RuntimeError, match=r"cannot be traced or exported.*to_dense_"):
                torch.export.export(layer, (x,))
            with torch.no_grad():
                layer(x)
    net, x = nn.Sequential(conv, nn.Flatten(), linear), torch.randn(2, 4, 6, 6)
    exported = torch.export.export(to_dense_model(net), (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), net(x), rtol=RTOL, atol=ATOL)


def test_layers_built_under_inference_mode_run():
    """Inference tensors keep no version counter: reading it raised on every call."""
    dense = _exactly_pruned(nn.Conv2d(4, 8, 3), 0.5, 0)
    linear = _exactly_pruned(nn.Linear(8, 4), 0.9, 0)
    x, v = torch.randn(1, 4, 8, 8), torch.randn(2, 8)
    with torch.inference_mode():
        conv_layer, linear_layer = SparseConv2d.from_dense(dense), SparseLinear.from_dense(linear)
        torch.testing.assert_close(conv_layer(x), dense(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(linear_layer(v), linear(v), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(conv_layer(x), dense(x), rtol=1e-4, atol=1e-5)


def test_a_copy_after_an_in_place_write_uses_the_written_weights():
    """A copy's tensors restart their version counters; with the original's stamp copied
    along, a copy made after an in-place write could match it and keep stale row pairs."""
    import copy
    import io

    dense = _exactly_pruned(nn.Conv2d(16, 32, 3, padding=1), 0.5, 1)  # row pairs
    layer = SparseConv2d.from_dense(dense)
    x = torch.randn(1, 16, 10, 10)
    with torch.no_grad():
        layer.load_state_dict(layer.state_dict())  # versions (1, 1, 1) ...
        layer(x)  # ... stamped with the row pairs built now
        layer.values.mul_(0.5)
        dense.weight.mul_(0.5)
        buffer = io.BytesIO()
        torch.save(layer, buffer)
        buffer.seek(0)
        for twin in (copy.deepcopy(layer), torch.load(buffer, weights_only=False)):
            torch.testing.assert_close(twin(x), dense(x), rtol=1e-4, atol=1e-5)


def test_layers_compute_with_their_current_buffers():
    """.half().float() (any _apply), torch.func.functional_call and assigning a buffer replace
    the layer's buffers; the layer went on computing with the arrays it was built from."""
    from torch.func import functional_call

    torch.manual_seed(0)
    conv = _exactly_pruned(nn.Conv2d(8, 16, 3, padding=1), 0.6, 0)
    layer = SparseConv2d.from_dense(conv)
    x = torch.randn(2, 8, 7, 7)
    with torch.no_grad():
        layer(x)  # plans and the fast path built on the original arrays
        doubled = functional_call(layer, {"values": layer.values * 2}, (x,))
        expected = F.conv2d(x, conv.weight * 2, conv.bias, 1, 1)
        torch.testing.assert_close(doubled, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(layer(x), conv(x), rtol=1e-4, atol=1e-5)  # restored
        layer.half().float()  # new buffers
        layer.values.mul_(2)
        rounded = conv.weight.half().float() * 2
        torch.testing.assert_close(layer(x), F.conv2d(x, rounded, layer.bias, 1, 1),
                                   rtol=1e-4, atol=1e-5)  # fmt: skip

    linear = _exactly_pruned(nn.Linear(12, 6), 0.5, 1)
    sparse = SparseLinear.from_dense(linear)
    v = torch.randn(3, 12)
    with torch.no_grad():
        sparse(v)
        sparse.values = sparse.values * 3  # assigning a buffer
        torch.testing.assert_close(sparse(v), F.linear(v, linear.weight * 3, linear.bias),
                                   rtol=1e-4, atol=1e-5)  # fmt: skip


def test_list_options_are_kept_as_pairs():
    """A layer built with list options never hit its plan cache (lists are no cache keys)."""
    layer = SparseConv2d(conv_weight_to_csr(torch.randn(4, 3, 3, 3)), None, stride=[1, 1],
                         padding=[1, 1], dilation=[1, 1])  # fmt: skip
    assert (layer.stride, layer.padding, layer.dilation) == ((1, 1), (1, 1), (1, 1))
    with torch.no_grad():
        layer(torch.randn(1, 3, 6, 6))
    assert len(layer.weight_csr._plans) == 1 and layer.weight_csr._fast


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
@pytest.mark.parametrize("warm", [False, True])
def test_a_nested_tensor_input_is_a_clear_error(warm):
    """Nested tensors have no shape to plan on (torch raised its own 'Internal error ...
    Please file an issue'): a ValueError that says what the layers take, also once a plan
    for dense inputs is cached."""
    conv = SparseConv2d.from_dense(torch.nn.Conv2d(2, 4, 3))
    linear = SparseLinear.from_dense(torch.nn.Linear(4, 3))
    if warm:
        conv(torch.randn(1, 2, 5, 5))
        linear(torch.randn(2, 4))
    images = torch.nested.nested_tensor([torch.randn(2, 5, 5), torch.randn(2, 6, 6)])
    rows = torch.nested.nested_tensor([torch.randn(1, 4), torch.randn(2, 4)])
    for layer, x in ((conv, images), (linear, rows)):
        with pytest.raises(ValueError, match="must be a dense \\(strided\\) tensor, got a nested"):
            layer(x)
