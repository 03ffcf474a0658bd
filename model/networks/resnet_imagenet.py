"""ResNet-18/34/50 for ImageNet as in He et al. (CVPR 2016, Table 1).

ResNet-50 follows the paper and the original Caffe release: the stride-2 of a stage is on the
first 1×1 convolution of its bottleneck (3.86 GMACs at 224×224; torchvision's "v1.5" moves it
to the 3×3 and costs 4.1 GMACs). Shortcuts that change shape are 1×1 projections (option B).
Module names follow torchvision (``layer1.0.conv1``, ``layer1.0.downsample.0``, ``fc``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from model.networks.registry import register


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(nn.Module):
    """conv1 3×3 → BN → ReLU → conv2 3×3 → BN, plus identity or projection, then ReLU.

    ``inner``: width of conv1 (default ``planes``), narrowed by filter pruning (Li et al. 2017).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, inner: int | None = None):
        super().__init__()
        inner = inner or planes
        self.conv1 = nn.Conv2d(in_planes, inner, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = _projection(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """1×1 reduce (carries the stride, as in the paper) → 3×3 → 1×1 expand ×4."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, inner: int | None = None):
        super().__init__()
        out_planes = planes * self.expansion
        inner = inner or planes  # width of conv1 (filter pruning narrows it)
        self.conv1 = nn.Conv2d(in_planes, inner, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != out_planes:
            self.downsample = _projection(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ImageNetResNet(nn.Module):
    """Stem 7×7/2 + max-pool, four stages ``layer1``…``layer4``, average pool, ``fc``.

    ``block_widths`` (one per block, in order): width of each block's first conv (Li et al.'s
    pruned ResNet-34 variants); ``None`` keeps the paper's widths.
    """

    def __init__(
        self,
        block: type,
        blocks: tuple[int, ...],
        num_classes: int = 1000,
        block_widths: Sequence[int] | None = None,
    ):
        super().__init__()
        if block_widths is not None and len(block_widths) != sum(blocks):
            raise ValueError(f"block_widths needs {sum(blocks)} entries, got {len(block_widths)}")
        inner = iter(block_widths or [None] * sum(blocks))
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)  # (N, 64, 112, 112)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)  # (N, 64, 56, 56)
        in_planes = 64
        for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
            layers = []
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(block(in_planes, planes, stride, next(inner)))
                in_planes = planes * block.expansion
            self.add_module(f"layer{stage + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (N, C, 7, 7)
        return self.fc(torch.flatten(self.avgpool(x), 1))


_DEPTHS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)),
           50: (Bottleneck, (3, 4, 6, 3))}  # fmt: skip


def _factory(depth: int):
    block, blocks = _DEPTHS[depth]

    def build(num_classes: int = 1000) -> nn.Module:
        return ImageNetResNet(block, blocks, num_classes)

    build.__name__ = f"resnet{depth}"
    return build


for _depth in _DEPTHS:
    register(
        f"resnet{_depth}",
        input_shape=(3, 224, 224),
        num_classes=1000,
        paper=f"ResNet-{_depth} ImageNet (He et al. 2016)",
    )(_factory(_depth))
