"""The FastAPI application: routers under /v1, errors, metrics, the lost-job monitor.

CPU-heavy work never runs here: jobs are run by worker processes (``service.worker``); the
API only validates, records and reports. A background thread resolves jobs whose worker died
(requeue once from their checkpoint, or fail), so no job is left ``running`` forever even when
no worker is alive.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.routing import Mount

from service import jobs as store
from service import web
from service.api import errors
from service.api.body_limit import BodyLimit
from service.api.deps import get_owner
from service.api.routes import catalogue, hardware, jobs, ops, sweet_spots, uploads
from service.api.routes.sweet_spots import ROUTE_LABEL
from service.db import make_engine, make_sessionmaker, migrate
from service.settings import Settings

log = logging.getLogger("sweetspot.api")
UPLOAD_PATHS = frozenset({"/v1/uploads", "/v1/sweet-spots/onnx"})
"""Routes that take a file: their bodies may be ``max_upload_bytes``, others ``max_body_bytes``."""


def _operation_id(route: APIRoute) -> str:
    """Stable operation ids (``jobs-create_job``) so generated clients read well."""
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def _monitor(app: FastAPI, stop: threading.Event) -> None:
    settings: Settings = app.state.settings
    while not stop.wait(settings.heartbeat_s):
        try:
            with app.state.sessions() as session:
                for job_id, action in store.recover_lost(
                    session, settings.stale_after_s, settings.lost_job_policy
                ):
                    log.warning("job %s lost its worker: %s", job_id, action)
        except Exception:
            log.exception("lost-job monitor failed; retrying")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the database is migrated and the monitor started on startup."""
    settings = (settings or Settings()).prepare()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Everything imported so far (torch, models, registries) lives for the whole process:
        # move it out of the collector's sight, or each full collection walks millions of
        # objects and stalls every request for hundreds of milliseconds (see bench api).
        gc.collect()
        gc.freeze()
        stop = threading.Event()
        thread = threading.Thread(target=_monitor, args=(app, stop), daemon=True)
        thread.start()
        yield
        stop.set()
        thread.join(timeout=5)
        app.state.engine.dispose()

    # FastAPI's /docs and /redoc pages load Swagger UI and ReDoc from a CDN, blank on an
    # offline host; fastapi-offline serves the same pages from bundled files.
    app = FastAPIOffline(
        title="Sweetspot",
        version="1",
        summary="Per-layer sparse-vs-dense sweet spots and pruning jobs.",
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
        responses=errors.documented(500),
    )
    engine = make_engine(settings.url)
    migrate(engine)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = make_sessionmaker(engine)
    app.add_middleware(BodyLimit, max_upload_bytes=settings.max_upload_bytes,
                       max_body_bytes=settings.max_body_bytes,
                       upload_paths=UPLOAD_PATHS)  # fmt: skip
    app.add_middleware(sweet_spots.CachedSweetSpots, tokens=settings.tokens)
    prefixes: dict[int, str] = {}  # id(route) → the prefix its router was included under
    _install_metrics(app, prefixes)  # added last: outermost, so it also counts the fast path
    errors.install(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=[o.strip() for o in settings.cors_origins.split(",") if o.strip()],
            allow_methods=["*"], allow_headers=["*"],
        )  # fmt: skip

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(get_owner)],
                   responses=errors.documented(401) if settings.tokens else None)  # fmt: skip
    for module in (sweet_spots, hardware, catalogue, jobs, uploads):
        v1.include_router(module.router)
        prefixes.update((id(route), v1.prefix) for route in module.router.routes)
    app.include_router(v1)
    app.include_router(ops.router)
    web.mount(app)  # the page at / (service/web)
    return app


def _install_metrics(app: FastAPI, prefixes: dict[int, str]) -> None:
    registry = CollectorRegistry()
    requests = Counter("sweetspot_http_requests_total", "HTTP requests",
                       ["method", "route", "status"], registry=registry)  # fmt: skip
    latency = Histogram("sweetspot_http_request_seconds", "HTTP request latency",
                        ["method", "route"], registry=registry)  # fmt: skip
    job_gauge = Gauge("sweetspot_jobs", "jobs by status", ["status"], registry=registry)
    app.state.registry = registry

    def observe_jobs() -> None:
        with app.state.sessions() as session:
            for status, count in store.status_counts(session).items():
                job_gauge.labels(status=status).set(count)

    app.state.observe_jobs = observe_jobs
    app.add_middleware(MetricsMiddleware, requests=requests, latency=latency, prefixes=prefixes,
                       routes=app.router.routes)  # fmt: skip


class MetricsMiddleware:
    """Counts requests and observes latency per route template, the full path as clients
    use it (``/v1/jobs/{job_id}``), ``<mount>/*`` for files of a mounted folder (the page's
    ``/web/*``), ``unmatched`` for paths nothing serves (a plain ASGI middleware: no
    per-request task or body copy, unlike ``@app.middleware("http")``).

    FastAPI may hand the router's own route (``/jobs/{job_id}``) as ``scope["route"]``;
    ``prefixes`` maps such routes to the prefix they were included under. Requests answered
    before routing (the cached sweet-spot fast path) name their route in
    ``scope[ROUTE_LABEL]``."""

    def __init__(self, app, requests: Counter, latency: Histogram, prefixes: dict[int, str],
                 routes: list):  # fmt: skip
        self.app = app
        self.requests = requests
        self.latency = latency
        self.prefixes = prefixes
        self.routes = routes  # the app's, read per request: mounts are added after this

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_and_record(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            path = scope.get(ROUTE_LABEL) or self._template(scope.get("route"), scope)
            method = scope.get("method", "")
            self.latency.labels(method, path).observe(time.perf_counter() - start)
            self.requests.labels(method, path, str(status["code"])).inc()

    def _template(self, route, scope) -> str:
        path = getattr(route, "path_format", None) or getattr(route, "path", None)
        if path is None:
            requested = scope.get("path", "")
            for mount in self.routes:
                if isinstance(mount, Mount) and requested.startswith(mount.path + "/"):
                    return f"{mount.path}/*"
            return "unmatched"
        return self.prefixes.get(id(route), "") + path
