"""The `sweetspot` command line: predict, hardware, models; exit codes and messages."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from service.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse usage errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_table(capsys):
    code, out, _ = run(capsys, "predict", "--model", "alexnet", "--hardware", "xeon-e5-2697v4")
    assert code == 0
    assert "alexnet on xeon-e5-2697v4" in out
    conv5 = next(line for line in out.splitlines() if line.startswith("conv5"))
    assert "66.7–98.0%" in conv5 and conv5.rstrip().endswith("sparse")
    assert "fc6: sparse pays only beyond" in out
    assert out.count("\n") > 10


def test_predict_json(capsys):
    code, out, _ = run(capsys, "predict", "--model", "googlenet", "--hardware",
                       "xeon-e5-2697v4", "--batch", "4", "--json")  # fmt: skip
    assert code == 0
    data = json.loads(out)
    assert (data["model"], data["hardware"], data["batch"]) == ("googlenet", "xeon-e5-2697v4", 4)
    layers = {layer["name"]: layer for layer in data["layers"]}
    assert layers["inception_4a.5x5_reduce"]["sweet_spot"] is None
    assert layers["inception_4a.3x3"]["sweet_spot"]["min_sparsity"] == pytest.approx(2 / 3)


def test_predict_with_a_profile_file(capsys, tmp_path):
    profile = tmp_path / "box.toml"
    profile.write_text(
        'name = "box"\ndense_flops_per_s = 1e11\nmemory_bandwidth_bytes_per_s = 3e10\n'
        'sparse_overhead = 2.0\n[provenance]\nkind = "user"\nsource = "test"\n'
    )
    code, out, _ = run(capsys, "predict", "--model", "lenet5", "--hardware", str(profile),
                       "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["hardware"] == "box"


def test_predict_header_rounds_a_calibrated_profile_as_hardware_list(capsys, tmp_path):
    """The header printed 6 digits of calibrated numbers (175.875 GFLOP/s, 32.3848 GB/s,
    α=0.700841); `hardware list` shows 4 (α and β: 3)."""
    profile = tmp_path / "host.toml"
    profile.write_text(
        'name = "host"\ndense_flops_per_s = 175874895103.18533\n'
        "memory_bandwidth_bytes_per_s = 32384841326.77817\nsparse_overhead = 0.7008405481040741\n"
        'sparse_bytes_per_nonzero = 2.0\n[provenance]\nkind = "user"\nsource = "test"\n'
    )
    code, out, _ = run(capsys, "predict", "--model", "lenet5", "--hardware", str(profile))
    assert code == 0
    assert out.splitlines()[0] == (
        "lenet5 on host (175.9 GFLOP/s, 32.38 GB/s, α=0.701, β=2), batch 1, paper model"
    )


def test_performance_model_errors_are_one_line(capsys):
    """An unknown --performance-model and 'refined' on an uncalibrated profile printed a
    traceback; they print one line, exit codes as `validate` uses them (usage 2, profile 1)."""
    code, out, err = run(capsys, "predict", "--model", "lenet5", "--hardware", "atom-c2750",
                         "--performance-model", "foo")  # fmt: skip
    assert code == 2 and out == ""
    assert err.strip() == (
        "sweetspot: unknown performance model 'foo'; valid names: auto, paper, refined"
    )
    code, out, err = run(capsys, "predict", "--model", "lenet5", "--hardware", "atom-c2750",
                         "--performance-model", "refined")  # fmt: skip
    assert code == 1 and out == "" and "Traceback" not in err
    assert "has no refined parameters" in err and err.count("\n") == 1


def test_unknown_model_exits_2_and_lists_models(capsys):
    code, out, err = run(capsys, "predict", "--model", "alexnext", "--hardware", "atom-c2750")
    assert code == 2 and out == ""
    assert "unknown model 'alexnext'; valid names: alexnet, alexnet_cifar, cifar_convnet" in err


def test_unknown_profile_exits_2_and_lists_profiles(capsys):
    code, _, err = run(capsys, "predict", "--model", "alexnet", "--hardware", "pentium")
    assert code == 2
    assert "valid names: atom-c2750, xeon-e5-2697v4, xeon-phi-7250" in err


def test_invalid_profile_file_names_the_field(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "bad", "dense_flops_per_s": -5}))
    code, _, err = run(capsys, "hardware", "show", str(bad))
    assert code == 1
    assert "field 'dense_flops_per_s': Input should be greater than or equal to 1" in err


def test_bad_batch_and_missing_source(capsys):
    assert run(capsys, "predict", "--model", "alexnet", "--hardware", "atom-c2750",
               "--batch", "0")[0] == 2  # fmt: skip
    assert run(capsys, "predict", "--hardware", "atom-c2750")[0] == 2


def test_invalid_onnx_file(capsys, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx at all")
    code, _, err = run(capsys, "predict", "--onnx", str(junk), "--hardware", "atom-c2750")
    assert code == 1 and "not a valid ONNX model" in err


def test_hardware_list_and_show(capsys):
    code, out, _ = run(capsys, "hardware", "list", "--json")
    assert code == 0
    assert [p["name"] for p in json.loads(out)] == ["atom-c2750", "xeon-e5-2697v4",
                                                     "xeon-phi-7250"]  # fmt: skip
    code, out, _ = run(capsys, "hardware", "show", "xeon-phi-7250")
    assert code == 0 and "4540000000000.0" in out and "Park et al." in out
    code, _, err = run(capsys, "hardware", "show", "nope")
    assert code == 2 and "valid names" in err


def test_hardware_list_and_show_a_calibrated_profile(capsys):
    """The refined block printed as one line of Python dict, and calibrated numbers (many
    digits) pushed the list's columns apart."""
    from test_refined_model import refined_profile

    from perfmodel import save_profile

    measured = {"dense_flops_per_s": 177.45e9, "memory_bandwidth_bytes_per_s": 32.1876e9,
                "sparse_overhead": 0.861343}  # as a calibration writes them  # fmt: skip
    save_profile(refined_profile("a-calibrated-box-name").model_copy(update=measured))
    code, out, _ = run(capsys, "hardware", "list")
    assert code == 0
    lines = [line for line in out.splitlines()[:-2] if line.strip()]
    header, rows = lines[0], lines[1:]
    for row in rows:  # every number ends under its heading
        for heading in ("GFLOP/s", "GB/s", "α", "β"):
            end = header.index(heading) + len(heading)
            assert row[end - 1] != " " and row[end] == " ", (heading, row)
    code, out, _ = run(capsys, "hardware", "show", "a-calibrated-box-name")
    assert code == 0 and "{" not in out
    assert "refined (calibrated parameters" in out and "\n  dense:\n" in out


def test_models_list(capsys):
    code, out, _ = run(capsys, "models", "--json")
    assert code == 0
    names = [m["name"] for m in json.loads(out)]
    assert {"lenet5", "alexnet", "googlenet", "vgg16", "resnet50", "resnet20"} <= set(names)
    code, out, _ = run(capsys, "models")
    assert code == 0
    # the shape column starts at the same place on every row, however long the name
    # (alexnet_cifar and cifar_convnet overflowed a 10-character column)
    starts = {len(line) - len(line[len(line.split()[0]) :].lstrip()) for line in out.splitlines()}
    assert len(starts) == 1, out


def test_prune_summary_lists_the_files_the_run_wrote():
    from service.cli import _artifact_files

    unstructured = {"artifacts": {"pruned_weights": "pruned.safetensors", "report": "report.md"}}
    assert _artifact_files(unstructured) == ["manifest.json", "pruned.safetensors", "report.md"]
    structured = {"artifacts": {"pruned_weights": "pruned.safetensors",
                                "cut_weights": "cut.safetensors", "report": None}}  # fmt: skip
    assert _artifact_files(structured) == ["manifest.json", "pruned.safetensors", "cut.safetensors"]


@pytest.mark.slow
def test_console_script_is_installed():
    """The `sweetspot` entry point of the installed distribution runs end to end."""
    bin_dir = __import__("pathlib").Path(sys.executable).parent
    result = subprocess.run(
        [str(bin_dir / "sweetspot"), "predict", "--model", "resnet20", "--hardware",
         "atom-c2750", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"] == "resnet20"


@pytest.mark.parametrize(
    "argv",
    [["models"], ["hardware", "list"],
     ["predict", "--model", "alexnet", "--hardware", "atom-c2750"]],
)  # fmt: skip
def test_a_reader_that_leaves_early_gets_no_traceback(argv):
    """`sweetspot models | head -1`: stdout's reader is gone before the output is written
    (here: before the process starts). A BrokenPipeError traceback came out on stderr; now it
    exits quietly with 141, as a program killed by SIGPIPE."""
    import os
    from pathlib import Path

    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "service.cli", *argv], stdout=write, stderr=subprocess.PIPE,
            text=True, timeout=120, check=False, cwd=Path(__file__).parents[1],
        )  # fmt: skip
    finally:
        os.close(write)
    assert result.stderr == ""
    assert result.returncode == 141


def test_bench_predict_prints_json(capsys):
    code, out, _ = run(capsys, "bench", "predict", "--model", "resnet20", "--repeats", "2")
    assert code == 0
    data = json.loads(out)
    assert data["layers"] == 20 and data["predict_median_s"] > 0


@pytest.mark.parametrize("option", ["--repeats", "--batch"])
def test_bench_predict_refuses_counts_below_one(capsys, option):
    """--repeats 0 raised UnboundLocalError; --batch 0 was accepted (predict refuses it)."""
    code, out, err = run(capsys, "bench", "predict", "--model", "lenet5", option, "0")
    assert code == 2 and out == "" and f"{option} must be >= 1" in err


def test_bench_kernel_prints_its_json_contract(capsys):
    """`sweetspot bench kernel --json`: every case with the issue's fields, our op checked
    against dense, whether it paired rows, and a summary per layer set, batch and threads."""
    code, out, _ = run(capsys, "bench", "kernel", "--layers", "cifar", "--batch", "1",
                       "--threads", "1", "--sparsity", "0.5", "0.9", "--repeats", "1",
                       "--warmup", "0", "--json")  # fmt: skip
    assert code == 0
    data = json.loads(out)
    results = data["results"]
    assert {(r["layer"], r["sparsity"]) for r in results} == {
        (name, s) for name in ("res16@32", "res32@16", "res64@8") for s in (0.5, 0.9)
    }
    for r in results:
        assert {"layer", "batch", "threads", "sparsity", "dense_s", "ours_s", "torch_sparse_s",
                "ours_vs_torch_sparse_s", "speedup_vs_dense",
                "speedup_vs_torch_sparse"} <= r.keys()  # fmt: skip
        assert r["speedup_vs_dense"] == pytest.approx(r["dense_s"] / r["ours_s"])
        # torch.sparse is timed in rounds of its own with ours (its unfold dirties the caches)
        assert r["speedup_vs_torch_sparse"] == pytest.approx(
            r["torch_sparse_s"] / r["ours_vs_torch_sparse_s"]
        )
        assert r["row_pairs"] is (r["sparsity"] == 0.5)  # half the non-zeros shared, or a tenth
    (summary,) = data["summary"]
    assert (summary["layers"], summary["batch"], summary["threads"]) == ("cifar", 1, 1)
    assert set(summary["median_speedup_vs_dense"]) == {"0.5", "0.9"}


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("--warmup", "-1", "must be >= 0, got -1"), ("--repeats", "0", "must be >= 1, got 0"),
     ("--sparsity", "1.5", "must be in [0, 1)"), ("--sparsity", "-0.1", "must be in [0, 1)"),
     ("--sparsity", "nan", "must be in [0, 1)"), ("--batch", "0", "must be >= 1, got 0"),
     ("--threads", "0", "must be >= 1, got 0"), ("--seed", "-1", "must be between 0 and"),
     ("--repeats", "2.5", "expected an integer, got '2.5'")],
)  # fmt: skip
def test_bench_kernel_refuses_values_out_of_range_before_timing(capsys, monkeypatch, option,
                                                                value, message):  # fmt: skip
    """The range check printed its one message for every option to stdout; --warmup -1 ran."""
    from model.sparse import bench

    monkeypatch.setattr(bench, "bench_layer", lambda *a, **k: pytest.fail("timed"))
    code, out, err = run(capsys, "bench", "kernel", "--layers", "cifar", option, value)
    assert code == 2 and out == ""
    assert f"argument {option}: {message}" in err and "usage: sweetspot bench kernel" in err


def test_bench_summary_marks_a_break_even_below_every_measured_sparsity():
    """A layer already faster than dense at the lowest sparsity measured has its break-even at
    or below it: the summary said `break-even 0.90` for a run of 0.9 alone."""
    from model.sparse.bench import _table, summarise

    def row(layer, sparsity, speedup):
        return {"layer": layer, "shape": "", "batch": 1, "threads": 1, "sparsity": sparsity,
                "dense_s": speedup, "dense_backend": "onednn", "ours_s": 1.0,
                "torch_sparse_s": None, "speedup_vs_dense": speedup}  # fmt: skip

    measured = [row("a", 0.5, 0.8), row("a", 0.7, 1.2), row("b", 0.5, 1.1), row("b", 0.7, 2.0)]
    (summary,) = summarise(measured, {"set": ["a", "b"]})
    assert summary["break_even_sparsity"] == pytest.approx(0.6)  # layer a, interpolated
    assert summary["break_even_at_or_below"] is False
    only_fast = [row("a", 0.9, 5.0), row("b", 0.9, 6.0)]
    (summary,) = summarise(only_fast, {"set": ["a", "b"]})
    assert summary["break_even_sparsity"] == 0.9 and summary["break_even_at_or_below"] is True
    assert "break-even ≤ 0.90" in _table(only_fast, [summary])


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--ratios", "abc"], 2, "--ratios takes comma-separated fractions"),
        (["--ratios", "0.5,1.5"], 2, "--ratios must each be above 0 and below 1"),
        (["--random-repeats", "0"], 2, "--random-repeats must be >= 1"),
        (["--threads", "0"], 2, "--threads must be >= 1"),
        (["--layers", "nope,fc1"], 2, "--layers nope, fc1: not prunable conv layers of lenet5"),
        (["--model", "nope"], 2, "unknown model 'nope'"),
        (["--checkpoint", "/missing.pt"], 1, "does not exist"),
        (["--dataset", "digit"], 1, "unknown dataset 'digit'"),
        (["--device", "gpu"], 2, "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
        (["--device", "cuda:9"], 2, "device='cuda:9' but"),  # no such GPU here, whatever the host
    ],
)
def test_sensitivity_refuses_bad_arguments_before_training(capsys, tmp_path, monkeypatch, extra,
                                                          code, message):  # fmt: skip
    """Each of these was a traceback, most of them after the dense training."""
    import model.training

    monkeypatch.setattr(model.training.Trainer, "fit", lambda *a, **k: pytest.fail("trained"))
    args = ["sensitivity", "--model", "lenet5", "--dataset", "synthetic",
            "--out", str(tmp_path / "s"), *extra]  # fmt: skip
    result, out, err = run(capsys, *args)
    assert result == code and out == ""
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()  # an empty --out folder was left behind


def test_sensitivity_of_a_network_without_conv_layers_is_refused(capsys, tmp_path):
    """LeNet-300-100 divided by zero in mean_drop after the training."""
    out = tmp_path / "s"
    code, stdout, err = run(capsys, "sensitivity", "--model", "lenet300", "--dense-epochs", "0",
                            "--ratios", "0.5", "--out", str(out))  # fmt: skip
    assert code == 2 and stdout == ""
    assert "lenet300 has no prunable conv layers (it has fc1 (Linear)" in err, err
    assert not out.exists()


def test_sensitivity_out_must_not_be_a_file(capsys, tmp_path):
    (tmp_path / "file").write_text("")
    code, _, err = run(capsys, "sensitivity", "--model", "lenet5", "--out", str(tmp_path / "file"))
    assert code == 2 and "is a file" in err
    code, _, err = run(capsys, "sensitivity", "--model", "lenet5", "--out",
                       str(tmp_path / "file" / "sub"))  # fmt: skip
    assert code == 1 and "cannot create --out" in err


@pytest.mark.parametrize("command", ["sensitivity", "prune"])
def test_checkpoints_that_do_not_load_are_one_line_errors(capsys, tmp_path, monkeypatch, command):
    """Weights of another network (RuntimeError from load_state_dict) and a corrupt
    safetensors file (safetensors' own error) escaped as tracebacks."""
    from safetensors.torch import save_file

    import model.training
    from model.networks import create_model

    monkeypatch.setattr(model.training.Trainer, "fit", lambda *a, **k: pytest.fail("trained"))
    other = tmp_path / "resnet20.safetensors"
    save_file(create_model("resnet20").state_dict(), str(other))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    for checkpoint, message in ((other, "do not fit lenet5"),
                                (corrupt, "is not a valid safetensors file")):  # fmt: skip
        args = [command, "--model", "lenet5", "--dataset", "synthetic", "--checkpoint",
                str(checkpoint), "--out", str(tmp_path / "out")]  # fmt: skip
        code, _, err = run(capsys, *args)
        assert code == 1 and message in err and "Traceback" not in err, err


def test_bench_api_checks_before_loading(capsys):
    code, out, err = run(capsys, "bench", "api", "--concurrency", "0")
    assert code == 2 and "--concurrency must be >= 1" in err
    for option in ("--duration", "--warmup"):  # infinity ran forever, NaN was refused oddly
        for value in ("inf", "nan"):
            code, out, err = run(capsys, "bench", "api", option, value)
            assert code == 2 and f"{option} must be" in err and "finite" in err, (option, err)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, out, err = run(capsys, "bench", "api", "--url", f"http://127.0.0.1:{port}",
                         "--duration", "0.2", "--warmup", "0")  # fmt: skip
    assert code == 1 and out == "" and "cannot reach the service" in err
    assert "Traceback" not in err


def test_bench_api_serves_the_users_own_profile(capsys):
    """The service it starts keeps profiles in its own data folder: a user profile (host)
    answered 422 to every request, and the output only counted the errors."""
    from test_refined_model import refined_profile

    from perfmodel import save_profile

    save_profile(refined_profile("bench-box"))
    code, out, err = run(capsys, "bench", "api", "--model", "lenet5", "--hardware", "bench-box",
                         "--concurrency", "2", "--duration", "0.5", "--warmup", "0")  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["hardware"] == "bench-box" and result["requests"] > 0 and not result["errors"]


def test_serve_refuses_a_port_out_of_range(capsys):
    """--port 180009 was taken, printed as :180009, and listened on 48937 (mod 65536);
    --workers -1 was taken and started none."""
    code, _, err = run(capsys, "serve", "--port", "180009")
    assert code == 2 and "must be between 0 and 65535, got 180009" in err
    code, _, err = run(capsys, "serve", "--workers", "-1")
    assert code == 2 and "must be >= 0, got -1" in err


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_serve_and_worker_say_what_is_wrong_with_the_storage(capsys, tmp_path, command):
    """A bad database URL, an unreachable database or a data directory that cannot be made
    were 40-frame tracebacks."""
    data = ["--data-dir", str(tmp_path / "data")]
    code, _, err = run(capsys, command, *data, "--database-url", "nonsense")
    assert code == 2 and "sweetspot: invalid database URL 'nonsense'" in err
    code, _, err = run(capsys, command, *data, "--database-url", "foo://x")
    assert code == 2 and "sweetspot: invalid database URL foo://x: " in err  # no such dialect
    code, _, err = run(capsys, command, *data, "--database-url", "mysql+mysqldb://u:p@h/db")
    assert code == 1 and "cannot open the database mysql+mysqldb://u:***@h/db: No module" in err
    assert "Traceback" not in err
    url = "postgresql+psycopg://user:secret@127.0.0.1:1/db"
    code, _, err = run(capsys, command, *data, "--database-url", url)
    assert code == 1 and "sweetspot: cannot open the database postgresql+psycopg://user:***@" in err
    assert "secret" not in err and "Traceback" not in err
    (tmp_path / "file").write_text("")
    code, _, err = run(capsys, command, "--data-dir", str(tmp_path / "file"))
    assert code == 1 and f"sweetspot: cannot use the data directory {tmp_path / 'file'}" in err


def test_every_option_of_serve_bench_predict_sensitivity_and_prune_has_help():
    """serve --host/--port, bench predict's and sensitivity's options had no help, and prune's
    epoch options did not say their defaults."""
    import argparse

    from model.training import TrainConfig
    from service.cli import build_parser

    def subparser(parser, *names):
        for name in names:
            action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            parser = action.choices[name]
        return parser

    parser = build_parser()
    for names in (("serve",), ("bench", "predict"), ("sensitivity",), ("prune",)):
        for action in subparser(parser, *names)._actions:
            assert action.help, (names, action.option_strings)
            if action.default not in (None, False, argparse.SUPPRESS):
                assert "default" in action.help, (names, action.option_strings)
    prune = {a.dest: a.help for a in subparser(parser, "prune")._actions}
    defaults = TrainConfig()
    for dest, field in (("epochs", "prune_epochs"), ("dense_epochs", "dense_epochs"),
                        ("finetune_epochs", "finetune_epochs"), ("lr", "lr"),
                        ("batch_size", "batch_size"), ("seed", "seed")):  # fmt: skip
        assert f"(default {getattr(defaults, field):g}" in prune[dest], dest
