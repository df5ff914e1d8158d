"""DenseNet-BC for 224×224 inputs (Huang et al. 2017); DenseNet-121 by default.

Stem: 7×7 stride-2 conv (64 channels), BN, ReLU, 3×3 stride-2 max-pool. Four dense blocks
of 6, 12, 24, 16 layers with growth rate k = 32; each layer maps its input x (all earlier
feature maps, concatenated) to ``cat(x, conv3×3(ReLU(BN(conv1×1(ReLU(BN(x)))))))``, the 1×1
conv having bn_size·k = 128 channels and the 3×3 conv k. Between blocks a transition
BN-ReLU-conv1×1 halves the channels (compression 0.5) and a 2×2 average pool halves the
resolution. After the last block: BN + ReLU, global average pooling, linear classifier.
DenseNet-121 has 7,978,856 parameters at 1000 classes (1024 features).

Stage layout for the interface: stage i = dense block i + transition i (the last stage ends
with the final BN + ReLU instead), so ``first_block`` is dense block 1 with its transition.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ._common import StagedClassifier, check_fraction, check_int, conv1x1, conv3x3, he_init


class DenseLayer(nn.Module):
    """B×C×H×W → B×(C + growth)×H×W: the input with ``growth`` new channels appended."""

    def __init__(self, in_channels: int, growth: int, bn_size: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv1x1(in_channels, bn_size * growth)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = conv3x3(bn_size * growth, growth)
        self.relu = nn.ReLU(inplace=True)  # acts on BN outputs only, never on the layer input
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv1(self.relu(self.norm1(x)))
        new = self.dropout(self.conv2(self.relu(self.norm2(new))))
        return torch.cat([x, new], 1)


class Transition(nn.Sequential):
    """BN-ReLU-conv1×1 (C → C_out) then 2×2 average pooling: B×C×H×W → B×C_out×⌊H/2⌋×⌊W/2⌋."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True), conv1x1(in_channels, out_channels),
                         nn.AvgPool2d(2, stride=2))


class DenseNet(StagedClassifier):
    """DenseNet-BC with the ImageNet stem; see the module docstring."""

    def __init__(self, growth: int = 32, blocks: Sequence[int] = (6, 12, 24, 16), stem_channels: int = 64,
                 bn_size: int = 4, num_classes: int = 1000, dropout: float = 0.0, in_channels: int = 3):
        growth = check_int(growth, "growth", minimum=1)
        stem_channels = check_int(stem_channels, "stem_channels", minimum=1)
        bn_size = check_int(bn_size, "bn_size", minimum=1)
        num_classes = check_int(num_classes, "num_classes", minimum=1)
        in_channels = check_int(in_channels, "in_channels", minimum=1)
        dropout = check_fraction(dropout, "dropout")
        blocks = [check_int(b, "blocks[i]", minimum=1) for b in blocks]
        if not blocks:
            raise ValueError("blocks must name at least one dense block")
        stem = nn.Sequential(nn.Conv2d(in_channels, stem_channels, 7, stride=2, padding=3, bias=False),
                             nn.BatchNorm2d(stem_channels), nn.ReLU(inplace=True),
                             nn.MaxPool2d(3, stride=2, padding=1))
        stages = []
        current = stem_channels
        for index, count in enumerate(blocks):
            layers = []
            for _ in range(count):
                layers.append(DenseLayer(current, growth, bn_size, dropout))
                current += growth
            if index < len(blocks) - 1:
                layers.append(Transition(current, current // 2))
                current //= 2
            else:
                layers += [nn.BatchNorm2d(current), nn.ReLU(inplace=True)]
            stages.append(nn.Sequential(*layers))
        super().__init__(stem, stages, current, num_classes)
        he_init(self)


def densenet121(num_classes: int = 1000, dropout: float = 0.0, in_channels: int = 3) -> DenseNet:
    """DenseNet-121 (k = 32, blocks 6-12-24-16, bn_size 4): 7.98 M parameters at 1000 classes."""
    return DenseNet(32, (6, 12, 24, 16), 64, 4, num_classes, dropout, in_channels)
