"""Pruning jobs: submit, list, get, cancel, delete, events (SSE), metrics, artifacts."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse

from model.data import BUILTIN_CLASSES, DATASETS
from model.networks import network_info
from model.pipeline import PruneRequest, check_request, split_config
from model.pruning import listed, method_info
from model.training import TrainConfig
from perfmodel import get_named_profile
from service import jobs as store
from service.api.deps import OwnerDep, SessionDep, SettingsDep
from service.api.errors import UnknownName, documented
from service.api.schemas import (
    ArtifactPublic,
    ArtifactsPublic,
    EventPublic,
    EventsPublic,
    JobCreate,
    JobPublic,
    JobsPublic,
    JobStatus,
    Link,
    MetricsPublic,
    TransitionPublic,
)
from service.db import Job, Upload
from service.uploads import upload_classes

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=documented(422))  # all take parameters
NOT_FOUND = documented(404)


def to_public(session, job: Job) -> JobPublic:
    base = f"/v1/jobs/{job.id}"
    request = {k: v for k, v in job.request.items() if k != "checkpoint_path"}
    return JobPublic(
        id=job.id, status=job.status, status_reason=job.status_reason, request=request,
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        progress=job.progress, attempts=job.attempts, worker_id=job.worker_id,
        result=job.result,
        transitions=[TransitionPublic(from_status=t.from_status, to_status=t.to_status,
                                      reason=t.reason, at=t.at)
                     for t in store.transitions(session, job.id)],
        links=_links(base, job.status),
    )  # fmt: skip


def _links(base: str, job_status: str) -> dict[str, Link]:
    """Where to go next; ``cancel`` only while the job can still be cancelled (a finished
    job's cancel is a 409)."""
    links = {"self": Link(href=base)}
    if job_status not in store.TERMINAL:
        links["cancel"] = Link(href=f"{base}/cancel")
    for name in ("events", "metrics", "artifacts"):
        links[name] = Link(href=f"{base}/{name}")
    return links


def _validate(body: JobCreate, settings, session, owner: str) -> dict:
    """Every name and hyperparameter is checked before the job is queued."""
    method_info(body.method)
    network_info(body.model)
    get_named_profile(body.hardware)  # a name, never a server path
    if body.dataset not in DATASETS:
        raise UnknownName(f"unknown dataset {body.dataset!r} (the API trains on built-in data "
                          "sets only)", sorted(DATASETS))  # fmt: skip
    valid_keys = sorted({*TrainConfig.__dataclass_fields__,
                         *method_info(body.method).config_type.__dataclass_fields__})  # fmt: skip
    if unknown := sorted(set(body.config) - set(valid_keys)):  # as split_config, with `valid`
        raise UnknownName(f"invalid config: unknown config key(s) {listed(unknown)}; valid "
                          f"keys: {', '.join(valid_keys)}", valid_keys)  # fmt: skip
    try:
        train, method_config = split_config(body.method, body.config)
        check_request(PruneRequest(body.method, body.model, config=body.config), method_config)
    except ValueError as error:
        raise HTTPException(422, f"invalid config: {error}") from None
    if train.threads is not None and train.threads > 64:
        raise HTTPException(422, "invalid config: threads must be <= 64")
    epochs = train.prune_epochs + train.finetune_epochs
    epochs += 0 if body.checkpoint else train.dense_epochs
    if epochs > settings.max_epochs:
        raise HTTPException(422, f"invalid config: {epochs} epochs in total exceeds this "
                                 f"service's limit of {settings.max_epochs}")  # fmt: skip
    request = body.model_dump(exclude={"idempotency_key"})
    if body.checkpoint:
        upload = session.get(Upload, body.checkpoint)
        if upload is None or upload.owner != owner:
            raise HTTPException(422, f"checkpoint {body.checkpoint!r} is not an upload of yours "
                                     "(POST /v1/uploads first)")  # fmt: skip
        if upload.model != body.model:
            raise HTTPException(422, f"checkpoint {body.checkpoint!r} holds {upload.model} "
                                     f"weights, not {body.model}")  # fmt: skip
        classes, wanted = upload_classes(upload.path, body.model), BUILTIN_CLASSES[body.dataset]
        if classes is not None and classes != wanted:
            raise HTTPException(422, f"checkpoint {body.checkpoint!r} has a {classes}-class "
                                     f"classifier; dataset {body.dataset!r} has {wanted} "
                                     f"classes (upload weights with {wanted})")  # fmt: skip
        request["checkpoint_path"] = upload.path
    if settings.job_threads and "threads" not in body.config:
        request["config"] = {**body.config, "threads": settings.job_threads}
    return request


def _replays(stored: dict, body: JobCreate, settings) -> bool:
    """Whether ``body`` is the request ``stored`` was made from (what :func:`_validate` added
    to it, the upload's path and the service's thread count, aside)."""
    submitted = {k: v for k, v in stored.items() if k != "checkpoint_path"}
    config = dict(submitted.get("config") or {})
    if settings.job_threads and "threads" not in body.config and \
            config.get("threads") == settings.job_threads:  # fmt: skip
        del config["threads"]  # the service's own, added at submission
    return {**submitted, "config": config} == body.model_dump(exclude={"idempotency_key"})


def check_queue_limit(session, settings, owner: str, idempotency_key: str | None) -> None:
    """429 when the owner already has ``max_queued_jobs`` jobs queued or running, unless the
    idempotency key names one of its jobs: a retry adds nothing, and gets that job back."""
    if store.by_idempotency_key(session, owner, idempotency_key) is not None:
        return
    if store.count_active(session, owner) >= settings.max_queued_jobs:
        raise HTTPException(429, f"you have {settings.max_queued_jobs} jobs queued or running, "
                                 "the limit; wait for some to finish")  # fmt: skip


@router.post("", status_code=status.HTTP_202_ACCEPTED,
             responses=documented(400, 409, 413, 422, 429))  # fmt: skip
def create_job(
    body: JobCreate, session: SessionDep, settings: SettingsDep, owner: OwnerDep,
    response: Response,
) -> JobPublic:
    """Queue a pruning job (202 + Location). A repeated idempotency key returns the same job."""
    existing = store.by_idempotency_key(session, owner, body.idempotency_key)
    if existing is not None and _replays(existing.request, body, settings):
        # before validating: the job's upload or profile may have been deleted since
        response.headers["Location"] = f"/v1/jobs/{existing.id}"
        return to_public(session, existing)
    request = _validate(body, settings, session, owner)
    check_queue_limit(session, settings, owner, body.idempotency_key)
    job, _created = store.create_job(session, owner, request, body.idempotency_key)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return to_public(session, job)


@router.get("")
def list_jobs(
    session: SessionDep, owner: OwnerDep,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> JobsPublic:
    """Your jobs, newest first, optionally filtered by status."""
    jobs, count = store.list_jobs(session, owner, status_filter, limit, offset)
    return JobsPublic(data=[to_public(session, j) for j in jobs], count=count, limit=limit,
                      offset=offset)  # fmt: skip


@router.get("/{job_id}", responses=NOT_FOUND)
def get_job(job_id: str, session: SessionDep, owner: OwnerDep) -> JobPublic:
    """One job with its transitions, progress, result summary and links."""
    return to_public(session, store.get_job(session, owner, job_id))


@router.post("/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED,
             responses=documented(404, 409))  # fmt: skip
def cancel_job(job_id: str, session: SessionDep, owner: OwnerDep) -> JobPublic:
    """Cancel: a queued job at once, a running one within seconds (via ``cancelling``)."""
    job = store.cancel_job(session, owner, job_id, "cancel requested through the API")
    return to_public(session, job)


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT,
               responses=documented(404, 409))  # fmt: skip
def delete_job(job_id: str, session: SessionDep, owner: OwnerDep, settings: SettingsDep) -> None:
    """Delete a finished job with its events, metrics and artifacts (409 if not finished)."""
    store.delete_job(session, owner, job_id, settings.artifacts)


def _sse(event) -> str:
    """One server-sent event; its data strict JSON, also for an event stored with NaN."""
    payload = json.dumps({"id": event.id, "type": event.type, "data": store.finite(event.data),
                          "at": store.timestamp(event.at)}, allow_nan=False)  # fmt: skip
    return f"id: {event.id}\nevent: {event.type}\ndata: {payload}\n\n"


@router.get("/{job_id}/events", responses={**NOT_FOUND, 200: {
    "description": "JSON list, or with follow=true a text/event-stream until the job ends",
    "content": {"text/event-stream": {}}}})  # fmt: skip
async def job_events(
    job_id: str, request: Request, owner: OwnerDep,
    after: Annotated[int, Query(ge=0, le=2**62, description="only events after this id")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    follow: bool = False,
) -> EventsPublic:
    """Training events (steps, epochs, decisions); ``follow=true`` streams server-sent events
    until the job ends."""
    sessions = request.app.state.sessions

    def fetch(after_id: int) -> tuple[list, str]:
        with sessions() as session:
            job = store.get_job(session, owner, job_id)
            return store.events_after(session, job_id, after_id, limit), job.status

    events, job_status = await run_in_threadpool(fetch, after)
    if not follow:
        data = [EventPublic(id=e.id, type=e.type, data=e.data, at=e.at) for e in events]
        return EventsPublic(data=data, count=len(data))

    async def stream():
        last, current, batch, idle = after, job_status, events, 0.0
        while True:
            for event in batch:
                last = event.id
                yield _sse(event)
            if current in store.TERMINAL and not batch:
                end = json.dumps({"status": current})
                yield f"event: end\ndata: {end}\n\n"
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.5)
            idle = 0.0 if batch else idle + 0.5
            if idle >= 15:
                idle = 0.0
                yield ": keep-alive\n\n"
            try:
                batch, current = await run_in_threadpool(fetch, last)
            except store.JobNotFound:  # deleted while followed: the response has started
                yield 'event: end\ndata: {"status": "deleted"}\n\n'
                return

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})  # fmt: skip


@router.get("/{job_id}/metrics", responses=NOT_FOUND)
def job_metrics(job_id: str, session: SessionDep, owner: OwnerDep) -> MetricsPublic:
    """Time series per metric (loss, accuracies, per-layer sparsity) by step and epoch."""
    store.get_job(session, owner, job_id)
    return MetricsPublic(job_id=job_id, series=store.metrics(session, job_id))


@router.get("/{job_id}/artifacts", responses=NOT_FOUND)
def list_artifacts(job_id: str, session: SessionDep, owner: OwnerDep) -> ArtifactsPublic:
    """Files the job wrote: weights, manifest, report, plots, events, checkpoint."""
    store.get_job(session, owner, job_id)
    rows = store.artifacts(session, job_id)
    data = [ArtifactPublic(name=a.name, size=a.size, media_type=a.media_type,
                           href=f"/v1/jobs/{job_id}/artifacts/{a.name}") for a in rows]  # fmt: skip
    return ArtifactsPublic(data=data, count=len(data))


BINARY = {200: {"content": {"application/octet-stream": {}}}}


@router.get("/{job_id}/artifacts/{name}", response_class=FileResponse,
            responses={**NOT_FOUND, **BINARY})  # fmt: skip
def get_artifact(
    job_id: str, name: str, session: SessionDep, owner: OwnerDep, settings: SettingsDep
) -> FileResponse:
    """Download one artifact by its listed name (no paths: names only)."""
    store.get_job(session, owner, job_id)
    known = {a.name: a for a in store.artifacts(session, job_id)}
    if name not in known:
        raise UnknownName(f"job {job_id} has no artifact {name!r}", sorted(known), 404)
    path = settings.artifacts.path(job_id, name)
    if path is None:
        raise HTTPException(404, f"artifact {name!r} is missing from the artifact store")
    return FileResponse(path, media_type=known[name].media_type, filename=name)
