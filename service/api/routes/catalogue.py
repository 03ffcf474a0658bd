"""Catalogue: built-in models, data sets and pruning methods with their parameters."""

from __future__ import annotations

from fastapi import APIRouter

from model.data import DATASETS
from model.networks import NETWORKS
from model.pruning import METHODS, config_fields
from model.training import TrainConfig
from service.api.schemas import (
    CataloguePublic,
    DatasetPublic,
    MethodPublic,
    ModelPublic,
    ParameterPublic,
)

router = APIRouter(tags=["catalogue"])


def _jsonable(value):
    plain = str | int | float | bool | type(None) | dict | list
    return value if isinstance(value, plain) else str(value)


@router.get("/models")
def list_models() -> list[ModelPublic]:
    """Built-in networks (registry names used by predictions and jobs)."""
    return [ModelPublic(name=i.name, input_shape=list(i.input_shape), num_classes=i.num_classes,
                        paper=i.paper) for i in NETWORKS.values()]  # fmt: skip


@router.get("/datasets")
def list_datasets() -> list[DatasetPublic]:
    """Built-in data sets jobs can train on."""
    return [DatasetPublic(name=name, description=str(text)) for name, text in DATASETS.items()]


@router.get("/methods")
def list_methods() -> list[MethodPublic]:
    """Pruning methods with every hyperparameter and its default."""
    train = [ParameterPublic(name=k, default=_jsonable(v), scope="train")
             for k, v in config_fields(TrainConfig).items()]  # fmt: skip
    methods = []
    for info in METHODS.values():
        own = [ParameterPublic(name=k, default=_jsonable(v), scope="method")
               for k, v in config_fields(info.config_type).items()]  # fmt: skip
        methods.append(MethodPublic(name=info.name, summary=info.summary, parameters=own + train))
    return methods


@router.get("/catalogue")
def catalogue() -> CataloguePublic:
    """Models, data sets and methods in one response."""
    return CataloguePublic(models=list_models(), datasets=list_datasets(), methods=list_methods())
