"""The training loop: phases, frozen masks in fine-tuning, cancel and resume."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from model.pruning import GSL, GSLConfig
from model.training import Cancelled, TrainConfig, Trainer, layer_sparsity
from perfmodel import get_profile, predict_network
from perfmodel.extract import extract_layers


def _data(n: int = 96, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=generator)
    y = (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()
    return TensorDataset(x, y)


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 32, 3, padding=1)  # has a sweet spot on the Atom profile
        self.fc = nn.Linear(32 * 8 * 8, 4)
        self.drop = nn.Dropout(0.1)  # consumes the global RNG: resume must restore it

    def forward(self, x):
        x = torch.relu(self.conv(torch.relu(self.stem(x))))
        return self.fc(self.drop(x.flatten(1)))


class FixedMask:
    """Hooks that zero half of conv's weights at the start of pruning and freeze them."""

    def __init__(self):
        self.mask = None

    def start(self, model, emit):
        self.mask = torch.ones_like(model.conv.weight)
        self.mask.view(-1)[::2] = 0
        with torch.no_grad():
            model.conv.weight.mul_(self.mask)

    def tracked_parameters(self):
        return set()

    def regularize(self, model):
        pass

    def after_step(self, model, updates):
        pass

    def end_epoch(self, model, epoch, emit):
        return False

    def masks(self, model):
        return {"conv.weight": self.mask}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def _config(**changes) -> TrainConfig:
    base = {"dense_epochs": 2, "prune_epochs": 1, "finetune_epochs": 3, "batch_size": 16,
            "lr": 0.05, "finetune_lr": 0.05, "log_every": 0, "threads": 1}  # fmt: skip
    return TrainConfig(**{**base, **changes})


def test_phases_and_events():
    torch.manual_seed(0)
    events = []
    trainer = Trainer(Small(), _data(), _data(48, 1), _config(), hooks=FixedMask(),
                      callbacks=[events.append])  # fmt: skip
    result = trainer.fit()
    epochs = [(e["phase"], e["epoch"]) for e in events if e["type"] == "epoch"]
    assert epochs == [("dense", 1), ("dense", 2), ("prune", 1), ("finetune", 1),
                      ("finetune", 2), ("finetune", 3)]  # fmt: skip
    assert [e["phase"] for e in events if e["type"] == "phase"] == ["dense", "prune", "finetune"]
    last = [e for e in events if e["type"] == "epoch"][-1]
    assert set(last["sparsity"]) == {"stem", "conv", "fc"}
    assert 0 <= last["test_accuracy"] <= 1 and last["loss"] > 0
    assert result.dense_accuracy is not None and result.final_accuracy == last["test_accuracy"]


def test_finetune_keeps_zeros_frozen_including_momentum():
    torch.manual_seed(0)
    hooks = FixedMask()
    trainer = Trainer(Small(), _data(), _data(48, 1), _config(), hooks=hooks)
    trainer.fit()
    weight = trainer.model.conv.weight
    assert (weight.detach().view(-1)[::2] == 0).all()
    assert (weight.detach().view(-1)[1::2] != 0).all()
    buffer = trainer.optimizer.state[weight]["momentum_buffer"]
    assert (buffer.view(-1)[::2] == 0).all()
    assert buffer.view(-1)[1::2].abs().sum() > 0  # the other weights did train
    assert layer_sparsity(trainer.model)["conv"] == pytest.approx(0.5)


def _gsl_trainer(tmp_path, cancel=None, callbacks=()):
    torch.manual_seed(0)
    model = Small()
    predictions = predict_network(extract_layers(model, (1, 8, 8)), get_profile("atom-c2750"))
    hooks = GSL({p.name: p for p in predictions.layers}, GSLConfig(lasso=0.02))
    return Trainer(model, _data(), _data(48, 1), _config(prune_epochs=3), hooks=hooks,
                   callbacks=callbacks, checkpoint_path=tmp_path / "ckpt.pt",
                   cancel=cancel)  # fmt: skip


def test_resume_after_cancel_equals_an_uninterrupted_run(tmp_path):
    straight = _gsl_trainer(tmp_path / "a")
    straight.fit()

    cancel = threading.Event()

    def stop_after_prune_epoch_1(event):
        if event["type"] == "epoch" and event["phase"] == "prune" and event["epoch"] == 1:
            cancel.set()

    interrupted = _gsl_trainer(tmp_path / "b", cancel, [stop_after_prune_epoch_1])
    with pytest.raises(Cancelled, match=r"cancelled during (prune epoch 2|finetune epoch 1)"):
        interrupted.fit()
    resumed = _gsl_trainer(tmp_path / "b")
    resumed.fit(resume=True)

    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)
    assert resumed.hooks.layer_states() == straight.hooks.layer_states()
    # the prune budget's end settles the layer (stopped, or restored below its sweet spot)
    assert straight.hooks.layer_states()["conv"] in ("stopped", "restored")
    last_prune = [e for e in straight.events if e["type"] == "epoch" and e["phase"] == "prune"][-1]
    assert last_prune["sparsity"]["conv"] > 0.01  # pruning did happen
    kinds = [(e["type"], e.get("phase"), e.get("epoch")) for e in resumed.events
             if e["type"] in ("epoch", "decision")]  # fmt: skip
    expected = [(e["type"], e.get("phase"), e.get("epoch")) for e in straight.events
                if e["type"] in ("epoch", "decision")]  # fmt: skip
    assert kinds == expected


def test_checkpoint_is_weights_only(tmp_path):
    trainer = _gsl_trainer(tmp_path)
    trainer.fit()
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert state["phase"] == "finetune" and "model" in state


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("batch_size", 0, "batch_size must be between 1 and 65536"),
     ("batch_size", 2**63, "batch_size must be between 1 and 65536"),  # islice refused it
     ("lr", 0, "lr must be > 0"), ("lr", 1e308, "lr must be > 0 and at most 3.403e"),
     ("finetune_lr", float("inf"), "finetune_lr must be > 0 and at most"),
     ("momentum", 1.0, "momentum must be in"), ("prune_epochs", -1, "prune_epochs must be"),
     ("weight_decay", -1e-4, "weight_decay must be >= 0"),
     ("weight_decay", float("inf"), "weight_decay must be >= 0 and at most"),
     ("weight_decay", 1e300, "weight_decay must be >= 0 and at most"),
     ("seed", -1, "seed must be between 0 and"), ("seed", 2**32, "seed must be between 0 and"),
     ("log_every", -1, "log_every must be >= 0"),
     ("checkpoint_every", -1, "checkpoint_every must be >= 0")],
)  # fmt: skip
def test_invalid_config(field, value, message):
    with pytest.raises(ValueError, match=message):
        _config(**{field: value})


def test_diverging_loss_is_reported():
    torch.manual_seed(0)
    trainer = Trainer(Small(), _data(), _data(48, 1), _config(dense_epochs=3, lr=1e6))
    with pytest.raises(FloatingPointError, match="lower the lr"):
        trainer.fit()


def test_a_jobs_threads_do_not_outlive_it(tmp_path):
    """torch.set_num_threads is process-wide: a service worker ran its next jobs (and a
    calibration, "calibrated with 1 thread(s)" on 2 cores) with an earlier job's `threads`."""
    from model.pipeline import PruneRequest, run_pruning

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        config = {"dense_epochs": 1, "prune_epochs": 0, "finetune_epochs": 0, "threads": 1}
        request = PruneRequest(method="gsl", model="lenet5", dataset="synthetic", config=config,
                               measure=False)  # fmt: skip
        run_pruning(request, tmp_path / "job", resume=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_resuming_after_a_prune_phase_that_converged_early_says_so(tmp_path):
    """The loop jumps to the phase's last epoch when pruning converges: the resume said
    "resumed at prune epoch 10" after a phase that converged at 7."""
    trainer = Trainer(Small(), _data(), _data(48, 1), _config(), checkpoint_path=tmp_path / "c")
    trainer.phase, trainer.epoch = "prune", trainer.config.prune_epochs
    trainer.save_checkpoint()
    again = Trainer(Small(), _data(), _data(48, 1), _config(), checkpoint_path=tmp_path / "c")
    again.load_checkpoint(tmp_path / "c")
    messages = [e.get("message") for e in again.events if e["type"] == "log"]
    assert messages[-1] == "resumed at the end of the prune phase"
