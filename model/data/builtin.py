"""The two data sets that need no files: ``digits`` (the default) and ``synthetic``.

``digits`` is scikit-learn's bundled copy of the UCI optical handwritten digits test set
(Alpaydin & Kaynak 1998; ``sklearn.datasets.load_digits``): 1,797 real 8×8 images with 17 grey
levels, 10 classes, shipped inside the scikit-learn wheel, so nothing is downloaded. They are
scaled to [0, 1] and resized bilinearly to 1×28×28, the MNIST shape, so LeNet-5 and
LeNet-300-100 run unchanged; another ``input_shape`` (e.g. 3×32×32) fits them to any built-in
network. The split is stratified, 80/20, deterministic per seed.

``synthetic`` is for smoke tests: each class is a fixed smooth random template (a 4×4 random
pattern upsampled to the image size) and every sample is its template plus Gaussian noise
(σ = 0.25), clipped to [0, 1]. Templates and noise are drawn from one seeded generator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.data.bundle import DataBundle, fit_images, make_bundle, stratified_split

DIGITS_SHAPE = (1, 28, 28)
DIGITS_TEST_FRACTION = 0.2
DIGITS_CLASSES = 10
SYNTHETIC_CLASSES = 10
SYNTHETIC_TRAIN_PER_CLASS = 30  # 300 training images: enough to learn, fast to train
SYNTHETIC_TEST_PER_CLASS = 10
SYNTHETIC_NOISE = 0.25


def load_digits_bundle(
    input_shape: tuple[int, int, int] | None = None, seed: int = 0
) -> DataBundle:
    """scikit-learn's digits, fitted to ``input_shape`` (default 1×28×28), split 80/20."""
    from sklearn.datasets import load_digits  # imported here: only this data set needs it

    features, labels = load_digits(return_X_y=True)  # (1797, 64) in 0…16, (1797,)
    images = torch.from_numpy(features.reshape(-1, 1, 8, 8) / 16.0).float()  # (N, 1, 8, 8)
    images = fit_images(images, input_shape or DIGITS_SHAPE)
    train, test = stratified_split(labels, DIGITS_TEST_FRACTION, seed)
    targets = torch.from_numpy(labels).long()
    return make_bundle(
        "digits",
        images[train],
        targets[train],
        images[test],
        targets[test],
        [str(d) for d in range(DIGITS_CLASSES)],
    )


def synthetic_bundle(input_shape: tuple[int, int, int] | None = None, seed: int = 0) -> DataBundle:
    """A small learnable class-conditional set of shape ``input_shape`` (default 1×28×28)."""
    channels, height, width = input_shape or DIGITS_SHAPE
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand((SYNTHETIC_CLASSES, channels, 4, 4), generator=generator)
    templates = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)

    def draw(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(SYNTHETIC_CLASSES).repeat_interleave(per_class)  # (N,)
        noise = torch.randn((len(labels), channels, height, width), generator=generator)
        images = (templates[labels] + SYNTHETIC_NOISE * noise).clamp_(0, 1)  # (N, C, H, W)
        return images, labels

    train_images, train_labels = draw(SYNTHETIC_TRAIN_PER_CLASS)
    test_images, test_labels = draw(SYNTHETIC_TEST_PER_CLASS)
    return make_bundle(
        "synthetic",
        train_images,
        train_labels,
        test_images,
        test_labels,
        [f"class{k}" for k in range(SYNTHETIC_CLASSES)],
    )
