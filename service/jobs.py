"""The job store: states, transitions, claiming, heartbeats, events, recovery.

Plain functions over a SQLAlchemy session raise domain exceptions (:class:`JobNotFound`,
:class:`InvalidTransition`, :class:`IdempotencyConflictError`); the API maps them to HTTP in one
place. States follow the job APIs users know (Ray Jobs, Determined; docs/research.md §8)::

    queued → running → succeeded | failed | cancelled
               └→ cancelling → cancelled (or succeeded/failed if it finished first)
    queued → cancelled;  running → queued (requeued once after its worker died)

Every transition is recorded with its time and reason.

A job on several hosts (config ``nodes`` > 1) is claimed like any other by the worker that
becomes its node 0; that worker opens a *rendezvous* on the job (its address and a port) and
idle workers join it as nodes 1 … nodes−1 (:func:`join_next`: one row per node in
``job_nodes``, made unique by the database, so two workers never take the same node). The
rendezvous closes whenever the job leaves ``running``.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db import Artifact, Job, JobEvent, JobNode, Metric, Transition, utcnow
from service.storage import ArtifactStore

QUEUED, RUNNING, CANCELLING = "queued", "running", "cancelling"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, CANCELLING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
ALLOWED = {
    QUEUED: {RUNNING, CANCELLED, FAILED},
    RUNNING: {SUCCEEDED, FAILED, CANCELLING, QUEUED},
    CANCELLING: {CANCELLED, SUCCEEDED, FAILED},
}


class JobNotFound(LookupError):  # noqa: N818 - the API's vocabulary
    def __init__(self, job_id: str):
        super().__init__(f"job {job_id!r} not found")


class InvalidTransition(ValueError):  # noqa: N818
    """The job is in a state where the requested action is not allowed."""


class IdempotencyConflictError(ValueError):
    """The idempotency key was already used for a different request."""


class NotOwnerError(InvalidTransition):
    """The job no longer runs under this worker: the monitor requeued it after the worker
    went silent (stopped, stalled), and another worker may be running it now, or it ended."""


def new_id() -> str:
    return uuid.uuid4().hex[:16]


def _transition(session: Session, job: Job, to: str, reason: str) -> None:
    if to not in ALLOWED.get(job.status, set()):
        raise InvalidTransition(f"job {job.id} is {job.status}; it cannot become {to}")
    session.add(Transition(job_id=job.id, from_status=job.status, to_status=to, reason=reason))
    job.status, job.status_reason = to, reason
    if to != RUNNING:  # no more nodes join it (a requeued job opens a new one)
        job.rendezvous = None
    if to == RUNNING:
        job.started_at = utcnow()
    if to in TERMINAL:
        job.finished_at = utcnow()


def create_job(
    session: Session, owner: str, request: dict[str, Any], idempotency_key: str | None
) -> tuple[Job, bool]:
    """Queue a job; with an idempotency key a repeat returns the existing job (created=False)."""
    if idempotency_key:
        existing = _by_key(session, owner, idempotency_key)
        if existing is not None:
            return _same_request(existing, request, idempotency_key), False
    job = Job(id=new_id(), owner=owner, idempotency_key=idempotency_key, request=request,
              status=QUEUED, status_reason="submitted", attempts=0, progress=0.0)  # fmt: skip
    session.add(job)
    session.add(Transition(job_id=job.id, from_status=None, to_status=QUEUED, reason="submitted"))
    try:
        session.commit()
    except IntegrityError:  # a concurrent submission with the same key won the race
        session.rollback()
        existing = _by_key(session, owner, idempotency_key or "")
        if existing is None:
            raise
        return _same_request(existing, request, idempotency_key or ""), False
    return job, True


def by_idempotency_key(session: Session, owner: str, key: str | None) -> Job | None:
    """The owner's job submitted under ``key``, if any (a retry of it is not a new job)."""
    return _by_key(session, owner, key) if key else None


def _by_key(session: Session, owner: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.owner == owner, Job.idempotency_key == key))


def _same_request(job: Job, request: dict[str, Any], key: str) -> Job:
    if job.request != request:
        raise IdempotencyConflictError(
            f"idempotency key {key!r} was already used for job {job.id} with a different request"
        )
    return job


def get_job(session: Session, owner: str | None, job_id: str) -> Job:
    """The job, if it exists and ``owner`` may see it (``None``: any owner)."""
    job = session.get(Job, job_id)
    if job is None or (owner is not None and job.owner != owner):
        raise JobNotFound(job_id)
    return job


def list_jobs(
    session: Session, owner: str | None, status: str | None, limit: int, offset: int
) -> tuple[list[Job], int]:
    query = select(Job)
    if owner is not None:
        query = query.where(Job.owner == owner)
    if status:
        query = query.where(Job.status == status)
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    ordered = query.order_by(Job.created_at.desc(), Job.id)
    jobs = session.scalars(ordered.limit(limit).offset(offset))
    return list(jobs), count


def count_active(session: Session, owner: str) -> int:
    # A job being cancelled still runs until it stops (a calibration can take minutes).
    query = select(func.count()).where(Job.owner == owner,
                                       Job.status.in_([QUEUED, RUNNING, CANCELLING]))  # fmt: skip
    return session.scalar(query.select_from(Job)) or 0


def transitions(session: Session, job_id: str) -> list[Transition]:
    query = select(Transition).where(Transition.job_id == job_id).order_by(Transition.id)
    return list(session.scalars(query))


def cancel_job(session: Session, owner: str | None, job_id: str, reason: str) -> Job:
    """Queued jobs are cancelled at once; running ones go to ``cancelling`` for the worker."""
    job = get_job(session, owner, job_id)
    if job.status == QUEUED:
        _transition(session, job, CANCELLED, reason)
    elif job.status == RUNNING:
        _transition(session, job, CANCELLING, reason)
    elif job.status != CANCELLING:
        raise InvalidTransition(f"job {job_id} already {job.status}; only queued or running "
                                "jobs can be cancelled")  # fmt: skip
    session.commit()
    return job


def delete_job(session: Session, owner: str | None, job_id: str, storage: ArtifactStore) -> None:
    job = get_job(session, owner, job_id)
    if job.status not in TERMINAL:
        raise InvalidTransition(
            f"job {job_id} is {job.status}; only finished jobs (succeeded, failed, cancelled) "
            "can be deleted — cancel it first"
        )
    for table in (Transition, JobEvent, Metric, Artifact, JobNode):
        session.execute(delete(table).where(table.job_id == job_id))
    session.delete(job)
    session.commit()
    storage.delete(job_id)


# ----------------------------------------------------------------------------- workers


def claim_next(session: Session, worker_id: str) -> Job | None:
    """Atomically claim the oldest queued job.

    PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED`` — concurrent workers on any hosts skip the
    rows others are claiming instead of waiting for them. Elsewhere (SQLite, one host): a
    compare-and-set on the status, retried when another worker won the row.
    """
    if session.get_bind().dialect.name == "postgresql":
        return _claim_skip_locked(session, worker_id)
    while True:
        candidate = session.scalar(
            select(Job.id).where(Job.status == QUEUED).order_by(Job.created_at, Job.id).limit(1)
        )
        if candidate is None:
            return None
        now = utcnow()
        claimed = session.execute(
            update(Job)
            .where(Job.id == candidate, Job.status == QUEUED)
            .values(status=RUNNING, worker_id=worker_id, heartbeat_at=now, started_at=now,
                    status_reason=f"claimed by worker {worker_id}",
                    attempts=Job.attempts + 1)
        ).rowcount
        if claimed == 1:
            session.add(Transition(job_id=candidate, from_status=QUEUED, to_status=RUNNING,
                                   reason=f"claimed by worker {worker_id}"))  # fmt: skip
            session.commit()
            return session.get(Job, candidate)
        session.rollback()  # another worker took it: try the next one


def _claim_skip_locked(session: Session, worker_id: str) -> Job | None:
    job = session.scalar(
        select(Job).where(Job.status == QUEUED).order_by(Job.created_at, Job.id).limit(1)
        .with_for_update(skip_locked=True)
    )  # fmt: skip
    if job is None:
        session.rollback()
        return None
    reason = f"claimed by worker {worker_id}"
    _transition(session, job, RUNNING, reason)
    job.worker_id, job.heartbeat_at, job.attempts = worker_id, utcnow(), job.attempts + 1
    session.commit()
    return job


def open_rendezvous(
    session: Session, job_id: str, worker_id: str, addr: str, port: int, nodes: int, procs: int
) -> dict[str, Any]:
    """Node 0 of a job on several hosts (``worker_id`` runs it) invites the other nodes."""
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(job_id)
    session.refresh(job)
    if job.status != RUNNING or job.worker_id != worker_id:
        raise InvalidTransition(f"job {job_id} is {job.status} with worker {job.worker_id}; "
                                f"worker {worker_id} cannot open its rendezvous")  # fmt: skip
    rendezvous = {"id": new_id(), "addr": addr, "port": int(port), "nodes": int(nodes),
                  "procs": int(procs)}  # fmt: skip
    job.rendezvous = rendezvous
    session.commit()
    return rendezvous


def join_next(session: Session, worker_id: str) -> tuple[Job, dict[str, Any], int] | None:
    """Take the next free node of a running job's open rendezvous: ``(job, rendezvous,
    node_rank)``, or None. The unique (job, rendezvous, node) row decides between workers
    racing for the same node, on SQLite and PostgreSQL alike."""
    candidates = session.scalars(
        select(Job).where(Job.status == RUNNING, Job.rendezvous.is_not(None))
        .order_by(Job.started_at, Job.id)
    ).all()  # fmt: skip
    for job in candidates:
        rendezvous = dict(job.rendezvous or {})
        if job.worker_id == worker_id or not rendezvous:
            continue
        while True:
            joined = session.scalar(
                select(func.count()).select_from(JobNode)
                .where(JobNode.job_id == job.id, JobNode.rendezvous == rendezvous["id"])
            ) or 0  # fmt: skip
            if joined >= rendezvous["nodes"] - 1:
                break
            node_rank = joined + 1
            session.add(JobNode(job_id=job.id, rendezvous=rendezvous["id"], node_rank=node_rank,
                                worker_id=worker_id))  # fmt: skip
            try:
                session.commit()
            except IntegrityError:  # another worker took this node: look again
                session.rollback()
                continue
            session.refresh(job)  # requeued or re-opened meanwhile? then it is not this one
            if job.status != RUNNING or (job.rendezvous or {}).get("id") != rendezvous["id"]:
                leave_node(session, job.id, rendezvous["id"], node_rank)
                break
            return job, rendezvous, node_rank
    session.rollback()
    return None


def leave_node(session: Session, job_id: str, rendezvous_id: str, node_rank: int) -> None:
    """Free a node taken by :func:`join_next` (its worker could not run it)."""
    session.execute(delete(JobNode).where(JobNode.job_id == job_id,
                                          JobNode.rendezvous == rendezvous_id,
                                          JobNode.node_rank == node_rank))  # fmt: skip
    session.commit()


def nodes_of(session: Session, job_id: str) -> list[JobNode]:
    """The workers that joined the job's nodes ≥ 1, over all its attempts."""
    return list(session.scalars(
        select(JobNode).where(JobNode.job_id == job_id).order_by(JobNode.id)
    ))  # fmt: skip


def heartbeat(session: Session, job_id: str, worker_id: str, progress: float | None) -> str | None:
    """Record that the worker is alive; returns the job's status (``cancelling`` → stop), or
    None when the job no longer runs under this worker (requeued after a stall and perhaps
    claimed by another worker, ended, deleted): the worker must stop and record nothing."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress is not None:
        values["progress"] = progress
    matched = session.execute(
        update(Job).where(Job.id == job_id, Job.worker_id == worker_id,
                          Job.status.in_([RUNNING, CANCELLING])).values(**values)
    ).rowcount  # fmt: skip
    session.commit()
    if not matched:
        return None
    return session.scalar(select(Job.status).where(Job.id == job_id)) or FAILED


def check_owner(session: Session, job_id: str, worker_id: str) -> Job:
    """The job, read afresh, if it still runs (or is cancelling) under ``worker_id``.

    Raises:
        JobNotFound: the job was deleted.
        NotOwnerError: it was requeued after this worker went silent, or it ended.
    """
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(job_id)
    session.refresh(job)
    if job.status not in (RUNNING, CANCELLING) or job.worker_id != worker_id:
        raise NotOwnerError(f"job {job_id} is {job.status} with worker {job.worker_id}, no "
                            f"longer running under worker {worker_id}")  # fmt: skip
    return job


def requeue(session: Session, job_id: str, reason: str, worker_id: str | None = None) -> Job:
    """Put a running job back in the queue (its worker is going away); resumes later. With
    ``worker_id``, only a job still running under that worker (else :class:`NotOwnerError`)."""
    job = _job_of(session, job_id, worker_id)
    if job.status == RUNNING:
        _transition(session, job, QUEUED, reason)
        job.worker_id = None
        job.attempts = max(job.attempts - 1, 0)  # a clean shutdown is not a failed attempt
    elif job.status == CANCELLING:
        _transition(session, job, CANCELLED, "cancelled while its worker shut down")
    session.commit()
    return job


def requeue_lost(
    session: Session, job_id: str, reason: str, policy: str, worker_id: str | None = None
) -> Job:
    """A running job lost one of its nodes: requeue it once (``policy`` "requeue", as for a
    dead worker) to resume from its checkpoint, or fail it. ``worker_id`` as for requeue."""
    job = _job_of(session, job_id, worker_id)
    if job.status == CANCELLING:
        _transition(session, job, CANCELLED, f"{reason} while cancelling")
    elif job.status == RUNNING and policy == "requeue" and job.attempts < 2:
        _transition(session, job, QUEUED, f"{reason}; requeued to resume from its checkpoint")
        job.worker_id = None
    elif job.status == RUNNING:
        _transition(session, job, FAILED, f"{reason}; not retried (attempt {job.attempts})")
    session.commit()
    return job


def finish(
    session: Session, job_id: str, status: str, reason: str, result: dict | None = None,
    worker_id: str | None = None,
) -> Job:
    """Record the job's outcome. With ``worker_id``, only that of a job still running under
    that worker: a worker that stalled and lost the job must not end the new owner's run
    (:class:`NotOwnerError`)."""
    job = _job_of(session, job_id, worker_id)
    if job.status in TERMINAL:
        return job
    if job.status == CANCELLING and status == SUCCEEDED:
        reason = f"{reason} (finished before the cancel took effect)"
    _transition(session, job, status, reason)
    if status == SUCCEEDED:
        job.progress = 1.0
    job.result = finite(result)
    session.commit()
    return job


def _job_of(session: Session, job_id: str, worker_id: str | None) -> Job:
    """The job read afresh; with ``worker_id``, only while it runs under that worker."""
    if worker_id is not None:
        return check_owner(session, job_id, worker_id)
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(job_id)
    session.refresh(job)
    return job


def recover_lost(session: Session, stale_after_s: float, policy: str) -> list[tuple[str, str]]:
    """Resolve running jobs whose worker stopped heartbeating: requeue once, or fail."""
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    lost = session.scalars(
        select(Job).where(Job.status.in_([RUNNING, CANCELLING]), Job.heartbeat_at < cutoff)
    ).all()
    actions = []
    for job in lost:
        silent = f"worker {job.worker_id} stopped heartbeating (> {stale_after_s:g} s)"
        if job.status == CANCELLING:
            _transition(session, job, CANCELLED, f"{silent} while cancelling")
            actions.append((job.id, CANCELLED))
        elif policy == "requeue" and job.attempts < 2:
            _transition(session, job, QUEUED, f"{silent}; requeued to resume from its checkpoint")
            job.worker_id = None
            actions.append((job.id, QUEUED))
        else:
            _transition(session, job, FAILED, f"{silent}; not retried (attempt {job.attempts})")
            actions.append((job.id, FAILED))
    session.commit()
    return actions


# ------------------------------------------------------------------ events and metrics

METRIC_FIELDS = ("loss", "train_accuracy", "test_loss", "test_accuracy")


def finite(value: Any) -> Any:
    """``value`` with every number that is not finite (NaN, ±infinity) replaced by None.

    Events and results are stored and served as strict JSON (``NaN`` is not JSON, and
    PostgreSQL refuses it): a null there means the number was not finite, e.g. a diverged
    loss or a speedup that could not be measured.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def add_event(session: Session, job_id: str, event: dict[str, Any]) -> None:
    """Store one training event (not-finite numbers as null); epoch events also become metric
    time series, without the points whose value is not finite."""
    session.add(JobEvent(job_id=job_id, type=str(event.get("type", "log")), data=finite(event)))
    if event.get("type") == "epoch":
        common = {"job_id": job_id, "step": int(event.get("step", 0)),
                  "epoch": int(event.get("epoch", 0)), "phase": str(event.get("phase", ""))}
        values = [(name, event.get(name)) for name in METRIC_FIELDS]
        values += [(f"sparsity/{layer}", value)
                   for layer, value in (event.get("sparsity") or {}).items()]  # fmt: skip
        for name, value in values:
            if isinstance(value, int | float) and math.isfinite(value):
                session.add(Metric(name=name, value=float(value), **common))
    session.commit()


def events_after(session: Session, job_id: str, after_id: int, limit: int = 1000) -> list[JobEvent]:
    query = (
        select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after_id)
        .order_by(JobEvent.id).limit(limit)
    )  # fmt: skip
    return list(session.scalars(query))


def timestamp(at: datetime) -> str:
    """``at`` as the API writes every time: ISO 8601 in UTC with a ``Z``
    (``2026-01-02T03:04:05.678901Z``), as pydantic writes the models' datetimes, so that
    hand-written JSON (server-sent events, metric series) reads the same."""
    if at.tzinfo is not None:
        at = at.astimezone(UTC).replace(tzinfo=None)
    return f"{at.isoformat()}Z"


def metrics(session: Session, job_id: str) -> dict[str, list[dict[str, Any]]]:
    series: dict[str, list[dict[str, Any]]] = {}
    query = select(Metric).where(Metric.job_id == job_id).order_by(Metric.id)
    for row in session.scalars(query):
        if not math.isfinite(row.value):  # stored before add_event left such points out
            continue
        series.setdefault(row.name, []).append(
            {"step": row.step, "epoch": row.epoch, "phase": row.phase, "value": row.value,
             "time": timestamp(row.at)}
        )
    return series


MEDIA_TYPES = {".json": "application/json", ".md": "text/markdown", ".png": "image/png",
               ".jsonl": "application/x-ndjson", ".safetensors": "application/octet-stream",
               ".pt": "application/octet-stream"}  # fmt: skip


def register_artifacts(session: Session, job_id: str, storage: ArtifactStore) -> list[Artifact]:
    """Record every file the job wrote (the record is what the API serves, nothing else)."""
    session.execute(delete(Artifact).where(Artifact.job_id == job_id))
    rows = []
    for name, size in storage.files(job_id):
        suffix = Path(name).suffix
        if suffix in MEDIA_TYPES and name != "request.json":
            rows.append(Artifact(job_id=job_id, name=name, size=size,
                                 media_type=MEDIA_TYPES[suffix]))  # fmt: skip
    session.add_all(rows)
    session.commit()
    return rows


def artifacts(session: Session, job_id: str) -> list[Artifact]:
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job_id)
                                .order_by(Artifact.name)))  # fmt: skip


def status_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    counts = dict.fromkeys(STATUSES, 0)
    counts.update({status: count for status, count in rows})
    return counts
