"""GSL mechanics: the controller against a stub performance model, lasso, threshold."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model.pruning import GSL, GSLConfig, GuidedController
from perfmodel import LinearSpec, get_profile, predict_network
from perfmodel.roofline import RooflineModel, SparseTime


class StubModel(RooflineModel):
    """Sweet spot of "good" = sparsity 0.5-0.8 (α = 2, memory floor 0.4); "hopeless": none."""

    name = "stub"

    def dense_time_s(self, layer, hw):
        return 1.0

    def sparse_time(self, layer, hw, density):
        memory = 2.0 if layer.name == "hopeless" else 0.4
        return SparseTime(compute_s=2.0 * density, memory_s=memory)


def _predictions(*names: str):
    layers = [LinearSpec(name=n, in_features=8, out_features=8) for n in names]
    result = predict_network(layers, get_profile("atom-c2750"), model=StubModel())
    return {p.name: p for p in result.layers}


def test_stub_sweet_spot():
    good = _predictions("good")["good"].sweet_spot
    assert good.min_sparsity == pytest.approx(0.5)
    assert good.max_sparsity == pytest.approx(0.8)
    assert _predictions("hopeless")["hopeless"].sweet_spot is None


def test_controller_excludes_layers_without_speedup():
    controller = GuidedController(_predictions("good", "hopeless"), GSLConfig())
    decisions = {d.layer: d for d in controller.start()}
    assert decisions["good"].action == "prune"
    assert decisions["hopeless"].action == "exclude"
    assert "no speedup" in decisions["hopeless"].reason
    assert controller.state == {"good": "pruning", "hopeless": "excluded"}


def test_controller_stops_a_layer_past_its_upper_bound():
    controller = GuidedController(_predictions("good"), GSLConfig())
    controller.start()
    assert controller.check({"good": 0.7}) == []
    [decision] = controller.check({"good": 0.81})
    assert decision.action == "stop"
    assert "passed the upper bound" in decision.reason and "80.0%" in decision.reason
    assert controller.converged
    assert controller.check({"good": 0.9}) == []  # stopped layers are not checked again


def test_controller_restores_a_layer_stabilised_below_its_lower_bound():
    config = GSLConfig(patience=3, stable_tol=0.01)
    controller = GuidedController(_predictions("good"), config)
    controller.start()
    # Still moving: no decision even though it is below the lower bound.
    for sparsity in (0.1, 0.2, 0.3):
        assert controller.check({"good": sparsity}) == []
    # Stable for patience checks (window of patience + 1 values within tolerance).
    assert controller.check({"good": 0.305}) == []
    assert controller.check({"good": 0.306}) == []
    [decision] = controller.check({"good": 0.307})
    assert decision.action == "restore"
    assert "stabilised at 30.7%" in decision.reason
    assert controller.state["good"] == "restored"


def test_stable_inside_the_sweet_spot_keeps_pruning():
    controller = GuidedController(_predictions("good"), GSLConfig(patience=2))
    controller.start()
    for _ in range(5):
        assert controller.check({"good": 0.6}) == []
    assert controller.state["good"] == "pruning" and not controller.converged


def test_unguided_prunes_everything_and_never_stops():
    controller = GuidedController(_predictions("good", "hopeless"), GSLConfig(guided=False))
    assert {d.action for d in controller.start()} == {"prune"}
    assert controller.check({"good": 0.99, "hopeless": 0.0}) == []
    assert not controller.converged


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.good = nn.Linear(8, 8)
        self.hopeless = nn.Linear(8, 8)


def _gsl(**config) -> tuple[GSL, TwoLayers, list]:
    gsl = GSL(_predictions("good", "hopeless"), GSLConfig(**config))
    model, events = TwoLayers(), []
    gsl.start(model, events.append)
    return gsl, model, events


def test_start_emits_decisions_and_tracks_only_pruned_weights():
    gsl, _, events = _gsl()
    assert [(e["layer"], e["action"]) for e in events] == [("good", "prune"),
                                                          ("hopeless", "exclude")]  # fmt: skip
    assert all(e["type"] == "decision" and e["reason"] for e in events)
    assert gsl.tracked_parameters() == {"good.weight"}


def test_threshold_follows_skimcaffe():
    gsl, _, _ = _gsl(threshold_t0=1e-4, threshold_k=10)
    thresholds = gsl.threshold(torch.tensor([0.0, 1e-3, 1e-1]))
    assert thresholds[0].item() == pytest.approx(1e-3)  # not moving: k·t0
    assert thresholds[1].item() == pytest.approx(1 / (10 + 1000))
    assert thresholds[2].item() == pytest.approx(1 / (1000 + 1000))
    assert thresholds[2] < thresholds[1] < thresholds[0]  # fast-moving weights are kept


def test_after_step_zeroes_small_slow_weights_of_pruned_layers_only():
    gsl, model, _ = _gsl()
    with torch.no_grad():
        model.good.weight.fill_(5e-4)
        model.good.weight[0, 0] = 2e-3  # above k·t0
        model.good.weight[0, 1] = 5e-4  # small but moving fast: threshold ≈ 1/(1e4·1 + 1e3)
        model.hopeless.weight.fill_(5e-4)
    update = torch.zeros(8, 8)
    update[0, 1] = 1.0
    gsl.after_step(model, {"good.weight": update})
    assert model.good.weight[0, 0].item() == pytest.approx(2e-3)
    assert model.good.weight[0, 1].item() == pytest.approx(5e-4)
    assert (model.good.weight == 0).sum().item() == 64 - 2
    assert (model.hopeless.weight == 0).sum().item() == 0


def test_regularize_adds_lasso_sign_with_multipliers():
    gsl, model, _ = _gsl(lasso=0.01, linear_multiplier=0.1)
    with torch.no_grad():
        model.good.weight.copy_(torch.tensor([1.0, -1.0, 0.0, 2.0]).repeat(16).view(8, 8))
    model.good.weight.grad = torch.zeros(8, 8)
    model.hopeless.weight.grad = torch.zeros(8, 8)
    gsl.regularize(model)
    expected = 0.001 * torch.tensor([1.0, -1.0, 0.0, 1.0]).repeat(16).view(8, 8)
    torch.testing.assert_close(model.good.weight.grad, expected)
    assert model.hopeless.weight.grad.abs().sum() == 0


def test_restore_puts_back_the_dense_weights_and_stop_freezes_zeros():
    gsl, model, _ = _gsl(patience=1, stable_tol=0.5)
    dense = model.good.weight.detach().clone()
    with torch.no_grad():
        model.good.weight[:, :2] = 0  # 25% sparse: below the 50% lower bound
    events: list = []
    gsl.end_epoch(model, 1, events.append)
    assert gsl.end_epoch(model, 2, events.append) is True  # restored → nothing left: converged
    assert [e["action"] for e in events] == ["restore"]
    torch.testing.assert_close(model.good.weight, dense)
    assert gsl.masks(model) == {}

    gsl, model, _ = _gsl()
    with torch.no_grad():
        model.good.weight[:, :7] = 0  # 87.5%: past the 80% upper bound
    gsl.end_epoch(model, 1, events.append)
    assert events[-1]["action"] == "stop"
    with torch.no_grad():
        model.good.weight.add_(1.0)  # an optimizer step would revive zeros…
    gsl.after_step(model, {})
    assert (model.good.weight[:, :7] == 0).all()  # …but the frozen pattern holds
    assert set(gsl.masks(model)) == {"good.weight"}


def test_budget_end_settles_layers_still_being_pruned():
    """A layer still being pruned when the prune phase's epochs ran out used to stay
    "pruning": below its sweet spot it kept the zeros (accuracy lost, no speed) and the report
    showed it as still pruning. Now it stops inside its sweet spot, or gets its dense weights
    back below it."""
    controller = GuidedController(_predictions("good", "low", "hopeless"), GSLConfig())
    controller.start()
    decisions = {d.layer: d for d in controller.finish({"good": 0.6, "low": 0.3})}
    assert decisions["good"].action == "stop"
    assert "budget ended at 60.0%" in decisions["good"].reason
    assert "inside its sweet spot (50.0–80.0%)" in decisions["good"].reason
    assert decisions["low"].action == "restore"
    assert "below the lower bound" in decisions["low"].reason
    assert "hopeless" not in decisions  # excluded from the start
    assert controller.state == {"good": "stopped", "low": "restored", "hopeless": "excluded"}
    assert controller.finish({}) == []  # settled once
    unguided = GuidedController(_predictions("good"), GSLConfig(guided=False))
    unguided.start()
    assert unguided.finish({"good": 0.1}) == [] and unguided.state["good"] == "pruning"

    gsl, model, _ = _gsl()
    dense = model.good.weight.detach().clone()
    with torch.no_grad():
        model.good.weight[:, :2] = 0  # 25%: below the 50% lower bound
    events: list = []
    gsl.end_prune(model, 4, events.append)
    assert [(e["action"], e["epoch"]) for e in events] == [("restore", 4)]
    torch.testing.assert_close(model.good.weight, dense)
    assert gsl.masks(model) == {} and gsl.layer_states()["good"] == "restored"


def test_trainer_settles_gsl_layers_when_the_prune_budget_ends():
    """Through the training loop: one prune epoch is too short for the lasso to reach the
    sweet spot, so the layer ends restored (dense) with a decision event, not "pruning"."""
    from model.training import TrainConfig, Trainer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(64, 1, 4, 4)
    data = torch.utils.data.TensorDataset(x, (x.sum((1, 2, 3)) > 0).long())
    predictions = _predictions("1")
    gsl = GSL(predictions, GSLConfig(lasso=0.0))  # no lasso: sparsity stays 0
    config = TrainConfig(dense_epochs=0, prune_epochs=1, finetune_epochs=1, batch_size=32)
    events = Trainer(model, data, data, config, hooks=gsl).fit().events
    assert gsl.layer_states() == {"1": "restored"}
    [decision] = [e for e in events if e["type"] == "decision" and e["action"] == "restore"]
    assert "budget ended at 0.0%" in decision["reason"]


@pytest.mark.parametrize(
    ("options", "message"),
    [({"stable_tol": 0.0}, "stable_tol must be > 0"),
     ({"conv_multiplier": -1.0}, r"multipliers must be >= 0, got \['conv_multiplier'\]"),
     ({"multipliers": {"fc1": -0.1}}, r"got \['fc1'\]"),
     ({"linear_multiplier": float("nan")}, "linear_multiplier")],
)  # fmt: skip
def test_config_refuses_values_that_make_no_sense(options, message):
    """A negative multiplier grew weights instead of pruning them; a tolerance of 0 never
    counted a layer as stable."""
    with pytest.raises(ValueError, match=message):
        GSLConfig(**options)
