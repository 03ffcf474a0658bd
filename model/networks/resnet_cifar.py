"""ResNet-20/32/56/110 for CIFAR-10 (He et al., CVPR 2016, §4.2): a 3×3 stem with 16 maps,
three stages of n basic blocks (16, 32, 64 maps), option-A shortcuts (identity, subsampled and
zero-padded when the width doubles: no parameters), global average pool, one linear layer.
ResNet-56 has 1.25e8 MACs and 8.5e5 parameters (Li et al. 2017, Table 1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from model.networks.registry import register


class PadShortcut(nn.Module):
    """Option A: take every other pixel and zero-pad the new channels (no weights)."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.extra = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))


class BasicBlock(nn.Module):
    """conv1 3×3 → BN → ReLU → conv2 3×3 → BN, plus the shortcut, then ReLU.

    ``inner`` is the width of conv1 (default ``planes``): filter pruning of the first conv of a
    block (Li et al. 2017, §3.3) narrows it; conv2 keeps ``planes`` for the shortcut.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, inner: int | None = None):
        super().__init__()
        inner = inner or planes
        self.conv1 = nn.Conv2d(in_planes, inner, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut(planes - in_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2): stem ``conv1``, stages ``layer1``…``layer3`` of n blocks, ``fc``.

    ``block_widths`` (one per block, in order) sets the width of each block's first conv, as in
    Li et al.'s pruned ResNet-56/110 variants; ``None`` keeps the stage width.
    """

    def __init__(
        self, depth: int, num_classes: int = 10, block_widths: Sequence[int] | None = None
    ):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 56, 110), got {depth}")
        blocks = (depth - 2) // 6
        if block_widths is not None and len(block_widths) != 3 * blocks:
            raise ValueError(f"block_widths needs {3 * blocks} entries, got {len(block_widths)}")
        inner = iter(block_widths or [None] * (3 * blocks))
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)  # (N, 16, 32, 32)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        in_planes = 16
        for stage, planes in enumerate((16, 32, 64), start=1):
            layers = []
            for index in range(blocks):
                stride = 2 if stage > 1 and index == 0 else 1
                layers.append(BasicBlock(in_planes, planes, stride, next(inner)))
                in_planes = planes
            self.add_module(f"layer{stage}", nn.Sequential(*layers))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))  # (N, 64, 8, 8)
        return self.fc(torch.flatten(self.pool(x), 1))


def _factory(depth: int):
    def build(num_classes: int = 10) -> nn.Module:
        return CifarResNet(depth, num_classes)

    build.__name__ = f"resnet{depth}"
    return build


for _depth in (20, 32, 56, 110):
    register(
        f"resnet{_depth}",
        input_shape=(3, 32, 32),
        num_classes=10,
        paper=f"ResNet-{_depth} CIFAR (He et al. 2016, option A)",
    )(_factory(_depth))
