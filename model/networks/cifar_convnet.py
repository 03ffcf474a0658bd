"""The CIFAR-10 ConvNet of the SSL paper (Wen et al., NIPS 2016, §4.2): Caffe's
``examples/cifar10/cifar10_full_train_test.prototxt`` (Krizhevsky's cuda-convnet layers-18pct).

Layer by layer, for a 3×32×32 input (Caffe rounds pooling output sizes up, hence
``ceil_mode=True``; its AVE pooling with no padding divides by the in-bounds window, as
PyTorch's does):

=====  ==========================================  ============
layer  definition                                  output
=====  ==========================================  ============
conv1  32 filters 5×5, pad 2, stride 1             32×32×32
pool1  MAX 3×3 stride 2                            32×16×16
relu1
norm1  LRN WITHIN_CHANNEL, size 3, α 5e-5, β 0.75  32×16×16
conv2  32 filters 5×5, pad 2                       32×16×16
relu2
pool2  AVE 3×3 stride 2                            32×8×8
norm2  LRN WITHIN_CHANNEL, size 3, α 5e-5, β 0.75  32×8×8
conv3  64 filters 5×5, pad 2                       64×8×8
relu3
pool3  AVE 3×3 stride 2                            64×4×4
ip1    1024 → 10
=====  ==========================================  ============

Parameters: 2,432 + 25,632 + 51,264 + 10,250 = 89,578; 12.3M MACs per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.networks.registry import register


class WithinChannelLRN(nn.Module):
    """Caffe's LRN with ``norm_region: WITHIN_CHANNEL``: ``x / (1 + α·mean(x²))^β``.

    The mean is over a ``size``×``size`` window around each pixel of the same channel, zero
    padded and always divided by ``size²`` — what Caffe builds from a square, an AVE pooling
    (pad ``(size-1)/2``) and a power layer. ``nn.LocalResponseNorm`` normalises across channels
    and is not this.
    """

    def __init__(self, size: int = 3, alpha: float = 5e-5, beta: float = 0.75):
        super().__init__()
        self.size, self.alpha, self.beta = size, alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_sq = F.avg_pool2d(
            x * x, self.size, stride=1, padding=self.size // 2, count_include_pad=True
        )  # (N, C, H, W)
        return x * (1 + self.alpha * mean_sq).pow(-self.beta)


class CifarConvNet(nn.Module):
    """conv1 → pool1 → relu → norm1 → conv2 → relu → pool2 → norm2 → conv3 → relu → pool3 → ip1."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 5, padding=2)  # (N, 32, 32, 32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)  # (N, 32, 16, 16)
        self.norm1 = WithinChannelLRN(3, alpha=5e-5, beta=0.75)
        self.conv2 = nn.Conv2d(32, 32, 5, padding=2)  # (N, 32, 16, 16)
        self.pool2 = nn.AvgPool2d(3, 2, ceil_mode=True)  # (N, 32, 8, 8)
        self.norm2 = WithinChannelLRN(3, alpha=5e-5, beta=0.75)
        self.conv3 = nn.Conv2d(32, 64, 5, padding=2)  # (N, 64, 8, 8)
        self.pool3 = nn.AvgPool2d(3, 2, ceil_mode=True)  # (N, 64, 4, 4)
        self.ip1 = nn.Linear(64 * 4 * 4, num_classes)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(self.relu(self.pool1(self.conv1(x))))
        x = self.norm2(self.pool2(self.relu(self.conv2(x))))
        x = self.pool3(self.relu(self.conv3(x)))
        return self.ip1(torch.flatten(x, 1))


@register(
    "cifar_convnet",
    input_shape=(3, 32, 32),
    num_classes=10,
    paper="Caffe cifar10_full, the CIFAR-10 ConvNet of SSL (Wen et al. NIPS 2016)",
)
def cifar_convnet(num_classes: int = 10) -> nn.Module:
    return CifarConvNet(num_classes)
