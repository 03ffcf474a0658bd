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
