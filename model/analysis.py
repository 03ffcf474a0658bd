"""Layer specs of built-in networks for the performance model (Park et al. 2017, §2.2).

The network is built on the meta device (no weights allocated or initialised), so listing the
layers of ResNet-50 or AlexNet costs milliseconds, and the specs are cached per name.
"""

from __future__ import annotations

from functools import cache

import torch

from model.networks import create_model, network_info
from perfmodel.extract import extract_layers
from perfmodel.layers import Conv2dSpec, LinearSpec


@cache
def _specs(name: str) -> tuple[Conv2dSpec | LinearSpec, ...]:
    info = network_info(name)
    with torch.device("meta"):
        module = create_model(name)
    return tuple(extract_layers(module, info.input_shape))


def network_layers(name: str, batch: int = 1) -> list[Conv2dSpec | LinearSpec]:
    """Specs of every Conv2d/Linear of the built-in network ``name`` at ``batch`` images.

    Raises:
        UnknownNetworkError: ``name`` is not registered (its message lists valid names).
    """
    return [spec.with_batch(batch) for spec in _specs(name)]


def clear_cache() -> None:
    """Forget the cached specs (benchmarks time the extraction itself with it)."""
    _specs.cache_clear()
