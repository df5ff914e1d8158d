"""ResNet-18, ResNet-50 and ResNet-101 for 224×224 inputs (He et al. 2016a, Table 1).

Stem: 7×7 stride-2 conv with 64 channels, BN, ReLU, 3×3 stride-2 max-pool (total stride 4).
Four stages (strides 1, 2, 2, 2) of BasicBlocks (ResNet-18: 2-2-2-2, widths 64…512) or
Bottlenecks (ResNet-50: 3-4-6-3, ResNet-101: 3-4-23-3, widths 64…512, expansion 4), global average pooling and a
linear classifier. The topology is the one torchvision ships (downsampling stride on the
bottleneck's 3×3 conv, "ResNet v1.5"; 1×1 conv + BN projections where the shape changes):
11,689,512 parameters for ResNet-18, 25,557,032 for ResNet-50 and 44,549,160 for ResNet-101 at 1000 classes.

Inputs of any size ≥ 32 px work (global pooling); a 224 px image gives a 7×7 last map,
64 px a 2×2 one.
"""

from __future__ import annotations

from typing import Sequence, Type, Union

import torch
from torch import nn

from ._common import StagedClassifier, check_int, conv1x1, conv3x3, he_init, residual_stages


def _projection(in_channels: int, out_channels: int, stride: int):
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """ReLU(BN(conv3×3(ReLU(BN(conv3×3_s(x))))) + shortcut(x)); output ``width`` channels."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_channels, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.projection = _projection(in_channels, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.projection is None else self.projection(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1×1 (width) → 3×3 stride s (width) → 1×1 (4·width), BN after each, ReLU after the sum."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.projection = _projection(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.projection is None else self.projection(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class ImageNetResNet(StagedClassifier):
    """ResNet with the ImageNet stem; ``block`` and ``blocks`` (per stage) choose the variant."""

    def __init__(self, block: Type[Union[BasicBlock, Bottleneck]], blocks: Sequence[int],
                 num_classes: int = 1000, in_channels: int = 3):
        num_classes = check_int(num_classes, "num_classes", minimum=1)
        in_channels = check_int(in_channels, "in_channels", minimum=1)
        blocks = [check_int(b, "blocks[i]", minimum=1) for b in blocks]
        stem = nn.Sequential(nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
                             nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                             nn.MaxPool2d(3, stride=2, padding=1))
        stages, current = residual_stages(block, 64, (64, 128, 256, 512), blocks, block.expansion)
        super().__init__(stem, stages, current, num_classes)
        he_init(self)


def resnet18(num_classes: int = 1000, in_channels: int = 3) -> ImageNetResNet:
    """ResNet-18 for 224 px images (11.69 M parameters at 1000 classes)."""
    return ImageNetResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels)


def resnet50(num_classes: int = 1000, in_channels: int = 3) -> ImageNetResNet:
    """ResNet-50 for 224 px images (25.56 M parameters at 1000 classes)."""
    return ImageNetResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels)


def resnet101(num_classes: int = 1000, in_channels: int = 3) -> ImageNetResNet:
    """ResNet-101 for 224 px images (44.55 M parameters at 1000 classes)."""
    return ImageNetResNet(Bottleneck, (3, 4, 23, 3), num_classes, in_channels)
