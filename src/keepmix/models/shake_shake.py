"""Shake-Shake regularised ResNets for 32×32 inputs (Gastaldi 2017); Shake-Shake-26 2×96d by default.

depth = 6n + 2: a 3×3 conv with 16 channels + BN, three stages of n blocks with w, 2w, 4w
channels (strides 1, 2, 2; w = 96 for "2×96d", n = 4 for depth 26), a final ReLU, global
average pooling and a linear classifier — 26,192,922 parameters for 10 classes (26.2 M in the paper).

Each block has two residual branches ``ReLU-conv3×3_s-BN-ReLU-conv3×3-BN`` and computes
(the "Shake-Shake-Image" variant, one coefficient per sample)::

    forward:   y = shortcut(x) + α·b1(x) + (1 − α)·b2(x),   α ~ U(0, 1) per sample
    backward:  ∂y/∂b1 = β,  ∂y/∂b2 = 1 − β,                  β ~ U(0, 1) per sample, independent
    eval:      y = shortcut(x) + ½·b1(x) + ½·b2(x)           (α replaced by its mean)

When the shape changes, the shortcut is ReLU, then two paths — a 1×1 stride-s average pool
and the same on the input shifted by one pixel (up-left, zero filled) — each followed by a
1×1 conv with half the output channels; the two are concatenated and batch-normalised.

Randomness: α and β come from torch's global RNG of the input's device (one uniform draw
per sample and block per training forward); seed it with ``torch.manual_seed`` for
reproducible runs. There is no per-call generator: the draws happen inside ``forward``.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .. import _random
from ._common import StagedClassifier, check_int, conv1x1, conv3x3, he_init, residual_stages


def shake_shake_mix(branch1: torch.Tensor, branch2: torch.Tensor, alpha: torch.Tensor,
                    beta: torch.Tensor) -> torch.Tensor:
    """α·b1 + (1 − α)·b2 in the forward pass whose gradient reaches b1 scaled by β and b2 by 1 − β.

    ``alpha`` and ``beta`` broadcast against the branches (B×1×1×1 for per-sample draws).
    Written as ``backward_mix + (forward_mix − backward_mix).detach()``: the value is the
    forward mix (up to one rounding) and autograd only sees the β-weighted term.
    """
    forward_mix = alpha * branch1 + (1 - alpha) * branch2
    backward_mix = beta * branch1 + (1 - beta) * branch2
    return backward_mix + (forward_mix - backward_mix).detach()


def _branch(in_channels: int, channels: int, stride: int) -> nn.Sequential:
    # The leading ReLU must not be in place: the block input is shared with the shortcut.
    return nn.Sequential(nn.ReLU(), conv3x3(in_channels, channels, stride), nn.BatchNorm2d(channels),
                         nn.ReLU(inplace=True), conv3x3(channels, channels), nn.BatchNorm2d(channels))


class ShiftedPoolShortcut(nn.Module):
    """Gastaldi's shape-changing shortcut: B×C_in×H×W → B×C×⌈H/s⌉×⌈W/s⌉ (C even)."""

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        if channels % 2:
            raise ValueError(f"the shake-shake shortcut needs an even channel count, got {channels}")
        self.stride = stride
        self.conv_even = conv1x1(in_channels, channels // 2)
        self.conv_odd = conv1x1(in_channels, channels // 2)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        s = self.stride
        even = x[:, :, ::s, ::s]  # 1×1 average pool with stride s is plain subsampling
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        odd = shifted[:, :, ::s, ::s]
        return self.bn(torch.cat([self.conv_even(even), self.conv_odd(odd)], 1))


class ShakeShakeBlock(nn.Module):
    """Two-branch residual block with shake-shake mixing (module docstring)."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.branch1 = _branch(in_channels, channels, stride)
        self.branch2 = _branch(in_channels, channels, stride)
        self.shortcut = (ShiftedPoolShortcut(in_channels, channels, stride)
                         if stride != 1 or in_channels != channels else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1, b2 = self.branch1(x), self.branch2(x)
        if self.training:
            shape = (x.shape[0], 1, 1, 1)
            alpha = _random.rand(shape, x.device, None, b1.dtype)
            beta = _random.rand(shape, x.device, None, b1.dtype)
            mixed = shake_shake_mix(b1, b2, alpha, beta)
        else:
            mixed = 0.5 * (b1 + b2)
        return self.shortcut(x) + mixed


class ShakeShakeResNet(StagedClassifier):
    """Shake-Shake-depth 2×``base_width``d; see the module docstring."""

    def __init__(self, depth: int = 26, base_width: int = 96, num_classes: int = 10, in_channels: int = 3):
        depth = check_int(depth, "depth", minimum=8)
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 (8, 14, 20, 26, …), got {depth}")
        base_width = check_int(base_width, "base_width", minimum=1)
        if base_width % 2:
            raise ValueError(f"base_width must be even (the shortcut splits channels in two), got {base_width}")
        num_classes = check_int(num_classes, "num_classes", minimum=1)
        in_channels = check_int(in_channels, "in_channels", minimum=1)
        n = (depth - 2) // 6
        stem = nn.Sequential(conv3x3(in_channels, 16), nn.BatchNorm2d(16))
        stages, current = residual_stages(ShakeShakeBlock, 16, [base_width * m for m in (1, 2, 4)], [n] * 3)
        stages[-1].append(nn.ReLU())
        super().__init__(stem, stages, current, num_classes)
        self.depth, self.base_width = depth, base_width
        he_init(self)


def shake_shake26_2x96d(num_classes: int = 10, in_channels: int = 3) -> ShakeShakeResNet:
    """Shake-Shake-26 2×96d for 32×32 images (26.2 M parameters at 10 classes)."""
    return ShakeShakeResNet(26, 96, num_classes, in_channels)
