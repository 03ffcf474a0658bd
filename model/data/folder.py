"""A generic image folder: ``train/<class>/*.png|jpg`` and ``test/<class>/*.png|jpg``.

The layout torchvision's ``ImageFolder`` and Keras' ``image_dataset_from_directory`` read: one
subfolder per class, classes sorted by name (label = position), images decoded with Pillow.
Every image is converted to the requested channel count (``L`` for 1, ``RGB`` for 3; without a
requested shape: grey when every image is grey, else RGB) and resized bilinearly to the
requested size (without one: the size of the first training image). The whole set is loaded
into memory as ``uint8``, which suits the small and medium sets this format is meant for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model.data.bundle import DataBundle, DatasetError, make_bundle

EXTENSIONS = (".png", ".jpg", ".jpeg")
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def _images_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)


def is_image_folder(folder: Path) -> bool:
    """Whether ``folder`` has both ``train/`` and ``test/`` subfolders."""
    return (folder / "train").is_dir() and (folder / "test").is_dir()


def _class_dirs(split: Path) -> dict[str, Path]:
    return {d.name: d for d in sorted(split.iterdir()) if d.is_dir()}


def load_image_folder(folder: Path, input_shape: tuple[int, int, int] | None) -> DataBundle:
    """Read both splits; classes are the sorted subfolders of ``train/``.

    Raises:
        DatasetError: no classes or images, a test class unknown to ``train/``, an unreadable
            image, or a channel count other than 1 or 3.
    """
    from PIL import Image, UnidentifiedImageError  # imported here: only this format needs it

    train_classes = _class_dirs(folder / "train")
    classes = sorted(train_classes)
    if not classes:
        raise DatasetError(f"{folder / 'train'}: no class subfolders (expected train/<class>/)")
    unknown = sorted(set(_class_dirs(folder / "test")) - set(classes))
    if unknown:
        raise DatasetError(f"{folder / 'test'}: classes not in train/: {', '.join(unknown)}")
    if input_shape is not None and input_shape[0] not in (1, 3):
        raise DatasetError(f"image folders give 1 or 3 channels, not {input_shape[0]}")

    files: dict[str, list[tuple[Path, int]]] = {}
    for split in ("train", "test"):
        dirs = _class_dirs(folder / split)
        files[split] = [
            (path, label)
            for label, name in enumerate(classes)
            if name in dirs
            for path in _images_of(dirs[name])
        ]
        if not files[split]:
            raise DatasetError(
                f"{folder / split}: no images (expected {split}/<class>/*.png or *.jpg)"
            )

    decoded: dict[str, list[Image.Image]] = {}
    for split, items in files.items():
        decoded[split] = []
        for path, _ in items:
            try:
                with Image.open(path) as image:
                    image.load()
                    decoded[split].append(image.copy())
            except (OSError, UnidentifiedImageError) as exc:
                raise DatasetError(f"{path}: not a readable image ({exc})") from None

    first = decoded["train"][0]
    if input_shape is None:
        grey = all(im.mode in GREY_MODES for ims in decoded.values() for im in ims)
        shape = (1 if grey else 3, first.height, first.width)
    else:
        shape = input_shape
    channels, height, width = shape
    mode = "L" if channels == 1 else "RGB"

    def stack(images: list[Image.Image]) -> torch.Tensor:
        arrays = []
        for image in images:
            image = image.convert(mode)
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.uint8).reshape(height, width, channels)
            arrays.append(pixels.transpose(2, 0, 1))  # (C, H, W)
        return torch.from_numpy(np.stack(arrays))  # (N, C, H, W) uint8

    def labels(split: str) -> torch.Tensor:
        return torch.tensor([label for _, label in files[split]], dtype=torch.long)

    return make_bundle(
        f"folder:{folder}",
        stack(decoded["train"]),
        labels("train"),
        stack(decoded["test"]),
        labels("test"),
        classes,
    )
