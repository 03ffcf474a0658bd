"""L1-norm filter pruning: scores, independent vs greedy, ResNet rules, masks, surgery."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model.networks import create_model
from model.pruning.l1_filter import L1Filter, L1FilterConfig, plan, select_filters
from model.surgery import cut


def _chain() -> nn.Module:
    from model.networks.vgg import VGG16

    torch.manual_seed(0)
    return VGG16(10, widths=(4, 4, 6, 6, 8, 8, 8, 8, 8, 8, 8, 8, 8)).eval()


def test_smallest_l1_filters_go():
    model = _chain()
    with torch.no_grad():
        model.conv1.weight[2] *= 0.01
        model.conv1.weight[0] *= 0.1
    masks = select_filters(model, (3, 32, 32), {"conv1": 2})
    assert masks["conv1"].tolist() == [False, True, False, True]
    largest = select_filters(model, (3, 32, 32), {"conv1": 2}, criterion="largest")
    assert largest["conv1"].sum() == 2 and not largest["conv1"][1:4:2].all()


def test_greedy_ignores_input_channels_already_removed():
    model = _chain()
    with torch.no_grad():
        model.conv1.weight[0] *= 0.001  # conv1 filter 0 goes
        model.conv2.weight[:, 0] *= 100  # conv2's filters are all big on channel 0 only ...
        model.conv2.weight[3, 0] *= 10  # ... filter 3 most of all
        model.conv2.weight[3, 1:] *= 0.01  # and tiny elsewhere
    keep = {"conv1": 3, "conv2": 3}
    independent = select_filters(model, (3, 32, 32), keep, "independent")
    greedy = select_filters(model, (3, 32, 32), keep, "greedy")
    assert independent["conv2"][3] and not greedy["conv2"][3]


def test_hooks_mask_filters_bias_and_bn_and_the_cut_is_exact():
    model = _chain()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.bias.data.normal_()
        bn.running_mean.normal_()
    hooks = L1Filter({}, L1FilterConfig(ratio=0.5, skip=[13]))
    hooks.input_shape = (3, 32, 32)
    decisions = []
    hooks.start(model, decisions.append)
    assert {d["layer"]: d["action"] for d in decisions}["conv13"] == "exclude"
    assert int((model.conv2.weight.flatten(1).abs().sum(1) == 0).sum()) == 2
    masks = hooks.masks(model)
    assert {"conv2.weight", "conv2.bias", "bn2.weight", "bn2.bias"} <= set(masks)
    result = cut(model, (3, 32, 32))
    assert result.kept["conv2"] == 2 and result.kept["conv13"] == 8
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - result.model(x)).abs().max() <= 1e-5


def test_resnet20_l1_cut_is_exact():
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.bias.data.normal_()
        bn.running_var.uniform_(0.5, 1.5)
    hooks = L1Filter({}, L1FilterConfig(stage_ratios=[0.5, 0.25, 0.5], skip=[2]))
    hooks.input_shape = (3, 32, 32)
    hooks.start(model, lambda e: None)
    result = cut(model, (3, 32, 32))
    assert result.kept["layer1.0.conv1"] == 16 and result.kept["layer1.1.conv1"] == 8
    assert result.kept["layer2.0.conv1"] == 24 and result.kept["layer3.2.conv1"] == 32
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - result.model(x)).abs().max() <= 1e-5


def test_per_layer_ratio_overrides_and_validation():
    with torch.device("meta"):
        model = create_model("lenet5")
    keep = plan(model, (1, 28, 28), L1FilterConfig(ratio=0.5, layer_ratios={"conv2": 0.9}))
    assert keep == {"conv1": 10, "conv2": 5}
    with pytest.raises(ValueError, match="ratios must be in"):
        L1FilterConfig(ratio=1.0)
    with pytest.raises(ValueError, match="selection must be"):
        L1FilterConfig(selection="random")


def test_l1_filter_job_end_to_end_with_prediction_and_measurement(capsys, tmp_path):
    from cli_jobs import check_structured, prune_job

    manifest = prune_job(capsys, tmp_path / "job", "l1-filter", "lenet5", "--set", "ratio=0.5")
    check_structured(manifest, tmp_path / "job")
    layers = {layer["name"]: layer for layer in manifest["layers"]}
    assert layers["conv1"]["cut_shape"] == "1→10 5x5 @28x28"
    assert layers["conv2"]["predicted_speedup"] == pytest.approx(4.0)  # half in, half out
    assert layers["conv2"]["measured_speedup"] is not None
    assert manifest["model_speedup"]["measured"] > 0


@pytest.mark.slow
def test_sensitivity_smallest_l1_hurts_least_on_digits(tmp_path, capsys):
    """Li et al. Fig. 2 on real data: smallest-L1 < random < largest-L1 in accuracy drop."""
    import argparse
    import json

    from model import sensitivity

    parser = argparse.ArgumentParser()
    sensitivity.add_arguments(parser)
    args = parser.parse_args(
        [
            "--model",
            "lenet5",
            "--dense-epochs",
            "6",
            "--threads",
            "1",
            "--ratios",
            "0.3,0.6,0.9",
            "--out",
            str(tmp_path),
            "--json",
        ]
    )
    assert sensitivity.run(args) == 0
    result = sensitivity.Sensitivity(**json.loads(capsys.readouterr().out))
    assert result.baseline > 0.9 and set(result.layers) == {"conv1", "conv2"}
    drops = [result.mean_drop(c) for c in sensitivity.CRITERIA]
    assert drops[0] < drops[1] < drops[2]
    for name in ("sensitivity.json", "sensitivity.md", "sensitivity.png"):
        assert (tmp_path / name).stat().st_size > 0


# ---------------------------------------------- ResNet second convs following the projection

STEM_64 = (3, 64, 64)  # small ImageNet input: the same layers, 1/12 of the work of 224×224


def _resnet18(seed: int = 0) -> nn.Module:
    """ResNet-18 (10 classes) with non-trivial BN statistics and affine parameters."""
    torch.manual_seed(seed)
    model = create_model("resnet18", num_classes=10).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        n = bn.num_features
        bn.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
        bn.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
        bn.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
        bn.bias.data.copy_(torch.randn(n, generator=generator) * 0.5)
    return model


def _zero_filters(module: nn.Module) -> set[int]:
    return set((module.weight.detach().flatten(1).abs().sum(1) == 0).nonzero().flatten().tolist())


def _zero_affine(bn: nn.Module) -> set[int]:
    zero = (bn.weight.detach() == 0) & (bn.bias.detach() == 0)
    return set(zero.nonzero().flatten().tolist())


FOLLOW = L1FilterConfig(stage_ratios=[0.5, 0.5, 0.25, 0.5], second_conv="follow-projection")


def test_second_convs_follow_the_projections_ranking():
    model = _resnet18()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    hooks = L1Filter({}, FOLLOW)
    hooks.input_shape = STEM_64
    decisions = []
    hooks.start(model, decisions.append)
    for stage, ratio in ((2, 0.5), (3, 0.25), (4, 0.5)):
        projection = model.get_submodule(f"layer{stage}.0.downsample.0")
        channels = projection.out_channels
        norms = original[f"layer{stage}.0.downsample.0.weight"].abs().flatten(1).sum(1)
        smallest = set(torch.argsort(norms)[: channels - int(channels * (1 - ratio))].tolist())
        assert _zero_filters(projection) == smallest  # ranked by the projection's own L1 norms
        assert _zero_affine(model.get_submodule(f"layer{stage}.0.downsample.1")) == smallest
        for block in model.get_submodule(f"layer{stage}"):
            assert _zero_filters(block.conv2) == smallest  # the same indices, every block
            assert _zero_affine(block.bn2) == smallest
    for block in (0, 1):  # identity-only first stage: second convs and their BNs untouched
        for name in (f"layer1.{block}.conv2.weight", f"layer1.{block}.bn2.weight",
                     f"layer1.{block}.bn2.bias"):  # fmt: skip
            assert torch.equal(dict(model.named_parameters())[name], original[name])
    actions = {d["layer"]: (d["action"], d["reason"]) for d in decisions}
    assert actions["layer1.1.conv2"][0] == "exclude"
    assert "no projection" in actions["layer1.1.conv2"][1]
    assert actions["layer3.1.conv2"] == (
        "prune",
        "follows layer3.0.downsample.0: removed the same 64 of 256 residual-stream channels",
    )
    assert hooks.layer_states()["layer4.0.downsample.0"] == "pruned"
    # The masked stream is exactly 0 in those channels, after every block of the stage.
    outputs = {}
    hook = model.layer3[1].register_forward_hook(lambda _m, _a, out: outputs.setdefault("x", out))
    with torch.no_grad():
        model(torch.randn(2, *STEM_64))
    hook.remove()
    assert outputs["x"][:, sorted(_zero_filters(model.layer3[0].downsample[0]))].abs().max() == 0


def test_follow_projection_cut_is_exact_and_costs_what_the_plan_says():
    from model.cost import count_cost
    from model.surgery import narrow, plan_architecture, rebuild

    model = _resnet18()
    config = L1FilterConfig(stage_ratios=[0.5, 0.5, 0.25, 0.5], skip=[2],
                            second_conv="follow-projection", selection="greedy")  # fmt: skip
    hooks = L1Filter({}, config)
    hooks.input_shape = STEM_64
    hooks.start(model, lambda e: None)
    result = cut(model, STEM_64)
    assert result.kept["layer2.0.downsample.0"] == result.kept["layer2.1.conv2"] == 64
    assert result.kept["layer3.0.conv2"] == 192 and result.kept["layer4.1.conv2"] == 256
    assert result.model.layer1[1].conv2.out_channels == 64  # identity-only stage: full width
    assert result.model.layer3[0].downsample[0].in_channels == 64  # the next stage reads fewer
    assert result.model.layer2[1].conv1.in_channels == 64 and result.model.fc.in_features == 256
    x = torch.randn(2, *STEM_64)
    with torch.no_grad():
        assert (model(x) - result.model(x)).abs().max() <= 1e-5
    again = rebuild("resnet18", 10, result.architecture.to_dict())
    again.load_state_dict(result.model.state_dict())
    with torch.no_grad():
        assert (model(x) - again.eval()(x)).abs().max() <= 1e-5
    with torch.device("meta"):
        planned = create_model("resnet18", num_classes=10)
        narrow(planned, plan_architecture(planned, STEM_64, plan(planned, STEM_64, config)))
    assert count_cost(planned, STEM_64) == count_cost(result.model, STEM_64)


def test_follow_projection_greedy_scores_first_convs_without_removed_stream_channels():
    model = _resnet18()
    with torch.no_grad():
        model.layer2[0].downsample[0].weight[:64] *= 0.01  # stream channels 0..63 go
        model.layer2[1].conv1.weight[:, :64] *= 100  # conv1 filters are big on them ...
        model.layer2[1].conv1.weight[5, :64] *= 10  # ... filter 5 most of all
        model.layer2[1].conv1.weight[5, 64:] *= 0.01  # and tiny on the stream that stays
    keep = plan(model, STEM_64, L1FilterConfig(ratio=0.5, second_conv="follow-projection"))
    independent = select_filters(model, STEM_64, keep, "independent")
    greedy = select_filters(model, STEM_64, keep, "greedy")
    assert not independent["layer2.0.downsample.0"][:64].any()
    assert independent["layer2.1.conv1"][5] and not greedy["layer2.1.conv1"][5]


def test_follow_projection_skips_ratios_and_networks_without_projections():
    with torch.device("meta"):
        resnet18 = create_model("resnet18")
        resnet20 = create_model("resnet20")
    shape = (3, 224, 224)
    keep = plan(resnet18, shape, L1FilterConfig(
        stage_ratios=[0.3, 0.3, 0.3, 0.0], second_conv="follow-projection",
        skip=["layer3.0.downsample.0"], layer_ratios={"layer4.0.downsample.0": 0.5}))  # fmt: skip
    assert keep["layer2.0.downsample.0"] == keep["layer2.1.conv2"] == 89  # int(128 · 0.7)
    assert keep["layer3.0.conv2"] == 256  # skipped by the projection's path
    assert keep["layer4.1.conv2"] == 256  # the projection's own ratio overrides the stage's
    assert not any(name.startswith("layer1.") and name.endswith("conv2") for name in keep)
    with pytest.raises(ValueError, match=r"set the stream.s ratio on layer2\.0\.downsample\.0"):
        plan(resnet18, shape, L1FilterConfig(second_conv="follow-projection",
                                             layer_ratios={"layer2.1.conv2": 0.5}))  # fmt: skip
    # Option-A CIFAR ResNets have no projection: the rule changes nothing.
    follow = L1FilterConfig(stage_ratios=[0.5, 0.5, 0.5], second_conv="follow-projection")
    assert plan(resnet20, (3, 32, 32), follow) == plan(
        resnet20, (3, 32, 32), L1FilterConfig(stage_ratios=[0.5, 0.5, 0.5])
    )
    with pytest.raises(ValueError, match="second_conv must be"):
        L1FilterConfig(second_conv="follow")


def test_bottlenecks_follow_with_their_last_conv_and_cut_exactly():
    from model.networks.resnet_imagenet import Bottleneck, ImageNetResNet

    torch.manual_seed(0)
    model = ImageNetResNet(Bottleneck, (2, 1, 1, 1), num_classes=10).eval()  # ResNet-50's blocks
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.bias.data.normal_()
        bn.running_var.uniform_(0.5, 1.5)
    hooks = L1Filter({}, L1FilterConfig(ratio=0.25, second_conv="follow-projection"))
    hooks.input_shape = STEM_64
    hooks.start(model, lambda e: None)
    stream = _zero_filters(model.layer1[0].downsample[0])
    assert len(stream) == 64 and _zero_filters(model.layer1[1].conv3) == stream
    assert len(_zero_filters(model.layer1[1].conv2)) == 16  # the middle conv: pruned freely
    result = cut(model, STEM_64)
    assert result.kept["layer1.1.conv3"] == 192 and result.model.layer2[0].conv1.in_channels == 192
    x = torch.randn(2, *STEM_64)
    with torch.no_grad():
        assert (model(x) - result.model(x)).abs().max() <= 1e-5
