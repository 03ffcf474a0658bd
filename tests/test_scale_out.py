"""Many workers on a shared PostgreSQL job store: every job runs exactly once, a killed
worker's job is recovered, and the API keeps serving while workers come and go.

PostgreSQL is started by ``scripts/start-postgres.sh`` (``.ci/run`` does it and exports
``SWEETSPOT_TEST_POSTGRES_URL``); each test gets a database of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session
from tests_process import Server, wait

from service.db import Job, JobEvent, Transition

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = {"dense_epochs": 1, "prune_epochs": 1, "finetune_epochs": 1, "threads": 1}


@pytest.fixture(scope="module")
def postgres_url() -> str:
    url = os.environ.get("SWEETSPOT_TEST_POSTGRES_URL")
    if not url:
        started = subprocess.run([str(ROOT / "scripts" / "start-postgres.sh")],
                                 capture_output=True, text=True, check=False)  # fmt: skip
        if started.returncode != 0:
            pytest.skip(f"no PostgreSQL for the scale-out tests: {started.stderr.strip()[-300:]}")
        url = started.stdout.strip().split("=", 1)[1]
    return url


@pytest.fixture
def database(postgres_url):
    """A fresh database for one test, dropped afterwards."""
    name = f"sweetspot_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _worker(env: dict, worker_id: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "sweetspot"), "worker", "--worker-id", worker_id],
                            env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip


def _stop(workers: dict[str, subprocess.Popen], server: Server) -> None:
    for process in workers.values():
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
    server.stop()


def test_three_workers_twelve_jobs_each_exactly_once_and_a_killed_worker(tmp_path, database):
    env = {**os.environ, "SWEETSPOT_DATA_DIR": str(tmp_path), "SWEETSPOT_DATABASE_URL": database,
           "SWEETSPOT_HEARTBEAT_S": "0.3", "SWEETSPOT_STALE_AFTER_S": "2"}  # fmt: skip
    server = Server(tmp_path, workers=0, env=env)
    workers = {}
    try:
        long_job = httpx.post(f"{server.url}/v1/jobs", json={
            "model": "lenet5", "dataset": "synthetic", "measure": False,
            "config": {**TINY, "dense_epochs": 6, "prune_epochs": 4}}).json()["id"]  # fmt: skip
        ids = [long_job] + [
            httpx.post(f"{server.url}/v1/jobs", json={
                "model": "lenet5", "dataset": "synthetic", "measure": False,
                "config": {**TINY, "seed": i}}).json()["id"]
            for i in range(11)
        ]
        workers = {f"w{i}": _worker(env, f"w{i}") for i in range(3)}

        def running_worker() -> str | None:
            job = httpx.get(f"{server.url}/v1/jobs/{long_job}").json()
            events = httpx.get(f"{server.url}/v1/jobs/{long_job}/events").json()["data"]
            started = any(e["type"] == "epoch" for e in events)
            return job["worker_id"] if job["status"] == "running" and started else None

        victim = wait(running_worker)
        workers[victim].kill()  # SIGKILL mid-job
        workers[victim].wait()
        assert httpx.get(f"{server.url}/healthz").status_code == 200

        def all_done() -> bool:
            jobs = httpx.get(f"{server.url}/v1/jobs", params={"limit": 50}).json()["data"]
            return len(jobs) == 12 and all(j["status"] in ("succeeded", "failed") for j in jobs)

        wait(all_done, timeout_s=240)
        engine = create_engine(database)
        with Session(engine) as session:
            for job_id in ids:
                job = session.get(Job, job_id)
                assert job.status == "succeeded", (job_id, job.status_reason)
                claims = session.scalars(select(Transition).where(
                    Transition.job_id == job_id, Transition.to_status == "running")).all()
                dense_starts = [e for e in session.scalars(select(JobEvent).where(
                    JobEvent.job_id == job_id, JobEvent.type == "phase"))
                    if e.data.get("phase") == "dense"]  # fmt: skip
                if job_id == long_job:
                    assert len(claims) == 2 and job.attempts == 2
                    assert job.worker_id != victim
                else:
                    assert len(claims) == 1 and job.attempts == 1, job_id  # exactly once
                    assert len(dense_starts) == 1
        engine.dispose()
        assert httpx.get(f"{server.url}/v1/jobs/{long_job}").json()["status"] == "succeeded"
    finally:
        _stop(workers, server)


def test_one_job_on_two_worker_hosts_survives_losing_a_node(tmp_path, database):
    """A job with ``nodes: 2``: the worker that claims it becomes node 0 and a second worker
    joins as node 1 (as on another host: it shares only the database). Killing node 1 mid-job
    makes node 0 requeue the job; it resumes from its checkpoint once a new worker joins."""
    from service.jobs import nodes_of

    env = {**os.environ, "SWEETSPOT_DATA_DIR": str(tmp_path), "SWEETSPOT_DATABASE_URL": database,
           "SWEETSPOT_HEARTBEAT_S": "0.3", "SWEETSPOT_STALE_AFTER_S": "5",
           "SWEETSPOT_RENDEZVOUS_TIMEOUT_S": "90"}  # fmt: skip
    server = Server(tmp_path, workers=0, env=env)
    workers = {}
    try:
        job_id = httpx.post(f"{server.url}/v1/jobs", json={
            "model": "lenet5", "dataset": "synthetic", "measure": False,
            "config": {**TINY, "dense_epochs": 6, "prune_epochs": 3, "nodes": 2},
        }).json()["id"]  # fmt: skip

        def job() -> dict:
            return httpx.get(f"{server.url}/v1/jobs/{job_id}").json()

        def messages() -> list[str]:
            events = httpx.get(f"{server.url}/v1/jobs/{job_id}/events").json()["data"]
            return [e["data"].get("message", "") for e in events if e["type"] == "log"]

        workers["w0"] = _worker(env, "w0")
        wait(lambda: any("waiting for 1 more worker" in m for m in messages()))
        assert job()["status"] == "running" and job()["worker_id"] == "w0"
        workers["w1"] = _worker(env, "w1")
        wait(lambda: any(e["type"] == "epoch" for e in httpx.get(
            f"{server.url}/v1/jobs/{job_id}/events").json()["data"]))  # fmt: skip
        assert any("w1 joined as node 1 of 2" in m for m in messages())
        workers["w1"].kill()  # node 1's host dies mid-job
        workers["w1"].wait()
        wait(lambda: job()["attempts"] == 2 and job()["status"] == "running")
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        workers["w2"] = _worker(env, "w2")
        wait(lambda: job()["status"] in ("succeeded", "failed"), timeout_s=240)
        final = job()
        assert final["status"] == "succeeded", final["status_reason"]
        engine = create_engine(database)
        with Session(engine) as session:
            assert [(n.worker_id, n.node_rank) for n in nodes_of(session, job_id)] == [
                ("w1", 1), ("w2", 1)]  # fmt: skip
            reasons = [t.reason for t in session.scalars(select(Transition).where(
                Transition.job_id == job_id))]  # fmt: skip
            assert any("was lost" in r and "requeued" in r for r in reasons), reasons
            dense_starts = [e for e in session.scalars(select(JobEvent).where(
                JobEvent.job_id == job_id, JobEvent.type == "phase"))
                if e.data.get("phase") == "dense"]  # fmt: skip
            assert len(dense_starts) == 1  # resumed from the checkpoint, not restarted
        engine.dispose()
        manifest = httpx.get(f"{server.url}/v1/jobs/{job_id}/artifacts/manifest.json").json()
        assert manifest["config"]["train"]["nodes"] == 2
    finally:
        _stop(workers, server)
