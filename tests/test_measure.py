"""Measured speedups carry the spread of their rounds, and noisy ones are named."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model import measure


def test_compare_reports_median_times_and_the_spread_of_per_round_ratios(monkeypatch):
    rounds = [[4.0, 4.0, 4.0, 8.0, 4.0], [1.0, 2.0, 1.0, 2.0, 1.0]]  # ratios 4, 2, 4, 4, 4
    monkeypatch.setattr(measure, "timed_rounds", lambda functions, repeats: rounds)
    result = measure.compare(None, None, 5, ("dense_s", "sparse_s"))
    assert result["dense_s"] == 4.0 and result["sparse_s"] == 1.0 and result["speedup"] == 4.0
    q1, q3 = result["speedup_iqr"]
    assert q1 == pytest.approx(3.0) and q3 == pytest.approx(4.0)


def test_noisy_names_timings_whose_rounds_disagree():
    steady = {"speedup": 2.0, "speedup_iqr": [1.9, 2.1]}  # 10% of the speedup
    shaky = {"speedup": 2.0, "speedup_iqr": [1.2, 2.4]}  # 60%
    measured = {"layers": {"conv1": steady, "conv2": shaky}, "model": shaky}
    assert measure.noisy(measured) == ["conv2", "model"]
    assert measure.noisy({"layers": {"conv1": steady}, "model": steady}) == []


def test_measure_speedups_returns_spreads_for_every_timing():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    with torch.no_grad():
        for layer in (net[0], net[3]):
            layer.weight[torch.rand(layer.weight.shape) < 0.9] = 0
    measured = measure.measure_speedups(net, {"0": "sparse", "3": "dense"}, (3, 8, 8),
                                        repeats=5)  # fmt: skip
    assert set(measured["layers"]) == {"0"}
    for timing in (measured["layers"]["0"], measured["model"]):
        q1, q3 = timing["speedup_iqr"]
        assert 0 < q1 <= q3
    assert set(measured["noisy"]) <= {"0", "model"}
