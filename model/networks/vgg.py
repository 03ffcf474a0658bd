"""VGG-16 for CIFAR-10 as pruned by Li et al. (ICLR 2017): the 13 conv layers of Simonyan &
Zisserman with BN after every conv, and Zagoruyko's classifier (512→512 with BN, 512→classes).
3.13e8 MACs and 1.5e7 parameters, as in Li et al. Table 1."""

from __future__ import annotations

import torch
from torch import nn

from model.networks.registry import register

# Output channels per conv; "M" is a 2×2 max-pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                512, 512, 512, "M")  # fmt: skip


class VGG16(nn.Module):
    """Convs named conv1…conv13 with bn1…bn13; classifier fc1 (+BN) and fc2."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] | None = None):
        super().__init__()
        widths = widths or tuple(w for w in VGG16_LAYOUT if w != "M")
        self.layout = []
        in_channels, index = 3, 0
        for item in VGG16_LAYOUT:
            if item == "M":
                self.layout.append("M")
                continue
            index += 1
            out = widths[index - 1]
            self.add_module(f"conv{index}", nn.Conv2d(in_channels, out, 3, padding=1))
            self.add_module(f"bn{index}", nn.BatchNorm2d(out))
            self.layout.append(index)
            in_channels = out
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(0.5)
        self.fc1 = nn.Linear(in_channels, 512)
        self.bn_fc1 = nn.BatchNorm1d(512)
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for item in self.layout:
            if item == "M":
                x = self.pool(x)
            else:
                x = self.relu(getattr(self, f"bn{item}")(getattr(self, f"conv{item}")(x)))
        x = torch.flatten(x, 1)  # (N, 512) after five pools of a 32×32 input
        x = self.relu(self.bn_fc1(self.fc1(self.dropout(x))))
        return self.fc2(self.dropout(x))


@register("vgg16", input_shape=(3, 32, 32), num_classes=10, paper="VGG-16 CIFAR (Li et al. 2017)")
def vgg16(num_classes: int = 10) -> nn.Module:
    return VGG16(num_classes)
