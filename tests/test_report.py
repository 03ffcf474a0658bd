"""The pruning report: report.md with summary, layer table, decisions and links to valid PNG
plots, from a synthetic manifest and event stream in the training loop's schema."""

from __future__ import annotations

import pytest
from PIL import Image

from model.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _events() -> list[dict]:
    events: list[dict] = [{"type": "phase", "phase": "dense"}, {"type": "log", "message": "hi"}]
    step = 0
    for phase, count in (("dense", 2), ("prune", 4), ("finetune", 2)):
        for epoch in range(count):
            step += 10
            events.append({"type": "step", "step": step, "loss": 0.5})
            pruning = phase != "dense"
            events.append(
                {
                    "type": "epoch",
                    "phase": phase,
                    "epoch": epoch,
                    "step": step,
                    "loss": 1.0 / step,
                    "train_accuracy": 0.9 + step / 1000,
                    "test_accuracy": 0.88 + step / 1000,
                    "sparsity": {
                        "conv1": 0.0,
                        "conv2": min(0.9, step / 60) if pruning else 0.0,
                        "fc1": min(0.4, step / 200) if pruning else 0.0,
                    },
                    "time": float(step),
                }
            )
    events += [
        {
            "type": "decision", "epoch": 0, "step": 0, "layer": "conv1", "action": "exclude",
            "reason": "no sweet spot: memory bound at every sparsity",
        },
        {
            "type": "decision", "epoch": 2, "step": 50, "layer": "conv2", "action": "stop",
            "reason": "sparsity 83.3% passed the upper bound 80.0% of its sweet spot",
        },
        {
            "type": "decision", "epoch": 3, "step": 60, "layer": "fc1", "action": "restore",
            "reason": "stabilised at 30.0% | below the lower bound 66.7%",
        },
    ]  # fmt: skip
    return events


def _manifest(measured: bool = True) -> dict:
    return {
        "method": "gsl",
        "model": "lenet5",
        "dataset": "digits",
        "hardware": "xeon-e5-2697v4",
        "config": {"epochs": 8, "lr": 0.01},
        "accuracy": {"dense": 0.9861, "pruned": 0.9805},
        "layers": [
            {
                "name": "conv1", "kind": "conv2d", "sparsity": 0.0, "format": "dense",
                "sweet_spot": None, "predicted_speedup": 1.0,
                "measured_speedup": 1.0 if measured else None,
            },
            {
                "name": "conv2", "kind": "conv2d", "sparsity": 0.853, "format": "sparse",
                "sweet_spot": {"min_sparsity": 0.667, "max_sparsity": 0.986, "max_speedup": 24.0},
                "predicted_speedup": 2.27, "measured_speedup": 1.91 if measured else None,
            },
            {
                "name": "fc1", "kind": "linear", "sparsity": 0.0, "format": "dense",
                "sweet_spot": {"min_sparsity": 0.986, "max_sparsity": 1.0, "max_speedup": 80.5},
                "predicted_speedup": 1.0, "measured_speedup": None,
            },
        ],
        "model_speedup": {"predicted": 1.64, "measured": 1.42 if measured else None},
        "artifacts": {"weights": "model.safetensors", "manifest": "manifest.json"},
    }  # fmt: skip


def _assert_png(path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG" and image.width > 100 and image.height > 100


def test_report_writes_markdown_and_three_plots(tmp_path):
    out = tmp_path / "run"
    path = write_report(out, _manifest(), _events())
    assert path == out / "report.md"
    for name in ("accuracy.png", "sparsity.png", "speedup.png"):
        _assert_png(out / name)
    text = path.read_text()
    assert text.startswith("# GSL pruning report: lenet5 on digits")
    assert "| accuracy (dense → pruned) | 98.61% → 98.05% (-0.56 points) |" in text
    assert "| model speedup, predicted | 1.64× |" in text
    assert "| model speedup, measured | 1.42× |" in text
    assert "| `conv1` | conv2d | 0.0% | dense | none | 1.00× | 1.00× |" in text
    conv2 = "| `conv2` | conv2d | 85.3% | sparse | 66.7%–98.6% (24.00× at its upper bound) |"
    assert conv2 + " 2.27× | 1.91× |" in text
    fc1 = "| `fc1` | linear | 0.0% | dense | 98.6%–100.0% (80.50× at its upper bound) |"
    assert fc1 + " 1.00× | – |" in text
    for link in ("](accuracy.png)", "](sparsity.png)", "](speedup.png)"):
        assert link in text


def test_report_lists_every_decision_with_its_reason(tmp_path):
    text = write_report(tmp_path, _manifest(), _events()).read_text()
    assert "- epoch 0 (step 0): `conv1` **exclude** — no sweet spot: memory bound" in text
    assert "`conv2` **stop** — sparsity 83.3% passed the upper bound 80.0%" in text
    assert "`fc1` **restore** — stabilised at 30.0% | below the lower bound 66.7%" in text
    decisions = text.split("## Controller decisions")[1].split("##")[0]
    assert decisions.count("\n- ") == 3


def test_report_without_measurement(tmp_path):
    text = write_report(tmp_path, _manifest(measured=False), _events()).read_text()
    _assert_png(tmp_path / "speedup.png")  # predicted bars only
    assert "| model speedup, measured | not measured |" in text
    assert "| 2.27× | – |" in text


def test_report_without_events_skips_training_plots(tmp_path):
    manifest = _manifest()
    manifest["layers"], manifest["model_speedup"] = [], {"predicted": None, "measured": None}
    text = write_report(tmp_path, manifest, [{"type": "unknown"}]).read_text()
    assert not any((tmp_path / n).exists() for n in ("accuracy.png", "sparsity.png", "speedup.png"))
    assert "No controller decisions were recorded." in text
    assert "No layers in the manifest." in text
    assert ".png)" not in text
    assert "not plotted (no epoch was recorded)" in text


@pytest.mark.parametrize("key", ["config", "artifacts"])
def test_report_lists_config_and_artifacts(tmp_path, key):
    text = write_report(tmp_path, _manifest(), []).read_text()
    expected = {"config": "- `epochs`: `8`", "artifacts": "- weights: [model.safetensors]"}
    assert expected[key] in text


def test_report_config_is_json_and_artifacts_list_the_other_files(tmp_path):
    """The Configuration section printed Python (None, True) and the Artifacts section linked
    report.md to itself."""
    manifest = _manifest()
    manifest["config"] = {"train": {"threads": None, "augment": True}, "method": {"lasso": 0.1}}
    manifest["artifacts"] = {"manifest": "manifest.json", "report": "report.md",
                             "accuracy_plot": "accuracy.png", "speedup_plot": "speedup.png"}
    text = write_report(tmp_path, manifest, []).read_text()  # no epochs: no accuracy plot
    assert '- `train`: `{"threads": null, "augment": true}`' in text
    assert "None" not in text and "True" not in text
    assert "[report.md](report.md)" not in text and "[accuracy.png]" not in text
    assert "- manifest: [manifest.json](manifest.json)" in text
    assert "- speedup_plot: [speedup.png](speedup.png)" in text


def test_report_and_summary_flag_a_noisy_measurement(tmp_path):
    """A measurement whose rounds disagree (busy host) says so in report.md and in the
    prune command's summary; a steady one, or one made before timings had a spread, does not."""
    from service.cli import format_manifest

    manifest = _manifest()
    steady = {"speedup": 1.42, "speedup_iqr": [1.38, 1.45]}
    shaky = {"speedup": 1.91, "speedup_iqr": [1.2, 2.6]}
    manifest["measurement"] = {"layers": {"conv2": shaky}, "model": steady, "noisy": ["conv2"],
                               "noisy_spread": 0.5}  # fmt: skip
    note = "measured on a busy host: the rounds of conv2 disagree by more than 50%"
    assert f"**Note:** {note}" in write_report(tmp_path / "a", manifest, _events()).read_text()
    assert note in format_manifest(manifest, "out") and "1.38–1.45x" in format_manifest(
        manifest, "out"
    )
    manifest["measurement"]["noisy"] = []
    assert "busy host" not in write_report(tmp_path / "b", manifest, _events()).read_text()
    del manifest["measurement"]["noisy"]  # made before spreads were measured
    assert "busy host" not in format_manifest(manifest, "out")


def test_decision_labels_at_one_point_are_stacked(tmp_path, monkeypatch):
    """Four layers decided at epoch 0 at 0% sparsity drew four labels on top of each other."""
    import matplotlib.axes

    from model.report import plot_sparsity

    labels = []
    original = matplotlib.axes.Axes.annotate

    def record(self, text, xy, *args, **kwargs):
        labels.append((text, tuple(xy), kwargs.get("xytext")))
        return original(self, text, xy, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "annotate", record)
    names = ["conv1", "conv2", "fc1", "fc2"]
    epochs = [{"epoch": e, "step": 10 * e, "phase": "prune",
               "sparsity": {n: 0.1 * e for n in names}} for e in (1, 2)]  # fmt: skip
    decisions = [{"layer": n, "action": "exclude" if n != "conv2" else "prune", "step": 0}
                 for n in names]  # fmt: skip
    assert plot_sparsity(tmp_path / "sparsity.png", epochs, decisions)
    assert len(labels) == 4
    assert len({(xy, offset) for _, xy, offset in labels}) == 4  # no two labels in one place
    assert {text for text, _, _ in labels} == {"conv1: exclude", "conv2: prune", "fc1: exclude",
                                               "fc2: exclude"}  # fmt: skip
