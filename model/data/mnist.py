"""MNIST (and any data set in its format, e.g. Fashion-MNIST) from the four idx files.

The idx format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian header of two
zero bytes, a type byte (0x08 = unsigned byte), a dimension count, then one 32-bit size per
dimension, then the data in row-major order. Image files have magic 2051 (0x00000803, three
dimensions N×28×28), label files 2049 (0x00000801, one dimension N). Parsed here with numpy;
every header field and the payload size is checked before the data is used.

Files may be gzipped (``.gz``), spelled with a dot (``train-images.idx3-ubyte``, as on some
mirrors), and may sit in the folder itself, in ``raw/`` or in ``MNIST/raw/`` (torchvision's
layout).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from model.data.bundle import DataBundle, DatasetError, fit_images, make_bundle

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
UNSIGNED_BYTE = 0x08

# role → (canonical file name, magic)
MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte", IMAGES_MAGIC),
    "train_labels": ("train-labels-idx1-ubyte", LABELS_MAGIC),
    "test_images": ("t10k-images-idx3-ubyte", IMAGES_MAGIC),
    "test_labels": ("t10k-labels-idx1-ubyte", LABELS_MAGIC),
}
SUBFOLDERS = (".", "raw", "MNIST/raw")


def _variants(name: str) -> list[str]:
    dotted = name.replace("-idx", ".idx")
    return [name, name + ".gz", dotted, dotted + ".gz"]


def find_mnist_files(folder: Path) -> dict[str, Path | None]:
    """Where each of the four files is (``None`` when absent), first matching subfolder wins."""
    found: dict[str, Path | None] = dict.fromkeys(MNIST_FILES)
    for role, (name, _) in MNIST_FILES.items():
        for sub in SUBFOLDERS:
            hits = [folder / sub / v for v in _variants(name) if (folder / sub / v).is_file()]
            if hits:
                found[role] = hits[0]
                break
    return found


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an idx file of unsigned bytes; check its magic number and payload size.

    Raises:
        DatasetError: unreadable gzip, wrong magic, truncated or oversized payload.
    """
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None
    if len(raw) < 4:
        raise DatasetError(f"{path}: too short for an idx header ({len(raw)} bytes)")
    (found,) = struct.unpack(">I", raw[:4])
    if found != magic:
        raise DatasetError(
            f"{path}: magic number {found:#010x}, expected {magic:#010x} "
            f"({'images' if magic == IMAGES_MAGIC else 'labels'}, unsigned bytes)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path}: header says {'×'.join(map(str, dims))} = {expected} bytes of data, "
            f"the file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_mnist_folder(
    folder: Path, files: dict[str, Path], input_shape: tuple[int, int, int] | None
) -> DataBundle:
    """An MNIST-format bundle from the four located idx files, fitted to ``input_shape``."""
    arrays = {role: read_idx(path, MNIST_FILES[role][1]) for role, path in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise DatasetError(
                f"{folder}: {split} has {len(images)} images but {len(labels)} labels"
            )
        if len(images) == 0:
            raise DatasetError(f"{folder}: the {split} files hold no images")
    num_classes = int(max(arrays["train_labels"].max(), arrays["test_labels"].max())) + 1
    shape = input_shape or (1, *arrays["train_images"].shape[1:])

    def images(role: str) -> torch.Tensor:
        pixels = torch.from_numpy(arrays[role].copy()).unsqueeze(1)  # (N, 1, H, W) uint8
        return fit_images(pixels, shape)

    return make_bundle(
        f"mnist:{folder}",
        images("train_images"),
        torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        images("test_images"),
        torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        [str(k) for k in range(num_classes)],
    )
