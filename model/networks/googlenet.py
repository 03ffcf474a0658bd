"""GoogLeNet (Inception v1) as in Szegedy et al. (CVPR 2015, Table 1) and Caffe's
bvlc_googlenet, which the GSL paper prunes: LRN, ceil-mode pooling, true 5×5 branches, no BN,
no auxiliary classifiers (they do not run at inference). Layer names mirror Caffe's
(``inception_4a/5x5_reduce`` is the module ``inception_4a`` → ``5x5_reduce``)."""

from __future__ import annotations

import torch
from torch import nn

from model.networks.registry import register


class Inception(nn.Module):
    """Four branches: 1x1 | 3x3_reduce→3x3 | 5x5_reduce→5x5 | pool→pool_proj, concatenated."""

    def __init__(self, in_ch: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, proj: int):
        super().__init__()
        self.add_module("1x1", nn.Conv2d(in_ch, c1, 1))
        self.add_module("3x3_reduce", nn.Conv2d(in_ch, c3r, 1))
        self.add_module("3x3", nn.Conv2d(c3r, c3, 3, padding=1))
        self.add_module("5x5_reduce", nn.Conv2d(in_ch, c5r, 1))
        self.add_module("5x5", nn.Conv2d(c5r, c5, 5, padding=2))
        self.pool = nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True)
        self.pool_proj = nn.Conv2d(in_ch, proj, 1)
        self.relu = nn.ReLU(inplace=True)
        self.out_channels = c1 + c3 + c5 + proj

    def _conv(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self._modules[name](x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self._conv("1x1", x)
        b2 = self._conv("3x3", self._conv("3x3_reduce", x))
        b3 = self._conv("5x5", self._conv("5x5_reduce", x))
        b4 = self.relu(self.pool_proj(self.pool(x)))
        return torch.cat([b1, b2, b3, b4], dim=1)


# name: (in, 1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj), Szegedy et al. Table 1.
INCEPTIONS = {
    "inception_3a": (192, 64, 96, 128, 16, 32, 32),
    "inception_3b": (256, 128, 128, 192, 32, 96, 64),
    "inception_4a": (480, 192, 96, 208, 16, 48, 64),
    "inception_4b": (512, 160, 112, 224, 24, 64, 64),
    "inception_4c": (512, 128, 128, 256, 24, 64, 64),
    "inception_4d": (512, 112, 144, 288, 32, 64, 64),
    "inception_4e": (528, 256, 160, 320, 32, 128, 128),
    "inception_5a": (832, 256, 160, 320, 32, 128, 128),
    "inception_5b": (832, 384, 192, 384, 48, 128, 128),
}
POOL_AFTER = {"inception_3b", "inception_4e"}  # 3×3/2 max-pools between stages


class GoogLeNet(nn.Module):
    """Stem ``conv1`` (7x7_s2), ``conv2_reduce`` (3x3_reduce), ``conv2`` (3x3), nine
    inception modules and the ``classifier`` (Caffe: loss3/classifier)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)  # (N, 64, 112, 112)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)  # (N, 64, 56, 56)
        self.norm1 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75)
        self.conv2_reduce = nn.Conv2d(64, 64, 1)
        self.conv2 = nn.Conv2d(64, 192, 3, padding=1)  # (N, 192, 56, 56)
        self.norm2 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)  # (N, 192, 28, 28)
        for name, widths in INCEPTIONS.items():
            self.add_module(name, Inception(*widths))
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(1024, num_classes)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(self.pool1(self.relu(self.conv1(x))))
        x = self.relu(self.conv2_reduce(x))
        x = self.pool2(self.norm2(self.relu(self.conv2(x))))
        for name in INCEPTIONS:
            x = self._modules[name](x)
            if name in POOL_AFTER:
                x = self.pool(x)  # 28→14 after 3b, 14→7 after 4e
        x = self.dropout(torch.flatten(self.avgpool(x), 1))  # (N, 1024)
        return self.classifier(x)


@register(
    "googlenet", input_shape=(3, 224, 224), num_classes=1000, paper="GoogLeNet (Szegedy 2015)"
)
def googlenet(num_classes: int = 1000) -> nn.Module:
    return GoogLeNet(num_classes)
