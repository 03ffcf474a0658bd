"""AlexNet as in Caffe's bvlc_reference_caffenet / SkimCaffe (Krizhevsky et al. 2012; Park et
al. ICLR 2017): 227×227 input, LRN, conv2/4/5 in two groups. conv5 is 149.5 MFLOP per image."""

from __future__ import annotations

import torch
from torch import nn

from model.networks.registry import register


class AlexNet(nn.Module):
    """conv1…conv5 and fc6…fc8 named as in Caffe, so predictions read like the paper."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 96, 11, stride=4)  # (N, 96, 55, 55)
        self.norm1 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75)
        self.pool1 = nn.MaxPool2d(3, 2)  # (N, 96, 27, 27)
        self.conv2 = nn.Conv2d(96, 256, 5, padding=2, groups=2)  # (N, 256, 27, 27)
        self.norm2 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75)
        self.pool2 = nn.MaxPool2d(3, 2)  # (N, 256, 13, 13)
        self.conv3 = nn.Conv2d(256, 384, 3, padding=1)  # (N, 384, 13, 13)
        self.conv4 = nn.Conv2d(384, 384, 3, padding=1, groups=2)  # (N, 384, 13, 13)
        self.conv5 = nn.Conv2d(384, 256, 3, padding=1, groups=2)  # (N, 256, 13, 13)
        self.pool5 = nn.MaxPool2d(3, 2)  # (N, 256, 6, 6)
        self.fc6 = nn.Linear(256 * 6 * 6, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.norm1(self.relu(self.conv1(x))))
        x = self.pool2(self.norm2(self.relu(self.conv2(x))))
        x = self.relu(self.conv3(x))
        x = self.relu(self.conv4(x))
        x = self.pool5(self.relu(self.conv5(x)))
        x = self.dropout(self.relu(self.fc6(torch.flatten(x, 1))))
        x = self.dropout(self.relu(self.fc7(x)))
        return self.fc8(x)


@register(
    "alexnet", input_shape=(3, 227, 227), num_classes=1000, paper="Caffe/SkimCaffe AlexNet"
)
def alexnet(num_classes: int = 1000) -> nn.Module:
    return AlexNet(num_classes)
