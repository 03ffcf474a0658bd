"""Health, version and Prometheus metrics (outside the /v1 prefix)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.schemas import HealthPublic, VersionPublic
from service.version import package_version as _version

router = APIRouter(tags=["ops"])


@router.get("/healthz")
def healthz() -> HealthPublic:
    """Liveness: the process answers (never needs a token)."""
    return HealthPublic(status="ok")


@router.get("/version")
def version() -> VersionPublic:
    """The installed Sweetspot version and the API version."""
    return VersionPublic(version=_version(), api="v1")


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request) -> Response:
    """Prometheus metrics: HTTP requests and latencies, jobs by status."""
    request.app.state.observe_jobs()
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
