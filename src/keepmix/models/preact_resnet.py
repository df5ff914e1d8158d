"""Pre-activation ResNet for 32×32 inputs (He et al. 2016b, "Identity Mappings in Deep Residual Networks").

The CIFAR PreActResNet-18 used by Manifold Mixup, PuzzleMix and GuidedMixup: a 3×3 stride-1
stem convolution (no BN/ReLU after it, no max-pool), four stages of two pre-activation
blocks with 64/128/256/512 channels (strides 1, 2, 2, 2), a final BN + ReLU, global average
pooling and a linear classifier — 11,172,170 parameters for 10 classes.

Pre-activation block, input x with C_in channels, output C channels::

    a   = ReLU(BN(x))
    out = conv3×3(ReLU(BN(conv3×3_stride(a)))) + shortcut
    shortcut = x                     if stride 1 and C_in = C
             = conv1×1_stride(a)      otherwise (projection of the pre-activated input)

The final BN + ReLU belongs to the last stage, so ``features`` is rectified and the forward
pass is exactly hidden_blocks → pool → classifier.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from ._common import StagedClassifier, check_int, conv1x1, conv3x3, he_init, residual_stages


class PreActBlock(nn.Module):
    """BN-ReLU-conv3×3-BN-ReLU-conv3×3 with an identity or 1×1 projection shortcut.

    B×C_in×H×W → B×C×⌈H/s⌉×⌈W/s⌉.
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels)
        self.shortcut = conv1x1(in_channels, channels, stride) if stride != 1 or in_channels != channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(activated)
        out = self.conv1(activated)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(StagedClassifier):
    """Pre-activation ResNet for small images; ``blocks`` and ``widths`` give each stage (first stride 1, then 2)."""

    def __init__(self, num_classes: int = 10, blocks: Sequence[int] = (2, 2, 2, 2),
                 widths: Sequence[int] = (64, 128, 256, 512), in_channels: int = 3):
        num_classes = check_int(num_classes, "num_classes", minimum=1)
        in_channels = check_int(in_channels, "in_channels", minimum=1)
        if len(blocks) != len(widths) or len(blocks) == 0:
            raise ValueError(f"blocks and widths must be non-empty and of equal length, got {blocks} and {widths}")
        blocks = [check_int(b, "blocks[i]", minimum=1) for b in blocks]
        widths = [check_int(w, "widths[i]", minimum=1) for w in widths]
        stem = conv3x3(in_channels, widths[0])
        stages, current = residual_stages(PreActBlock, widths[0], widths, blocks)
        # Final BN + ReLU of the pre-activation design, part of the last stage (see module docstring).
        stages[-1].append(nn.BatchNorm2d(current))
        stages[-1].append(nn.ReLU())
        super().__init__(stem, stages, current, num_classes)
        he_init(self)


def preact_resnet18(num_classes: int = 10, in_channels: int = 3) -> PreActResNet:
    """PreActResNet-18 for 32×32 images (11.17 M parameters at 10 classes)."""
    return PreActResNet(num_classes, blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512), in_channels=in_channels)
