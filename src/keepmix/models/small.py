"""A small, fast ResNet for CPU runs and smoke tests.

``resnet_small``: a 3×3 stride-1 stem with 16 channels (+ BN + ReLU) at full resolution, then
three stages of one BasicBlock each (the block of :mod:`.resnet_cifar`) with 16, 32 and 64
channels, every stage with stride 2 (32×32 → 16² → 8² → 4²), global average pooling and a
linear classifier: 78,330 parameters at 10 classes and ≈3.5 M multiply-adds per 32×32 image
(the CIFAR layout with a stride-1 first stage costs 3.5× more), so an epoch of 3000 32×32
images trains in a few seconds on two CPU cores. He-initialised.
"""

from __future__ import annotations

from torch import nn

from ._common import StagedClassifier, check_int, conv3x3, he_init
from .resnet_cifar import BasicBlock


class SmallResNet(StagedClassifier):
    """Stem 16 → BasicBlock stages ``widths`` (each stride 2) → pool → linear."""

    def __init__(self, num_classes: int = 10, widths=(16, 32, 64), in_channels: int = 3):
        num_classes = check_int(num_classes, "num_classes", minimum=1)
        in_channels = check_int(in_channels, "in_channels", minimum=1)
        widths = [check_int(w, "widths[i]", minimum=1) for w in widths]
        if not widths:
            raise ValueError("widths must name at least one stage")
        stem = nn.Sequential(conv3x3(in_channels, widths[0]), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages = []
        current = widths[0]
        for width in widths:
            stages.append(nn.Sequential(BasicBlock(current, width, stride=2)))
            current = width
        super().__init__(stem, stages, current, num_classes)
        he_init(self)


def resnet_small(num_classes: int = 10, in_channels: int = 3) -> SmallResNet:
    """The small CPU ResNet (16/32/64 channels, one block per stage, strides 2/2/2) for 32×32 inputs."""
    return SmallResNet(num_classes, (16, 32, 64), in_channels)
