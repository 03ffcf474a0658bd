"""Domain errors mapped to HTTP in one place: every error body is ``ErrorPublic`` JSON."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from model.networks import UnknownNetworkError
from model.pruning import UnknownMethodError
from perfmodel import ProfileError, UnknownProfileError
from perfmodel.onnx_import import OnnxImportError
from service.api.schemas import ErrorPublic
from service.jobs import IdempotencyConflictError, InvalidTransition, JobNotFound

log = logging.getLogger("sweetspot.api")


class UnknownName(LookupError):  # noqa: N818
    """A name in a request that does not exist; ``valid`` lists those that do."""

    def __init__(self, message: str, valid: list[str], status_code: int = 422):
        super().__init__(message)
        self.valid = valid
        self.status_code = status_code


def _error(status_code: int, detail: str, **extra) -> JSONResponse:
    body = {"detail": detail, **{k: v for k, v in extra.items() if v is not None}}
    return JSONResponse(body, status_code=status_code)


def _location(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "form", "header")]
    return ".".join(parts) or "request"


STATUS: dict[type[Exception], int] = {
    UnknownProfileError: 422,  # names in a request: the body lists the valid ones
    UnknownNetworkError: 422,
    UnknownMethodError: 422,
    ProfileError: 422,
    OnnxImportError: 422,
    JobNotFound: 404,
    InvalidTransition: 409,
    IdempotencyConflictError: 409,
}
"""Domain errors and their HTTP status; anything with a ``valid`` list gets it in the body."""


WHEN: dict[int, str] = {
    400: "the body could not be parsed (a malformed multipart form, JSON nested too deeply)",
    401: "no valid API token (only when the service has tokens configured)",
    403: "the resource is not yours to change (a hardware profile another caller created)",
    404: "no such resource of yours; `valid` lists the names that exist, where useful",
    409: "the request conflicts with the resource's current state",
    413: "the request body (or the uploaded file) is over this service's limit",
    422: "invalid request: `errors` locates each problem of a body or query that failed "
         "validation; an unknown name lists the `valid` ones",
    429: "over one of your limits: jobs queued or running, or uploads stored",
    500: "an unexpected error (the server log has the details)",
}
"""What each error status means; every one of them has an ``ErrorPublic`` body."""


def documented(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, with the body they really have
    (``ErrorPublic``, not FastAPI's default ``HTTPValidationError`` for 422)."""
    responses: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorPublic, "description": WHEN[code]} for code in codes
    }
    if 401 in responses:
        responses[401]["headers"] = {"WWW-Authenticate": {
            "description": "`Bearer`: the scheme to authenticate with",
            "schema": {"type": "string"}}}  # fmt: skip
    return responses


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, error: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in error.errors()
        ]
        summary = "; ".join(f"{_location(tuple(e['loc']))}: {e['msg']}" for e in errors[:5])
        return _error(422, f"invalid request: {summary}", errors=errors)

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, error: HTTPException) -> JSONResponse:
        response = _error(error.status_code, str(error.detail))
        for key, value in (error.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(UnknownName)
    async def _unknown(_request: Request, error: UnknownName) -> JSONResponse:
        return _error(error.status_code, str(error), valid=error.valid)

    async def _domain(_request: Request, error: Exception) -> JSONResponse:
        status = next(STATUS[t] for t in type(error).__mro__ if t in STATUS)  # subclasses too
        return _error(status, str(error), valid=getattr(error, "valid", None))

    for error_type in STATUS:
        app.add_exception_handler(error_type, _domain)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=error)
        return _error(500, "internal error; the server log has the details")
