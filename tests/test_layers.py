"""Layer specs: FLOPs and bytes, validation, and the JSON form the API accepts."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from perfmodel import Conv2dSpec, LayerSpec, LinearSpec


def test_conv_output_shape_flops_and_bytes():
    conv = Conv2dSpec(name="c", batch=2, in_channels=3, out_channels=96, in_height=227,
                      in_width=227, kernel=11, stride=4)  # fmt: skip
    assert (conv.out_height, conv.out_width) == (55, 55)
    assert conv.macs == 2 * 96 * 55 * 55 * 3 * 11 * 11
    assert conv.flops == 2 * conv.macs
    assert conv.activation_bytes == 2 * (3 * 227 * 227 + 96 * 55 * 55) * 4
    assert conv.weight_bytes == 96 * 3 * 11 * 11 * 4


def test_dilation_and_asymmetric_stride():
    conv = Conv2dSpec(name="c", in_channels=8, out_channels=8, in_height=20, in_width=21,
                      kernel=3, dilation=2, padding=(2, 0), stride=(1, 2))  # fmt: skip
    assert (conv.out_height, conv.out_width) == (20, 9)
    assert conv.describe() == "8→8 3x3 /1x2 d2 @20x21"  # it printed "/(1, 2)"


def test_asymmetric_padding_sizes_the_output_with_both_ends():
    # ONNX SAME_UPPER on 224² with a 7×7 /2 stem pads 2 on top/left and 3 on bottom/right.
    stem = Conv2dSpec(name="stem", in_channels=3, out_channels=64, in_height=224,
                      in_width=224, kernel=7, stride=2, padding=2, padding_end=3)  # fmt: skip
    assert (stem.padding, stem.padding_end, stem.end_padding) == ((2, 2), (3, 3), (3, 3))
    assert (stem.out_height, stem.out_width) == (112, 112)
    assert stem.macs == 64 * 112 * 112 * 3 * 7 * 7
    rect = Conv2dSpec(name="c", in_channels=4, out_channels=4, in_height=8, in_width=8,
                      kernel=3, stride=2, padding=(0, 1), padding_end=(1, 0))  # fmt: skip
    assert (rect.padded_height, rect.padded_width, rect.out_height, rect.out_width) == (
        9, 9, 4, 4
    )  # fmt: skip


def test_padding_end_is_none_when_it_equals_padding():
    base = {"name": "c", "in_channels": 4, "out_channels": 8, "in_height": 8, "in_width": 8,
            "kernel": 3, "padding": 1}  # fmt: skip
    symmetric = Conv2dSpec(**base)
    assert symmetric.padding_end is None and symmetric.end_padding == (1, 1)
    assert Conv2dSpec(**base, padding_end=[1, 1]) == symmetric
    assert Conv2dSpec(**base, padding_end=None) == symmetric
    assert Conv2dSpec(**base, padding_end=(1, 2)).padding_end == (1, 2)


def test_linear_spec():
    fc = LinearSpec(name="fc", batch=4, in_features=9216, out_features=4096)
    assert fc.flops == 2 * 4 * 9216 * 4096
    assert fc.weight_bytes == 9216 * 4096 * 4
    assert fc.activation_bytes == 4 * (9216 + 4096) * 4


def test_with_batch_returns_a_new_spec():
    fc = LinearSpec(name="fc", in_features=10, out_features=10)
    bigger = fc.with_batch(8)
    assert (fc.batch, bigger.batch) == (1, 8)
    assert bigger.flops == 8 * fc.flops


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"groups": 3}, "groups=3 must divide"),
        ({"kernel": 9, "in_height": 4}, "does not fit"),
        ({"stride": 0}, "must be >= 1"),
        ({"padding": -1}, "must be >= 0"),
        ({"padding_end": (0, -1)}, "must be >= 0"),
        ({"kernel": 5, "in_height": 2, "padding": (1, 0), "padding_end": (0, 0)}, "does not fit"),
        ({"in_channels": 0}, "greater than 0"),
    ],
)
def test_invalid_conv_specs_are_rejected(fields, message):
    base = {"name": "c", "in_channels": 4, "out_channels": 8, "in_height": 8, "in_width": 8,
            "kernel": 3}  # fmt: skip
    with pytest.raises(ValidationError, match=message):
        Conv2dSpec(**{**base, **fields})


def test_json_round_trip_picks_the_type_by_kind():
    adapter = TypeAdapter(list[LayerSpec])
    data = [
        {"kind": "conv2d", "name": "c", "in_channels": 3, "out_channels": 8, "in_height": 8,
         "in_width": 8, "kernel": [3, 3], "padding": 1},
        {"kind": "linear", "name": "fc", "in_features": 8, "out_features": 2},
    ]  # fmt: skip
    layers = adapter.validate_python(data)
    assert isinstance(layers[0], Conv2dSpec) and layers[0].padding == (1, 1)
    assert isinstance(layers[1], LinearSpec)
    assert adapter.validate_json(adapter.dump_json(layers)) == layers
    asymmetric = adapter.validate_python([{**data[0], "padding": 0, "padding_end": [1, 1]}])
    assert asymmetric[0].padding_end == (1, 1) and asymmetric[0].out_height == 7
    assert adapter.validate_json(adapter.dump_json(asymmetric)) == asymmetric
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        adapter.validate_python([{"kind": "conv3d", "name": "x"}])
