"""``get_dataset(spec)``: a built-in data set by name, or a folder whose format is detected.

Built-in names: ``digits`` (the default everywhere) and ``synthetic``. Any other spec is a
folder path, recognised by its files, in this order: MNIST idx files, CIFAR-10 python batches,
a ``train/<class>/`` + ``test/<class>/`` image folder. A folder that matches none, or only part
of one (three of the four MNIST files, say), raises :class:`DatasetError` naming exactly what
each format expects or what is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from model.data.builtin import (
    DIGITS_CLASSES,
    SYNTHETIC_CLASSES,
    load_digits_bundle,
    synthetic_bundle,
)
from model.data.bundle import DataBundle, DatasetError
from model.data.cifar import TEST_BATCH, TRAIN_BATCHES, find_cifar_folder, load_cifar_folder
from model.data.folder import is_image_folder, load_image_folder
from model.data.mnist import MNIST_FILES, find_mnist_files, load_mnist_folder

DATASETS: dict[str, str] = {
    "digits": "scikit-learn's 1,797 8×8 handwritten digits, resized to 1×28×28 (default)",
    "synthetic": "10 classes of noisy fixed templates, a few hundred images (smoke tests)",
}

# Classes of the built-in sets, known without loading them (a job's checkpoint must fit).
BUILTIN_CLASSES: dict[str, int] = {"digits": DIGITS_CLASSES, "synthetic": SYNTHETIC_CLASSES}

_BUILTIN: dict[str, Callable[[tuple[int, int, int] | None, int], DataBundle]] = {
    "digits": load_digits_bundle,
    "synthetic": synthetic_bundle,
}

EXPECTED_FILES = (
    "MNIST: " + ", ".join(name for name, _ in MNIST_FILES.values()) + " (optionally .gz)",
    "CIFAR-10: "
    + ", ".join((*TRAIN_BATCHES, TEST_BATCH))
    + " (optionally in cifar-10-batches-py/)",
    "image folder: train/<class>/*.png|jpg and test/<class>/*.png|jpg",
)


def _expected() -> str:
    return "; ".join(EXPECTED_FILES)


def get_dataset(
    spec: str,
    *,
    input_shape: tuple[int, int, int] | None = None,
    seed: int = 0,
    augment: bool = True,
) -> DataBundle:
    """Load a data set, fitted to ``input_shape`` (C, H, W) when given.

    Args:
        spec: ``digits``, ``synthetic``, or a folder path.
        input_shape: the network's input; images are resized and their channels repeated
            (1 → 3) or reduced to luma (3 → 1). ``None`` keeps the data set's own shape
            (digits and synthetic: 1×28×28).
        seed: the digits train/test split and the synthetic images; folder formats come with
            their own split.
        augment: CIFAR-10 training augmentation (random crop with padding 4, horizontal flip).

    Raises:
        DatasetError: unknown name, missing folder, or a folder in no supported format.
    """
    if spec in _BUILTIN:
        return _BUILTIN[spec](input_shape, seed)
    folder = Path(spec).expanduser()
    if not spec.strip() or not folder.exists():  # Path("") is ".": never read the cwd by accident
        raise DatasetError(
            f"unknown dataset {spec!r}: valid names are {', '.join(DATASETS)}, "
            "or give the path of a folder holding MNIST idx files, CIFAR-10 python batches "
            "or train/<class>/ and test/<class>/ images"
        )
    if not folder.is_dir():
        raise DatasetError(f"{folder} is a file; a dataset path must be a folder ({_expected()})")
    folder = folder.resolve()

    mnist = find_mnist_files(folder)
    if any(mnist.values()):
        missing = [MNIST_FILES[role][0] for role, path in mnist.items() if path is None]
        if missing:
            raise DatasetError(
                f"{folder}: MNIST idx files incomplete, missing {', '.join(missing)}"
            )
        return load_mnist_folder(folder, {r: p for r, p in mnist.items() if p}, input_shape)

    cifar = find_cifar_folder(folder)
    if cifar is not None:
        root, missing = cifar
        if missing:
            raise DatasetError(f"{root}: CIFAR-10 batches incomplete, missing {', '.join(missing)}")
        return load_cifar_folder(folder, root, input_shape, augment)

    if is_image_folder(folder):
        return load_image_folder(folder, input_shape)

    raise DatasetError(f"{folder}: no supported dataset format found. Expected {_expected()}")
