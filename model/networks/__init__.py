"""Built-in networks, exact to their papers, behind one registry (``create_model``)."""

from model.networks import (  # noqa: F401
    alexnet,
    alexnet_cifar,
    cifar_convnet,
    googlenet,
    lenet,
    lenet300,
    resnet_cifar,
    resnet_imagenet,
    vgg,
)
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
