"""Sweet spots: the performance model's per-layer answer, as ``sweetspot predict --json``."""

from __future__ import annotations

import json
import re
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from model.analysis import network_layers
from perfmodel import HardwareProfile, get_profile, predict_network
from perfmodel.hardware import NAME_PATTERN
from perfmodel.onnx_import import layers_from_onnx, load_onnx
from service.api.deps import SettingsDep
from service.api.errors import UnknownName
from service.api.schemas import (
    MAX_BATCH,
    ErrorPublic,
    PredictionPublic,
    SweetSpotRequest,
    _bounded,
)
from service.uploads import read_limited

router = APIRouter(prefix="/sweet-spots", tags=["sweet-spots"])
ERRORS = {422: {"model": ErrorPublic}, 413: {"model": ErrorPublic}}
PREDICTION = {200: {"model": PredictionPublic, "description": "per-layer predictions"}}


def _profile(hardware: str | HardwareProfile) -> HardwareProfile:
    if isinstance(hardware, HardwareProfile):
        return hardware
    if not re.match(NAME_PATTERN, hardware):  # names only: never read server paths
        raise UnknownName(f"unknown hardware profile {hardware!r}", _names())
    return get_profile(hardware)


def _names() -> list[str]:
    from perfmodel import profile_names

    return profile_names()


def _json(data: dict) -> Response:
    return Response(json.dumps(data, ensure_ascii=False), media_type="application/json")


_PREDICTIONS: dict[tuple[str, HardwareProfile, int], bytes] = {}
_MAX_CACHED = 512


def predict_builtin(model: str, hardware: HardwareProfile, batch: int) -> bytes:
    """Predictions of a built-in network as JSON bytes, cached by value: a profile is frozen
    and hashable, so an edited profile is a different key."""
    key = (model, hardware, batch)
    body = _PREDICTIONS.get(key)
    if body is None:
        prediction = predict_network(network_layers(model, batch), hardware, name=model,
                                     batch=batch)  # fmt: skip
        body = json.dumps(prediction.to_dict(), ensure_ascii=False).encode()
        if len(_PREDICTIONS) >= _MAX_CACHED:
            _PREDICTIONS.clear()
        _PREDICTIONS[key] = body
    return body


def clear_cache() -> None:
    _PREDICTIONS.clear()


@router.get("", responses={**PREDICTION, **ERRORS}, response_class=Response)
async def get_sweet_spots(
    model: Annotated[str, Query(min_length=1, max_length=64, description="built-in network")],
    hardware: Annotated[str, Query(max_length=64, pattern=NAME_PATTERN,
                                   description="hardware profile name")],
    batch: Annotated[int, Query(ge=1, le=MAX_BATCH)] = 1,
) -> Response:
    """Per-layer sweet spots of a built-in network on a hardware profile."""
    profile = _profile(hardware)
    body = _PREDICTIONS.get((model, profile, batch))  # the hot path: no thread hop
    if body is None:
        await run_in_threadpool(network_layers, model)  # unknown names fail before any work
        body = await run_in_threadpool(predict_builtin, model, profile, batch)
    return Response(body, media_type="application/json")


@router.post("", responses={**PREDICTION, **ERRORS}, response_class=Response)
def post_sweet_spots(body: SweetSpotRequest) -> Response:
    """Per-layer sweet spots of a built-in network or of given layer specs, on a named or an
    inline hardware profile."""
    profile = _profile(body.hardware)
    if body.model is not None:
        network_layers(body.model)
        return Response(predict_builtin(body.model, profile, body.batch),
                        media_type="application/json")  # fmt: skip
    try:
        prediction = predict_network(body.layers, profile, name="custom", batch=body.batch)
    except ValueError as error:  # duplicate layer names
        raise UnknownName(str(error), [], 422) from None
    return _json(prediction.to_dict())


@router.post("/onnx", responses={**PREDICTION, **ERRORS}, response_class=Response)
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
        import onnx

        model = load_onnx(data)
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as error:
            from perfmodel.onnx_import import OnnxImportError

            raise OnnxImportError(f"the ONNX checker rejected the model: {error}") from None
        layers = [_bounded(layer) for layer in layers_from_onnx(data, batch=batch)]
        return predict_network(layers, profile, name=file.filename or "upload.onnx",
                               batch=batch).to_dict()  # fmt: skip

    try:
        return _json(await run_in_threadpool(work))
    except ValueError as error:
        from perfmodel.onnx_import import OnnxImportError

        if isinstance(error, OnnxImportError):
            raise
        raise OnnxImportError(str(error)) from None
