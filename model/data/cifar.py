"""CIFAR-10 from its official "python version" batches, read without trusting the pickles.

The official archive (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html) holds
``data_batch_1`` … ``data_batch_5`` (50,000 training images), ``test_batch`` (10,000) and
``batches.meta`` (``label_names``), usually in a ``cifar-10-batches-py/`` folder. Each batch is
a Python 2 pickle of a dict: ``data`` a 10000×3072 ``uint8`` numpy array (rows: the 1024 red,
then green, then blue pixels of a 32×32 image, row-major) and ``labels`` a list of ints.

A pickle can run arbitrary code, so it is never handed to ``pickle.load``. :class:`SafeUnpickler`
resolves exactly the globals a numpy array needs — ``numpy.core.multiarray._reconstruct`` (the
name numpy 1.x writes; ``numpy._core.multiarray._reconstruct`` from numpy 2), ``numpy.ndarray``
and ``numpy.dtype`` — and refuses every other global, which is what every code-execution
payload needs. Object dtypes are refused too, so an array cannot smuggle arbitrary objects.
Batches are read with ``encoding="bytes"`` (the official files are Python 2 pickles, their
keys are byte strings); keys are decoded after loading.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.data.bundle import DataBundle, DatasetError, RandomCropFlip, fit_images, make_bundle

TRAIN_BATCHES = tuple(f"data_batch_{k}" for k in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
SUBFOLDERS = (".", "cifar-10-batches-py")
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
IMAGE_SHAPE = (3, 32, 32)


def _reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct as fn  # numpy ≥ 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct as fn
    return fn


def _plain_dtype(*args: Any) -> np.dtype:
    """``numpy.dtype`` for the unpickler, refusing dtypes that hold Python objects."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("object arrays are not allowed")
    return dtype


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, strings, numbers and plain numpy arrays."""

    ALLOWED: frozenset[tuple[str, str]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if name == "_reconstruct":
            return _reconstruct()
        return np.ndarray if name == "ndarray" else _plain_dtype


def safe_load(path: Path) -> Any:
    """Unpickle ``path`` with :class:`SafeUnpickler`.

    Raises:
        DatasetError: unreadable, corrupt, or asks for anything beyond plain arrays.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None
    try:
        return SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # corrupt pickles raise almost anything; none may escape raw
        raise DatasetError(f"{path}: not a safe CIFAR pickle ({exc})") from None


def _text_keys(obj: Any, path: Path) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) ``uint8`` and labels (N,) ``int64`` of one batch file."""
    batch = _text_keys(safe_load(path), path)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DatasetError(f"{path}: 'data' must be an N×3072 uint8 array")
    if data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{path}: 'data' rows have {data.shape[1]} values, expected 3072")
    if not isinstance(labels, list | np.ndarray) or len(labels) != len(data):
        raise DatasetError(f"{path}: 'labels' must list one label per image ({len(data)})")
    try:
        targets = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: 'labels' must be integers") from None
    return data.reshape(-1, *IMAGE_SHAPE), targets


def find_cifar_folder(folder: Path) -> tuple[Path, list[str]] | None:
    """The subfolder holding CIFAR batches and the names missing there (None: no batch found)."""
    for sub in SUBFOLDERS:
        root = folder / sub
        present = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if (root / n).is_file()]
        if present:
            missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if n not in present]
            return root, missing
    return None


def _class_names(root: Path) -> list[str]:
    if not (root / META).is_file():
        return CIFAR10_CLASSES
    meta = _text_keys(safe_load(root / META), root / META)
    names = meta.get("label_names")
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{root / META}: 'label_names' must be a non-empty list")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def load_cifar_folder(
    folder: Path, root: Path, input_shape: tuple[int, int, int] | None, augment: bool
) -> DataBundle:
    """CIFAR-10 from ``root``; training split augmented (crop + flip) when ``augment``."""
    train = [read_batch(root / name) for name in TRAIN_BATCHES]
    test_images, test_labels = read_batch(root / TEST_BATCH)
    shape = input_shape or IMAGE_SHAPE
    return make_bundle(
        f"cifar10:{folder}",
        fit_images(torch.from_numpy(np.concatenate([b[0] for b in train])), shape),
        torch.from_numpy(np.concatenate([b[1] for b in train])),
        fit_images(torch.from_numpy(test_images.copy()), shape),
        torch.from_numpy(test_labels),
        _class_names(root),
        augment=RandomCropFlip(padding=4) if augment else None,
    )
