"""ResNet-18 for 32×32 inputs, as in the Cutout and KeepAugment CIFAR code.

A 3×3 stride-1 stem (no max-pool), four stages of two BasicBlocks with 64, 128,
256 and 512 channels (strides 1, 2, 2, 2), global average pooling and a linear
classifier: 11.2 M parameters for 10 classes.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ._common import StagedClassifier, residual_stages


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(StagedClassifier):
    """CIFAR-style ResNet built from BasicBlocks; ``widths`` and ``blocks`` give each stage.

    PyTorch's default initialisation, as the Cutout code this model comes from.
    """

    def __init__(self, num_classes: int = 10, blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512),
                 in_channels: int = 3):
        stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                             nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages, channels = residual_stages(BasicBlock, widths[0], widths, blocks)
        super().__init__(stem, stages, channels, num_classes)


def resnet18_cifar(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-18 with a 3×3 stem for 32×32 images, as Cutout and KeepAugment train it (11.17 M parameters at 10 classes)."""
    return CifarResNet(num_classes, blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512), **kwargs)
