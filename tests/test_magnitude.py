"""Gradual magnitude pruning: Zhu & Gupta's cubic schedule, masks, freezing."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from model.pruning.magnitude import Magnitude, MagnitudeConfig, cubic_schedule, magnitude_mask
from model.training import TrainConfig, Trainer


def test_cubic_schedule():
    assert cubic_schedule(0, 10, 0.0, 0.9) == 0.0
    assert cubic_schedule(10, 10, 0.0, 0.9) == pytest.approx(0.9)
    assert cubic_schedule(15, 10, 0.0, 0.9) == pytest.approx(0.9)  # stays at s_f
    assert cubic_schedule(5, 10, 0.0, 0.8) == pytest.approx(0.8 * (1 - 0.5**3))
    steps = [cubic_schedule(t, 10, 0.1, 0.9) for t in range(11)]
    gains = [b - a for a, b in itertools.pairwise(steps)]
    assert all(g > 0 for g in gains) and gains == sorted(gains, reverse=True)  # fast, then slow


def test_magnitude_mask_removes_the_smallest():
    weight = torch.tensor([[0.5, -0.1], [0.05, -2.0]])
    assert torch.equal(magnitude_mask(weight, 0.5), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert magnitude_mask(weight, 0.0).sum() == 4


def test_gradual_pruning_reaches_the_target_and_freezes():
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    data = TensorDataset(x, (x[:, 0] > 0).long())
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    hooks = Magnitude({}, MagnitudeConfig(final_sparsity=0.75, ramp_epochs=3))
    events = []
    config = TrainConfig(dense_epochs=1, prune_epochs=10, finetune_epochs=2, batch_size=16,
                         lr=0.1, finetune_lr=0.05, log_every=0, threads=1)  # fmt: skip
    Trainer(model, data, data, config, hooks=hooks, callbacks=[events.append]).fit(resume=False)
    prune = [e["sparsity"]["0"] for e in events if e["type"] == "epoch" and e["phase"] == "prune"]
    assert len(prune) == 3  # converged after the ramp
    assert prune == sorted(prune)
    for layer in (model[0], model[2]):
        assert (layer.weight == 0).float().mean().item() == pytest.approx(0.75, abs=0.02)
    targets = [e["message"] for e in events if e["type"] == "log" and "target" in e["message"]]
    assert targets[-1].startswith("magnitude: target sparsity 75.0%")


def test_global_scope_uses_one_threshold():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].weight.copy_(torch.linspace(0.01, 0.16, 16).reshape(4, 4))
    hooks = Magnitude({}, MagnitudeConfig(final_sparsity=0.5, initial_sparsity=0.5,
                                          scope="global"))  # fmt: skip
    hooks.start(model, lambda e: None)
    assert (model[0].weight != 0).all() and (model[1].weight == 0).all()


def test_magnitude_job_end_to_end(capsys, tmp_path):
    from cli_jobs import prune_job

    manifest = prune_job(capsys, tmp_path / "job", "magnitude", "lenet5", "--no-measure",
                         "--set", "ramp_epochs=2", "--set", "final_sparsity=0.8")  # fmt: skip
    assert manifest["structure"] == "unstructured"
    for layer in manifest["layers"]:
        assert layer["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert {layer["format"] for layer in manifest["layers"]} <= {"sparse", "dense"}
