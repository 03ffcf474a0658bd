"""LeNet-300-100, the fully connected MNIST network of LeCun et al. (1998) as pruned by Han et
al., "Learning both Weights and Connections for Efficient Neural Networks" (NIPS 2015, Table 1):
784 → 300 → 100 → 10 with ReLU, 266,610 parameters (266,200 weights + 410 biases)."""

from __future__ import annotations

import torch
from torch import nn

from model.networks.registry import register


class LeNet300(nn.Module):
    """fc1 784→300 → ReLU → fc2 300→100 → ReLU → fc3 100→classes (names as in Han et al.)."""

    def __init__(self, num_classes: int = 10, in_features: int = 28 * 28):
        super().__init__()
        self.fc1 = nn.Linear(in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)  # (N, 784)
        x = self.relu(self.fc1(x))  # (N, 300)
        x = self.relu(self.fc2(x))  # (N, 100)
        return self.fc3(x)


@register(
    "lenet300",
    input_shape=(1, 28, 28),
    num_classes=10,
    paper="LeNet-300-100 (LeCun 1998; Han et al. NIPS 2015)",
)
def lenet300(num_classes: int = 10) -> nn.Module:
    return LeNet300(num_classes)
