"""The service as real processes over HTTP: `sweetspot serve` and `sweetspot worker`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from tests_process import Server, wait

from service import jobs as store
from service.db import Job, make_engine, make_sessionmaker, migrate
from service.settings import Settings

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
TINY = {"dense_epochs": 1, "prune_epochs": 1, "finetune_epochs": 1, "threads": 1}


def _env(data_dir: Path) -> dict[str, str]:
    return {**os.environ, "SWEETSPOT_DATA_DIR": str(data_dir), "SWEETSPOT_HEARTBEAT_S": "0.3",
            "SWEETSPOT_STALE_AFTER_S": "2", "PYTHONUNBUFFERED": "1"}  # fmt: skip


def _job(url: str, job_id: str) -> dict:
    return httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()


def test_job_lifecycle_concurrency_and_restart_over_http(tmp_path):
    server = Server(tmp_path, workers=1, env=_env(tmp_path))
    try:
        body = {"model": "lenet5", "dataset": "synthetic", "config": TINY, "measure": False,
                "idempotency_key": "once"}  # fmt: skip
        responses: list = []

        def submit():
            responses.append(httpx.post(f"{server.url}/v1/jobs", json=body, timeout=30))

        threads = [threading.Thread(target=submit) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert {r.status_code for r in responses} == {202}
        job_id = responses[0].json()["id"]
        assert {r.json()["id"] for r in responses} == {job_id}

        with httpx.stream("GET", f"{server.url}/v1/jobs/{job_id}/events",
                          params={"follow": "true"}, timeout=120) as stream:  # fmt: skip
            text = "".join(stream.iter_text())
        assert "event: epoch" in text and text.rstrip().endswith('{"status": "succeeded"}')
        manifest = httpx.get(f"{server.url}/v1/jobs/{job_id}/artifacts/manifest.json").json()
        assert manifest["model"] == "lenet5"
        assert httpx.get(f"{server.url}/v1/jobs").json()["count"] == 1
    finally:
        server.stop()
    restarted = Server(tmp_path, workers=0, env=_env(tmp_path))
    try:
        assert _job(restarted.url, job_id)["status"] == "succeeded"
        assert httpx.get(f"{restarted.url}/v1/jobs/{job_id}/events").json()["count"] > 3
    finally:
        restarted.stop()


def test_worker_killed_mid_job_is_requeued_and_resumed(tmp_path):
    server = Server(tmp_path, workers=0, env=_env(tmp_path))
    env = _env(tmp_path)
    worker = None
    try:
        body = {"model": "lenet5", "dataset": "synthetic", "measure": False,
                "config": {**TINY, "dense_epochs": 4, "prune_epochs": 4}}  # fmt: skip
        job_id = httpx.post(f"{server.url}/v1/jobs", json=body).json()["id"]
        worker = subprocess.Popen([str(BIN / "sweetspot"), "worker", "--worker-id", "doomed"],
                                  env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)  # fmt: skip
        # Two epochs reported: the first one's checkpoint is on disk (it is written after the
        # epoch's event, before the next epoch starts), so the rescuer has something to resume.
        wait(lambda: sum(e["type"] == "epoch" for e in httpx.get(
            f"{server.url}/v1/jobs/{job_id}/events").json()["data"]) >= 2)  # fmt: skip
        worker.kill()  # SIGKILL: no chance to clean up
        worker.wait()
        requeued = wait(lambda: (j := _job(server.url, job_id))["status"] == "queued" and j)
        assert "stopped heartbeating" in requeued["status_reason"]
        worker = subprocess.Popen([str(BIN / "sweetspot"), "worker", "--worker-id", "rescuer"],
                                  env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)  # fmt: skip
        done = wait(lambda: (j := _job(server.url, job_id))["status"] in
                     ("succeeded", "failed") and j)  # fmt: skip
        assert done["status"] == "succeeded", done["status_reason"]
        assert done["attempts"] == 2 and done["worker_id"] == "rescuer"
        events = httpx.get(f"{server.url}/v1/jobs/{job_id}/events").json()["data"]
        assert any("resumed at" in e["data"].get("message", "") for e in events)
        # The API kept serving while workers came and went.
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    finally:
        if worker and worker.poll() is None:
            worker.terminate()
            worker.wait(timeout=30)
        server.stop()


POOL = """
import time
from service.serve import WorkerPool
from service.settings import Settings

pool = WorkerPool(Settings(), 1).start()
print(pool.processes[0].pid, flush=True)
time.sleep(300)
"""
"""What ``sweetspot serve`` does about workers (without the API, which is not the point)."""


def _running(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie nobody reaped (PID 1 in a container may not) has ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_busy_worker_stops_when_serve_is_killed(tmp_path):
    """SIGKILLed, serve cannot stop its workers: an idle one noticed between polls, but a busy
    one trained on as an orphan to the end of its job. It now stops within seconds, as on
    SIGTERM (its parent's death signal, or its check of the parent pid): the job is requeued
    to resume from its checkpoint."""
    root = Path(__file__).resolve().parents[1]
    env = {**_env(tmp_path), "PYTHONPATH": str(root)}
    settings = Settings(data_dir=tmp_path).prepare()
    engine = make_engine(settings.url)
    migrate(engine)
    sessions = make_sessionmaker(engine)
    request = {"method": "gsl", "model": "lenet5", "dataset": "synthetic",
               "hardware": "xeon-e5-2697v4", "measure": False,
               "config": {**TINY, "dense_epochs": 1000}}  # minutes of training: busy
    with sessions() as session:
        job_id = store.create_job(session, "", request, None)[0].id

    def job() -> Job:
        with sessions() as session:
            return session.get(Job, job_id)

    pool = subprocess.Popen([sys.executable, "-c", POOL], cwd=root, env=env,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    worker = int(pool.stdout.readline())
    try:
        wait(lambda: job().status == "running", timeout_s=60)
        pool.kill()
        pool.wait()
        wait(lambda: not _running(worker), timeout_s=10)
        requeued = job()
        assert requeued.status == "queued", requeued.status_reason
        assert "worker shut down" in requeued.status_reason
    finally:
        pool.kill()
        if _running(worker):
            os.kill(worker, signal.SIGKILL)
        engine.dispose()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_restarted_local_worker_has_its_own_id(tmp_path, monkeypatch):
    """A worker that died was restarted under the same id, so its lost job's history read
    "worker local-0-… stopped heartbeating; requeued", then "claimed by worker local-0-…"."""
    from service.serve import WorkerPool

    monkeypatch.setenv("SWEETSPOT_DATA_DIR", str(tmp_path))
    pool = WorkerPool(Settings(data_dir=tmp_path).prepare(), 1).start()
    try:
        first = pool.processes[0]
        wait(lambda: Path(f"/proc/{first.pid}/cmdline").exists(), timeout_s=10)
        first.kill()
        wait(lambda: pool.processes[0] is not first, timeout_s=20)
        command = Path(f"/proc/{pool.processes[0].pid}/cmdline").read_bytes().split(b"\0")
        assert command[-2:] == [f"local-0-{os.getpid()}.1".encode(), b""]
    finally:
        pool.close()
