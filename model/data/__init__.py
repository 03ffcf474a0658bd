"""Data sets for training and pruning: built-in ``digits`` and ``synthetic``, and folders in
MNIST idx, CIFAR-10 python-batch or ``train/<class>/`` image layout (``get_dataset``)."""

from model.data.bundle import DataBundle, DatasetError, ImageDataset
from model.data.registry import BUILTIN_CLASSES, DATASETS, get_dataset

__all__ = [
    "BUILTIN_CLASSES",
    "DATASETS",
    "DataBundle",
    "DatasetError",
    "ImageDataset",
    "get_dataset",
]
