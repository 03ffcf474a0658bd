"""Calibration: the fit recovers known parameters, noise is refused, the command writes `host`."""

from __future__ import annotations

import argparse
import dataclasses
import itertools

import numpy as np
import pytest
from test_refined_model import NATIVE, refined_profile, with_native

from model import calibration
from model.calibration import (
    CALIBRATION_LAYERS,
    EXIT_NOISY,
    CalibrationData,
    DenseTimeRegressor,
    NoisyRunError,
    SparseTimeRegressor,
    Timing,
    build_profile,
    fit_refined,
    fit_sparse,
    measure_passes,
    plan_for,
    pool_timings,
    simulate,
    spread_of,
    time_interleaved,
)
from perfmodel import SCHEMA_VERSION, Conv2dSpec, get_profile, predict_network, profile_names
from perfmodel.hardware import user_profile_dir
from perfmodel.refined import (
    DENSE_CALL_FIELD,
    DENSE_RATE_FIELD,
    NATIVE_RATE_FIELD,
    SPARSE_RATE_FIELD,
)

TRUE = refined_profile()


def _data(measurements, threads: int = 1) -> CalibrationData:
    return CalibrationData(
        measurements=measurements, memory=TRUE.refined.memory, gemm_flops_per_s=60e9,
        threads=threads, isa="avx512", load="load 0.10 0.10 0.10 on 2 cores",
        cache_bytes=TRUE.refined.cache_bytes,
    )  # fmt: skip


def test_fit_recovers_the_parameters_that_generated_the_timings():
    fitted = fit_refined(simulate(TRUE, plan_for(quick=False)), TRUE.refined.memory, threads=1,
                         cache_bytes=TRUE.refined.cache_bytes)  # fmt: skip
    assert fitted.cache_bytes == TRUE.refined.cache_bytes
    for params, truth, fields in (
        (fitted.dense, TRUE.refined.dense, DENSE_RATE_FIELD.values()),
        (fitted.sparse, TRUE.refined.sparse, SPARSE_RATE_FIELD.values()),
    ):
        assert params.call_overhead_s == pytest.approx(truth.call_overhead_s, rel=1e-3)
        for field in fields:
            assert getattr(params, field) == pytest.approx(getattr(truth, field), rel=1e-3), field
    for field in DENSE_CALL_FIELD.values():  # each conv family's own fixed cost per call
        assert getattr(fitted.dense, field) == pytest.approx(
            getattr(TRUE.refined.dense, field), rel=1e-3, abs=1e-9
        ), field
    assert fitted.sparse.fma_latency_vectors == TRUE.refined.sparse.fma_latency_vectors
    assert fitted.fit.speedup_mape < 1e-6


@pytest.mark.parametrize("threads", [1, 2])
def test_fit_recovers_the_native_dense_path_from_the_default_backends_timings(threads):
    truth = with_native(TRUE, threads)
    measurements = simulate(truth, plan_for(quick=False))
    eligible = {m.layer.name for m in measurements if "default" in m.dense_backends}
    assert "c3.16-24@28" in eligible and "alexnet.conv3" not in eligible
    assert any(m.dense_backend == "default" for m in measurements)  # the native path wins some
    fitted = fit_refined(measurements, TRUE.refined.memory, threads=threads,
                         cache_bytes=TRUE.refined.cache_bytes)  # fmt: skip
    assert fitted.native_dense is not None
    assert fitted.native_dense.call_overhead_s == pytest.approx(NATIVE.call_overhead_s, rel=1e-3)
    for field in NATIVE_RATE_FIELD.values():
        assert getattr(fitted.native_dense, field) == pytest.approx(getattr(NATIVE, field),
                                                                    rel=1e-3), field  # fmt: skip
    for field in DENSE_RATE_FIELD.values():  # oneDNN's fit uses oneDNN's timings everywhere
        assert getattr(fitted.dense, field) == pytest.approx(getattr(TRUE.refined.dense, field),
                                                             rel=1e-3), field  # fmt: skip
    assert fitted.fit.dense_mape < 1e-6 and fitted.fit.speedup_mape < 1e-6


@pytest.mark.parametrize("threads", [1, 2])
def test_quick_plan_fits_no_native_path_and_keeps_the_best_dense_time(threads):
    truth = with_native(TRUE, threads)
    quick = simulate(truth, plan_for(quick=True))
    native_layers = {m.layer.name for m in quick if "default" in m.dense_backends}
    assert 0 < len(native_layers) <= 2  # too few to fit the native path
    fitted = fit_refined(quick, TRUE.refined.memory, threads=threads)
    assert fitted.native_dense is None
    # oneDNN's model is then fitted on the best dense time (what the measurement reports),
    # exactly as if the default backend's timings had not been kept
    stripped = [dataclasses.replace(m, dense_backends={}) for m in quick]
    assert fitted.dense == fit_refined(stripped, TRUE.refined.memory, threads=threads).dense


def test_no_native_fit_without_the_default_backends_timings():
    simulated = simulate(with_native(TRUE), plan_for(False))
    measurements = [dataclasses.replace(m, dense_backends={}) for m in simulated]
    assert fit_refined(measurements, TRUE.refined.memory, threads=1).native_dense is None


@pytest.mark.parametrize("floor", [1.0, 2.0, 3.0, 4.0])
def test_fit_sparse_finds_the_latency_floor(floor):
    """Every candidate floor up to the smallest tiles is identifiable: 1 and 2 only from a
    layer with 1-vector tiles (c3.256@3), 2 and 3 from the 2-vector ones (the 5×5 images)."""
    sparse = TRUE.refined.sparse.model_copy(update={"fma_latency_vectors": floor})
    truth = TRUE.model_copy(update={"refined": TRUE.refined.model_copy(update={"sparse": sparse})})
    regressor, found, X = fit_sparse(
        simulate(truth, plan_for(quick=False)), cache_bytes=TRUE.refined.cache_bytes
    )
    assert found == floor
    assert X.shape == (len(regressor.predict(X)), len(SparseTimeRegressor.terms))
    assert regressor.parameters(found).inner_loop_bytes_per_s == pytest.approx(
        sparse.inner_loop_bytes_per_s, rel=1e-3
    )


def test_fit_tolerates_mild_noise():
    measurements = simulate(TRUE, plan_for(quick=False), noise_cv=0.03, seed=1)
    fitted = fit_refined(measurements, TRUE.refined.memory, threads=1)
    assert fitted.fit.noise_cv < 0.05
    truth = TRUE.refined.sparse.inner_loop_bytes_per_s
    assert fitted.sparse.inner_loop_bytes_per_s == pytest.approx(truth, rel=0.1)


def test_estimators_follow_scikit_learn_conventions():
    rng = np.random.default_rng(0)
    X = rng.uniform(1, 10, size=(40, len(DenseTimeRegressor.terms)))
    coef = rng.uniform(0.1, 1, size=X.shape[1])
    estimator = DenseTimeRegressor()
    assert estimator.fit(X, X @ coef) is estimator
    np.testing.assert_allclose(estimator.coef_, coef, rtol=1e-6)
    assert len(estimator.outliers_) == 0
    assert estimator.get_params() == {"outlier_factor": 4.0, "min_outlier_error": 0.25}
    with pytest.raises(ValueError, match="must be"):
        SparseTimeRegressor().fit(X[:, :5], X[:, :5] @ coef[:5])  # wrong number of columns


def _cpu_caches(root, cpu, l2_size, l2_shared):
    for index, (level, kind, size, shared) in enumerate(
        [("1", "Data", "48K", str(cpu)), ("1", "Instruction", "32K", str(cpu)),
         ("2", "Unified", l2_size, l2_shared), ("3", "Unified", "32768K", "0-3")]
    ):  # fmt: skip
        folder = root / f"cpu{cpu}" / "cache" / f"index{index}"
        folder.mkdir(parents=True)
        for name, value in (("level", level), ("type", kind), ("size", size),
                            ("shared_cpu_list", shared)):  # fmt: skip
            (folder / name).write_text(value + "\n")


def test_l2_size_comes_from_sysfs_counting_each_shared_l2_once(tmp_path, monkeypatch):
    monkeypatch.setattr(calibration.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    own, pairs = tmp_path / "own", tmp_path / "pairs"
    for cpu in range(4):
        _cpu_caches(own, cpu, "1024K", str(cpu))  # one L2 per core
        _cpu_caches(pairs, cpu, "2M", "0-1" if cpu < 2 else "2-3")  # one per core pair
    assert calibration.l2_cache_bytes(1, own) == 1 << 20
    assert calibration.l2_cache_bytes(2, own) == 2 << 20
    assert calibration.l2_cache_bytes(2, pairs) == 2 << 20  # both threads on one L2
    assert calibration.l2_cache_bytes(4, pairs) == 4 << 20
    assert calibration.l2_cache_bytes(8, own) == 4 << 20  # more threads than CPUs
    assert calibration.l2_cache_bytes(1, tmp_path / "missing") is None


def test_build_profile_writes_provenance_and_schema():
    profile = build_profile(_data(simulate(TRUE, plan_for(quick=True))), "box")
    assert profile.name == "box" and profile.schema_version == SCHEMA_VERSION == 3
    assert profile.provenance.kind == "calibration"
    assert profile.provenance.threads == 1 and profile.provenance.torch
    assert profile.provenance.cpu and profile.provenance.host and profile.provenance.date
    assert profile.refined.threads == 1
    assert profile.sparse_overhead > 0


def test_noisy_run_is_refused():
    noisy = simulate(TRUE, plan_for(quick=True), noise_cv=0.5, seed=2)
    with pytest.raises(NoisyRunError, match=r"too noisy.*no profile written"):
        build_profile(_data(noisy), "host")


def test_timing_reports_median_and_coefficient_of_variation():
    timing = Timing.of([1.0, 1.0, 4.0])
    assert timing.median_s == 1.0
    assert timing.cv == pytest.approx(np.std([1, 1, 4]) / 2.0)


def test_time_interleaved_uses_the_injected_clock():
    ticks = itertools.count()
    timings = time_interleaved({"a": lambda: None}, repeats=3, min_sample_s=0.5,
                               clock=lambda: float(next(ticks)))  # fmt: skip
    assert timings["a"].median_s == pytest.approx(1.0)
    assert timings["a"].cv == 0.0


def test_time_interleaved_counts_loops_from_warm_calls_not_the_first_one():
    # A first call 1000x a steady one (lazy set-up, cold caches) must not shrink every sample
    # to a single call: samples still last min_sample_s.
    now, calls = [0.0], [0]

    def function():
        now[0] += 1.0 if calls[0] == 0 else 1e-3
        calls[0] += 1

    timings = time_interleaved({"f": function}, repeats=3, min_sample_s=0.01,
                               clock=lambda: now[0])  # fmt: skip
    assert timings["f"].median_s == pytest.approx(1e-3)
    timed = calls[0] - 1 - 3  # the untimed first call and the quarter-sample burst
    assert timed >= 3 * 10


def test_pooled_timing_takes_the_median_of_all_passes_and_reports_their_spread():
    fast = {"f": Timing.of([1.0, 1.0, 1.2])}
    slow = {"f": Timing.of([2.0, 2.0, 2.0])}  # steady: CV 0
    pooled = pool_timings([fast, slow, fast])["f"]
    assert pooled.median_s == pytest.approx(1.2)  # of 1, 1, 1, 1, 1.2, 1.2, 2, 2, 2
    assert pooled.samples == (1.0, 1.0, 1.2, 2.0, 2.0, 2.0, 1.0, 1.0, 1.2)
    # within-pass noise (the mean of the passes' CVs), not the shift between passes
    assert pooled.cv == pytest.approx(2 * fast["f"].cv / 3)
    assert pooled.spread == pytest.approx(2.0 / 1.0 - 1.0) and pooled.passes == 3
    assert pool_timings([fast]) == fast


def test_spread_of_a_run_is_none_for_one_pass():
    one_pass = simulate(TRUE, plan_for(quick=True))
    assert spread_of(one_pass) is None
    dense = {id(m.dense): dataclasses.replace(m.dense, spread=0.3, passes=2) for m in one_pass}
    pooled = [
        dataclasses.replace(m, dense=dense[id(m.dense)],
                            sparse=dataclasses.replace(m.sparse, spread=0.1, passes=2))
        for m in one_pass
    ]  # fmt: skip
    assert len(dense) < len(pooled) / 2  # a layer's dense timing is shared by its cases
    assert spread_of(pooled) == pytest.approx(0.1)
    assert build_profile(_data(pooled), "host").refined.fit.pass_spread == pytest.approx(0.1)
    assert build_profile(_data(one_pass), "host").refined.fit.pass_spread is None


def test_measure_passes_alternates_order_and_keeps_each_layers_seed(monkeypatch):
    calls, builds = [], []

    def fake_layer_functions(layer, sparsities, seed):
        builds.append(layer.name)
        return {"layer": (layer.name, seed)}  # stands in for the calls to time

    def fake_time_layer(functions, repeats, warmup, min_sample_s):
        name, seed = functions["layer"]
        calls.append((name, seed))
        return {"dense:default": Timing.of([float(seed)]), "sparse:0.5": Timing.of([0.5])}

    monkeypatch.setattr(calibration, "layer_functions", fake_layer_functions)
    monkeypatch.setattr(calibration, "time_layer", fake_time_layer)
    layers = [layer.with_batch(1) for layer in CALIBRATION_LAYERS[:3]]
    steps = []
    runs = measure_passes(layers, [(0.5,)] * 3, passes=2, repeats=1, seed=10,
                          progress=lambda i, layer: steps.append((i, layer.name)))  # fmt: skip
    names = [layer.name for layer in layers]
    assert calls == [(n, 11 + i) for i, n in enumerate(names)] + [
        (n, 11 + i) for i, n in reversed(list(enumerate(names)))
    ]
    assert steps == list(enumerate(names + names[::-1]))
    assert builds == names  # inputs and weights are built once per layer, not per pass
    # each layer's timings, in pass order, whatever order the pass ran in
    dense = [[t["dense:default"].median_s for t in r] for r in runs]
    assert dense == [[11, 11], [12, 12], [13, 13]]


def test_layer_functions_time_an_asymmetrically_padded_layer_at_its_shape():
    spec = Conv2dSpec(name="even", batch=2, in_channels=4, out_channels=8, in_height=9,
                      in_width=7, kernel=(4, 2), padding=(1, 0), padding_end=(2, 1))  # fmt: skip
    output = calibration.layer_functions(spec, ())["dense:default"]()
    assert tuple(output.shape) == (2, 8, spec.out_height, spec.out_width) == (2, 8, 9, 7)


def test_calibration_never_sees_validation_layers_or_sparsities():
    from model.validation import VALIDATION_LAYERS, VALIDATION_SPARSITIES

    shapes = {layer.describe() for layer in CALIBRATION_LAYERS}
    assert not shapes & {layer.describe() for layer in VALIDATION_LAYERS}
    assert not set(plan_for(False).sparsities) & set(VALIDATION_SPARSITIES)


def _args(**overrides) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    calibration.add_arguments(parser)
    args = parser.parse_args(["--quiet"])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


@pytest.fixture
def fake_native(monkeypatch):
    """Calibration refuses the reference kernel; these tests never time anything anyway."""
    from model.sparse.native import KernelInfo

    info = KernelInfo("native", "avx512", 16, 1, "build", "test")
    monkeypatch.setattr("model.sparse.kernel_info", lambda: info)


def test_calibrate_command_writes_host_profile(monkeypatch, capsys, fake_native):
    clean = _data(simulate(TRUE, plan_for(quick=True)))
    monkeypatch.setattr(calibration, "run_benchmarks", lambda plan, threads, progress: clean)
    assert calibration.run(_args(quick=True, threads=1)) == 0
    assert "host" in profile_names()
    out = capsys.readouterr().out
    assert "sweetspot predict --hardware host" in out
    conv = Conv2dSpec(name="c", in_channels=64, out_channels=64, in_height=28, in_width=28,
                      kernel=3, padding=1)  # fmt: skip
    result = predict_network([conv], get_profile("host"), model="auto")
    assert result.performance_model == "refined"


@pytest.mark.parametrize(("spread", "warned"), [(0.1, False), (0.6, True)])
def test_calibrate_command_warns_when_the_passes_disagree(monkeypatch, capsys, fake_native,
                                                          spread, warned):  # fmt: skip
    simulated = simulate(TRUE, plan_for(quick=True))
    dense = {id(m.dense): dataclasses.replace(m.dense, spread=spread, passes=3) for m in simulated}
    pooled = [
        dataclasses.replace(m, dense=dense[id(m.dense)],
                            sparse=dataclasses.replace(m.sparse, spread=spread, passes=3))
        for m in simulated
    ]  # fmt: skip
    data = _data(pooled)
    monkeypatch.setattr(calibration, "run_benchmarks", lambda plan, threads, progress: data)
    assert calibration.run(_args(quick=True, threads=1)) == 0  # the profile is still written
    assert "host" in profile_names()
    err = capsys.readouterr().err
    assert ("passes' medians differ by 60%" in err) == warned


def test_calibrate_command_refuses_noisy_run(monkeypatch, capsys, fake_native):
    noisy = _data(simulate(TRUE, plan_for(quick=True), noise_cv=0.5, seed=3))
    monkeypatch.setattr(calibration, "run_benchmarks", lambda plan, threads, progress: noisy)
    assert calibration.run(_args(quick=True)) == EXIT_NOISY
    assert "too noisy" in capsys.readouterr().err
    assert "host" not in profile_names()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "xeon-e5-2697v4"}, "is a built-in profile"),
        ({"name": "Bad Name"}, "is not a profile name"),
        ({"name": "../x"}, "is not a profile name"),
        ({"name": "x" * 65}, "at most 64 characters"),
        ({"max_cv": -1.0}, "--max-cv must be > 0"),
        ({"threads": 0}, "--threads must be from 1 to"),
        ({"threads": 4096}, "--threads must be from 1 to"),
    ],
)
def test_calibrate_checks_its_arguments_before_measuring(monkeypatch, capsys, overrides, message):
    """A built-in name silently shadowed the paper's profile (and prune's default hardware);
    a bad name or an impossible thread count showed only after the measuring."""
    def never(*_args, **_kwargs):
        raise AssertionError("measured before checking its arguments")

    monkeypatch.setattr(calibration, "run_benchmarks", never)
    assert calibration.run(_args(**overrides)) == 2
    assert message in capsys.readouterr().err


def test_calibrate_refuses_an_unwritable_profile_directory_before_measuring(monkeypatch, capsys,
                                                                           tmp_path):  # fmt: skip
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SWEETSPOT_PROFILE_DIR", str(blocker / "profiles"))
    monkeypatch.setattr(calibration, "run_benchmarks", lambda *a, **k: pytest.fail("measured"))
    assert calibration.run(_args(quick=True, threads=1)) == 1
    assert "cannot create the profile directory" in capsys.readouterr().err


def test_calibrate_refuses_to_overwrite_a_profile_without_replace(monkeypatch, capsys,
                                                                  fake_native):  # fmt: skip
    """The command overwrote an existing profile silently (the API answers 409 unless
    replace=true)."""
    clean = _data(simulate(TRUE, plan_for(quick=True)))
    monkeypatch.setattr(calibration, "run_benchmarks", lambda plan, threads, progress: clean)
    assert calibration.run(_args(quick=True, threads=1)) == 0
    path = next(p for p in user_profile_dir().iterdir() if p.name == "host.json")
    path.write_text(path.read_text().replace('"notes"', '"comment": "mine", "notes"', 1))
    before = path.read_text()
    capsys.readouterr()
    monkeypatch.setattr(calibration, "run_benchmarks", lambda *a, **k: pytest.fail("measured"))
    assert calibration.run(_args(quick=True, threads=1)) == 2
    err = capsys.readouterr().err
    assert "a custom profile named 'host' already exists" in err and "--replace" in err
    assert path.read_text() == before
    monkeypatch.setattr(calibration, "run_benchmarks", lambda plan, threads, progress: clean)
    assert calibration.run(_args(quick=True, threads=1, replace=True)) == 0
    assert path.read_text() != before


def test_a_quick_calibration_says_so_and_predict_warns(monkeypatch, capsys, fake_native):
    """A --quick profile was used silently (it can mispredict badly) and did not record how it
    was made."""
    from service.cli import main

    clean = _data(simulate(TRUE, plan_for(quick=True)))
    monkeypatch.setattr(calibration, "run_benchmarks", lambda plan, threads, progress: clean)
    assert calibration.run(_args(quick=True, threads=1, name="fast")) == 0
    assert calibration.run(_args(threads=1, name="full")) == 0
    assert get_profile("fast").provenance.notes.startswith("quick plan (calibrate --quick)")
    assert "quick" not in get_profile("full").provenance.notes
    capsys.readouterr()
    for name, warned in (("fast", True), ("full", False), ("xeon-e5-2697v4", False)):
        assert main(["predict", "--model", "lenet5", "--hardware", name]) == 0
        err = capsys.readouterr().err
        assert ("calibrated with `calibrate --quick`" in err) == warned, name
