"""The paper's model against the checks of docs/research.md §1 (Park et al. 2017, §2.2)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests_support import conv_specs, linear_specs

from perfmodel import Conv2dSpec, PaperRoofline, RooflineModel, get_profile
from perfmodel.roofline import get_model

MODEL = PaperRoofline()

# AlexNet (Caffe) conv2-conv5 as in SkimCaffe.
CONV2 = Conv2dSpec(name="conv2", in_channels=96, out_channels=256, in_height=27, in_width=27,
                   kernel=5, padding=2, groups=2)  # fmt: skip
CONV3 = Conv2dSpec(name="conv3", in_channels=256, out_channels=384, in_height=13, in_width=13,
                   kernel=3, padding=1)  # fmt: skip
CONV4 = Conv2dSpec(name="conv4", in_channels=384, out_channels=384, in_height=13, in_width=13,
                   kernel=3, padding=1, groups=2)  # fmt: skip
CONV5 = Conv2dSpec(name="conv5", in_channels=384, out_channels=256, in_height=13, in_width=13,
                   kernel=3, padding=1, groups=2)  # fmt: skip
REDUCE_4A = Conv2dSpec(name="inception_4a.5x5_reduce", in_channels=480, out_channels=16,
                       in_height=14, in_width=14, kernel=1)  # fmt: skip


def test_alexnet_conv5_sizes_match_the_paper():
    assert CONV5.flops == pytest.approx(149.5e6, rel=1e-3)
    assert CONV5.activation_bytes == pytest.approx(433e3, rel=5e-3)
    assert CONV5.weight_bytes == pytest.approx(1.77e6, rel=5e-3)


def test_conv5_upper_bound_on_xeon(xeon):
    spot = MODEL.sweet_spot(CONV5, xeon)
    assert 1 - spot.max_sparsity == pytest.approx(0.02, rel=0.05)


def test_conv5_upper_bound_on_atom(atom):
    spot = MODEL.sweet_spot(CONV5, atom)
    assert 1 - spot.max_sparsity == pytest.approx(0.011, rel=0.05)


@pytest.mark.parametrize("layer", [CONV2, CONV3, CONV4, CONV5], ids=lambda layer: layer.name)
def test_lower_bound_on_xeon_is_density_one_third(xeon, layer):
    spot = MODEL.sweet_spot(layer, xeon)
    assert 1 - spot.min_sparsity == pytest.approx(1 / 3, rel=0.05)


def test_conv5_speedup_spans_2x_to_7x_for_density_005_to_015(xeon):
    assert MODEL.speedup(CONV5, xeon, 0.05) == pytest.approx(6.7, rel=0.05)
    assert MODEL.speedup(CONV5, xeon, 0.15) == pytest.approx(2.2, rel=0.05)
    for density in (0.06, 0.08, 0.1, 0.12, 0.14):
        assert 2.0 < MODEL.speedup(CONV5, xeon, density) < 7.0


def test_googlenet_4a_5x5_reduce_has_no_sweet_spot_on_xeon(xeon):
    assert MODEL.sweet_spot(REDUCE_4A, xeon) is None
    assert RooflineModel.sweet_spot(MODEL, REDUCE_4A, xeon) is None
    assert MODEL.speedup(REDUCE_4A, xeon, 0.0) < 1.0


def test_knl_alpha_reproduces_measured_speedup_at_density_009():
    knl = get_profile("xeon-phi-7250")
    speedups = [MODEL.speedup(layer, knl, 0.09) for layer in (CONV2, CONV3, CONV4, CONV5)]
    assert sum(speedups) / len(speedups) == pytest.approx(3.1, rel=0.05)


def test_sparse_time_split_and_bound(xeon):
    dense = MODEL.dense_time_s(CONV5, xeon)
    at_half = MODEL.sparse_time(CONV5, xeon, 0.5)
    assert at_half.compute_s == pytest.approx(1.5 * dense)
    assert at_half.bound == "compute"
    assert MODEL.sparse_time(CONV5, xeon, 0.001).bound == "memory"
    assert MODEL.dense_bound(CONV5, xeon) == "compute"
    assert MODEL.dense_bound(REDUCE_4A, xeon) == "memory"


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(LookupError, match="valid names: paper"):
        get_model("refined-v9")


profiles = st.sampled_from(["atom-c2750", "xeon-e5-2697v4", "xeon-phi-7250"]).map(get_profile)


@settings(max_examples=300, deadline=None)
@given(layer=st.one_of(conv_specs, linear_specs), hw=profiles)
def test_closed_form_sweet_spot_equals_numeric_search(layer, hw):
    closed = MODEL.sweet_spot(layer, hw)
    numeric = RooflineModel.sweet_spot(MODEL, layer, hw)
    assert (closed is None) == (numeric is None)
    if closed is not None:
        assert closed.min_sparsity == pytest.approx(numeric.min_sparsity, abs=1e-9)
        assert closed.max_sparsity == pytest.approx(numeric.max_sparsity, abs=1e-9)
        assert closed.max_speedup == pytest.approx(numeric.max_speedup, rel=1e-6)


@settings(max_examples=200, deadline=None)
@given(layer=st.one_of(conv_specs, linear_specs), hw=profiles)
def test_speedup_never_falls_as_sparsity_rises_and_sweet_spot_is_consistent(layer, hw):
    speedups = [MODEL.speedup(layer, hw, 1 - s / 100) for s in range(0, 101, 5)]
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(speedups))
    spot = MODEL.sweet_spot(layer, hw)
    if spot is not None:
        assert 0 <= spot.min_sparsity <= spot.max_sparsity <= 1
        # Just inside the sweet spot sparse wins; just below it, it does not.
        if spot.min_sparsity > 1e-3:
            assert MODEL.speedup(layer, hw, 1 - spot.min_sparsity + 1e-3) < 1.0
        assert MODEL.speedup(layer, hw, 1 - min(spot.min_sparsity + 1e-3, 1.0)) >= 1.0 - 1e-9
