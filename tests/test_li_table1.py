"""Li et al. 2017, Table 1: FLOPs and parameters of the pruned networks, from our own L1
pruning plans (skip lists, per-stage ratios, ``keep = int(C·(1−p))``, first conv of each
block) and our counter (conv + linear MACs; conv + linear weights and biases, no BN).

"Printed precision": the table's numbers are the exact counts rounded to the digits shown, but
the paper rounds inconsistently (ResNet-56-B's 13.77% is printed 13.7, ResNet-34-A's 1.996e7
parameters 1.99e7), so each is checked to within one unit of its last printed digit.
"""

from __future__ import annotations

import pytest
import torch

from model.cost import count_cost
from model.networks import create_model
from model.pruning.l1_filter import L1FilterConfig, layer_ids, plan
from model.surgery import narrow, plan_architecture

CIFAR, IMAGENET = (3, 32, 32), (3, 224, 224)
RESNET34_SKIP = [2, 8, 14, 16, 26, 28, 30, 32]  # Li §4.4: the sensitive layers of ResNet-34

CASES = {
    # name: (network, config, exclude, (flops, flops pruned %, params, params pruned %))
    "VGG-16-pruned-A": ("vgg16", L1FilterConfig(ratio=0.5, skip=[2, 3, 4, 5, 6, 7]), (),
                        ("2.06e8", "34.2", "5.4e6", "64.0")),
    "ResNet-56-pruned-A": ("resnet56", L1FilterConfig(stage_ratios=[0.1, 0.1, 0.1],
                           skip=[16, 20, 38, 54]), (), ("1.12e8", "10.4", "7.7e5", "9.4")),
    "ResNet-56-pruned-B": ("resnet56", L1FilterConfig(stage_ratios=[0.6, 0.3, 0.1],
                           skip=[16, 18, 20, 34, 38, 54]), (), ("9.09e7", "27.6", "7.3e5", "13.7")),
    "ResNet-110-pruned-A": ("resnet110", L1FilterConfig(stage_ratios=[0.5, 0.0, 0.0], skip=[36]),
                            (), ("2.13e8", "15.9", "1.68e6", "2.3")),
    "ResNet-110-pruned-B": ("resnet110", L1FilterConfig(stage_ratios=[0.5, 0.4, 0.3],
                            skip=[36, 38, 74]), (), ("1.55e8", "38.6", "1.16e6", "32.4")),
    "ResNet-34-pruned-A": ("resnet34", L1FilterConfig(stage_ratios=[0.3, 0.3, 0.3, 0.0],
                           skip=RESNET34_SKIP), ("downsample",),
                           ("3.08e9", "15.5", "1.99e7", "7.6")),
    "ResNet-34-pruned-B": ("resnet34", L1FilterConfig(stage_ratios=[0.5, 0.6, 0.4, 0.0],
                           skip=RESNET34_SKIP), ("downsample",),
                           ("2.76e9", "24.2", "1.93e7", "10.8")),
}  # fmt: skip

BASELINES = {"vgg16": ("3.13e8", "1.5e7"), "resnet56": ("1.25e8", "8.5e5"),
             "resnet110": ("2.53e8", "1.72e6"), "resnet34": ("3.64e9", "2.16e7")}  # fmt: skip


def _close(value: float, printed: str) -> bool:
    """``value`` within one unit of the last digit of ``printed`` ("9.09e7", "13.7")."""
    mantissa = printed.split("e")[0]
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    exponent = int(printed.split("e")[1]) if "e" in printed else 0
    return abs(value - float(printed)) <= 10.0 ** (exponent - decimals) * (1 + 1e-9)


def _input(network: str) -> tuple[int, int, int]:
    return IMAGENET if network == "resnet34" else CIFAR


def test_layer_ids_follow_li():
    with torch.device("meta"):
        ids = layer_ids(create_model("resnet56"))
    assert ids["conv1"] == 1 and ids["layer1.0.conv1"] == 2 and ids["layer1.0.conv2"] == 3
    assert ids["layer1.7.conv1"] == 16 and ids["layer2.0.conv1"] == 20
    assert ids["layer3.8.conv1"] == 54


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baselines(name):
    with torch.device("meta"):
        cost = count_cost(create_model(name), _input(name),
                          ("downsample",) if name == "resnet34" else ())  # fmt: skip
    flops, params = BASELINES[name]
    assert _close(cost.macs, flops) and _close(cost.params, params)


@pytest.mark.parametrize("case", sorted(CASES))
def test_pruned_variants_match_table_1(case):
    network, config, exclude, (flops, flops_pct, params, params_pct) = CASES[case]
    shape = _input(network)
    with torch.device("meta"):
        model = create_model(network)
        base = count_cost(model, shape, exclude)
        keep = plan(model, shape, config)
        narrow(model, plan_architecture(model, shape, keep))
        pruned = count_cost(model, shape, exclude)
    flops_cut, params_cut = base.reduction(pruned)
    assert _close(pruned.macs, flops), (case, pruned.macs)
    assert _close(100 * flops_cut, flops_pct), (case, 100 * flops_cut)
    assert _close(pruned.params, params), (case, pruned.params)
    assert _close(100 * params_cut, params_pct), (case, 100 * params_cut)


def test_resnet_plans_prune_only_first_convs_and_skip_by_id():
    with torch.device("meta"):
        model = create_model("resnet56")
        keep = plan(model, CIFAR, CASES["ResNet-56-pruned-B"][1])
    assert all(name.endswith("conv1") and name != "conv1" for name in keep)
    assert keep["layer1.0.conv1"] == 6  # int(16 · 0.4)
    assert keep["layer1.7.conv1"] == 16  # layer 16 skipped
    assert keep["layer2.1.conv1"] == 22 and keep["layer3.1.conv1"] == 57


def _resnet34_cost_by_hand(inner: list[int], streams: list[int]) -> tuple[int, int]:
    """MACs and parameters of a ResNet-34 at 224×224 with block widths ``inner`` and stage
    stream widths ``streams``, projections included (He et al. Table 1, counted by hand)."""
    macs, params = 3 * 64 * 49 * 112 * 112, 3 * 64 * 49  # stem 7×7/2
    previous, widths = 64, iter(inner)
    for stage, (blocks, size) in enumerate(zip((3, 4, 6, 3), (56, 28, 14, 7), strict=True)):
        stream = streams[stage]
        if stage > 0:  # the 1×1 projection of the stage's first block
            macs, params = macs + previous * stream * size**2, params + previous * stream
        for block in range(blocks):
            width, source = next(widths), previous if block == 0 else stream
            layer = 9 * (source * width + width * stream)  # conv1 3×3, conv2 3×3
            macs, params = macs + layer * size**2, params + layer
        previous = stream
    return macs + previous * 1000, params + previous * 1000 + 1000  # fc


@pytest.mark.parametrize("case", ["ResNet-34-pruned-A", "ResNet-34-pruned-B"])
def test_resnet34_follow_projection_plans_cost_what_a_hand_count_says(case):
    """Li's ResNet-34-A/B ratios with the second convs following the projections (§3.3)."""
    config = CASES[case][1]
    follow = L1FilterConfig(stage_ratios=config.stage_ratios, skip=config.skip,
                            second_conv="follow-projection")  # fmt: skip
    with torch.device("meta"):
        model = create_model("resnet34")
        keep = plan(model, IMAGENET, follow)
        narrow(model, plan_architecture(model, IMAGENET, keep))
        pruned = count_cost(model, IMAGENET)
    streams = [64] + [int(c * (1 - p) + 1e-9) for c, p in
                      zip((128, 256, 512), config.stage_ratios[1:], strict=True)]  # fmt: skip
    assert [keep.get(f"layer{s}.0.downsample.0") for s in (2, 3, 4)] == streams[1:]
    inner = [keep[f"layer{s}.{b}.conv1"] for s, n in zip((1, 2, 3, 4), (3, 4, 6, 3), strict=True)
             for b in range(n)]  # fmt: skip
    assert (pruned.macs, pruned.params) == _resnet34_cost_by_hand(inner, streams)
