"""LeNet-5 as defined in Caffe's MNIST example (20-50-500-10), the variant used by the SSL,
GSL and AutoPrune papers (Wen et al. 2016; Park et al. 2017; Xiao et al. 2019): 431K weights."""

from __future__ import annotations

import torch
from torch import nn

from model.networks.registry import register


class LeNet5(nn.Module):
    """conv1 5×5×20 → pool → conv2 5×5×50 → pool → fc1 800→500 → ReLU → fc2 500→classes."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, 5)  # (N, 20, 24, 24)
        self.pool1 = nn.MaxPool2d(2)  # (N, 20, 12, 12)
        self.conv2 = nn.Conv2d(20, 50, 5)  # (N, 50, 8, 8)
        self.pool2 = nn.MaxPool2d(2)  # (N, 50, 4, 4)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = self.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


@register("lenet5", input_shape=(1, 28, 28), num_classes=10, paper="Caffe LeNet (LeCun 1998)")
def lenet5(num_classes: int = 10) -> nn.Module:
    return LeNet5(num_classes)
