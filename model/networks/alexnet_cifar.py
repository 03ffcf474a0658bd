"""A CIFAR-sized AlexNet (3×32×32 input): the layer structure of Caffe's AlexNet
(``model/networks/alexnet.py``; Krizhevsky et al. 2012, as pruned by Park et al. ICLR 2017)
with the same layer names — conv1…conv5, fc6…fc8, LRN after conv1/conv2, conv2/4/5 in two
groups — scaled to 32×32 images. Our own variant, chosen as follows:

- conv1 is 5×5 stride 1 pad 2 (as in Caffe's cifar10_full) instead of 11×11 stride 4, which
  would leave 7×7 maps from a 32×32 image; max pools are 3×3 stride 2 pad 1, halving the maps
  32 → 16 → 8 → 4 (conv1 at 32², conv2 at 16², conv3–5 at 8²).
- Conv widths are half of AlexNet's (48, 128, 192, 192, 128 instead of 96, 256, 384, 384, 256)
  and fc6/fc7 have 1024 units instead of 4096: CIFAR-10 has 50K images and 10 classes, and
  this keeps a run trainable on a few CPU cores (≈58M MACs and ≈3.7M parameters per image
  against AlexNet's 724M and 61M) while conv3–5 stay wide enough for the sparse kernel.

=====  ======================================  ===========
layer  definition                              output
=====  ======================================  ===========
conv1  3→48, 5×5 pad 2, ReLU, LRN, pool        48×16×16
conv2  48→128, 5×5 pad 2, 2 groups, LRN, pool  128×8×8
conv3  128→192, 3×3 pad 1                      192×8×8
conv4  192→192, 3×3 pad 1, 2 groups            192×8×8
conv5  192→128, 3×3 pad 1, 2 groups, pool      128×4×4
fc6    2048→1024, ReLU, dropout
fc7    1024→1024, ReLU, dropout
fc8    1024→10
=====  ======================================  ===========
"""

from __future__ import annotations

from torch import nn

from model.networks.alexnet import AlexNet
from model.networks.registry import register

WIDTHS = (48, 128, 192, 192, 128)  # half of AlexNet's conv widths
FC_WIDTH = 1024  # a quarter of AlexNet's 4096


class AlexNetCifar(nn.Module):
    """AlexNet's layers and names at CIFAR size (see the module docstring for the widths)."""

    def __init__(
        self,
        num_classes: int = 10,
        widths: tuple[int, int, int, int, int] = WIDTHS,
        fc_width: int = FC_WIDTH,
        dropout: float = 0.5,
    ):
        super().__init__()
        c1, c2, c3, c4, c5 = widths
        self.conv1 = nn.Conv2d(3, c1, 5, padding=2)  # (N, 48, 32, 32)
        self.norm1 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75)
        self.pool1 = nn.MaxPool2d(3, 2, padding=1)  # (N, 48, 16, 16)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2, groups=2)  # (N, 128, 16, 16)
        self.norm2 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75)
        self.pool2 = nn.MaxPool2d(3, 2, padding=1)  # (N, 128, 8, 8)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)  # (N, 192, 8, 8)
        self.conv4 = nn.Conv2d(c3, c4, 3, padding=1, groups=2)  # (N, 192, 8, 8)
        self.conv5 = nn.Conv2d(c4, c5, 3, padding=1, groups=2)  # (N, 128, 8, 8)
        self.pool5 = nn.MaxPool2d(3, 2, padding=1)  # (N, 128, 4, 4)
        self.fc6 = nn.Linear(c5 * 4 * 4, fc_width)
        self.fc7 = nn.Linear(fc_width, fc_width)
        self.fc8 = nn.Linear(fc_width, num_classes)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)

    forward = AlexNet.forward  # the same layer sequence as Caffe's AlexNet


@register(
    "alexnet_cifar",
    input_shape=(3, 32, 32),
    num_classes=10,
    paper="AlexNet (Krizhevsky 2012) scaled to CIFAR-10: half conv widths, 1024-unit fc (ours)",
)
def alexnet_cifar(num_classes: int = 10) -> nn.Module:
    return AlexNetCifar(num_classes)
