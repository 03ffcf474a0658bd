"""Fibre removal: a FibreConv2d computes what the conv with zero fibres computes; a network
after surgery and fibre removal equals the masked network (eval mode)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests_support import randomise_norms
from torch import nn

from model.fibres import (
    DEFAULT_MIN_REMOVED,
    FibreConv2d,
    fibre_layer_spec,
    rebuild_fibres,
    remove_fibres,
    zero_fibres,
)
from model.networks import create_model
from model.surgery import BiasMapConv2d, cut, rebuild
from perfmodel import Conv2dSpec, get_model, get_profile, profile_names

TOLERANCE = 1e-5


def _zero_random_fibres(
    conv: nn.Conv2d, fraction: float, generator: torch.Generator
) -> torch.Tensor:
    """Zero ``fraction`` of the fibres of every group of ``conv``; returns the kept mask."""
    G = conv.groups
    K, Cg, R, S = conv.weight.shape
    n = Cg * R * S
    keep = torch.ones(G, n)
    for g in range(G):
        keep[g, torch.randperm(n, generator=generator)[: round(fraction * n)]] = 0
    with torch.no_grad():
        weight = conv.weight.view(G, K // G, Cg, R, S)
        weight.mul_(keep.view(G, 1, Cg, R, S))
    return keep.bool()


def _assert_close(expected: torch.Tensor, actual: torch.Tensor) -> None:
    assert expected.shape == actual.shape
    assert (expected - actual).abs().max().item() <= TOLERANCE




# ------------------------------------------------------------------------ one layer

CONV_CASES = [
    # (in, out, kernel, stride, padding, dilation, groups, bias)
    (8, 6, 3, 1, 1, 1, 1, True),
    (8, 6, 3, 2, 1, 1, 1, False),
    (8, 6, 3, 1, 2, 2, 1, True),
    (5, 7, 5, 1, 2, 1, 1, False),
    (5, 7, 5, 2, 0, 1, 1, True),
    (6, 4, 1, 1, 0, 1, 1, True),
    (6, 4, 1, 2, 0, 1, 1, False),
    (4, 3, 3, 2, 3, 2, 1, True),
    (6, 4, (3, 1), (1, 2), (1, 0), 1, 1, True),
    (8, 6, 3, 1, 1, 1, 2, True),  # grouped: fibres per group
    (6, 6, 3, 2, 1, 1, 6, False),  # depthwise
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("batch", [1, 3])
def test_fibre_conv_equals_conv_with_zero_fibres(case, batch):
    C, K, kernel, stride, padding, dilation, groups, bias = case
    generator = torch.Generator().manual_seed(10 * CONV_CASES.index(case) + batch)
    torch.manual_seed(0)
    conv = nn.Conv2d(C, K, kernel, stride, padding, dilation, groups, bias).eval()
    _zero_random_fibres(conv, 0.6, generator)
    fibre = FibreConv2d.from_conv(conv).eval()
    x = torch.randn(batch, C, 11, 10, generator=generator)
    with torch.no_grad():
        _assert_close(conv(x), fibre(x))
        _assert_close(conv(x[0]), fibre(x[0]))  # unbatched input, as nn.Conv2d allows
    per_group = C // groups * conv.kernel_size[0] * conv.kernel_size[1]
    assert fibre.fibres_kept == groups * (per_group - round(0.6 * per_group))
    assert fibre.weight.shape == (K, fibre.fibres_per_group)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # the reference's
@pytest.mark.parametrize(("kernel", "dilation"), [(3, 2), (4, 1)])  # (4, 1): asymmetric
def test_fibre_conv_with_same_padding(kernel, dilation):
    conv = nn.Conv2d(4, 5, kernel, padding="same", dilation=dilation).eval()
    _zero_random_fibres(conv, 0.5, torch.Generator().manual_seed(1))
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        _assert_close(conv(x), FibreConv2d.from_conv(conv)(x))


def test_fibre_conv_runs_other_batch_sizes_and_chunks():
    conv = nn.Conv2d(16, 8, 3, padding=1).eval()
    _zero_random_fibres(conv, 0.3, torch.Generator().manual_seed(2))  # 101 fibres kept
    fibre = FibreConv2d.from_conv(conv).eval()
    for batch in (1, 12, 2):  # 12 × 101 × 32 × 32 > the cols budget: gathered in chunks
        x = torch.randn(batch, 16, 32, 32)
        with torch.no_grad():
            _assert_close(conv(x), fibre(x))


def test_wide_layer_through_onednn():
    conv = nn.Conv2d(64, 128, 3, padding=1).eval()  # K·F = 128 × 288: the oneDNN GEMM
    _zero_random_fibres(conv, 0.5, torch.Generator().manual_seed(10))
    fibre = FibreConv2d.from_conv(conv).eval()
    x = torch.randn(2, 64, 6, 6)
    with torch.no_grad():
        _assert_close(conv(x), fibre(x))


def test_zero_fibres_covering_whole_channels():
    conv = nn.Conv2d(6, 5, 3, padding=1).eval()
    with torch.no_grad():
        conv.weight[:, [0, 2, 5]] = 0  # channels: surgery's job, still exact here
        conv.weight[:, 1, 0, 0] = 0
    fibre = FibreConv2d.from_conv(conv)
    assert fibre.fibres_kept == 3 * 9 - 1
    x = torch.randn(2, 6, 7, 7)
    with torch.no_grad():
        _assert_close(conv(x), fibre(x))


@pytest.mark.parametrize("bias", [True, False])
def test_all_zero_weight_gives_the_bias(bias, tmp_path):
    conv = nn.Conv2d(3, 4, 3, stride=2, bias=bias).eval()
    with torch.no_grad():
        conv.weight.zero_()
    fibre = FibreConv2d.from_conv(conv)
    assert fibre.fibres_per_group == 0 and fibre.weight.shape == (4, 0)
    save_file(fibre.state_dict(), tmp_path / "empty.safetensors")  # zero-size tensors
    restored = FibreConv2d.from_config(fibre.config())
    restored.load_state_dict(load_file(tmp_path / "empty.safetensors"))
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        _assert_close(conv(x), fibre(x))
        _assert_close(conv(x), restored(x))
    spec = Conv2dSpec(name="c", in_channels=3, out_channels=4, in_height=9, in_width=9,
                      kernel=3, stride=2)  # fmt: skip
    assert fibre_layer_spec(spec, 0) is None
    # A batch scales the fibre GEMM as it scales the conv (per_example was dropped).
    folded = spec.model_copy(update={"batch": 4, "per_example": 4})
    assert fibre_layer_spec(folded, 2).with_batch(2).batch == folded.with_batch(2).batch == 8


def test_fibre_conv_is_differentiable_in_its_input():
    conv = nn.Conv2d(4, 3, 3, padding=1)
    _zero_random_fibres(conv, 0.5, torch.Generator().manual_seed(3))
    fibre = FibreConv2d.from_conv(conv)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    (expected,) = torch.autograd.grad(conv(x).square().sum(), x)
    (actual,) = torch.autograd.grad(fibre(x).square().sum(), x)
    _assert_close(expected, actual)


def test_bias_map_conv_keeps_its_map():
    conv = BiasMapConv2d(4, 3, 3, padding=1, map_shape=(3, 6, 6)).eval()
    with torch.no_grad():
        conv.bias_map.normal_()
    _zero_random_fibres(conv, 0.7, torch.Generator().manual_seed(9))
    fibre = FibreConv2d.from_conv(conv)
    assert fibre.config()["bias_map"] == [3, 6, 6]
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        _assert_close(conv(x), fibre(x))


def test_zero_fibres_are_per_group():
    weight = torch.ones(4, 2, 1, 1)
    weight[:2, 0] = 0  # group 0, channel 0: zero; group 1 channel 0 is not
    zero = zero_fibres(weight, groups=2)
    assert zero.shape == (2, 2, 1, 1)
    assert zero.flatten().tolist() == [True, False, False, False]


def test_reflect_padding_is_refused():
    conv = nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")
    with torch.no_grad():
        conv.weight[:, 0] = 0
    with pytest.raises(ValueError, match="only zero padding"):
        FibreConv2d.from_conv(conv)
    model = nn.Sequential(conv)
    report = remove_fibres(model, (2, 5, 5), min_removed=0.0, min_weights=0)
    assert report.replaced == [] and model[0] is conv
    assert report.layers[0].reason == "padding_mode='reflect'"


def test_corrupt_fibre_index_is_reported():
    conv = nn.Conv2d(2, 2, 3)
    fibre = FibreConv2d.from_conv(conv)
    with torch.no_grad():
        fibre.fibres[0, 0] = 2 * 9
    with pytest.raises(ValueError, match="out of range"):
        fibre(torch.randn(1, 2, 5, 5))


# ----------------------------------------------------------------- the network pass


class _TwoConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def test_min_removed_is_respected_and_full_convs_are_left_alone():
    torch.manual_seed(0)
    model = _TwoConvs().eval()
    generator = torch.Generator().manual_seed(4)
    _zero_random_fibres(model.a, 0.3, generator)
    _zero_random_fibres(model.b, 0.8, generator)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        expected = model(x)
    report = remove_fibres(model, (4, 8, 8), min_removed=0.5)  # b's GEMM: 8 × 14 weights
    assert report.replaced == [] and "min_weights 4096" in report.layers[1].reason
    report = remove_fibres(model, (4, 8, 8), min_removed=0.5, min_weights=8 * 14)
    assert report.replaced == ["b"]
    assert isinstance(model.a, nn.Conv2d) and isinstance(model.b, FibreConv2d)
    assert type(model.c) is nn.Conv2d  # no zero fibre: untouched
    rows = {layer.name: layer for layer in report.layers}
    assert rows["b"].fibres_total == 72 and rows["b"].fibres_kept == 72 - round(0.8 * 72)
    assert rows["b"].macs_before == 8 * 72 * 64 and rows["b"].macs_after == 8 * 14 * 64
    assert rows["a"].macs_after == rows["a"].macs_before and not rows["a"].replaced
    assert rows["c"].reason == "no zero fibre"
    with torch.no_grad():
        _assert_close(expected, model(x))
    report = remove_fibres(model, (4, 8, 8), min_removed=0.0, min_weights=0)  # now a; c still not
    assert report.replaced == ["a"] and type(model.c) is nn.Conv2d
    with torch.no_grad():
        _assert_close(expected, model(x))
    assert 0.0 < DEFAULT_MIN_REMOVED < 1.0
    with pytest.raises(ValueError, match="min_removed"):
        remove_fibres(model, (4, 8, 8), min_removed=1.5, min_weights=0)


def test_fibre_spec_predicts_the_gemm_speedup():
    conv = nn.Conv2d(64, 32, 3, padding=1)
    _zero_random_fibres(conv, 0.75, torch.Generator().manual_seed(5))
    fibre = FibreConv2d.from_conv(conv)
    dense = Conv2dSpec(name="conv", in_channels=64, out_channels=32, in_height=16,
                       in_width=16, kernel=3, padding=1, batch=8)  # fmt: skip
    spec = fibre_layer_spec(dense, fibre.fibres_per_group)
    assert spec.macs == dense.macs * fibre.fibres_kept // (64 * 9)
    assert spec.weight_count == 32 * fibre.fibres_kept and spec.batch == 8
    model, hw = get_model("paper"), get_profile(profile_names()[0])
    speedup = model.dense_time_s(dense, hw) / model.dense_time_s(spec, hw)
    assert speedup == pytest.approx(64 * 9 / fibre.fibres_kept)


def test_lenet5_cut_then_fibres_equals_masked():
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=10).eval()
    generator = torch.Generator().manual_seed(6)
    _zero_random_fibres(model.conv1, 0.4, generator)
    _zero_random_fibres(model.conv2, 0.8, generator)
    with torch.no_grad():
        model.conv1.weight[[1, 7]] = 0  # filters too: surgery folds their bias into conv2
    result = cut(model, (1, 28, 28))
    report = remove_fibres(result.model, (1, 28, 28), min_removed=0.0, min_weights=0)
    assert report.replaced == ["conv1", "conv2"]
    assert report.macs_after < report.macs_before
    x = torch.randn(5, 1, 28, 28, generator=generator)
    with torch.no_grad():
        _assert_close(model(x), result.model(x))


def test_resnet20_cut_then_fibres_equals_masked():
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    generator = torch.Generator().manual_seed(7)
    randomise_norms(model, generator)
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3):
            _zero_random_fibres(module, 0.8, generator)
    with torch.no_grad():  # removed filters with a positive BN constant: a bias map in conv2
        model.layer1[0].conv1.weight[[0, 3, 5]] = 0
        model.layer1[0].bn1.bias[[0, 3, 5]] = 1.0
        model.layer1[0].bn1.running_mean[[0, 3, 5]] = 0.0
    result = cut(model, (3, 32, 32))
    assert isinstance(result.model.layer1[0].conv2, BiasMapConv2d)
    convs_3x3 = [name for name, module in result.model.named_modules()
                 if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3)]  # fmt: skip
    report = remove_fibres(result.model, (3, 32, 32), min_removed=0.5, min_weights=0)
    assert isinstance(result.model.layer1[0].conv2, FibreConv2d)
    assert report.replaced == convs_3x3  # 1x1 projections have no zero fibre
    x = torch.randn(3, 3, 32, 32, generator=generator)
    with torch.no_grad():
        _assert_close(model(x), result.model(x))


def test_state_dict_round_trip_through_safetensors(tmp_path):
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=10).eval()
    generator = torch.Generator().manual_seed(8)
    _zero_random_fibres(model.conv1, 0.5, generator)
    _zero_random_fibres(model.conv2, 0.9, generator)
    with torch.no_grad():
        model.conv1.weight[[2, 4]] = 0
    result = cut(model, (1, 28, 28))
    report = remove_fibres(result.model, (1, 28, 28), min_removed=0.0, min_weights=0)
    save_file(result.model.state_dict(), tmp_path / "weights.safetensors")

    restored = rebuild_fibres(rebuild("lenet5", 10, result.architecture.to_dict()),
                              report.to_dict()["architecture"])  # fmt: skip
    restored.load_state_dict(load_file(tmp_path / "weights.safetensors"))
    restored.eval()
    x = torch.randn(3, 1, 28, 28, generator=generator)
    with torch.no_grad():
        _assert_close(model(x), restored(x))
        _assert_close(result.model(x), restored(x))


def test_a_structured_job_removes_fibres_and_its_cut_network_reloads(tmp_path):
    """The pipeline's structured path: surgery, then fibre removal; the manifest predicts the
    fibre layer from its GEMM plus the gather, counts its MACs, and ``load_cut_network``
    rebuilds a network equal to the pruned (masked) one."""
    from model.pipeline import PruneRequest, load_cut_network, run_pruning

    torch.manual_seed(0)
    net = create_model("lenet5", num_classes=10)
    with torch.no_grad():
        weight = net.conv2.weight  # (50, 20, 5, 5): 500 fibres, 80% of them zero
        dead = torch.randperm(20 * 25)[:400]
        weight.view(50, -1)[:, dead] = 0
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              str(tmp_path / "start.safetensors"))  # fmt: skip
    config = {"prune_epochs": 0, "finetune_epochs": 0, "threads": 1, "layers": ["conv1"]}
    request = PruneRequest(method="ssl", model="lenet5", dataset="digits", config=config,
                           checkpoint=str(tmp_path / "start.safetensors"), measure=False)
    out = tmp_path / "job"
    manifest = run_pruning(request, out, resume=False)
    layers = {layer["name"]: layer for layer in manifest["layers"]}
    conv2 = layers["conv2"]
    assert conv2["format"] == "fibres" and "100/500 fibres" in conv2["cut_shape"]
    assert conv2["flops_kept"] == pytest.approx(0.2)
    assert 1.0 < conv2["predicted_speedup"] < 5.0  # the gather keeps it under 500/100
    assert manifest["cut"]["fibre_layers"] == {"conv2": {"kept": 100, "total": 500}}
    cost = manifest["cut"]["cost"]
    conv2_macs = 50 * 20 * 25 * 8 * 8
    assert cost["macs_before"] - cost["macs_after"] == int(0.8 * conv2_macs)
    assert cost["params_before"] - cost["params_after"] == 50 * 400
    pruned = create_model("lenet5", num_classes=10)
    pruned.load_state_dict(load_file(str(out / "pruned.safetensors")))
    x = torch.randn(3, 1, 28, 28)
    reloaded = load_cut_network(out)
    assert any(isinstance(m, FibreConv2d) for m in reloaded.modules())
    assert (reloaded(x) - pruned.eval()(x)).abs().max().item() <= 1e-5
