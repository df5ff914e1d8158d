"""The deep CIFAR ResNets of He et al. 2016a, Section 4.2 (ResNet-20/32/44/56/110/…).

depth = 6n + 2: a 3×3 conv with 16 channels (+ BN + ReLU), three stages of n BasicBlocks
with 16, 32 and 64 channels (strides 1, 2, 2; feature maps 32², 16², 8² for 32×32
inputs), global average pooling and a linear classifier. ResNet-110 (n = 18) has
1,727,962 parameters for 10 classes ("1.7M" in the paper).

Shortcut when the shape changes:

* ``"A"`` (default, the paper's CIFAR choice): identity on the spatially subsampled
  input ``x[:, :, ::2, ::2]`` with the extra channels zero-padded (half before, half
  after) — parameter-free;
* ``"B"``: a 1×1 stride-2 convolution + BN (2,752 more parameters for ResNet-110).
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ._common import StagedClassifier, check_int, conv1x1, conv3x3, he_init, residual_stages

SHORTCUTS = ("A", "B")


class CifarBasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN, plus shortcut, then ReLU. B×C_in×H×W → B×C×⌈H/s⌉×⌈W/s⌉."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.stride = stride
        self.pad_before = self.pad_after = 0
        self.projection = None
        if stride != 1 or in_channels != channels:
            if shortcut == "B":
                self.projection = nn.Sequential(conv1x1(in_channels, channels, stride), nn.BatchNorm2d(channels))
            else:
                extra = channels - in_channels
                if extra < 0:
                    raise ValueError("option-A shortcuts cannot reduce the channel count")
                self.pad_before, self.pad_after = extra // 2, extra - extra // 2

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.projection is not None:
            return self.projection(x)
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.pad_before or self.pad_after:
            x = F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class DeepCifarResNet(StagedClassifier):
    """ResNet-(6n+2) for 32×32 inputs with 16/32/64 channels; see the module docstring."""

    def __init__(self, depth: int = 110, num_classes: int = 10, shortcut: str = "A", in_channels: int = 3):
        depth = check_int(depth, "depth", minimum=8)
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 (20, 32, 44, 56, 110, …), got {depth}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        num_classes = check_int(num_classes, "num_classes", minimum=1)
        in_channels = check_int(in_channels, "in_channels", minimum=1)
        n = (depth - 2) // 6
        widths = (16, 32, 64)
        stem = nn.Sequential(conv3x3(in_channels, 16), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        stages, current = residual_stages(lambda c, w, s: CifarBasicBlock(c, w, s, shortcut), 16, widths,
                                          [n] * len(widths))
        super().__init__(stem, stages, current, num_classes)
        self.depth = depth
        he_init(self)


def resnet_cifar_depth(depth: int, num_classes: int = 10, shortcut: str = "A", in_channels: int = 3) -> DeepCifarResNet:
    """ResNet-``depth`` (depth = 6n + 2) for 32×32 images, He et al. 2016a."""
    return DeepCifarResNet(depth, num_classes, shortcut, in_channels)


def resnet110(num_classes: int = 10, shortcut: str = "A", in_channels: int = 3) -> DeepCifarResNet:
    """ResNet-110 for 32×32 images (1.73 M parameters at 10 classes with option-A shortcuts)."""
    return DeepCifarResNet(110, num_classes, shortcut, in_channels)
