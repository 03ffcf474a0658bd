"""Where a job trains: the ``device`` config (``auto``, ``cpu``, ``cuda``, ``cuda:N``), its
checks on hosts with and without GPUs, and checkpoints that move between them.

The tests marked ``gpu`` train on a CUDA GPU and are skipped on hosts without one (CI has
none); docs/deploy.md says where and how they were last run.
"""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from model.pipeline import PruneRequest, run_pruning, split_config
from model.training import Cancelled, TrainConfig, Trainer, distributed
from model.training.distributed import resolve_device

CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
TINY = {"dense_epochs": 1, "prune_epochs": 2, "finetune_epochs": 1, "threads": 1,
        "batch_size": 32, "log_every": 0}  # fmt: skip


def _gpus(monkeypatch, count: int) -> None:
    """Pretend this host has ``count`` CUDA GPUs (only counted, never used)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:-1", "CPU", "", "cuda:0,1"])
def test_a_device_that_is_no_choice_is_refused_with_the_choices(spec):
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        TrainConfig(device=spec)
    with pytest.raises(ValueError, match="device must be"):
        split_config("gsl", {"device": spec})


def test_auto_trains_on_gpus_when_there_are_enough(monkeypatch):
    _gpus(monkeypatch, 0)
    assert resolve_device("auto") == torch.device("cpu")
    _gpus(monkeypatch, 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("auto", procs=2, local_index=1) == torch.device("cuda", 1)
    assert resolve_device("auto", procs=3) == torch.device("cpu")  # NCCL: a GPU per process
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(
    ("gpus", "spec", "procs", "message"),
    [
        (0, "cuda", 1, "sees no CUDA GPU on this host; use device='cpu' or 'auto'"),
        (0, "cuda:0", 1, "sees no CUDA GPU"),
        (1, "cuda", 2, "procs=2 processes need a CUDA GPU each (NCCL cannot share one), but "
                       "this host has 1"),
        (1, "cuda:1", 1, "this host has 1 CUDA GPU(s) (cuda:0 … cuda:0)"),
        (2, "cuda:1", 2, "pins one GPU, but procs=2"),
    ],
)  # fmt: skip
def test_gpus_that_are_not_there_are_a_clear_error(monkeypatch, gpus, spec, procs, message):
    _gpus(monkeypatch, gpus)
    with pytest.raises(ValueError, match="device=") as error:
        resolve_device(spec, procs)
    assert message in str(error.value)


def _check_in(monkeypatch, devices: dict) -> list:
    """Ranks 0 … n−1 of a 1-node × n-process job check in, each with its own connection to
    rank 0's store; rank ``i``'s host resolves the device to ``devices[i]`` (a ``torch.device``
    or a ValueError to raise). Returns each rank's outcome: its device or its exception."""
    from concurrent.futures import ThreadPoolExecutor

    def resolve(spec, procs, local_index):
        outcome = devices[local_index]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(distributed, "resolve_device", resolve)
    cluster = distributed.Cluster(procs=len(devices), master_port=distributed.free_port(),
                                  timeout_s=20)  # fmt: skip
    stores = [torch.distributed.TCPStore("127.0.0.1", cluster.master_port, is_master=index == 0,
                                         timeout=timedelta(seconds=20), wait_for_workers=False)
              for index in devices]  # fmt: skip

    def rank(index: int):
        try:
            return distributed.check_in(stores[index], index, cluster, "auto", index)
        except Exception as error:  # the outcome under test
            return error

    with ThreadPoolExecutor(len(devices)) as pool:
        return [future.result() for future in [pool.submit(rank, i) for i in devices]]


def test_a_job_trains_on_gpus_only_when_every_rank_has_one(monkeypatch):
    """A job never mixes gloo and NCCL: GPUs when every rank got one, else CPUs everywhere
    (``auto`` on a job whose hosts are not all GPU hosts)."""
    both = {0: torch.device("cuda", 0), 1: torch.device("cuda", 1)}
    assert _check_in(monkeypatch, both) == [both[0], both[1]]
    mixed = {0: torch.device("cuda", 0), 1: torch.device("cpu")}
    assert _check_in(monkeypatch, mixed) == [torch.device("cpu")] * 2


def test_a_rank_whose_host_lacks_the_gpus_fails_the_job_at_once_on_every_rank(monkeypatch):
    """Rank 0 does not wait out the rendezvous for a rank that cannot come (it would end in
    a RendezvousTimeoutError), and the ranks already checked in learn why from it (they
    would end in the store's own timeout)."""
    missing = ValueError("device='cuda' but torch sees no CUDA GPU on this host")
    outcomes = _check_in(monkeypatch, {0: torch.device("cuda", 0), 1: torch.device("cuda", 1),
                                       2: missing})  # fmt: skip
    for outcome in outcomes:
        assert type(outcome) is distributed.RankDeviceError, outcome
        assert str(outcome) == ("rank 2 cannot train on this job's device: device='cuda' but "
                                "torch sees no CUDA GPU on this host")  # fmt: skip


def test_to_device_moves_nested_tensors_and_keeps_the_rest():
    state = {"a": [torch.ones(2), (torch.zeros(1), 3)], "b": "text", "c": None}
    moved = distributed.to_device(state, "meta")
    assert moved["a"][0].device.type == "meta" and moved["a"][1][0].device.type == "meta"
    assert moved["a"][1][1] == 3 and isinstance(moved["a"][1], tuple)
    assert moved["b"] == "text" and moved["c"] is None


def _request(device: str, method: str = "gsl", **extra) -> PruneRequest:
    config = {**TINY, "lasso": 0.01, "device": device, **extra} if method == "gsl" else \
        {**TINY, "device": device, **extra}  # fmt: skip
    return PruneRequest(method=method, model="lenet5", dataset="synthetic",
                        hardware="atom-c2750", config=config, measure=False)  # fmt: skip


def test_a_cpu_job_records_where_it_trained(tmp_path):
    manifest = run_pruning(_request("cpu"), tmp_path / "out", resume=False)
    assert manifest["trained_on"] == "cpu"
    assert manifest["config"]["train"]["device"] == "cpu"
    events = (tmp_path / "out" / "events.jsonl").read_text()
    assert '"message": "training on cpu"' in events


@pytest.mark.skipif(CUDA, reason="this host has a CUDA GPU")
def test_a_job_asking_for_a_gpu_on_a_host_without_is_refused_before_anything(tmp_path):
    with pytest.raises(ValueError, match="sees no CUDA GPU on this host"):
        run_pruning(_request("cuda"), tmp_path / "out", resume=False)
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_resumes_under_another_device_setting(tmp_path):
    """``device`` is how a job runs, not what it is (as threads and procs): a job stopped
    under one setting resumes under another."""
    out = tmp_path / "out"
    cancel = threading.Event()

    def stop_after_first_prune_epoch(event: dict) -> None:
        if event.get("type") == "epoch" and event.get("phase") == "prune":
            cancel.set()

    with pytest.raises(Cancelled):
        run_pruning(_request("cpu"), out, callbacks=[stop_after_first_prune_epoch],
                    cancel=cancel, resume=False)  # fmt: skip
    manifest = run_pruning(_request("auto"), out)
    events = (out / "events.jsonl").read_text()
    assert "resumed at prune epoch 1" in events
    assert manifest["config"]["train"]["device"] == "auto"
    assert manifest["trained_on"] == "cpu"  # the same place both times: named once
    again = run_pruning(_request("auto"), out)  # finished: nothing trained, nothing added
    assert again["trained_on"] == "cpu"
    assert (out / "events.jsonl").read_text().count('"training on cpu"') == 2


def test_the_trainer_hands_the_model_back_where_it_came_from(monkeypatch):
    """Trained on the config's device, the model comes back on its own (the pipeline then
    saves, converts and times it on the CPU), also when the run stops early. ``cpu:0`` stands
    in for a GPU: it compares unequal to the model's ``cpu``."""
    trains_on = torch.device("cpu", 0)
    monkeypatch.setattr(distributed, "resolve_device", lambda spec: trains_on)
    moves = []
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    original = nn.Module.to

    def recording_to(self, *args, **kwargs):
        if self is model:
            moves.append(torch.device(args[0]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "to", recording_to)
    data = [(torch.randn(4), i % 2) for i in range(8)]
    cancel = threading.Event()
    cancel.set()
    trainer = Trainer(model, data, data, TrainConfig(dense_epochs=1, device="cpu"),
                      cancel=cancel)  # fmt: skip
    with pytest.raises(Cancelled):
        trainer.fit(resume=False)
    assert moves == [trains_on, torch.device("cpu")]


# --------------------------------------------------------------------- on a CUDA GPU

METHODS = {  # each method's shortest run that prunes something on LeNet-5
    "gsl": {},
    "ssl": {"strength": 2.0, "mode": "proximal", "prune_epochs": 3},
    "magnitude": {"final_sparsity": 0.8, "ramp_epochs": 1},
    "autoprune": {"strength": 0.05},
    "l1-filter": {},
}


@gpu
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_on_a_gpu_as_on_the_cpu(tmp_path, method):
    """Same seed, same data order: the GPU run ends near the CPU run (float sums in another
    order move weights near a threshold, and a structured method's groups are whole filters:
    accuracy within 5 points, per-layer sparsity within 0.2)."""
    runs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        runs[device] = run_pruning(_request(device, method, **METHODS[method]), out,
                                   resume=False)  # fmt: skip
        load_file(str(out / "pruned.safetensors"))  # saved on the CPU, loads anywhere
    cpu, cuda = runs["cpu"], runs["cuda"]
    assert cuda["trained_on"].startswith("cuda:0 (")
    assert abs(cpu["accuracy"]["pruned"] - cuda["accuracy"]["pruned"]) <= 0.05
    assert any(layer["sparsity"] > 0 for layer in cuda["layers"])
    for one, other in zip(cpu["layers"], cuda["layers"], strict=True):
        assert abs(one["sparsity"] - other["sparsity"]) <= 0.2, (one, other)


@gpu
def test_a_gpu_checkpoint_resumes_on_the_cpu_and_on_the_gpu_equal_to_no_stop(tmp_path):
    cancel = threading.Event()

    def stop_in_prune(event: dict) -> None:
        if event.get("type") == "epoch" and event.get("phase") == "prune":
            cancel.set()

    whole = run_pruning(_request("cuda"), tmp_path / "whole", resume=False)
    for name, then in (("gpu", "cuda"), ("cpu", "cpu")):
        cancel.clear()
        with pytest.raises(Cancelled):
            run_pruning(_request("cuda"), tmp_path / name, callbacks=[stop_in_prune],
                        cancel=cancel, resume=False)  # fmt: skip
        resumed = run_pruning(_request(then), tmp_path / name)
        gpu = f"cuda:0 ({torch.cuda.get_device_name(0)})"
        assert resumed["trained_on"] == (gpu if then == "cuda" else f"{gpu}, then cpu")
        assert abs(resumed["accuracy"]["pruned"] - whole["accuracy"]["pruned"]) <= 0.03
    a = load_file(str(tmp_path / "whole" / "pruned.safetensors"))
    b = load_file(str(tmp_path / "gpu" / "pruned.safetensors"))
    for name in a:  # deterministic cuDNN: the GPU resumes exactly where it stopped
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0)


@gpu
def test_nccl_collectives_run_on_the_gpu():
    """The NCCL process group (one rank: this host has one GPU; two ranks need two GPUs) runs
    every collective the trainer uses, on device tensors."""
    import torch.distributed as dist

    cluster = distributed.Cluster(procs=1, master_port=distributed.free_port())
    device = distributed.init(cluster, device="cuda")
    try:
        assert device == torch.device("cuda", 0) == distributed.group_device()
        assert dist.get_backend() == "nccl"
        model = nn.Linear(3, 2).to(device)
        model(torch.ones(4, 3, device=device)).sum().backward()
        expected = model.weight.grad.clone() * 2 / 4
        distributed.average_gradients(model, 2, 4)
        torch.testing.assert_close(model.weight.grad, expected)
        assert distributed.stop_code(True, 0, 2) == distributed.CANCEL_REQUESTED
        assert distributed.sum_over_ranks([1.5, 2]) == [1.5, 2.0]
        assert distributed.broadcast_object({"x": [1, 2]}) == {"x": [1, 2]}
        distributed.broadcast_module(model)
    finally:
        distributed.shutdown()
    assert distributed.group_device() == torch.device("cpu")


@gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_gpu_processes_match_one_with_the_same_global_batch(tmp_path):
    one = run_pruning(_request("cuda"), tmp_path / "one", resume=False)
    two = run_pruning(_request("cuda", procs=2), tmp_path / "two", resume=False)
    assert two["trained_on"] == f"2 processes, rank 0 on cuda:0 ({torch.cuda.get_device_name(0)})"
    assert abs(one["accuracy"]["pruned"] - two["accuracy"]["pruned"]) <= 0.01


def test_bench_train_times_a_step_on_each_device_once(capsys):
    from service.cli import main

    code = main(["bench", "train", "--model", "lenet5", "--batch", "8", "--steps", "2",
                 "--repeats", "1", "--device", "cpu", "auto", "cpu", "--json"])  # fmt: skip
    results = json.loads(capsys.readouterr().out)["results"]
    assert code == 0
    assert [r["device"].partition(" ")[0] for r in results] == ["cpu"] + (["cuda:0"] if CUDA
                                                                           else [])
    assert results[0]["speedup_vs_first"] == 1.0
    assert results[0]["step_s"] > 0 and results[0]["images_per_s"] == 8 / results[0]["step_s"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "0"], "must be >= 1, got 0"),
        (["--threads", "x"], "expected an integer, got 'x'"),
        (["--device", "gpu"], "device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        (["--model", "nope"], "invalid choice: 'nope'"),
    ],
)
def test_bench_train_refuses_bad_arguments(capsys, argv, message):
    from service.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["bench", "train", *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(CUDA, reason="this host has a CUDA GPU")
def test_bench_train_on_a_gpu_this_host_lacks_is_a_clear_error(capsys):
    from service.cli import main

    assert main(["bench", "train", "--device", "cuda"]) == 2
    assert "sees no CUDA GPU on this host" in capsys.readouterr().err


def test_the_service_refuses_a_bad_device_and_fails_a_job_whose_gpu_is_missing(tmp_path):
    """The API checks the value (its host may have no GPU while workers do); the worker that
    claims the job checks its own GPUs and fails the job with the reason."""
    from fastapi.testclient import TestClient

    from service.api.app import create_app
    from service.settings import Settings
    from service.worker import Worker

    settings = Settings(data_dir=tmp_path / "data")
    body = {"model": "lenet5", "dataset": "synthetic", "measure": False}
    with TestClient(create_app(settings)) as client:
        bad = client.post("/v1/jobs", json={**body, "config": {**TINY, "device": "gpu"}})
        assert bad.status_code == 422
        assert "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'" in \
            bad.json()["detail"]  # fmt: skip
        if CUDA:
            return
        job = client.post("/v1/jobs", json={**body, "config": {**TINY, "device": "cuda:0"}})
        assert job.status_code == 202, job.text
        assert Worker(settings).run_once()
        done = client.get(f"/v1/jobs/{job.json()['id']}").json()
        assert done["status"] == "failed"
        assert "device='cuda:0' but torch" in done["status_reason"]
        assert "sees no CUDA GPU on this host" in done["status_reason"]


@gpu
def test_a_worker_trains_a_job_on_its_gpu(tmp_path):
    """``auto`` (the default) on a worker whose host has a GPU: the job trains there."""
    from fastapi.testclient import TestClient

    from service.api.app import create_app
    from service.settings import Settings
    from service.worker import Worker

    settings = Settings(data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        job = client.post("/v1/jobs", json={"model": "lenet5", "dataset": "synthetic",
                                            "measure": False, "config": TINY}).json()
        assert Worker(settings).run_once()
        done = client.get(f"/v1/jobs/{job['id']}").json()
        assert done["status"] == "succeeded", done["status_reason"]
        manifest = client.get(f"/v1/jobs/{job['id']}/artifacts/manifest.json").json()
        assert manifest["trained_on"] == f"cuda:0 ({torch.cuda.get_device_name(0)})"


@pytest.mark.parametrize(
    ("gpus", "device", "procs"),
    [(0, None, 4), (0, "auto", 4), (2, None, 2), (2, "auto", 2), (8, "cuda", 4), (2, "cuda", 2),
     (2, "cuda:1", 1), (2, "cpu", 4), (2, "auto nodes=2", 4), (2, "cuda nodes=2", 2)],
)  # fmt: skip
def test_a_workers_procs_default_gives_a_gpu_job_one_process_per_gpu(monkeypatch, gpus, device,
                                                                   procs):  # fmt: skip
    """``sweetspot worker --procs 4`` on a host with 2 GPUs: a job that trains on GPUs gets
    one process per GPU (NCCL cannot share one), not a refusal or a silent CPU run; ``auto``
    over several hosts keeps 4 (the others may have no GPU: then the job trains on CPUs)."""
    from service.settings import Settings
    from service.worker import _prune_request

    _gpus(monkeypatch, gpus)
    device, _, nodes = (device or "").partition(" nodes=")  # auto over hosts: maybe CPUs there
    config = ({"device": device} if device else {}) | ({"nodes": int(nodes)} if nodes else {})
    request = {"method": "gsl", "model": "lenet5", "dataset": "synthetic",
               "hardware": "atom-c2750", "config": config}  # fmt: skip
    assert _prune_request(request, Settings(job_procs=4)).config["procs"] == procs
    explicit = {**request, "config": {**config, "procs": 3}}  # the job's own value stands
    assert _prune_request(explicit, Settings(job_procs=4)).config["procs"] == 3


def test_two_ranks_on_one_gpu_is_a_setup_error_not_a_lost_rank():
    """NCCL refuses two ranks on one GPU (two nodes of a job on one host, seen on an H200):
    requeueing the job would fail the same way, so it is not reported as a lost rank."""
    duplicate = torch.distributed.DistBackendError(
        "NCCL error in: NCCLUtils.cpp:93, invalid usage (run with NCCL_DEBUG=WARN for details)"
        ", NCCL version 2.28.9\nncclInvalidUsage: ...\nDuplicate GPU detected : rank 0 and rank 1"
        " both on CUDA device 60")  # fmt: skip
    assert not distributed.is_rank_lost(duplicate)
    assert distributed.is_rank_lost(torch.distributed.DistBackendError(
        "NCCL error: remote process exited or there was a network error"))  # fmt: skip
    assert distributed.is_rank_lost(RuntimeError("[gloo] Connection closed by peer"))


def test_a_process_group_that_does_not_form_says_so_not_that_ranks_are_missing(tmp_path):
    """Only a rendezvous that timed out is reported as ranks that did not join; anything else
    (here node 0's port taken) says the group did not form, and why."""
    from model.pipeline import _start_node

    port = distributed.free_port()
    holder = torch.distributed.TCPStore("127.0.0.1", port, is_master=True,
                                        wait_for_workers=False)  # the port is taken  # fmt: skip
    request = _request("cpu")
    train_config, _ = split_config(request.method, request.config)
    cluster = distributed.Cluster(nodes=2, procs=1, master_port=port, timeout_s=3)
    with pytest.raises(RuntimeError) as error:
        _start_node(cluster, request, tmp_path, True, train_config)
    assert not isinstance(error.value, distributed.RendezvousTimeoutError)
    assert f"ranks on 127.0.0.1:{port} did not form" in str(error.value)
    assert "address already in use" in str(error.value) and "port is free" in str(error.value)
    del holder



def test_sensitivity_checks_the_gpu_only_when_it_trains(monkeypatch):
    """With --checkpoint nothing trains: a GPU this host lacks is no reason to refuse."""
    import argparse

    from model.sensitivity import _argument_error

    _gpus(monkeypatch, 0)
    base = {"random_repeats": 1, "threads": None, "dense_epochs": 0, "out": "x"}
    trains = argparse.Namespace(**base, device="cuda", checkpoint=None)
    assert "sees no CUDA GPU" in _argument_error(trains)
    loads = argparse.Namespace(**base, device="cuda", checkpoint="start.safetensors")
    assert _argument_error(loads) is None
    assert "device must be" in _argument_error(argparse.Namespace(**{**vars(loads),
                                                                   "device": "gpu"}))
