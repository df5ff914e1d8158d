"""Wide Residual Networks for 32×32 inputs (Zagoruyko & Komodakis 2016).

WRN-d-k: depth d = 6n + 4, widen factor k. A 3×3 conv with 16 channels, three stages
of n pre-activation blocks with 16k, 32k and 64k channels (strides 1, 2, 2), a final
BN + ReLU, global average pooling and a linear classifier. WRN-28-10 has 36,479,194
parameters for 10 classes (36.5 M in the paper); WRN-28-2, the network of the semi-supervised
benchmarks (UDA, KeepAugment Table 7), has 1,467,610.

Block (input C_in channels, output C), with dropout between the two convolutions::

    a   = ReLU(BN(x))
    out = conv3×3(Dropout_p(ReLU(BN(conv3×3_stride(a))))) + shortcut
    shortcut = x if C_in = C (then stride is 1), else conv1×1_stride(a)

``dropout`` defaults to 0 (the paper's base setting); the Cutout code that KeepAugment
follows trains WRN-28-10 on CIFAR with ``dropout=0.3``.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ._common import StagedClassifier, check_fraction, check_int, conv1x1, conv3x3, he_init, residual_stages


class WideBlock(nn.Module):
    """Pre-activation wide block, B×C_in×H×W → B×C×⌈H/s⌉×⌈W/s⌉."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(channels, channels)
        self.shortcut = conv1x1(in_channels, channels, stride) if stride != 1 or in_channels != channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(activated)
        out = F.relu(self.bn2(self.conv1(activated)))
        out = self.conv2(self.dropout(out))
        return out + shortcut


class WideResNet(StagedClassifier):
    """WRN-depth-width; see the module docstring."""

    def __init__(self, depth: int = 28, width: int = 10, num_classes: int = 10, dropout: float = 0.0,
                 in_channels: int = 3):
        depth = check_int(depth, "depth", minimum=10)
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 (10, 16, 22, 28, 40, …), got {depth}")
        width = check_int(width, "width", minimum=1)
        num_classes = check_int(num_classes, "num_classes", minimum=1)
        in_channels = check_int(in_channels, "in_channels", minimum=1)
        dropout = check_fraction(dropout, "dropout")
        n = (depth - 4) // 6
        stem = conv3x3(in_channels, 16)
        stages, current = residual_stages(lambda c, w, s: WideBlock(c, w, s, dropout), 16,
                                          [base * width for base in (16, 32, 64)], [n] * 3)
        stages[-1].append(nn.BatchNorm2d(current))
        stages[-1].append(nn.ReLU())
        super().__init__(stem, stages, current, num_classes)
        self.depth, self.width, self.dropout = depth, width, dropout
        he_init(self)


def wide_resnet(depth: int = 28, width: int = 10, num_classes: int = 10, dropout: float = 0.0,
                in_channels: int = 3) -> WideResNet:
    """WRN-``depth``-``width`` (depth = 6n + 4) for 32×32 images."""
    return WideResNet(depth, width, num_classes, dropout, in_channels)


def wrn28_10(num_classes: int = 10, dropout: float = 0.0, in_channels: int = 3) -> WideResNet:
    """WRN-28-10 (36.5 M parameters at 10 classes)."""
    return WideResNet(28, 10, num_classes, dropout, in_channels)


def wrn28_2(num_classes: int = 10, dropout: float = 0.0, in_channels: int = 3) -> WideResNet:
    """WRN-28-2 (1.47 M parameters at 10 classes): the semi-supervised CIFAR benchmarks' network (UDA, KeepAugment Table 7)."""
    return WideResNet(28, 2, num_classes, dropout, in_channels)
