"""Domain errors mapped to HTTP in one place: every error body is ``ErrorPublic`` JSON."""

from __future__ import annotations

import logging

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from model.networks import UnknownNetworkError
from model.pruning import UnknownMethodError
from perfmodel import ProfileError, UnknownProfileError
from perfmodel.onnx_import import OnnxImportError
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

    @app.exception_handler(UnknownProfileError)
    async def _profile(_request: Request, error: UnknownProfileError) -> JSONResponse:
        return _error(422, str(error), valid=error.valid)

    @app.exception_handler(UnknownNetworkError)
    async def _network(_request: Request, error: UnknownNetworkError) -> JSONResponse:
        return _error(422, str(error), valid=error.valid)

    @app.exception_handler(UnknownMethodError)
    async def _method(_request: Request, error: UnknownMethodError) -> JSONResponse:
        return _error(422, str(error), valid=error.valid)

    @app.exception_handler(ProfileError)
    async def _bad_profile(_request: Request, error: ProfileError) -> JSONResponse:
        return _error(422, str(error))

    @app.exception_handler(OnnxImportError)
    async def _onnx(_request: Request, error: OnnxImportError) -> JSONResponse:
        return _error(422, str(error))

    @app.exception_handler(JobNotFound)
    async def _not_found(_request: Request, error: JobNotFound) -> JSONResponse:
        return _error(404, str(error))

    @app.exception_handler(InvalidTransition)
    async def _conflict(_request: Request, error: InvalidTransition) -> JSONResponse:
        return _error(409, str(error))

    @app.exception_handler(IdempotencyConflictError)
    async def _idempotency(_request: Request, error: IdempotencyConflictError) -> JSONResponse:
        return _error(409, str(error))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=error)
        return _error(500, "internal error; the server log has the details")
