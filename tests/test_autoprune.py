"""AutoPrune mechanics: estimators (what they change: speed, not direction; leaky's hysteresis),
the sign rule, recoverability, no decay/momentum on masked weights, filter masks, resume."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from model.pruning.autoprune import (
    AutoPrune,
    AutoPruneConfig,
    estimator_derivative,
    masked_weight,
)
from model.training import TrainConfig, Trainer


def test_estimators():
    m = torch.tensor([-2.0, -0.1, 0.0, 0.1, 2.0])
    assert torch.equal(estimator_derivative(m, "linear"), torch.ones(5))
    assert torch.allclose(estimator_derivative(m, "leaky", leak=0.1),
                          torch.tensor([0.1, 0.1, 0.1, 1.0, 1.0]))  # fmt: skip
    softplus = estimator_derivative(m, "softplus", temperature=0.5)
    assert torch.allclose(softplus, torch.sigmoid(m / 0.5))
    assert (softplus.diff() > 0).all()  # derivative of softplus: monotone, in (0, 1)


@pytest.mark.parametrize("estimator", ["linear", "leaky", "softplus"])
def test_mask_update_follows_the_sign_of_the_weights_pull(estimator):
    weight = torch.tensor([0.5, -0.5, 0.5, -0.5], requires_grad=True)
    mask = torch.tensor([0.3, 0.3, -0.3, -0.3], requires_grad=True)
    config = AutoPruneConfig(estimator=estimator)
    upstream = torch.tensor([-1.0, -1.0, 1.0, 1.0])  # ∂L/∂(w·h(m)); the pull is its negative
    (masked_weight(weight, mask, config) * upstream).sum().backward()
    pull = -upstream
    mask_step = -mask.grad  # SGD moves m along the negative gradient
    # the mask grows when the pull points away from zero (same sign as w), shrinks otherwise
    assert torch.equal(torch.sign(mask_step), torch.sign(pull * torch.sign(weight.detach())))
    # magnitude does not enter: the weight is replaced by its sign
    assert torch.allclose(mask.grad.abs(), estimator_derivative(mask.detach(), estimator))
    # masked weights (m ≤ 0) get no gradient; live ones get the plain one
    assert torch.equal(weight.grad, torch.tensor([-1.0, -1.0, 0.0, 0.0]))


def _mask_trainer(estimator: str, masks: list[float], strength: float = 0.01,
                  regularizer: str = "all"):  # fmt: skip
    """A 1→N linear layer (weights +0.5) whose masks the hooks train with plain SGD, lr 1."""
    model = nn.Sequential(nn.Linear(1, len(masks), bias=False))
    with torch.no_grad():
        model[0].weight.fill_(0.5)
    hooks = AutoPrune({}, AutoPruneConfig(estimator=estimator, strength=strength, mask_lr=1.0,
                                          regularizer=regularizer))  # fmt: skip
    hooks.start(model, lambda e: None)
    with torch.no_grad():
        hooks.mask_params["0"].copy_(torch.tensor(masks).view(-1, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    hooks.attach(model, optimizer, "prune")

    def train_step(pull: torch.Tensor | float) -> torch.Tensor:
        """One step in which the loss pulls each effective weight by ``pull`` (= −∂L/∂(w·h(m)))
        away from zero; returns the masks after the step."""
        optimizer.zero_grad(set_to_none=True)
        out = model(torch.ones(1, 1))  # (1, N): the effective weights
        (-(torch.as_tensor(pull) * out)).sum().backward()
        hooks.regularize(model)
        optimizer.step()
        hooks.after_step(model, {})
        return hooks.mask_params["0"].detach().flatten().clone()

    return train_step


def test_the_estimator_sets_the_speed_not_the_direction_of_a_mask_update():
    # Both terms of ∂m (data and regulariser) carry the same h'(m) > 0, so every estimator moves
    # a mask the same way; only how far depends on h'(m).
    masks = [-2.0, -0.3, -0.01, 0.01, 0.3, 2.0] * 3
    pulls = torch.tensor([-0.05] * 6 + [0.005] * 6 + [0.05] * 6)  # λ = 0.01 lies in between
    start = torch.tensor(masks)
    moves = {e: _mask_trainer(e, masks)(pulls) - start for e in ("linear", "leaky", "softplus")}
    assert torch.equal(torch.sign(moves["linear"]), torch.sign(pulls - 0.01))  # pull vs λ
    for estimator in ("leaky", "softplus"):
        assert torch.equal(torch.sign(moves[estimator]), torch.sign(moves["linear"]))
        speed = estimator_derivative(start, estimator)
        assert torch.allclose(moves[estimator], moves["linear"] * speed, atol=1e-7)


def test_leaky_holds_a_just_pruned_mask_where_linear_lets_it_flip_back():
    # The one place linear and leaky differ in outcome. The step that prunes a mask is taken
    # at h'(0+) = 1 and overshoots below 0; below 0 leaky moves at h'(0−) = 0.1, so undoing the
    # overshoot takes 10× the evidence: hysteresis at the threshold. Softplus is continuous at
    # 0 (its smaller h' shrinks the overshoot and the way back alike): no hysteresis.
    steps_off = {}
    for estimator in ("linear", "leaky", "softplus"):
        train_step = _mask_trainer(estimator, [0.005])
        history = [train_step(-0.04)]  # pruned: 0.005 − (0.04 + 0.01)·h'(0.005)
        history += [train_step(0.02) for _ in range(60)]  # then the data wants it back (> λ)
        run = torch.cat(history)
        assert run[0] < 0 and run[-1] > 0  # pruned, and recovered within 60 steps
        steps_off[estimator] = int((run <= 0).sum())
    assert steps_off["linear"] == 5  # 0.045 back at 0.01 a step
    assert abs(steps_off["softplus"] - steps_off["linear"]) <= 1
    assert steps_off["leaky"] >= 9 * steps_off["linear"]


def test_the_live_regularizer_leaves_pruned_masks_to_the_data_where_linear_answers_fastest():
    # regularizer="live": λ pulls only live masks. A pruned mask with no data pull stays put
    # (under "all" it keeps sinking), and a weak pull (< λ) brings it back: how fast is h'(m<0)
    # — fastest for linear (1), slowest for leaky (0.1): linear flips back most.
    pulls = torch.tensor([0.0, 0.005])
    all_rule = _mask_trainer("linear", [-0.2, -0.2])(pulls)
    assert (all_rule < -0.2).all()  # both sink: λ beats a pull below it
    moves = {}
    for estimator in ("linear", "leaky", "softplus"):
        train_step = _mask_trainer(estimator, [-0.2, -0.2], regularizer="live")
        after = train_step(pulls)
        assert after[0] == -0.2  # no pull, no move
        moves[estimator] = float(after[1] + 0.2)
    assert moves["linear"] == pytest.approx(0.005, abs=1e-6)
    assert moves["leaky"] == pytest.approx(0.0005, abs=1e-6)
    assert moves["leaky"] < moves["softplus"] < moves["linear"]
    with pytest.raises(ValueError, match="regularizer must be one of"):
        AutoPruneConfig(regularizer="none")
    with pytest.raises(ValueError, match=r"leak must be in \[0, 1\]"):
        AutoPruneConfig(leak=-0.5)
    with pytest.raises(ValueError, match=r"layer_strength values must be >= 0, got \['fc1'\]"):
        AutoPruneConfig(layer_strength={"fc1": -1.0, "fc2": 0.1})


def test_softplus_equals_the_linear_estimator_with_masks_started_further_up():
    # With h'(m) on the whole update, m' = −η·u·h'(m) is dφ = −η·u in φ(m) = ∫ dm / h'(m):
    # for softplus φ(m) = m + τ(1 − e^{−m/τ}). A mask at m₀ under softplus is pruned when a
    # linear-estimator mask started at φ(m₀) is, which is why softplus prunes less at equal λ.
    tau, m0 = 0.5, 0.995
    phi = m0 + tau * (1 - math.exp(-m0 / tau))  # 1.427

    def steps_to_prune(estimator: str, start: float) -> int:
        train_step = _mask_trainer(estimator, [start])
        return next(k for k in range(1, 1000) if train_step(0.0)[0] <= 0)  # λ alone

    linear_from_phi = steps_to_prune("linear", phi)
    assert steps_to_prune("linear", m0) == 100  # ⌈m₀ / (η·λ)⌉
    assert linear_from_phi > 140
    assert abs(steps_to_prune("softplus", m0) - linear_from_phi) <= 1


def _data(n: int = 96) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 6, 6, generator=generator)
    return TensorDataset(x, (x.mean((1, 2, 3)) > 0).long())


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))


def _config(**changes) -> TrainConfig:
    base = {
        "dense_epochs": 0,
        "prune_epochs": 2,
        "finetune_epochs": 0,
        "batch_size": 16,
        "lr": 0.1,
        "finetune_lr": 0.01,
        "weight_decay": 0.01,
        "log_every": 0,
        "threads": 1,
        "device": "cpu",  # the tests read the model and the masks side by side after a run
    }
    return TrainConfig(**{**base, **changes})  # fmt: skip


def test_masked_weights_keep_their_values_and_get_no_momentum():
    model = _model()
    hooks = AutoPrune({}, AutoPruneConfig(strength=0.0, mask_lr=1e-6))
    trainer = Trainer(model, _data(), _data(), _config(), hooks=hooks)
    hooks.start(model, lambda e: None)
    with torch.no_grad():
        hooks.mask_params["0"][0] = -1.0  # mask filter 0's weights off (and far from flipping)
    original = model[0].weight.detach().clone()
    trainer.phase = "prune"
    trainer.optimizer = trainer._optimizer(0.1)
    trainer.epoch = 0
    trainer.train_epoch("prune")  # weight decay 0.01 and momentum 0.9 are on for the others
    weight = model[0].weight.detach()
    assert torch.equal(weight[0], original[0])  # held exactly: recoverable
    assert not torch.equal(weight[1], original[1])  # live weights trained
    buffer = trainer.optimizer.state[model[0].weight]["momentum_buffer"]
    assert (buffer[0] == 0).all()
    mask_group = trainer.optimizer.param_groups[-1]
    assert mask_group["momentum"] == 0 and mask_group["weight_decay"] == 0
    # turn the mask back on: the weight is used again with its old value
    with torch.no_grad():
        hooks.mask_params["0"][0] = 1.0
    x = torch.randn(2, 1, 6, 6)
    expected = torch.nn.functional.conv2d(x, weight, model[0].bias)
    assert torch.allclose(model[0](x), expected)


def test_regulariser_prunes_and_fine_tuning_freezes_the_masks():
    model = _model()
    hooks = AutoPrune({}, AutoPruneConfig(strength=0.5, mask_lr=1.0, estimator="leaky"))
    events = []
    Trainer(model, _data(), _data(), _config(finetune_epochs=1), hooks=hooks,
            callbacks=[events.append]).fit(resume=False)  # fmt: skip
    prune_epochs = [e for e in events if e["type"] == "epoch" and e["phase"] == "prune"]
    assert prune_epochs[-1]["sparsity"]["0"] > 0.5  # reported from the masks while pruning
    masks = {n: (m.detach() > 0) for n, m in hooks.mask_params.items()}
    assert torch.equal(model[0].weight != 0, masks["0"])  # h(M) frozen into the weights
    assert "forward" not in model[0].__dict__  # the masked forward is gone after pruning


def test_filter_masks_are_structured():
    model = _model()
    hooks = AutoPrune({}, AutoPruneConfig(granularity="filter"))
    hooks.start(model, lambda e: None)
    assert hooks.structured
    assert hooks.mask_params["0"].shape == (4, 1, 1, 1)
    assert hooks.mask_params["3"].shape == (2, 1)
    with torch.no_grad():
        hooks.mask_params["0"][2] = -1.0
    masks = hooks.masks(model)
    assert (masks["0.weight"][2] == 0).all() and (masks["0.weight"][1] == 1).all()


def test_resume_equals_an_uninterrupted_run(tmp_path):
    def run(path, stop_after=None):
        model = _model()
        hooks = AutoPrune({}, AutoPruneConfig(strength=0.2, mask_lr=0.5))
        config = _config(prune_epochs=3, finetune_epochs=1, dense_epochs=1)
        trainer = Trainer(model, _data(), _data(), config, hooks=hooks, checkpoint_path=path)
        if stop_after is not None:

            def stop(event, trainer=trainer):
                if (
                    event["type"] == "epoch"
                    and event["phase"] == "prune"
                    and event["epoch"] == stop_after
                ):
                    trainer.cancel.set()

            trainer.callbacks.append(stop)
            with pytest.raises(Exception, match="cancelled"):
                trainer.fit()
            return None
        trainer.fit()
        return model

    straight = run(tmp_path / "a.pt")
    run(tmp_path / "b.pt", stop_after=2)
    resumed = run(tmp_path / "b.pt")
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_autoprune_job_end_to_end(capsys, tmp_path):
    from cli_jobs import prune_job

    manifest = prune_job(capsys, tmp_path / "job", "autoprune", "lenet300", "--no-measure",
                         "--set", "strength=0.05")  # fmt: skip
    assert manifest["structure"] == "unstructured"
    assert all(layer["sparsity"] > 0 for layer in manifest["layers"])


def test_autoprune_filter_job_is_cut(capsys, tmp_path):
    from cli_jobs import check_structured, prune_job

    manifest = prune_job(capsys, tmp_path / "job", "autoprune", "lenet5", "--no-measure",
                         "--set", "granularity=filter", "--set", "strength=0.05")  # fmt: skip
    check_structured(manifest, tmp_path / "job")
