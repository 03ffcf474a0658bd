"""Request and response schemas of the REST API, in families named by role.

``JobCreate`` (input), ``JobPublic`` (output), ``JobsPublic`` (list envelope), and likewise for
sweet spots, profiles, uploads and the catalogue. Limits that stop absurd work before it
starts live here: the API never lets a request trigger unbounded work.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from perfmodel.hardware import NAME_PATTERN, HardwareProfile
from perfmodel.layers import Conv2dSpec, LinearSpec

MAX_BATCH = 65_536
MAX_LAYERS = 1_000
"""Layers per sweet-spot request (``layers``, or an ONNX upload's). The refined model of a
calibrated profile costs about 0.8 ms a layer on the 2-core development machine (the paper's
0.1 ms): through ``POST /v1/sweet-spots`` 1,000 layers take 0.9 s there (3.5 s before its
geometry was cached). Real networks have far fewer (ResNet-152: 155 convolution and linear
layers)."""
MAX_DIM = 1_000_000  # channels, features or pixels along one side
MAX_FLOPS = 10**18  # one layer: beyond any real network


class FieldErrorPublic(BaseModel):
    """One problem of an invalid request: where (``loc``, e.g. ``["body", "config"]``), what."""

    loc: list[str]
    msg: str
    type: str


class ErrorPublic(BaseModel):
    """Every 4xx/5xx body: what was wrong, and (where useful) what is allowed."""

    detail: str = Field(description="what was wrong, in one line")
    valid: list[str] | None = Field(None, description="the names that exist, for an unknown one")
    errors: list[FieldErrorPublic] | None = Field(
        None, description="each problem of a request that failed validation (422)"
    )


class Link(BaseModel):
    href: str


# ------------------------------------------------------------------------- sweet spots


def _bounded(layer: Conv2dSpec | LinearSpec) -> Conv2dSpec | LinearSpec:
    dims = (
        [layer.in_channels, layer.out_channels, layer.in_height, layer.in_width,
         *layer.kernel, *layer.stride, *layer.padding, *layer.end_padding, *layer.dilation]
        if isinstance(layer, Conv2dSpec)
        else [layer.in_features, layer.out_features]
    )  # fmt: skip
    if max(dims) > MAX_DIM or max(layer.batch, layer.per_example) > MAX_BATCH:
        raise ValueError(
            f"layer {layer.name!r}: sizes (channels, features, image, kernel, stride, padding, "
            f"dilation) are limited to {MAX_DIM}, batch and per_example to {MAX_BATCH}"
        )
    if layer.flops > MAX_FLOPS:
        raise ValueError(f"layer {layer.name!r}: {layer.flops:.3g} FLOPs exceeds {MAX_FLOPS:g}")
    return layer


BoundedLayer = Annotated[Conv2dSpec | LinearSpec, Field(discriminator="kind")]


class SweetSpotRequest(BaseModel):
    """Either ``model`` (a built-in name) or ``layers``; ``hardware`` a name or a profile."""

    model_config = ConfigDict(extra="forbid")

    hardware: str | HardwareProfile = Field(
        description="profile name (GET /v1/hardware) or an inline profile object"
    )
    model: str | None = Field(None, description="built-in network name (GET /v1/models)")
    layers: list[BoundedLayer] | None = Field(
        None, max_length=MAX_LAYERS,
        description=f"layer specs (kind conv2d or linear), at most {MAX_LAYERS}",
    )
    batch: int | None = Field(
        None, ge=1, le=MAX_BATCH, description="the network's batch; default 1 for a model, "
        "and the layers' own for layer specs",
    )  # fmt: skip

    @field_validator("layers")
    @classmethod
    def _bounded_layers(cls, layers: list | None) -> list | None:
        if layers is not None:
            for layer in layers:
                _bounded(layer)
            if not layers:
                raise ValueError("layers must not be empty")
        return layers

    @model_validator(mode="after")
    def _one_source(self) -> SweetSpotRequest:
        if (self.model is None) == (self.layers is None):
            raise ValueError("give exactly one of 'model' or 'layers'")
        return self


class SweetSpotPublic(BaseModel):
    """One sweet spot: the range in which sparse beats dense, and the speedup at its top."""

    min_sparsity: float = Field(description="break-even: below it sparse is slower than dense")
    max_sparsity: float = Field(
        description="saturation: past it the kernel is memory bound and more sparsity saves "
        "only weight traffic (1.0 where it never turns memory bound)"
    )
    max_speedup: float = Field(
        description="the predicted speedup at max_sparsity; past it the speedup still grows, "
        "slowly, by the weights' share of the memory traffic"
    )


class LayerPredictionPublic(BaseModel):
    name: str
    kind: str
    shape: str
    flops: int
    activation_bytes: int
    weight_bytes: int
    dense_time_s: float
    bound: Literal["compute", "memory"]
    sweet_spot: SweetSpotPublic | None
    speedup: dict[str, float]
    recommendation: Literal["sparse", "dense"]
    reason: str
    spec: dict[str, Any]


class PredictionTotals(BaseModel):
    flops: int
    weight_bytes: int
    dense_time_s: float
    sparse_layers: int
    speedup: dict[str, float]


class PredictionPublic(BaseModel):
    """Same JSON as ``sweetspot predict --json``."""

    model: str
    hardware: str
    batch: int
    performance_model: str
    layers: list[LayerPredictionPublic]
    totals: PredictionTotals


# ---------------------------------------------------------------------------- hardware


class ProfilesPublic(BaseModel):
    data: list[HardwareProfile]
    count: int
    builtin: list[str] = Field(
        default_factory=list, description="names of the shipped profiles (never deleted)"
    )


# ---------------------------------------------------------------------------- catalogue


class ModelPublic(BaseModel):
    name: str
    input_shape: list[int]
    num_classes: int
    paper: str


class DatasetPublic(BaseModel):
    name: str
    description: str


class ParameterPublic(BaseModel):
    name: str
    default: Any
    scope: Literal["train", "method"]


class MethodPublic(BaseModel):
    name: str
    summary: str
    parameters: list[ParameterPublic]


class CataloguePublic(BaseModel):
    models: list[ModelPublic]
    datasets: list[DatasetPublic]
    methods: list[MethodPublic]


# -------------------------------------------------------------------------------- jobs

JobStatus = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
NOT_FINITE = "a number that was not finite (NaN or infinity: a diverged loss, a speedup that " \
             "could not be measured) is null"


class JobCreate(BaseModel):
    """A pruning job: what ``sweetspot prune`` takes, as JSON."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field("gsl", max_length=64, description="GET /v1/methods")
    model: str = Field(max_length=64, description="built-in network name")
    dataset: str = Field("digits", max_length=64, description="built-in data set name")
    hardware: str = Field("xeon-e5-2697v4", max_length=64, pattern=NAME_PATTERN)
    config: dict[str, Any] = Field(
        default_factory=dict, description="trainer and method hyperparameters, e.g. epochs "
        "(numbers must be finite)"
    )
    checkpoint: str | None = Field(
        None, min_length=1, max_length=64,
        description="id of a checkpoint uploaded with POST /v1/uploads",
    )
    measure: bool = Field(True, description="time the pruned model against dense")
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)

    @field_validator("config")
    @classmethod
    def _finite_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Python's JSON parser takes ``NaN``, ``Infinity`` and ``1e999``; a job is refused
        them, rather than stored and trained with them."""
        if (where := _not_finite(config)) is not None:
            raise ValueError(f"config{where} is not a finite number")
        return config


def _not_finite(value: Any, where: str = "") -> str | None:
    """Where in ``value`` (``.lr``, ``.layers[2]``) a float is NaN or infinite, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else where
    if isinstance(value, dict):
        items = [(f"{where}.{key}", item) for key, item in value.items()]
    elif isinstance(value, list):
        items = [(f"{where}[{index}]", item) for index, item in enumerate(value)]
    else:
        return None
    for path, item in items:
        if (found := _not_finite(item, path)) is not None:
            return found
    return None


class CalibrationCreate(BaseModel):
    """Calibrate the workers' host: microbenchmarks, fit, and a new profile under ``name``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("host", max_length=64, pattern=NAME_PATTERN,
                      description="profile to write (must not be a built-in one)")  # fmt: skip
    quick: bool = Field(True, description="the ≤ 60 s plan instead of the ≤ 3 min one")
    threads: int | None = Field(None, ge=1, le=64, description="threads to calibrate for")
    replace: bool = Field(
        False, description="replace the custom profile ``name`` if it exists (else: 409, as "
        "POST /v1/hardware)"
    )
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)


class TransitionPublic(BaseModel):
    from_status: JobStatus | None
    to_status: JobStatus
    reason: str
    at: datetime


class JobPublic(BaseModel):
    id: str
    status: JobStatus
    status_reason: str
    request: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: float
    attempts: int
    worker_id: str | None
    result: dict[str, Any] | None = Field(
        description=f"summary of a finished job (accuracy, speedups per layer); {NOT_FINITE}"
    )
    transitions: list[TransitionPublic]
    links: dict[str, Link] = Field(
        description="self, events, metrics, artifacts; cancel only while the job is queued, "
        "running or cancelling"
    )


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int
    limit: int
    offset: int


class EventPublic(BaseModel):
    id: int
    type: str
    data: dict[str, Any] = Field(description=f"the event as the trainer reported it; {NOT_FINITE}")
    at: datetime


class EventsPublic(BaseModel):
    data: list[EventPublic]
    count: int


class MetricPoint(BaseModel):
    """One point of a series; points whose value was not finite (a diverged loss) are left out."""

    step: int
    epoch: int
    phase: str
    value: float
    time: str


class MetricsPublic(BaseModel):
    job_id: str
    series: dict[str, list[MetricPoint]]


class ArtifactPublic(BaseModel):
    name: str
    size: int
    media_type: str
    href: str


class ArtifactsPublic(BaseModel):
    data: list[ArtifactPublic]
    count: int


class UploadPublic(BaseModel):
    id: str
    kind: Literal["checkpoint"]
    model: str
    filename: str
    size: int
    created_at: datetime


class UploadsPublic(BaseModel):
    data: list[UploadPublic]
    count: int


class HealthPublic(BaseModel):
    status: Literal["ok"]


class VersionPublic(BaseModel):
    version: str
    api: str
