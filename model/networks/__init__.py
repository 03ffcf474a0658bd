"""Built-in networks, exact to their papers, behind one registry (``create_model``)."""

from model.networks import alexnet, googlenet, lenet, resnet_cifar, resnet_imagenet, vgg  # noqa: F401
from model.networks.registry import (
    NETWORKS,
    NetworkInfo,
    UnknownNetworkError,
    create_model,
    network_info,
    register,
)

__all__ = [
    "NETWORKS",
    "NetworkInfo",
    "UnknownNetworkError",
    "create_model",
    "network_info",
    "register",
]
