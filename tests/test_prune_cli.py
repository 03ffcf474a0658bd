"""`sweetspot prune` end to end: artifacts, manifest, errors; and GSL on real digits."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from service.cli import main

TINY = ["--model", "lenet5", "--dataset", "synthetic", "--dense-epochs", "1", "--epochs", "2",
        "--finetune-epochs", "1", "--threads", "1", "--quiet"]  # fmt: skip


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_tiny_gsl_job_writes_every_artifact(capsys, tmp_path):
    out = tmp_path / "job"
    code, stdout, err = run(capsys, "prune", *TINY, "--out", str(out), "--json",
                            "--set", "lasso=0.01", "--no-measure")  # fmt: skip
    assert code == 0, err
    manifest = json.loads(stdout)
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert (manifest["method"], manifest["model"], manifest["dataset"]) == (
        "gsl", "lenet5", "synthetic")  # fmt: skip
    assert manifest["config"]["method"]["lasso"] == 0.01
    assert manifest["not_measured"] == "not asked for: --no-measure, or measure false"
    assert [layer["name"] for layer in manifest["layers"]] == ["conv1", "conv2", "fc1", "fc2"]
    states = {layer["name"]: layer["state"] for layer in manifest["layers"]}
    assert states["conv1"] == "excluded" and states["conv2"] in ("stopped", "restored")
    for name in ("dense.safetensors", "pruned.safetensors", "events.jsonl", "checkpoint.pt",
                 "report.md", "accuracy.png", "sparsity.png", "speedup.png"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    artifacts = manifest["artifacts"]
    assert set(artifacts.values()) >= {"manifest.json", "request.json", "report.md",
                                       "accuracy.png", "sparsity.png", "speedup.png"}  # fmt: skip
    assert all((out / name).exists() for name in artifacts.values() if name)
    report = (out / "report.md").read_text()
    assert "[report.md](report.md)" not in report and "[request.json](request.json)" in report
    weights = load_file(str(out / "pruned.safetensors"))
    conv2 = next(x for x in manifest["layers"] if x["name"] == "conv2")
    sparsity = (weights["conv2.weight"] == 0).float().mean().item()
    assert sparsity == pytest.approx(conv2["sparsity"])
    assert (weights["conv1.weight"] != 0).all()  # excluded layers are untouched by lasso
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert {e["type"] for e in events} >= {"phase", "epoch", "decision"}


def test_rerun_resumes_and_a_different_job_is_refused(capsys, tmp_path):
    out = tmp_path / "job"
    code, stdout, _ = run(capsys, "prune", *TINY, "--out", str(out), "--no-measure")
    assert code == 0  # and the summary says why nothing was measured
    assert "measured: not measured (not asked for: --no-measure, or measure false)" in stdout
    first = (out / "manifest.json").read_text()
    assert run(capsys, "prune", *TINY, "--out", str(out), "--no-measure")[0] == 0
    logged = [json.loads(line).get("message", "") for line in
              (out / "events.jsonl").read_text().splitlines()]  # fmt: skip
    assert any("the run had finished, nothing is trained again" in m for m in logged)
    assert json.loads((out / "manifest.json").read_text())["layers"] == json.loads(first)["layers"]
    code, _, err = run(capsys, "prune", *TINY, "--out", str(out), "--no-measure", "--lr", "0.5")
    assert code == 1 and "checkpoint of a different job" in err and "--no-resume" in err
    # following the hint deletes the earlier job's files: the message says so, naming them
    assert "deletes that job's files" in err and "pruned.safetensors" in err and "report.md" in err
    assert run(capsys, "prune", *TINY, "--out", str(out), "--no-measure", "--lr", "0.05",
               "--no-resume")[0] == 0  # fmt: skip


def test_a_finished_rerun_without_measuring_keeps_the_earlier_measurement(capsys, tmp_path):
    """Rerunning a finished job with --no-measure trains nothing and used to write "not
    measured" over the earlier run's timing of the very same weights. Once the weights can
    differ (the checkpoint gone: trained again) or the plan does (another profile), the old
    timing is not carried over."""
    out = tmp_path / "job"
    assert run(capsys, "prune", *TINY, "--out", str(out), "--no-measure", "--set",
               "lasso=0.01")[0] == 0  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    names = [layer["name"] for layer in manifest["layers"]]
    measured = {"model": {"speedup": 1.7}, "layers": {names[1]: {"speedup": 2.5}}}  # as if timed
    manifest["measurement"] = measured
    (out / "manifest.json").write_text(json.dumps(manifest))
    code, stdout, err = run(capsys, "prune", *TINY, "--out", str(out), "--no-measure", "--set",
                            "lasso=0.01")  # fmt: skip
    assert code == 0, err
    again = json.loads((out / "manifest.json").read_text())
    assert again["measurement"] == {**measured, "kept": True}
    assert again["model_speedup"]["measured"] == 1.7
    assert [layer["measured_speedup"] for layer in again["layers"]][:2] == [None, 2.5]
    assert "measured: 1.70x (kept from the earlier run)" in stdout
    # timed under another plan (a profile file edited between the runs): not this plan's timing
    again["hardware"] = "another-profile"
    (out / "manifest.json").write_text(json.dumps(again))
    assert run(capsys, "prune", *TINY, "--out", str(out), "--no-measure", "--set",
               "lasso=0.01")[0] == 0  # fmt: skip
    assert json.loads((out / "manifest.json").read_text())["measurement"] is None
    manifest["measurement"] = measured
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "checkpoint.pt").unlink()  # trained again: other weights, the timing is not theirs
    assert run(capsys, "prune", *TINY, "--out", str(out), "--no-measure", "--set",
               "lasso=0.01")[0] == 0  # fmt: skip
    assert json.loads((out / "manifest.json").read_text())["measurement"] is None


def test_a_fresh_start_removes_the_previous_runs_files_and_no_others(capsys, tmp_path,
                                                                     monkeypatch):  # fmt: skip
    """--no-resume removed the checkpoint, events, manifest and dense/cut weights of the run
    before but left its pruned weights, report and plots: interrupted, the new run showed them
    as if they were its own."""
    import model.training

    out = tmp_path / "job"
    out.mkdir()
    previous = ["pruned.safetensors", "cut.safetensors", "report.md", "accuracy.png",
                "sparsity.png", "speedup.png", "manifest.json", "checkpoint.tmp"]  # fmt: skip
    for name in previous:
        (out / name).write_text("the previous run's")
    (out / "notes.md").write_text("mine")  # not Sweetspot's: stays
    (out / "other.png").write_text("mine")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(model.training.Trainer, "fit", interrupted)
    code, _, err = run(capsys, "prune", *TINY, "--out", str(out), "--no-resume")
    assert code == 130 and "interrupted" in err
    assert sorted(p.name for p in out.iterdir()) == [
        "events.jsonl", "notes.md", "other.png", "request.json"]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [(["--nodes", "2"], 2, "--nodes/--node-rank need --master HOST:PORT"),
     (["--master", "foo"], 2, "--master must be HOST:PORT"),
     (["--dataset", "nope"], 1, "unknown dataset 'nope'"),
     (["--checkpoint", "nope.safetensors"], 1, "checkpoint nope.safetensors does not exist"),
     ([], 1, "holds the checkpoint of a different job")],
)  # fmt: skip
def test_a_refusal_is_not_printed_after_a_progress_bar(capsys, tmp_path, extra, code, message):
    """The bar was drawn (0/4 epochs) before these were refused, the message after it or in
    the middle of its line; it is drawn when training starts."""
    out = tmp_path / "job"
    if not extra:  # the checkpoint of another job
        out.mkdir()
        (out / "checkpoint.pt").write_bytes(b"")
        (out / "request.json").write_text("{}")
    loud = [arg for arg in TINY if arg != "--quiet"]
    result, _, err = run(capsys, "prune", *loud, "--out", str(out), *extra)
    assert result == code
    assert err.startswith("sweetspot: ") and message in err and err.count("\n") == 1, err


def test_the_progress_bar_is_drawn_when_training_starts(capsys, tmp_path):
    loud = [arg for arg in TINY if arg != "--quiet"]
    code, _, err = run(capsys, "prune", *loud, "--out", str(tmp_path / "job"), "--no-measure")
    assert code == 0
    assert "finetune: 100%" in err and "4/4" in err


@pytest.mark.parametrize("method", ["gsl", "l1-filter"])
def test_artifacts_are_created_with_the_users_umask(capsys, tmp_path, method):
    """The weights (dense, pruned, cut) were 0600 whatever the umask — safetensors' save_file
    renames a private temporary file — while the manifest and report were 0644."""
    import os

    out = tmp_path / "job"
    previous = os.umask(0o022)
    try:
        code, _, err = run(capsys, "prune", *TINY, "--method", method, "--out", str(out),
                           "--no-measure")  # fmt: skip
    finally:
        os.umask(previous)
    assert code == 0, err
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir()}
    assert {"dense.safetensors", "pruned.safetensors"} <= modes.keys()
    assert ("cut.safetensors" in modes) == (method == "l1-filter")
    assert set(modes.values()) == {"0o644"}, modes
    assert not [name for name in modes if name.endswith(".tmp")]  # written, then renamed


def test_start_from_a_checkpoint_skips_dense_training(capsys, tmp_path):
    from model.networks import create_model

    start = tmp_path / "start.pt"
    torch.save(create_model("lenet5").state_dict(), start)
    code, stdout, err = run(capsys, "prune", *TINY, "--out", str(tmp_path / "j"), "--json",
                            "--checkpoint", str(start), "--no-measure")  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["config"]["train"]["dense_epochs"] == 0


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--set", "lasso_typo=1"], 2, "unknown config key(s) lasso_typo; valid keys:"),
        (["--set", "novalue"], 2, "--set takes KEY=VALUE"),
        (["--method", "voodoo"], 2,
         "unknown pruning method 'voodoo'; valid names: autoprune, gsl, l1-filter, magnitude"),
        (["--hardware", "cray-1"], 2, "unknown hardware profile 'cray-1'"),
        (["--lr", "-1"], 2, "lr must be > 0"),
        (["--set", "lasso=abc"], 2, "lasso: Input should be a valid number"),
        (["--set", "multipliers=3"], 2, "multipliers: Input should be a valid dictionary"),
        # These failed with torch's or NumPy's words (exit 1) after the job had started, or
        # ran (checkpoint_every=-1 checkpointed every epoch).
        (["--seed", "-1"], 2, "seed must be between 0 and 4294967295, got -1"),
        (["--seed", str(2**64)], 2, "seed must be between 0 and 4294967295"),
        (["--set", "weight_decay=-1"], 2,
         "weight_decay must be >= 0 and at most 3.403e+38 (float32), got -1"),
        (["--set", "weight_decay=NaN"], 2,
         "weight_decay must be >= 0 and at most 3.403e+38 (float32), got nan"),
        (["--set", "inference_batch=0"], 2,
         "invalid GSLConfig: inference_batch must be between 1 and 1024"),
        (["--method", "ssl", "--set", "inference_batch=-2"], 2,
         "invalid SSLConfig: inference_batch must be between 1 and 1024, got -2"),
        (["--set", "log_every=-1"], 2, "log_every must be >= 0 (0: never), got -1"),
        (["--set", "checkpoint_every=-1"], 2, "checkpoint_every must be >= 0"),
    ],
)  # fmt: skip
def test_bad_requests_are_clear_errors(capsys, tmp_path, extra, code, message):
    result, _, err = run(capsys, "prune", *TINY, "--out", str(tmp_path / "j"), *extra)
    assert result == code
    assert message in err
    assert not (tmp_path / "j").exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("method", "setting", "message"),
    [
        ("ssl", 'layers=["nope"]', "layers names layer(s) 'nope' that LeNet5 does not have; "
                                   "valid: conv1, conv2, fc1, fc2"),
        ("magnitude", 'layers=["conv1","nope"]', "layers names layer(s) 'nope'"),
        ("autoprune", 'layers=["nope"]', "layers names layer(s) 'nope'"),
        ("autoprune", 'layer_strength={"nope":0.1}', "layer_strength names layer(s) 'nope'"),
        ("gsl", 'multipliers={"nope":2}', "multipliers names layer(s) 'nope'"),
        ("l1-filter", 'layer_ratios={"nope":0.5}', "layer_ratios names layer(s) 'nope' that "
                                                   "LeNet5 does not have; valid: conv1, conv2"),
        ("l1-filter", 'skip=["nope"]', "valid: Li layer ids 1-2 or conv1, conv2"),
        ("l1-filter", "skip=[3]", "skip names layer(s) '3'"),
        ("ssl", 'kind_strength={"nope":1}', "kind_strength keys must be group kinds in groups "
                                            "(filter, channel); got 'nope'"),
        ("ssl", 'kind_strength={"depth":1}', "got 'depth'"),
    ],
)
def test_unknown_layer_names_are_refused_before_training(capsys, tmp_path, method, setting,
                                                         message):  # fmt: skip
    """They were silently ignored: the job pruned other layers, or none, and exited 0."""
    out = tmp_path / "j"
    code, _, err = run(capsys, "prune", *TINY, "--method", method, "--set", setting,
                       "--out", str(out))  # fmt: skip
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (out / "events.jsonl").exists()  # nothing trained


def test_l1_filter_refuses_a_network_surgery_cannot_cut_before_training(capsys, tmp_path):
    """It failed only after the dense epochs (l1-filter chooses filters by surgery's groups)."""
    out = tmp_path / "j"
    code, _, err = run(capsys, "prune", *TINY, "--method", "l1-filter", "--model",
                       "alexnet_cifar", "--out", str(out))  # fmt: skip
    assert code == 2, err
    assert "surgery supports residual networks and the plain chains" in err
    assert not (out / "events.jsonl").exists()


def test_valid_layer_names_and_li_ids_are_accepted():
    from model.pipeline import PruneRequest, check_request

    check_request(PruneRequest("l1-filter", "resnet20", config={"skip": [1, "layer1.0.conv1"],
                                                               "layer_ratios": {"conv1": 0.2}}))
    check_request(PruneRequest("ssl", "lenet5", config={"layers": ["conv2"],
                                                        "kind_strength": {"filter": 0.1}}))


def test_an_out_path_that_cannot_be_a_folder_is_one_line(capsys, tmp_path):
    """It was a traceback (FileExistsError, NotADirectoryError, PermissionError)."""
    existing = tmp_path / "file"
    existing.write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    outs = [existing, existing / "sub"]
    import os

    if os.geteuid() != 0:  # root writes anywhere
        outs.append(locked / "job")
    for out in outs:
        code, _, err = run(capsys, "prune", *TINY, "--out", str(out))
        assert code == 1, (out, err)
        assert err.startswith(f"sweetspot: cannot create --out {out}: ") and \
            len(err.strip().splitlines()) == 1, err  # fmt: skip
    assert existing.read_text() == "x"


def test_bad_dataset_folder(capsys, tmp_path):
    code, _, err = run(capsys, "prune", *TINY[:2], "--dataset", str(tmp_path), "--out",
                       str(tmp_path / "j"), "--quiet")  # fmt: skip
    assert code == 1 and "train-images-idx3-ubyte" in err


@pytest.mark.slow
def test_gsl_on_digits_prunes_only_the_sweet_spot_layer(capsys, tmp_path):
    """The issue's bar: within 1 point of dense, sweet-spot layers ≥ 80% sparse, others dense."""
    code, stdout, err = run(capsys, "prune", "--model", "lenet5", "--dataset", "digits",
                            "--hardware", "xeon-e5-2697v4", "--out", str(tmp_path / "gsl"),
                            "--threads", "1", "--quiet", "--json", "--no-measure")  # fmt: skip
    assert code == 0, err
    manifest = json.loads(stdout)
    accuracy = manifest["accuracy"]
    assert accuracy["dense"] > 0.95
    assert accuracy["pruned"] >= accuracy["dense"] - 0.01
    layers = {layer["name"]: layer for layer in manifest["layers"]}
    assert layers["conv2"]["sparsity"] >= 0.8 and layers["conv2"]["format"] == "sparse"
    for name in ("conv1", "fc1", "fc2"):
        assert layers[name]["sparsity"] == 0.0 and layers[name]["format"] == "dense"
    assert manifest["model_speedup"]["predicted"] > 1.5


def test_set_values_are_typed_before_training():
    """`--set guided=False` (Python's spelling) stayed the string 'False', which is truthy: the
    run was silently guided. Values are converted to the field's type or refused."""
    from model.pipeline import split_config

    train, gsl = split_config("gsl", {"guided": "False", "lasso": "0.001", "batch_size": 32.0})
    assert gsl.guided is False and gsl.lasso == 0.001 and train.batch_size == 32
    with pytest.raises(ValueError, match=r"batch_size: Input should be a valid integer"):
        split_config("gsl", {"batch_size": 2.5})


def test_a_job_on_a_calibrated_profile_uses_the_refined_model(capsys, tmp_path):
    """Jobs predicted with the paper's model even for a calibrated profile, while `predict`
    and the API pick the refined one (`auto`): a job's sweet spots could differ from theirs."""
    from test_refined_model import refined_profile

    from perfmodel import save_profile

    save_profile(refined_profile("calibrated-box"))
    code, out, err = run(capsys, "prune", *TINY, "--hardware", "calibrated-box", "--out",
                         str(tmp_path / "j"), "--no-measure", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["performance_model"] == "refined"
    code, out, err = run(capsys, "prune", *TINY, "--hardware", "atom-c2750", "--out",
                         str(tmp_path / "k"), "--no-measure", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["performance_model"] == "paper"


def test_checkpoint_files_and_uploads_are_read_the_same_way(tmp_path):
    """`--checkpoint` files and uploads go through one parser: a dict with other values than
    tensors, or no dict at all, is refused by both with the same message."""
    from model.pipeline import load_weights, parse_weights

    cases = [({"conv1.weight": torch.ones(1), "note": "hi"}, "holds a dict with values other"),
             ([torch.ones(1)], "holds a list, not a state dict"),
             ({1: torch.zeros(1)}, "holds a dict with keys other than strings"),
             ({"w": torch.tensor([1.0, float("nan")])}, "holds NaN or infinite values in"),
             ({"w": torch.tensor([float("-inf")])}, "holds NaN or infinite values in")]  # fmt: skip
    for index, (content, message) in enumerate(cases):
        path = tmp_path / f"case{index}.pt"
        torch.save(content, path)
        with pytest.raises(ValueError, match=message):
            load_weights(path)
        with pytest.raises(ValueError, match=f"the upload {message}"):
            parse_weights(path.read_bytes(), "the upload")
    ours = tmp_path / "ours.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "optimizer": {}}, ours)
    assert list(load_weights(ours)) == ["w"]


@pytest.mark.parametrize("dataset", ["cifar10", "{tmp}"])
def test_a_refused_data_set_leaves_no_new_folder_and_an_old_one_as_it_was(capsys, tmp_path,
                                                                          dataset):  # fmt: skip
    """An unknown data set (or a folder in no supported format) was refused after the output
    folder had been created with a request.json in it; a --no-resume run also deleted the
    files of the job there."""
    argv = [a if a != "synthetic" else dataset.format(tmp=tmp_path) for a in TINY]
    new = tmp_path / "new" / "job"
    code, _, err = run(capsys, "prune", *argv, "--out", str(new), "--no-measure")
    assert code == 1 and "dataset" in err
    assert not (tmp_path / "new").exists()
    old = tmp_path / "old"
    old.mkdir()
    files = {"request.json": "{}", "manifest.json": "{}", "report.md": "x", "notes.txt": "y"}
    for name, text in files.items():
        (old / name).write_text(text)
    code, _, _ = run(capsys, "prune", *argv, "--out", str(old), "--no-measure", "--no-resume")
    assert code == 1
    assert {p.name: p.read_text() for p in old.iterdir()} == files


def test_a_run_with_no_sparse_layer_says_why_it_is_not_measured(capsys, tmp_path):
    """It printed "measured: not measured" with no reason (one epoch of pruning leaves every
    LeNet-5 layer dense on the Atom's profile)."""
    code, stdout, err = run(capsys, "prune", *TINY, "--epochs", "1", "--hardware", "atom-c2750",
                            "--out", str(tmp_path / "job"))  # fmt: skip
    assert code == 0, err
    assert "measured: not measured (no layer ended sparse: the pruned model runs dense" in stdout
    report = (tmp_path / "job" / "report.md").read_text()
    assert "not measured (no layer ended sparse" in report


def test_own_network_with_layers_the_kernel_cannot_run_is_pruned_and_measured(tmp_path):
    """A reflect-padded conv made the measurement's convert_model refuse the plan (even with
    the layer planned dense) and the job fail after training; one predicted sparse is kept
    dense, with why."""
    from torch import nn

    from model.networks import NETWORKS, register
    from model.pipeline import PruneRequest, run_pruning

    class ReflectNet(nn.Module):
        """A reflect-padded stem, a plain conv, and a reflect-padded conv called twice."""

        def __init__(self, num_classes: int = 10):
            super().__init__()
            self.stem = nn.Conv2d(1, 20, 5, padding=2, padding_mode="reflect")
            self.plain = nn.Conv2d(20, 50, 3, padding=1)
            self.reflect = nn.Conv2d(50, 50, 3, padding=1, padding_mode="reflect")
            self.fc = nn.Linear(50 * 7 * 7, num_classes)

        def forward(self, x):
            x = torch.relu(self.plain(torch.max_pool2d(torch.relu(self.stem(x)), 2)))
            x = torch.relu(self.reflect(torch.relu(self.reflect(x))))
            return self.fc(torch.max_pool2d(x, 2).flatten(1))

    @register("reflect-net", input_shape=(1, 28, 28), num_classes=10, paper="test")
    def build(num_classes: int = 10) -> nn.Module:
        return ReflectNet(num_classes)

    try:
        config = {"dense_epochs": 1, "prune_epochs": 1, "finetune_epochs": 0, "ramp_epochs": 1,
                  "final_sparsity": 0.95, "threads": 1}  # fmt: skip
        manifest = run_pruning(PruneRequest(method="magnitude", model="reflect-net",
                                            dataset="synthetic", config=config),
                               tmp_path / "job", resume=False)  # fmt: skip
    finally:
        del NETWORKS["reflect-net"]
    layers = {layer["name"]: layer for layer in manifest["layers"]}
    assert layers["plain"]["format"] == "sparse"
    assert layers["plain"]["measured_speedup"] is not None
    assert "reflect#2" not in layers  # a module's later calls are the module's layer
    assert layers["reflect"]["format"] == "dense"
    assert layers["reflect"]["state"].startswith("kept dense: the sparse kernel cannot run it "
                                                 "(only zero padding is supported")
    assert manifest["model_speedup"]["measured"] is not None
