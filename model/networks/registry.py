"""One registry and one factory for every network Sweetspot analyses and trains.

``create_model(name)`` builds a network; ``NETWORKS[name]`` tells its input shape, class count
and the paper it follows. The performance model and the training code use the same
definitions, so predictions are about the network that is actually pruned.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class NetworkInfo:
    """How to build a registered network and what it expects.

    Attributes:
        name: registry name used by the CLI, the API and jobs.
        factory: builds the module; takes ``num_classes``.
        input_shape: (C, H, W) of one input image.
        num_classes: classes of the data set the paper trained it on.
        paper: the definition it follows.
    """

    name: str
    factory: Callable[..., nn.Module]
    input_shape: tuple[int, int, int]
    num_classes: int
    paper: str


NETWORKS: dict[str, NetworkInfo] = {}


class UnknownNetworkError(LookupError):
    """No network of that name; ``valid`` lists the registered names."""

    def __init__(self, name: str, valid: list[str]):
        self.name = name
        self.valid = valid
        super().__init__(f"unknown model {name!r}; valid names: {', '.join(valid)}")


def register(
    name: str, *, input_shape: tuple[int, int, int], num_classes: int, paper: str
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a factory under ``name`` (a duplicate name warns and replaces)."""

    def decorate(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in NETWORKS:
            warnings.warn(f"network {name!r} registered twice; the later one wins", stacklevel=2)
        NETWORKS[name] = NetworkInfo(name, factory, input_shape, num_classes, paper)
        return factory

    return decorate


def network_info(name: str) -> NetworkInfo:
    """The registry entry for ``name``; raises :class:`UnknownNetworkError` listing valid names."""
    try:
        return NETWORKS[name]
    except KeyError:
        raise UnknownNetworkError(name, sorted(NETWORKS)) from None


def create_model(name: str, num_classes: int | None = None) -> nn.Module:
    """Build the registered network ``name`` (``num_classes`` defaults to the paper's)."""
    info = network_info(name)
    return info.factory(num_classes=num_classes or info.num_classes)
