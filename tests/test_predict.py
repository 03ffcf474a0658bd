"""Network predictions: recommendations, reasons, totals and the JSON contract."""

from __future__ import annotations

import pytest

from model.analysis import network_layers
from perfmodel import LinearSpec, Policy, predict_layer, predict_network
from perfmodel.predict import REPORTED_SPARSITIES


def test_googlenet_on_xeon_separates_sparse_and_dense_layers(xeon):
    result = predict_network(network_layers("googlenet"), xeon, name="googlenet")
    by_name = {p.name: p for p in result.layers}
    reduce = by_name["inception_4a.5x5_reduce"]
    assert reduce.sweet_spot is None
    assert reduce.recommendation == "dense"
    assert "no sparsity makes it faster" in reduce.reason
    conv3 = by_name["inception_4a.3x3"]
    assert conv3.sweet_spot is not None and conv3.recommendation == "sparse"
    assert conv3.reason.startswith("sparse beats dense from 66.7% sparsity")


def test_policy_keeps_layers_whose_sweet_spot_starts_too_late(xeon):
    fc = LinearSpec(name="fc7", in_features=4096, out_features=4096)
    prediction = predict_layer(fc, xeon)
    assert prediction.sweet_spot is not None
    assert prediction.sweet_spot.min_sparsity > 0.95  # batch 1: weight traffic dominates
    assert prediction.recommendation == "dense"
    assert "more than pruning reaches" in prediction.reason
    lenient = predict_layer(fc, xeon, policy=Policy(max_reachable_sparsity=0.995))
    assert lenient.recommendation == "sparse"


def test_network_speedup_counts_only_sparse_layers(xeon):
    result = predict_network(network_layers("alexnet"), xeon, name="alexnet")
    sparse = [p for p in result.layers if p.recommendation == "sparse"]
    assert [p.name for p in sparse] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    dense_fc = sum(p.dense_time_s for p in result.layers if p.recommendation == "dense")
    conv = sum(p.dense_time_s for p in sparse)
    expected = result.dense_time_s / (dense_fc + conv / (1 / (3 * 0.1)))
    assert result.network_speedup(0.9) == pytest.approx(expected)
    assert result.network_speedup(0.5) == pytest.approx(1.0)  # below break-even: stays dense


def test_json_contract(xeon):
    data = predict_network(network_layers("resnet20"), xeon, name="resnet20", batch=32).to_dict()
    assert (data["model"], data["hardware"], data["batch"]) == ("resnet20", "xeon-e5-2697v4", 32)
    assert len(data["layers"]) == 20
    for layer in data["layers"]:
        assert {"name", "kind", "flops", "dense_time_s", "bound", "sweet_spot", "speedup",
                "recommendation", "reason"} <= set(layer)  # fmt: skip
        assert layer["bound"] in ("compute", "memory")
        assert layer["recommendation"] in ("sparse", "dense")
        assert list(layer["speedup"]) == ["0.5", "0.7", "0.8", "0.9", "0.95"]
        spot = layer["sweet_spot"]
        assert spot is None or set(spot) == {"min_sparsity", "max_sparsity", "max_speedup"}
    assert data["layers"][0]["spec"]["batch"] == 32
    assert set(data["totals"]["speedup"]) == {f"{s:g}" for s in REPORTED_SPARSITIES}


def test_batch_amortises_weight_traffic(xeon):
    fc = LinearSpec(name="fc", in_features=4096, out_features=4096)
    single = predict_layer(fc, xeon)
    batched = predict_layer(fc.with_batch(144), xeon)
    assert batched.speedup[0.9] > single.speedup[0.9]


def test_a_batch_keeps_the_rows_each_example_makes(xeon):
    """predict_network(batch=8) replaced a linear layer's rows (50 per example) by 8: 50×
    too little work, and the network's batch read 400."""
    import torch

    from perfmodel.extract import extract_layers

    mlp = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 8))
    at_8 = predict_network(extract_layers(mlp, (50, 64), batch=8), xeon)
    later = predict_network(extract_layers(mlp, (50, 64)), xeon, batch=8)
    assert at_8.batch == later.batch == 8
    assert [p.layer.batch for p in later.layers] == [400, 400]
    assert [p.dense_time_s for p in later.layers] == [p.dense_time_s for p in at_8.layers]
    assert LinearSpec(name="fc", in_features=4, out_features=4, per_example=3).with_batch(
        5).batch == 15  # fmt: skip


def test_duplicate_layer_names_are_rejected(xeon):
    fc = LinearSpec(name="fc", in_features=4, out_features=4)
    with pytest.raises(ValueError, match="repeated: fc"):
        predict_network([fc, fc], xeon)
