"""A worker process: claims queued jobs one at a time and runs them.

``sweetspot worker`` (or ``python -m service.worker``) loops: resolve jobs of dead workers,
claim the oldest queued job atomically, run it with :func:`model.pipeline.run_pruning` in its
own folder under ``<data_dir>/jobs/<id>``, store every training event, register the artifacts
and record the outcome. A heartbeat thread keeps the job's ``heartbeat_at`` fresh and watches
for ``cancelling``: it sets the trainer's cancel flag, which stops training at the next step
(within seconds). A requeued job resumes from its last checkpoint, because its folder and
request are unchanged.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from collections.abc import Callable

from service import jobs as store
from service.db import make_engine, make_sessionmaker, migrate
from service.settings import Settings

log = logging.getLogger("sweetspot.worker")


class Worker:
    """Runs jobs from the store until ``stop`` is set."""

    def __init__(self, settings: Settings, worker_id: str | None = None, poll_s: float = 0.5):
        self.settings = settings.prepare()
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.poll_s = poll_s
        self.engine = make_engine(settings.url)
        migrate(self.engine)
        self.sessions = make_sessionmaker(self.engine)
        self.stop = threading.Event()

    def run_forever(self) -> None:
        log.info("worker %s polling %s", self.worker_id, self.settings.url)
        parent = os.environ.get("SWEETSPOT_PARENT_PID")
        while not self.stop.is_set():
            if parent and str(os.getppid()) != parent:  # started by serve, which is gone
                log.warning("parent process %s is gone; worker %s exits", parent, self.worker_id)
                return
            if not self.run_once():
                self.stop.wait(self.poll_s)

    def run_once(self) -> bool:
        """Recover lost jobs, then claim and run one job; False when there was none."""
        with self.sessions() as session:
            store.recover_lost(session, self.settings.stale_after_s, self.settings.lost_job_policy)
            job = store.claim_next(session, self.worker_id)
        if job is None:
            return False
        self.run_job(job.id, dict(job.request))
        return True

    def run_job(self, job_id: str, request: dict) -> None:
        if request.get("kind") == "calibration":
            _calibration(self, job_id, request)
            return
        from model.pipeline import PruneRequest, run_pruning
        from model.training import Cancelled

        out_dir = self.settings.artifacts.job_dir(job_id)
        cancel = threading.Event()
        total_epochs = _total_epochs(request)
        done = {"epochs": 0}

        def on_status(status: str) -> None:
            if status in (store.CANCELLING, store.CANCELLED) or self.stop.is_set():
                cancel.set()

        heartbeat = Heartbeat(self, job_id, on_status)

        def on_event(event: dict) -> None:
            if event.get("type") == "epoch":
                done["epochs"] += 1
                heartbeat.progress = min(done["epochs"] / total_epochs, 0.99)
            with self.sessions() as session:
                store.add_event(session, job_id, event)

        status, reason, result = store.FAILED, "", None
        with heartbeat:
            try:
                config = dict(request.get("config") or {})
                if self.settings.job_procs > 1:
                    config.setdefault("procs", self.settings.job_procs)
                prune_request = PruneRequest(
                    method=request["method"], model=request["model"],
                    dataset=request["dataset"], hardware=request["hardware"], config=config,
                    checkpoint=request.get("checkpoint_path"),
                    measure=request.get("measure", True),
                )  # fmt: skip
                manifest = run_pruning(prune_request, out_dir, callbacks=[on_event],
                                       cancel=cancel)  # fmt: skip
                status, reason = store.SUCCEEDED, "finished"
                result = {key: manifest.get(key) for key in ("accuracy", "model_speedup")}
                result["layers"] = [
                    {k: layer.get(k) for k in ("name", "sparsity", "format", "predicted_speedup",
                                               "measured_speedup", "state")}
                    for layer in manifest.get("layers", [])
                ]  # fmt: skip
            except Cancelled:
                status, reason = store.CANCELLED, "cancelled by request; training stopped"
                if self.stop.is_set():  # shutting down, nobody asked to cancel: run it again later
                    status = store.QUEUED
                    reason = "worker shut down; requeued to resume from its last checkpoint"
            except Exception as error:  # any failure of the job is the job's, not the worker's
                log.exception("job %s failed", job_id)
                status, reason = store.FAILED, f"{type(error).__name__}: {error}"
        self.record_outcome(job_id, status, reason, result)

    def record_outcome(self, job_id: str, status: str, reason: str, result: dict | None) -> None:
        """Register the job's files, then finish it (or put it back in the queue)."""
        with self.sessions() as session:
            store.register_artifacts(session, job_id, self.settings.artifacts)
            if status == store.QUEUED:
                store.requeue(session, job_id, reason)
            else:
                store.finish(session, job_id, status, reason, result)
        log.info("job %s %s: %s", job_id, status, reason)


def _calibration(worker: Worker, job_id: str, request: dict) -> None:
    """A calibration job: microbenchmarks of this host, then the profile is saved. It cannot
    be interrupted midway (a cancel lands when it finishes)."""
    import json

    from model.calibration import calibrate
    from perfmodel import save_profile

    heartbeat = Heartbeat(worker, job_id)

    def on_progress(event: dict) -> None:
        total = event.get("total") or 0
        if total:
            heartbeat.progress = min(float(event.get("done", 0)) / total, 0.99)
        with worker.sessions() as session:
            store.add_event(session, job_id, {"type": "calibration", **event})

    status, reason, result = store.FAILED, "", None
    with heartbeat:
        try:
            profile = calibrate(request.get("name", "host"), bool(request.get("quick", True)),
                                request.get("threads"), on_progress)  # fmt: skip
            save_profile(profile, worker.settings.profiles_dir)
            out = worker.settings.artifacts.job_dir(job_id)
            out.mkdir(parents=True, exist_ok=True)
            text = profile.model_dump_json(indent=2, exclude_none=True)
            (out / "profile.json").write_text(text)
            status, reason = store.SUCCEEDED, f"profile {profile.name!r} written"
            result = {"profile": json.loads(profile.model_dump_json(exclude_none=True))}
        except Exception as error:  # a noisy run, no native kernel, …: the job's failure
            log.exception("calibration job %s failed", job_id)
            status, reason = store.FAILED, f"{type(error).__name__}: {error}"
    worker.record_outcome(job_id, status, reason, result)


class Heartbeat:
    """While a job runs: refresh its heartbeat every ``heartbeat_s`` from a thread, publish
    ``progress`` (set it from the job), and hand the job's status to ``on_status`` after each
    beat (that is how a cancel request reaches a running job)."""

    def __init__(
        self, worker: Worker, job_id: str, on_status: Callable[[str], None] | None = None
    ):
        self.worker, self.job_id = worker, job_id
        self.on_status = on_status or (lambda _status: None)
        self.progress = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}",
                                        daemon=True)  # fmt: skip

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._done.set()
        self._thread.join()

    def _beat(self) -> None:
        worker = self.worker
        while not self._done.wait(worker.settings.heartbeat_s):
            try:
                with worker.sessions() as session:
                    status = store.heartbeat(session, self.job_id, worker.worker_id, self.progress)
            except Exception:  # a busy database must not kill the heartbeat
                log.exception("heartbeat failed for job %s", self.job_id)
                continue
            self.on_status(status)


def _total_epochs(request: dict) -> int:
    """Epochs the job will run at most (for its progress fraction)."""
    from model.pipeline import split_config

    try:
        train, _ = split_config(request["method"], dict(request.get("config") or {}))
    except (ValueError, LookupError):
        return 1
    dense = 0 if request.get("checkpoint_path") else train.dense_epochs
    return max(dense + train.prune_epochs + train.finetune_epochs, 1)


def main(argv: list[str] | None = None) -> int:
    """``python -m service.worker`` is ``sweetspot worker``."""
    from service.cli import main as cli_main

    return cli_main(["worker", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
