"""`sweetspot validate`: the scores, and a quick end-to-end run (no timing figures asserted)."""

from __future__ import annotations

import argparse
import json

import pytest
from test_refined_model import refined_profile

from model import validation
from model.validation import repeatability, score
from perfmodel import save_profile


def _case(layer, sparsity, predicted, measured, batch=1):
    return {"layer": layer, "batch": batch, "sparsity": sparsity,
            "predicted_speedup": predicted, "measured_speedup": measured}  # fmt: skip


def test_scores():
    cases = [
        _case("a", 0.5, 0.5, 0.5),  # exact
        _case("a", 0.9, 2.1, 2.0),  # +5%
        _case("b", 0.5, 0.75, 1.0),  # -25%
        _case("b", 0.9, 3.0, 2.0),  # +50%
    ]
    result = score(cases)
    assert result["mape"] == pytest.approx((0 + 0.05 + 0.25 + 0.5) / 4)
    assert result["within_10pct"] == 0.5
    assert result["within_20pct"] == 0.5
    # a: both cross 1 between 0.5 and 0.9 at 0.5 + 0.4·0.5/1.6 and 0.5 + 0.4·0.5/1.5;
    # b: measured is ≥ 1 from 0.5, predicted crosses at 0.5 + 0.4·0.25/2.25.
    a = abs(0.4 * 0.5 / 1.6 - 0.4 * 0.5 / 1.5) * 100
    b = 0.4 * 0.25 / 2.25 * 100
    assert result["breakeven_error_pp"] == pytest.approx((a + b) / 2)


def test_curve_that_never_breaks_even_counts_as_100_percent():
    cases = [_case("a", 0.5, 0.5, 0.5), _case("a", 0.9, 0.9, 1.5)]
    # predicted never reaches 1 (→ 1.0); measured crosses at 0.5 + 0.4·0.5/1.0 = 0.7.
    assert score(cases)["breakeven_error_pp"] == pytest.approx(30.0)


def test_repeatability_is_the_agreement_between_pairs_of_passes():
    cases = [
        {**_case("a", 0.5, 1.0, 2.0), "pass_speedups": [2.0, 2.1, 2.5]},  # 5%, 25%, 19%
        {**_case("a", 0.9, 1.0, 4.0), "pass_speedups": [4.0, 4.0]},  # 0%
    ]
    result = repeatability(cases)
    assert result["repeatability_10pct"] == pytest.approx(2 / 4)
    assert result["repeatability_20pct"] == pytest.approx(3 / 4)
    one_pass = [{**_case("a", 0.5, 1.0, 2.0), "pass_speedups": [2.0]}]
    assert repeatability(one_pass) == {"repeatability_10pct": None, "repeatability_20pct": None}


def test_validate_with_passes_pools_them(capsys):
    save_profile(refined_profile())
    parser = argparse.ArgumentParser()
    validation.add_arguments(parser)
    args = parser.parse_args(["--hardware", "host", "--quick", "--json", "--quiet",
                              "--repeats", "1", "--passes", "2"])  # fmt: skip
    assert validation.run(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["passes"] == 2
    assert 0 <= result["repeatability_20pct"] <= 1
    for case in result["cases"]:
        assert len(case["pass_speedups"]) == 2 and min(case["pass_speedups"]) > 0


def test_validate_scores_the_pooled_timings_of_its_passes(monkeypatch):
    from model import calibration
    from model.calibration import Timing

    calls = []

    def fake_layer_functions(layer, sparsities, seed):
        return {"layer": (layer.name, sparsities)}  # stands in for the calls to time

    def fake_time_layer(functions, repeats, warmup, min_sample_s):
        name, sparsities = functions["layer"]
        calls.append(name)
        sparse = 1.0 if calls.count(name) == 1 else 0.5  # the second pass is faster
        return {"dense:default": Timing.of([2.0]), "dense:onednn": Timing.of([3.0]),
                **{f"sparse:{s}": Timing.of([sparse]) for s in sparsities}}  # fmt: skip

    monkeypatch.setattr(calibration, "layer_functions", fake_layer_functions)
    monkeypatch.setattr(calibration, "time_layer", fake_time_layer)
    result = validation.validate(refined_profile(), quick=True, passes=2)
    assert result["passes"] == 2 and len(calls) == 4
    for case in result["cases"]:
        assert case["pass_speedups"] == [2.0, 4.0]
        assert case["dense_backend"] == "default" and case["dense_s"] == 2.0
        assert case["sparse_s"] == 0.75  # the median of both passes' samples
        assert case["measured_speedup"] == pytest.approx(2.0 / 0.75)
    assert result["repeatability_20pct"] == 0.0  # the passes disagree by 100%


def test_validate_warns_when_threads_differ_from_the_calibration(capsys):
    save_profile(refined_profile())  # calibrated with 1 thread
    parser = argparse.ArgumentParser()
    validation.add_arguments(parser)
    args = parser.parse_args(["--hardware", "host", "--quick", "--quiet", "--repeats", "1",
                              "--threads", "2"])  # fmt: skip
    assert validation.run(args) == 0
    assert "calibrated with 1 thread(s)" in capsys.readouterr().err
    args.threads = 1
    assert validation.run(args) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--passes", "--repeats", "--threads"])
def test_validate_rejects_counts_below_one(option, capsys):
    save_profile(refined_profile())
    parser = argparse.ArgumentParser()
    validation.add_arguments(parser)
    args = parser.parse_args(["--hardware", "host", "--quick", "--quiet", option, "0"])
    assert validation.run(args) == 2
    assert f"{option} must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--performance-model", "refined", "--hardware", "xeon-e5-2697v4"], 1,
         "has no refined parameters"),
        (["--performance-model", "foo"], 2, "unknown performance model 'foo'"),
        (["--plot", "/nonexistent/dir/x.png"], 2, "does not exist"),
        (["--plot", "out.txt"], 2, "name a file ending in .png"),
    ],
)  # fmt: skip
def test_validate_refuses_bad_options_before_measuring(monkeypatch, capsys, extra, code,
                                                       message):  # fmt: skip
    """These failed only after every case was measured (≈70 s), and a bad --plot path then
    lost the whole run's results."""
    save_profile(refined_profile())
    monkeypatch.setattr(validation, "validate", lambda *a, **k: pytest.fail("measured"))
    parser = argparse.ArgumentParser()
    validation.add_arguments(parser)
    args = parser.parse_args(["--hardware", "host", "--quick", "--quiet", *extra])
    assert validation.run(args) == code
    assert message in capsys.readouterr().err


def _refused_plot(monkeypatch, capsys, plot) -> str:
    save_profile(refined_profile())
    monkeypatch.setattr(validation, "validate", lambda *a, **k: pytest.fail("measured"))
    parser = argparse.ArgumentParser()
    validation.add_arguments(parser)
    args = parser.parse_args(["--hardware", "host", "--quick", "--quiet", "--plot", str(plot)])
    assert validation.run(args) == 2
    return capsys.readouterr().err


def test_a_plot_path_is_refused_for_its_real_reason(monkeypatch, capsys, tmp_path):
    """A file where the plot's folder should be, or a folder the user may not search, was
    reported as 'the folder ... does not exist'; a plot file the user may not write, or a
    folder os.access calls writable (/sys as root), passed the check and failed only after
    every case was measured. The file is now opened, and the system's reason reported."""
    (tmp_path / "notes").write_text("")
    for plot in (tmp_path / "notes" / "x.png", tmp_path / "notes" / "sub" / "x.png"):
        err = _refused_plot(monkeypatch, capsys, plot)
        assert f"{tmp_path / 'notes'} is a file, not a folder" in err, err
    err = _refused_plot(monkeypatch, capsys, tmp_path / "none" / "x.png")
    assert f"the folder {tmp_path / 'none'} does not exist" in err

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(validation.Path, "open", denied)
    assert validation._plot_path_error(tmp_path / "x.png") == "cannot write it: Permission denied"


def test_checking_the_plot_path_leaves_no_file_and_keeps_an_old_plot(tmp_path):
    assert validation._plot_path_error(tmp_path / "new.png") is None
    assert not (tmp_path / "new.png").exists()
    (tmp_path / "old.png").write_bytes(b"old plot")
    assert validation._plot_path_error(tmp_path / "old.png") is None
    assert (tmp_path / "old.png").read_bytes() == b"old plot"


def test_validate_quick_end_to_end(tmp_path, capsys):
    save_profile(refined_profile())
    parser = argparse.ArgumentParser()
    validation.add_arguments(parser)
    plot = tmp_path / "validation.png"
    args = parser.parse_args(
        [
            "--hardware",
            "host",
            "--quick",
            "--json",
            "--quiet",
            "--plot",
            str(plot),
            "--repeats",
            "2",
        ]
    )
    assert validation.run(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"mape", "within_10pct", "within_20pct", "breakeven_error_pp", "cases"} <= set(result)
    assert result["performance_model"] == "refined" and result["threads"] == 1
    assert len(result["cases"]) == 4
    for case in result["cases"]:
        assert {"layer", "batch", "sparsity", "predicted_speedup", "measured_speedup"} <= set(case)
        assert case["predicted_speedup"] > 0 and case["measured_speedup"] > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_validate_unknown_profile_exits_2(capsys):
    parser = argparse.ArgumentParser()
    validation.add_arguments(parser)
    assert validation.run(parser.parse_args(["--hardware", "nope", "--quick", "--quiet"])) == 2
    assert "valid names" in capsys.readouterr().err
