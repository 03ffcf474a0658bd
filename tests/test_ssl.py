"""SSL mechanics: groups, the zero-safe group-lasso gradient, threshold, freezing, surgery."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from model.networks import create_model
from model.pruning.ssl import (
    SSL,
    SSLConfig,
    group_lasso,
    group_lasso_gradient,
    group_norms,
)
from model.surgery import cut
from model.training import TrainConfig, Trainer


def test_groups_of_a_conv_weight():
    weight = torch.randn(4, 3, 2, 2)  # (K, C, R, S)
    assert group_norms(weight, "filter").shape == (4, 1, 1, 1)
    assert group_norms(weight, "channel").shape == (1, 3, 1, 1)
    assert group_norms(weight, "shape").shape == (1, 3, 2, 2)  # fibres (c, r, s) over filters
    assert group_norms(weight, "kernel").shape == (4, 3, 1, 1)
    assert group_norms(weight, "depth").shape == (1, 1, 1, 1)
    assert torch.allclose(group_norms(weight, "filter")[2].flatten(), weight[2].norm())
    assert torch.allclose(group_norms(weight, "shape")[0, 1, 0, 1], weight[:, 1, 0, 1].norm())
    linear = torch.randn(5, 7)
    assert group_norms(linear, "filter").shape == (5, 1)
    assert group_norms(linear, "channel").shape == (1, 7)


def test_gradient_is_w_over_norm_with_the_square_root_and_zero_at_zero():
    weight = torch.randn(4, 3, 2, 2)
    weight[1] = 0  # an all-zero filter: its subgradient is 0, not NaN
    grad = group_lasso_gradient(weight, "filter")
    assert torch.isfinite(grad).all() and (grad[1] == 0).all()
    # it is the derivative of Σ‖w_g‖₂ (the square root, not ½‖w‖²) wherever that exists
    x = weight.clone().requires_grad_(True)
    group_lasso(x, "filter").backward()
    nonzero = [0, 2, 3]
    assert torch.allclose(grad[nonzero], x.grad[nonzero], atol=1e-6)
    assert torch.allclose(grad[0].norm(), torch.tensor(1.0))  # unit norm per group
    assert not torch.allclose(grad[0], weight[0])  # not weight decay


def _conv_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 3))


def _hooks(**config) -> SSL:
    return SSL({}, SSLConfig(**config))


def test_regularize_adds_the_scaled_subgradient_per_kind():
    model = _conv_model()
    hooks = _hooks(groups=["filter", "channel"], strength=0.5, kind_strength={"channel": 0.1})
    hooks.start(model, lambda e: None)
    assert hooks.kinds == {"0": ["filter", "channel"]}  # linear layers are not regularised
    weight = model[0].weight
    weight.grad = torch.zeros_like(weight)
    hooks.regularize(model)
    expected = (0.5 * group_lasso_gradient(weight.detach(), "filter")
                + 0.1 * group_lasso_gradient(weight.detach(), "channel"))  # fmt: skip
    assert torch.allclose(weight.grad, expected)


def test_threshold_zeroes_tiny_weights_after_each_step():
    model = _conv_model()
    hooks = _hooks()
    hooks.start(model, lambda e: None)
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = 9e-5
        model[0].weight[0, 0, 0, 1] = -2e-4
    hooks.after_step(model, {})
    assert model[0].weight[0, 0, 0, 0] == 0 and model[0].weight[0, 0, 0, 1] == -2e-4


def test_proximal_step_zeroes_small_groups_exactly_and_shrinks_others():
    model = _conv_model()
    hooks = _hooks(groups=["filter"], mode="proximal", strength=1.0, threshold=0.0)
    hooks.start(model, lambda e: None)
    hooks.lr = 0.1
    with torch.no_grad():
        model[0].weight[2] *= 0.01  # norm below lr·λ = 0.1: the whole filter goes to 0
    before = model[0].weight.detach().clone()
    hooks.after_step(model, {})
    after = model[0].weight.detach()
    assert (after[2] == 0).all()
    norm = before[0].norm()
    assert torch.allclose(after[0], before[0] * (1 - 0.1 / norm), atol=1e-6)


def test_depth_groups_only_inside_residual_blocks():
    with torch.device("meta"):
        model = create_model("resnet20")
    hooks = _hooks(groups=["depth"])
    hooks.start(model, lambda e: None)
    assert "conv1" not in hooks.kinds  # the stem is never a depth group
    assert hooks.kinds["layer1.0.conv1"] == ["depth"] and hooks.kinds["layer3.2.conv2"] == ["depth"]


def test_zero_groups_are_frozen_in_fine_tuning_mask_and_momentum():
    torch.manual_seed(0)
    x = torch.randn(64, 1, 8, 8)
    data = TensorDataset(x, (x.mean((1, 2, 3)) > 0).long())
    model = _conv_model()
    hooks = _hooks(groups=["filter"])
    with torch.no_grad():
        model[0].weight[1] = 0
        model[0].weight[3, 0, 0, 0] = 0  # a lone zero in a live filter: may revive
    hooks.start(model, lambda e: None)
    mask = hooks.masks(model)["0.weight"]
    assert (mask[1] == 0).all() and mask[3, 0, 0, 0] == 1
    config = TrainConfig(dense_epochs=0, prune_epochs=0, finetune_epochs=2, batch_size=16,
                         lr=0.1, finetune_lr=0.1, log_every=0, threads=1)  # fmt: skip
    trainer = Trainer(model, data, data, config, hooks=hooks)
    trainer.phase = "finetune"
    trainer._enter("finetune")
    trainer.fit(resume=False)
    assert (model[0].weight[1] == 0).all()
    buffer = trainer.optimizer.state[model[0].weight]["momentum_buffer"]
    assert (buffer[1] == 0).all()
    assert model[0].weight[3, 0, 0, 0] != 0


def test_config_validation():
    with pytest.raises(ValueError, match="groups must be"):
        SSLConfig(groups=["rows"])
    with pytest.raises(ValueError, match="mode must be"):
        SSLConfig(mode="adam")


def test_ssl_training_zeroes_groups_and_the_cut_equals_the_masked_network():
    torch.manual_seed(0)
    x = torch.randn(128, 1, 28, 28)
    y = (x[:, 0, :14].mean((1, 2)) > x[:, 0, 14:].mean((1, 2))).long()
    data = TensorDataset(x, y)
    model = create_model("lenet5", num_classes=2)
    hooks = _hooks(groups=["filter", "channel"], strength=2.0, mode="proximal")
    config = TrainConfig(dense_epochs=1, prune_epochs=3, finetune_epochs=1, batch_size=32,
                         lr=0.05, finetune_lr=0.01, log_every=0, threads=1)  # fmt: skip
    Trainer(model, data, data, config, hooks=hooks).fit(resume=False)
    zero = hooks.zero_groups(model)
    assert zero["conv2"]["filter"][0] > 0  # some whole filters are gone
    result = cut(model, (1, 28, 28))
    assert result.kept["conv2"] < 50
    with torch.no_grad():
        difference = (model.eval()(x[:8]) - result.model(x[:8])).abs().max().item()
    assert difference <= 1e-5


def test_ssl_job_end_to_end(capsys, tmp_path):
    from cli_jobs import check_structured, prune_job

    manifest = prune_job(capsys, tmp_path / "job", "ssl", "lenet5", "--no-measure",
                         "--set", "mode=proximal", "--set", "strength=1.0")  # fmt: skip
    check_structured(manifest, tmp_path / "job")
    assert manifest["config"]["method"]["mode"] == "proximal"
    assert {layer["state"] for layer in manifest["layers"]} == {"pruned", "excluded"}


def test_an_ssl_job_on_a_network_surgery_misreads_keeps_the_sparse_path(monkeypatch, tmp_path):
    """A registered pre-activation ResNet: the job trains, surgery refuses the network (it
    crashed the finished job with an IndexError) and the job ends on the sparse-kernel path
    with the reason in its manifest and its log."""
    from tests_support import preact_resnet

    from model.networks.registry import NETWORKS, NetworkInfo
    from model.pipeline import PruneRequest, run_pruning

    monkeypatch.setitem(NETWORKS, "preact_tiny", NetworkInfo(
        "preact_tiny", lambda num_classes=10: preact_resnet(num_classes), (3, 32, 32), 10,
        "pre-activation test network"))  # fmt: skip
    config = {"dense_epochs": 1, "prune_epochs": 1, "finetune_epochs": 0, "threads": 1,
              "batch_size": 64, "log_every": 0}  # fmt: skip
    request = PruneRequest(method="ssl", model="preact_tiny", dataset="synthetic",
                           hardware="atom-c2750", config=config, measure=False)  # fmt: skip
    messages: list[str] = []
    manifest = run_pruning(request, tmp_path / "job", resume=False, log=messages.append)
    assert manifest["structure"] == "unstructured" and "cut" not in manifest
    reason = manifest["surgery_skipped"]
    assert "layer1.0 (PreActBlock) is not a post-activation residual block" in reason
    assert f"surgery skipped, keeping the sparse-kernel path: {reason}" in messages
    assert not (tmp_path / "job" / "cut.safetensors").exists()
