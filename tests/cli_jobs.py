"""Helpers for the end-to-end ``sweetspot prune`` tests of each method (not a test module)."""

from __future__ import annotations

import json
from pathlib import Path

from service.cli import main

TINY = ["--dataset", "synthetic", "--dense-epochs", "1", "--epochs", "2", "--finetune-epochs",
        "1", "--threads", "1", "--quiet", "--json"]  # fmt: skip
ARTIFACTS = (
    "dense.safetensors",
    "pruned.safetensors",
    "events.jsonl",
    "checkpoint.pt",
    "report.md",
    "accuracy.png",
    "sparsity.png",
    "speedup.png",
    "manifest.json",
)


def prune_job(capsys, out: Path, method: str, model: str, *extra: str) -> dict:
    """Run a tiny job on the synthetic data set; assert it succeeded and wrote every artifact."""
    try:
        code = main(["prune", "--method", method, "--model", model, *TINY, "--out", str(out),
                     *extra])  # fmt: skip
    except SystemExit as exit_:
        code = exit_.code
    stdout, err = capsys.readouterr()
    assert code == 0, err
    manifest = json.loads(stdout)
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == method
    for name in ARTIFACTS:
        assert (out / name).stat().st_size > 0, name
    assert manifest["model_speedup"]["predicted"] is not None
    return manifest


def check_structured(manifest: dict, out: Path) -> None:
    """A structured job: a cut network that rebuilds from the manifest and runs."""
    import torch

    from model.pipeline import load_cut_network

    assert manifest["structure"] == "structured"
    assert manifest["artifacts"]["cut_weights"] == "cut.safetensors"
    cut = manifest["cut"]
    net = load_cut_network(out)
    assert cut["cost"]["macs_after"] <= cut["cost"]["macs_before"]
    for layer in manifest["layers"]:
        assert layer["format"] in ("dense", "cut", "fibres", "removed")
        assert layer["cut_shape"] is not None or layer["format"] == "removed"
    assert torch.isfinite(net.eval()(torch.randn(1, 1, 28, 28))).all()
