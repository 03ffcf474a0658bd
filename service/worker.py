"""A worker process: claims queued jobs one at a time and runs them.

``sweetspot worker`` (or ``python -m service.worker``) loops: resolve jobs of dead workers,
claim the oldest queued job atomically, run it with :func:`model.pipeline.run_pruning` in its
own folder under ``<data_dir>/jobs/<id>``, store every training event, register the artifacts
and record the outcome. A heartbeat thread keeps the job's ``heartbeat_at`` fresh and watches
for ``cancelling``: it sets the trainer's cancel flag, which stops training at the next step
(within seconds). A requeued job resumes from its last checkpoint, because its folder and
request are unchanged. A worker that went silent (stopped, stalled) long enough for its job to
be requeued has lost the job: its next heartbeat says so, it stops training and records
nothing (no events, artifacts or outcome), since the job's folder and state now belong to
whichever worker claimed it next.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from service import jobs as store
from service import profiles
from service.db import make_engine, make_sessionmaker, migrate
from service.settings import Settings

log = logging.getLogger("sweetspot.worker")
LOST = "lost"  # outcome of a job that lost one of its data-parallel ranks


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
        parent = os.environ.get("SWEETSPOT_PARENT_PID", "")
        if parent.isdigit():  # started by serve: stop when it is gone, also if SIGKILLed
            stop_with_parent(int(parent), self.stop, self.poll_s)
        while not self.stop.is_set():
            if not self.run_once():
                self.stop.wait(self.poll_s)

    def run_once(self) -> bool:
        """Recover lost jobs, then join a job on several hosts that waits for nodes, or claim
        and run one queued job; False when there was nothing to do."""
        with self.sessions() as session:
            store.recover_lost(session, self.settings.stale_after_s, self.settings.lost_job_policy)
            # Joining first: a job already holding node 0 should not wait while its
            # would-be nodes claim jobs of their own.
            joined = store.join_next(session, self.worker_id)
            job = None if joined else store.claim_next(session, self.worker_id)
        if joined:
            self.run_node(*joined)
            return True
        if job is None:
            return False
        self.run_job(job.id, dict(job.request))
        return True

    def run_node(self, job, rendezvous: dict, node_rank: int) -> None:
        """Train node ``node_rank`` ≥ 1 of a job whose node 0 runs on another worker. Node 0
        owns the job (its status, events, artifacts); this worker only logs the outcome. A
        shutdown here stops the whole job's training, and node 0 requeues it."""
        from model.pipeline import join_pruning
        from model.training import Cancelled
        from model.training.distributed import Cluster

        job_id, request = job.id, dict(job.request)
        with self.sessions() as session:
            store.add_event(session, job_id, {
                "type": "log", "message": f"worker {self.worker_id} joined as node {node_rank} "
                f"of {rendezvous['nodes']}",
            })  # fmt: skip
        cluster = Cluster(nodes=rendezvous["nodes"], node_rank=node_rank,
                          procs=rendezvous["procs"], master_addr=rendezvous["addr"],
                          master_port=rendezvous["port"],
                          timeout_s=self.settings.rendezvous_timeout_s)  # fmt: skip
        try:
            join_pruning(_prune_request(request, self.settings), self.settings.artifacts.job_dir(
                job_id), cluster, cancel=self.stop)  # fmt: skip
            log.info("node %d of job %s finished", node_rank, job_id)
        except Cancelled as error:
            log.info("node %d of job %s stopped: %s", node_rank, job_id, error)
        except Exception as error:  # node 0 records the job's outcome; this worker goes on
            log.exception("node %d of job %s failed", node_rank, job_id)
            with self.sessions() as session:  # say why on the job, and free the node
                store.add_event(session, job_id, {
                    "type": "log", "message": f"node {node_rank} on worker {self.worker_id} "
                    f"failed: {type(error).__name__}: {error}"})  # fmt: skip
                store.leave_node(session, job_id, rendezvous["id"], node_rank)

    def run_job(self, job_id: str, request: dict) -> None:
        if request.get("kind") == "calibration":
            _calibration(self, job_id, request)
            return
        from model.pipeline import run_pruning
        from model.training import Cancelled
        from model.training.distributed import RankLostError

        out_dir = self.settings.artifacts.job_dir(job_id)
        cancel = threading.Event()
        phase_epochs = _phase_epochs(request)

        def on_status(status: str | None) -> None:
            if status in (None, store.CANCELLING, store.CANCELLED) or self.stop.is_set():
                cancel.set()  # None: the job was requeued after a stall, it is not ours

        heartbeat = Heartbeat(self, job_id, on_status)

        def on_event(event: dict) -> None:
            if heartbeat.lost:  # the job's events are its new owner's
                return
            if event.get("type") == "epoch":
                heartbeat.progress = epoch_progress(event, phase_epochs)
            with self.sessions() as session:
                store.add_event(session, job_id, event)

        status, reason, result = store.FAILED, "", None
        with heartbeat:
            try:
                prune_request = _prune_request(request, self.settings)
                cluster = self._open_rendezvous(job_id, prune_request, on_event)
                manifest = run_pruning(prune_request, out_dir, callbacks=[on_event],
                                       cancel=cancel, cluster=cluster)  # fmt: skip
                status, reason = store.SUCCEEDED, "finished"
                result = {key: manifest.get(key) for key in ("accuracy", "model_speedup")}
                for key in ("not_measured", "surgery_skipped"):  # the reasons, where given
                    if manifest.get(key):
                        result[key] = manifest[key]
                result["layers"] = [
                    {k: layer.get(k) for k in ("name", "sparsity", "format", "predicted_speedup",
                                               "measured_speedup", "state")}
                    for layer in manifest.get("layers", [])
                ]  # fmt: skip
            except Cancelled as error:
                status, reason = store.CANCELLED, "cancelled by request; training stopped"
                if error.rank_left:  # another node's worker shut down
                    status = store.QUEUED
                    reason = "a node of the job shut down; requeued to resume from its last " \
                             "checkpoint"
                elif self.stop.is_set():  # shutting down, nobody asked to cancel: run it later
                    status = store.QUEUED
                    reason = "worker shut down; requeued to resume from its last checkpoint"
            except RankLostError as error:  # a node died: like a lost worker (lost_job_policy)
                log.warning("job %s lost a rank: %s", job_id, error)
                status, reason = LOST, str(error)
            except Exception as error:  # any failure of the job is the job's, not the worker's
                log.exception("job %s failed", job_id)
                status, reason = store.FAILED, failure_reason(error, self.settings)
        self.record_outcome(job_id, status, reason, result)

    def record_outcome(self, job_id: str, status: str, reason: str, result: dict | None) -> None:
        """Register the job's files, then finish it (or put it back in the queue), if the job
        still runs under this worker. One it lost (requeued while this worker was stalled, and
        perhaps run by another now) is left alone: its files and state are not this run's to
        record, and the refusal is logged rather than ending the worker."""
        me = self.worker_id
        with self.sessions() as session:
            try:
                store.check_owner(session, job_id, me)
                store.register_artifacts(session, job_id, self.settings.artifacts)
                if status == store.QUEUED:
                    store.requeue(session, job_id, reason, worker_id=me)
                elif status == LOST:
                    status = store.requeue_lost(session, job_id, reason,
                                                self.settings.lost_job_policy,
                                                worker_id=me).status  # fmt: skip
                else:
                    store.finish(session, job_id, status, reason, result, worker_id=me)
            except (store.InvalidTransition, store.JobNotFound) as error:
                session.rollback()
                log.warning("job %s: outcome %r not recorded: %s", job_id, status, error)
                return
        log.info("job %s %s: %s", job_id, status, reason)

    def _open_rendezvous(self, job_id: str, request, on_event: Callable[[dict], None]):
        """For a job on several hosts: publish where its other nodes meet this one (node 0)."""
        from model.pipeline import split_config
        from model.training import Cancelled
        from model.training.distributed import Cluster, free_port

        train_config, _ = split_config(request.method, request.config)
        if train_config.nodes == 1:
            return None
        address = self.settings.advertise_address or _host_address(self.settings.url)
        port = free_port()
        with self.sessions() as session:
            try:
                store.open_rendezvous(session, job_id, self.worker_id, address, port,
                                      train_config.nodes, train_config.procs)  # fmt: skip
            except store.InvalidTransition as error:  # cancelled (or lost) since the claim
                raise Cancelled(str(error)) from None
        on_event({"type": "log", "message": f"waiting for {train_config.nodes - 1} more "
                  f"worker(s) to join at {address}:{port} (at most "
                  f"{self.settings.rendezvous_timeout_s:g} s)"})  # fmt: skip
        if _is_loopback(address):
            on_event({"type": "log", "message": f"{address} is a loopback address: only "
                      "workers on this host can join; set SWEETSPOT_ADVERTISE_ADDRESS (and "
                      "GLOO_SOCKET_IFNAME, or NCCL_SOCKET_IFNAME on GPU hosts) on each "
                      "worker host"})  # fmt: skip
        return Cluster(nodes=train_config.nodes, node_rank=0, procs=train_config.procs,
                       master_addr=address, master_port=port,
                       timeout_s=self.settings.rendezvous_timeout_s)  # fmt: skip


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def failure_reason(error: Exception, settings: Settings) -> str:
    """A failed job's ``status_reason``: the error, with the server's own folders named by role
    instead of their paths (owners see the reason; the layout of the host is not theirs)."""
    text = f"{type(error).__name__}: {error}"
    for folder, role in ((settings.uploads_dir, "<uploads>"), (settings.jobs_dir, "<jobs>"),
                         (settings.data_dir, "<data>")):  # fmt: skip
        for form in {str(folder), str(folder.resolve())}:
            if Path(form).is_absolute():  # a relative "data" would match prose too
                # a whole path, ending a component: /srv/sweet is neither in /srv/sweetspot nor
                # in /backup/srv/sweet; a sentence's full stop may follow it
                text = re.sub(r"(?<![^\s'\"`(=\[])" + re.escape(form)
                              + r"(?=[\s/'\"`:;,)\]]|\.(?:\s|$)|$)", role, text)
    return text


def stop_with_parent(parent_pid: int, stop: threading.Event, every_s: float = 0.5) -> None:
    """Set ``stop`` once the process ``parent_pid`` that started this one has died, even if it
    was SIGKILLed and could not stop its workers (an orphan would run its job to the end and
    hold the job's data directory). Stopping is what SIGTERM does: a running job stops at its
    next heartbeat and is requeued to resume from its checkpoint, then the worker exits.

    On Linux the kernel sends this process SIGTERM when the parent dies (``PR_SET_PDEATHSIG``;
    strictly, when the parent's thread that started it ends: ``WorkerPool`` starts workers from
    threads that live as long as the pool). Everywhere a thread also checks every ``every_s``
    that the parent is unchanged: the fallback on other systems, and for a parent that died
    before this process asked for the signal.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
                log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        except (OSError, AttributeError) as error:  # no usable libc: the thread still watches
            log.warning("prctl(PR_SET_PDEATHSIG) unavailable: %s", error)

    def watch() -> None:
        while os.getppid() == parent_pid:
            if stop.wait(every_s):
                return
        log.warning("parent process %d is gone; this worker stops", parent_pid)
        stop.set()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _calibration(worker: Worker, job_id: str, request: dict) -> None:
    """A calibration job: microbenchmarks of this host, then the profile is saved. It cannot
    be interrupted midway: a cancel that came meanwhile is honoured before saving (the job
    ends cancelled and writes nothing), as is a profile of that name created meanwhile
    (unless the request says ``replace``, and only by another caller with it: the job fails
    and the profile is kept)."""
    import json

    from model.calibration import calibrate, pass_spread_warning
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
            refused, why = _may_save(worker, job_id, profile.name, request)
            if refused is not None:  # cancelled, lost, or the name was taken meanwhile
                status, reason = refused, why
            else:
                save_profile(profile, worker.settings.profiles_dir)  # owner: _may_save
                out = worker.settings.artifacts.job_dir(job_id)
                out.mkdir(parents=True, exist_ok=True)
                text = profile.model_dump_json(indent=2, exclude_none=True)
                (out / "profile.json").write_text(text)
                status, reason = store.SUCCEEDED, f"profile {profile.name!r} written"
                if warning := pass_spread_warning(profile):
                    reason += f" (warning: {warning})"
                result = {"profile": json.loads(profile.model_dump_json(exclude_none=True))}
        except Exception as error:  # a noisy run, no native kernel, …: the job's failure
            log.exception("calibration job %s failed", job_id)
            status, reason = store.FAILED, failure_reason(error, worker.settings)
    worker.record_outcome(job_id, status, reason, result)


def _may_save(worker: Worker, job_id: str, name: str, request: dict) -> tuple[str | None, str]:
    """Whether a finished calibration may write its profile: ``(None, "")`` if so, else the
    job's outcome and reason (its job was cancelled or lost while it measured, or a profile
    of that name was created meanwhile and the request does not say ``replace``)."""
    from perfmodel import profile_names

    with worker.sessions() as session:
        try:
            job = store.check_owner(session, job_id, worker.worker_id)
        except (store.InvalidTransition, store.JobNotFound) as error:
            return store.FAILED, str(error)  # record_outcome will refuse it: not ours
        if job.status == store.CANCELLING:
            return store.CANCELLED, "cancelled by request; the profile was not written"
        exists = name in profile_names()
        theirs = exists and not profiles.may_change(session, name, job.owner)
        # A new name is claimed (the job's owner recorded) as POST /v1/hardware claims it, so
        # the two cannot both write; a replaced one is already the owner's (``theirs``).
        taken = not exists and not profiles.claim(session, name, job.owner)
    if taken or (exists and not request.get("replace")):
        return store.FAILED, (f"a profile named {name!r} was created while this calibration "
                              "ran; it was kept (calibrate with replace=true to replace it)")
    if theirs:  # replace=true is checked at submission too, but the profile may be newer
        return store.FAILED, (f"the profile {name!r} was not created by this job's caller "
                              "(another caller's, or the operator's); it was kept: only its "
                              "creator may replace it")  # fmt: skip
    return None, ""


class Heartbeat:
    """While a job runs: refresh its heartbeat every ``heartbeat_s`` from a thread, publish
    ``progress`` (set it from the job), and hand the job's status to ``on_status`` after each
    beat (that is how a cancel request reaches a running job). When the job no longer runs
    under this worker (it was requeued while the worker was stalled), ``lost`` becomes True,
    ``on_status`` gets None and the beats stop."""

    def __init__(
        self, worker: Worker, job_id: str, on_status: Callable[[str | None], None] | None = None
    ):
        self.worker, self.job_id = worker, job_id
        self.on_status = on_status or (lambda _status: None)
        self.progress = 0.0
        self.lost = False
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
            if status is None:
                log.warning("job %s no longer runs under worker %s (requeued while it was "
                            "silent); stopping it", self.job_id, worker.worker_id)  # fmt: skip
                self.lost = True
            self.on_status(status)
            if self.lost:
                return


def _prune_request(request: dict, settings: Settings):
    """The stored job request as the pipeline's; the worker's ``job_procs`` default applies
    (at most one process per GPU when the job trains on GPUs)."""
    from model.pipeline import PruneRequest
    from model.training.distributed import default_procs

    config = dict(request.get("config") or {})
    if settings.job_procs > 1 and "procs" not in config:
        config["procs"] = default_procs(settings.job_procs, config.get("device", "auto"),
                                        config.get("nodes", 1))  # fmt: skip
    return PruneRequest(
        method=request["method"], model=request["model"], dataset=request["dataset"],
        hardware=request["hardware"], config=config, checkpoint=request.get("checkpoint_path"),
        measure=request.get("measure", True),
    )  # fmt: skip


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # a host name
        return address == "localhost"


def _host_address(database_url: str) -> str:
    """The address other worker hosts are likely to reach this one at: the local address of
    the route to the database host (a UDP "connect" sends nothing), else what the host name
    resolves to, else loopback."""
    from sqlalchemy.engine import make_url

    host = make_url(database_url).host
    if host:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.connect((socket.gethostbyname(host), 9))
                address = sock.getsockname()[0]
            if not _is_loopback(address):
                return address
        except OSError:
            pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _phase_epochs(request: dict) -> dict[str, int]:
    """Epochs the job runs at most in each training phase (for its progress fraction)."""
    from model.pipeline import split_config

    try:
        train, _ = split_config(request["method"], dict(request.get("config") or {}))
    except (ValueError, LookupError):
        return {}
    return train.phase_epochs(warm_start=bool(request.get("checkpoint_path")))


def epoch_progress(event: dict, phase_epochs: dict[str, int]) -> float:
    """The job's progress after an epoch event (below 1.0 until the job has finished)."""
    from model.training import epochs_done

    total = sum(phase_epochs.values())
    return min(epochs_done(event, phase_epochs) / total, 0.99) if total > 0 else 0.0


def main(argv: list[str] | None = None) -> int:
    """``python -m service.worker`` is ``sweetspot worker``."""
    from service.cli import main as cli_main

    return cli_main(["worker", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
