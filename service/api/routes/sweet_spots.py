"""Sweet spots: the performance model's per-layer answer, as ``sweetspot predict --json``."""

from __future__ import annotations

import json
import os
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from model.analysis import network_layers
from perfmodel import HardwareProfile, get_named_profile, predict_network
from perfmodel.hardware import NAME_PATTERN
from perfmodel.onnx_import import check_onnx, layers_from_onnx, load_onnx
from service.api.deps import SettingsDep
from service.api.errors import documented
from service.api.schemas import (
    MAX_BATCH,
    MAX_LAYERS,
    PredictionPublic,
    SweetSpotRequest,
    _bounded,
)
from service.uploads import read_limited

router = APIRouter(prefix="/sweet-spots", tags=["sweet-spots"])
ERRORS = documented(413, 422)
PREDICTION = {200: {"model": PredictionPublic, "description": "per-layer predictions"}}


def _profile(hardware: str | HardwareProfile) -> HardwareProfile:
    """An inline profile, or a profile NAME (built-in or saved): never a server path."""
    if isinstance(hardware, HardwareProfile):
        return hardware
    return get_named_profile(hardware)


def _dumps(data: dict) -> bytes:
    """``data`` as strict JSON. Profiles and layer specs are bounded so that predictions stay
    finite; should one still hold NaN or infinity (which ``json.dumps`` would write as the
    invalid tokens ``NaN``/``Infinity``), the request gets a 422 instead of such a body."""
    try:
        return json.dumps(data, ensure_ascii=False, allow_nan=False).encode()
    except ValueError:
        raise HTTPException(422, "the prediction is not finite for this profile and these "
                                 "layers (values beyond any real machine or network)") from None


def _json(data: dict) -> Response:
    return Response(_dumps(data), media_type="application/json")


_PREDICTIONS: dict[tuple[str, HardwareProfile, int], bytes] = {}
_MAX_CACHED = 512


def predict_builtin(model: str, hardware: HardwareProfile, batch: int) -> bytes:
    """Predictions of a built-in network as JSON bytes, cached by value: a profile is frozen
    and hashable, so an edited profile is a different key."""
    key = (model, hardware, batch)
    body = _PREDICTIONS.get(key)
    if body is None:
        prediction = predict_network(network_layers(model, batch), hardware, name=model,
                                     batch=batch, model="auto")  # fmt: skip
        body = _dumps(prediction.to_dict())
        if len(_PREDICTIONS) >= _MAX_CACHED:
            _PREDICTIONS.clear()
        _PREDICTIONS[key] = body
    return body


def clear_cache() -> None:
    _PREDICTIONS.clear()
    _BY_QUERY.clear()


ROUTE_LABEL = "sweetspot.route"
"""Scope key naming the route template of a request answered before routing (metrics)."""
_FAST_ROUTE = "/v1/sweet-spots"

# Answers by raw query string, for the fast path below: (body, profile file, its mtime).
_BY_QUERY: dict[bytes, tuple[bytes, str, int]] = {}


def _remember(query: bytes, hardware: str, body: bytes) -> None:
    from perfmodel.hardware import _profile_files

    path = _profile_files().get(hardware)
    if path is not None and len(_BY_QUERY) < _MAX_CACHED:
        _BY_QUERY[query] = (body, str(path), os.stat(path).st_mtime_ns)


class CachedSweetSpots:
    """ASGI fast path for repeated ``GET /v1/sweet-spots`` queries (measured by
    ``sweetspot bench api``): a query string answered before, with its profile file unchanged
    and the caller authorised, is served from memory without routing, validation or a
    thread hop. Everything else goes to the app."""

    def __init__(self, app, tokens: frozenset[str]):
        self.app = app
        self.tokens = {f"Bearer {t}".encode() for t in tokens}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "GET" and \
                scope["path"] == _FAST_ROUTE:  # fmt: skip
            entry = _BY_QUERY.get(scope["query_string"])
            if entry is not None and self._authorised(scope) and _fresh(entry):
                scope[ROUTE_LABEL] = _FAST_ROUTE
                await send({"type": "http.response.start", "status": 200, "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(entry[0])).encode())]})  # fmt: skip
                await send({"type": "http.response.body", "body": entry[0]})
                return
        await self.app(scope, receive, send)

    def _authorised(self, scope) -> bool:
        if not self.tokens:
            return True
        return any(k == b"authorization" and v in self.tokens for k, v in scope["headers"])


def _fresh(entry: tuple[bytes, str, int]) -> bool:
    try:
        return os.stat(entry[1]).st_mtime_ns == entry[2]
    except OSError:
        return False


@router.get("", responses={**PREDICTION, **ERRORS}, response_class=Response)
async def get_sweet_spots(
    request: Request,
    model: Annotated[str, Query(min_length=1, max_length=64, description="built-in network")],
    hardware: Annotated[str, Query(max_length=64, pattern=NAME_PATTERN,
                                   description="hardware profile name")],
    batch: Annotated[int, Query(ge=1, le=MAX_BATCH)] = 1,
) -> Response:
    """Per-layer sweet spots of a built-in network on a hardware profile."""
    profile = _profile(hardware)
    body = _PREDICTIONS.get((model, profile, batch))
    if body is None:
        await run_in_threadpool(network_layers, model)  # unknown names fail before any work
        body = await run_in_threadpool(predict_builtin, model, profile, batch)
    _remember(request.scope["query_string"], hardware, body)
    return Response(body, media_type="application/json")


@router.post("", responses={**PREDICTION, **documented(400, 413, 422)},
             response_class=Response)  # fmt: skip
def post_sweet_spots(body: SweetSpotRequest) -> Response:
    """Per-layer sweet spots of a built-in network or of given layer specs, on a named or an
    inline hardware profile."""
    profile = _profile(body.hardware)
    if body.model is not None:
        network_layers(body.model)
        return Response(predict_builtin(body.model, profile, body.batch or 1),
                        media_type="application/json")  # fmt: skip
    try:
        prediction = predict_network(body.layers, profile, name="custom", batch=body.batch,
                                     model="auto")  # fmt: skip
    except ValueError as error:  # duplicate layer names
        raise HTTPException(422, str(error)) from None
    return _json(prediction.to_dict())


@router.post("/onnx", responses={**PREDICTION, **documented(400, 413, 422)},
             response_class=Response)  # fmt: skip
async def post_sweet_spots_onnx(
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="an ONNX model")],
    hardware: Annotated[str, Form(max_length=64, pattern=NAME_PATTERN)],
    batch: Annotated[int, Form(ge=1, le=MAX_BATCH)] = 1,
) -> Response:
    """Per-layer sweet spots of an uploaded ONNX model (checked, never executed)."""
    profile = _profile(hardware)
    data = await read_limited(file, settings.max_upload_bytes)

    def work() -> dict:
        check_onnx(load_onnx(data))  # weights stored as external data need not come along
        layers = [_bounded(layer) for layer in layers_from_onnx(data, batch=batch)]
        if len(layers) > MAX_LAYERS:
            raise ValueError(f"the model has {len(layers)} Conv, Gemm and MatMul layers; a "
                             f"request may have at most {MAX_LAYERS}")  # fmt: skip
        return predict_network(layers, profile, name=file.filename or "upload.onnx",
                               batch=batch, model="auto").to_dict()  # fmt: skip

    try:
        return _json(await run_in_threadpool(work))
    except ValueError as error:
        from perfmodel.onnx_import import OnnxImportError

        if isinstance(error, OnnxImportError):
            raise
        raise OnnxImportError(str(error)) from None
