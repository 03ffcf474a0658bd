"""What every data set loader returns: a :class:`DataBundle` of in-memory image datasets.

Images are held as one tensor per split, ``uint8`` (0–255, MNIST/CIFAR/folders) or ``float32``
(0–1, digits/synthetic), already fitted to the network's input shape. Each item is turned into
a float tensor in [0, 1], augmented (training split only, when asked) and then normalised with
the per-channel mean and standard deviation of the *training* split, so no statistic leaks from
the test split. On the full MNIST and CIFAR-10 training sets these statistics are the familiar
(0.1307, 0.3081) and (0.4914, 0.4822, 0.4465) / (0.2470, 0.2435, 0.2616).

Augmentation is the standard CIFAR recipe (He et al., CVPR 2016, §4.2): zero-pad 4 pixels,
take a random crop of the original size, flip horizontally with probability 1/2 — written with
torch ops (no torchvision) and drawn from torch's global RNG, so ``torch.manual_seed`` (and a
DataLoader's per-worker seeding) makes it reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset


class DatasetError(ValueError):
    """A data set that cannot be found or read; the message says what was expected."""


@dataclass(frozen=True)
class DataBundle:
    """A training and a test split ready for a network.

    Attributes:
        name: the built-in name (``digits``) or ``<format>:<folder>`` for a folder.
        train: training split; items are ``(image (C, H, W) float32, label int)``.
        test: test split, never augmented.
        num_classes: number of classes (labels are ``0 … num_classes - 1``).
        input_shape: (C, H, W) of one image, equal to the requested ``input_shape``.
        classes: class names, index = label.
    """

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    classes: list[str]


class ImageDataset(Dataset):
    """Images in memory; each item is converted to [0, 1], augmented, then normalised.

    Args:
        images: (N, C, H, W), ``uint8`` in 0–255 or floating point in 0–1.
        labels: (N,) integer labels.
        mean: (C,) per-channel mean subtracted from every image.
        std: (C,) per-channel standard deviation divided out.
        augment: optional transform of one (C, H, W) image in [0, 1], applied before
            normalisation (training split only).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"images {tuple(images.shape)} and labels {len(labels)} disagree")
        self.images = images
        self.labels = labels.long()
        self.mean = mean.float().reshape(-1, 1, 1)
        self.std = std.float().reshape(-1, 1, 1)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = to_unit_float(self.images[index])  # (C, H, W) in [0, 1]
        if self.augment is not None:
            x = self.augment(x)
        return (x - self.mean) / self.std, int(self.labels[index])


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """``uint8`` 0–255 → float32 0–1; floating point is passed through as float32."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


class RandomCropFlip:
    """CIFAR augmentation: zero-pad ``padding`` pixels, random crop back, random h-flip."""

    def __init__(self, padding: int = 4, flip: bool = True):
        self.padding = padding
        self.flip = flip

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _, height, width = x.shape
        p = self.padding
        if p:
            padded = F.pad(x, (p, p, p, p))  # (C, H + 2p, W + 2p), zeros = black before norm
            top, left = (int(v) for v in torch.randint(0, 2 * p + 1, (2,)))
            x = padded[:, top : top + height, left : left + width]
        if self.flip and float(torch.rand(())) < 0.5:
            x = x.flip(-1)
        return x


# ITU-R BT.601 luma, what Pillow's convert("L") uses.
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def fit_images(
    images: torch.Tensor, shape: tuple[int, int, int], chunk: int = 2048
) -> torch.Tensor:
    """Fit (N, C, H, W) images to ``shape`` = (C', H', W'), keeping the dtype.

    Channels: 1 → 3 repeats the grey channel, 3 → 1 takes the luma; other changes are refused.
    Size: bilinear resampling (antialiased when shrinking). ``uint8`` results are rounded.
    Works in chunks so fitting 60,000 MNIST images does not hold them all as float.

    Raises:
        DatasetError: a channel count that cannot be converted.
    """
    channels, height, width = shape
    n, c, h, w = images.shape
    if (c, h, w) == (channels, height, width):
        return images
    if c != channels and not (c == 1 and channels == 3) and not (c == 3 and channels == 1):
        raise DatasetError(
            f"cannot fit {c}-channel images to {channels} channels (only 1↔3 is supported)"
        )
    out = torch.empty((n, channels, height, width), dtype=images.dtype)
    for start in range(0, n, chunk):
        x = images[start : start + chunk].float()  # (n', c, h, w), same scale as the input
        if c == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif c == 3 and channels == 1:
            x = (x * _LUMA.reshape(1, 3, 1, 1)).sum(1, keepdim=True)
        if (h, w) != (height, width):
            shrink = height < h or width < w
            x = F.interpolate(
                x, size=(height, width), mode="bilinear", align_corners=False, antialias=shrink
            )
        if images.dtype == torch.uint8:
            x = x.round_().clamp_(0, 255)
        out[start : start + chunk] = x.to(images.dtype)
    return out


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of images in [0, 1] (float64 accumulation).

    A channel with (near) zero spread gets std 1, so normalising never divides by zero.
    """
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        x = to_unit_float(images[start : start + chunk]).double()  # (n', C, H, W)
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    count = max(1, images.shape[0] * images.shape[2] * images.shape[3])
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    return mean.float(), std.float()


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) with ``test_fraction`` of every class in the test split.

    Deterministic for a ``seed``; each class keeps at least one training sample.
    """
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = min(len(members) - 1, round(len(members) * test_fraction))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def make_bundle(
    name: str,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    classes: list[str],
    *,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> DataBundle:
    """Wrap fitted splits as datasets normalised with the training split's statistics."""
    mean, std = channel_stats(train_images)
    for split, labels in (("train", train_labels), ("test", test_labels)):
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
            raise DatasetError(
                f"{name}: {split} labels must lie in 0…{len(classes) - 1}, "
                f"found {int(labels.min())}…{int(labels.max())}"
            )
    c, h, w = train_images.shape[1:]
    return DataBundle(
        name=name,
        train=ImageDataset(train_images, train_labels, mean, std, augment),
        test=ImageDataset(test_images, test_labels, mean, std),
        num_classes=len(classes),
        input_shape=(int(c), int(h), int(w)),
        classes=list(classes),
    )
