"""PyramidNet with ShakeDrop for 32×32 inputs (Han et al. 2017; Yamada et al. 2018).

Bottleneck PyramidNet-depth, widening α: depth = 9n + 2 (three stages of n bottlenecks,
strides 1, 2, 2). With N = 3n blocks in all, block k = 1…N has bottleneck width
``round(16 + α·k/N)`` (the additive pyramid) and 4× that many output channels, so the
classifier sees ``4·round(16 + α)`` features. PyramidNet-272, α = 200 has 26,210,842
parameters at 10 classes (26.0 M in Han et al.).

Stem: 3×3 conv with 16 channels + BN. Block (input C_in, width w, output 4w ≥ C_in)::

    F(x)  = BN(conv1×1(ReLU(BN(conv3×3_s(ReLU(BN(conv1×1(BN(x)))))))))
    y     = S(x) + shake_drop(F(x))
    S(x)  = x, average-pooled 2×2 (stride 2, ceil) when s = 2, zero-padded to 4w channels

then a final BN + ReLU, global average pooling and a linear classifier.

ShakeDrop on block k, per sample (one gate and one α, β per image)::

    train forward:  (b + a − b·a) · F(x),  b ~ Bernoulli(p_k),  a ~ U[−1, 1]
    train backward: gradient scaled by (b + c − b·c),           c ~ U[0, 1]
    eval:           E[b + a − b·a] · F(x) = (p_k + (1 − p_k)·E[a]) · F(x) = p_k · F(x)

with the linear-decay survival probability ``p_k = 1 − (k/N)·(1 − p_L)``, p_L = 0.5. The gate
is drawn per sample (the reference code draws one gate per batch; per-sample gating has the
same expectation and is the image-level variant of the ShakeDrop paper's study).

Randomness: b, a and c come from torch's global RNG of the input's device, inside
``forward``; seed it with ``torch.manual_seed`` for reproducible runs.
"""

from __future__ import annotations

import numbers
from typing import List, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from .. import _random
from ._common import StagedClassifier, check_int, conv1x1, conv3x3, he_init


def shake_drop_scale(residual: torch.Tensor, gate: torch.Tensor, alpha: torch.Tensor,
                     beta: torch.Tensor) -> torch.Tensor:
    """``(g + α − g·α)·residual`` forward, gradient scaled by ``(g + β − g·β)`` backward.

    ``gate`` (0/1, any dtype), ``alpha`` and ``beta`` broadcast against ``residual`` (B×1×1×1 per
    sample). For g ∈ {0, 1} the scales are 1 (open gate) or α / β (closed gate); they are
    selected rather than computed so that an open gate scales by exactly 1.
    """
    open_gate = gate != 0
    forward_scale = torch.where(open_gate, torch.ones_like(alpha), alpha)
    backward_scale = torch.where(open_gate, torch.ones_like(beta), beta)
    return residual * backward_scale + (residual * (forward_scale - backward_scale)).detach()


def _check_interval(value, name: str) -> Tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair (low, high) of numbers, got {value!r}") from None
    if not low <= high:
        raise ValueError(f"{name} must satisfy low <= high, got ({low}, {high})")
    return low, high


class ShakeDrop(nn.Module):
    """ShakeDrop on a residual branch output (module docstring); ``survival`` is p_k."""

    def __init__(self, survival: float = 0.5, alpha_range=(-1.0, 1.0), beta_range=(0.0, 1.0)):
        super().__init__()
        if isinstance(survival, bool) or not isinstance(survival, numbers.Real):
            raise TypeError(f"survival must be a number in [0, 1], got {survival!r}")
        if not 0.0 <= float(survival) <= 1.0:
            raise ValueError(f"survival must be in [0, 1], got {survival}")
        self.survival = float(survival)
        self.alpha_range = _check_interval(alpha_range, "alpha_range")
        self.beta_range = _check_interval(beta_range, "beta_range")

    @property
    def eval_scale(self) -> float:
        """E[b + α − bα] = p + (1 − p)·E[α]: the deterministic eval-mode multiplier."""
        mean_alpha = 0.5 * (self.alpha_range[0] + self.alpha_range[1])
        return self.survival + (1.0 - self.survival) * mean_alpha

    def forward(self, residual: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return residual * self.eval_scale
        shape = (residual.shape[0],) + (1,) * (residual.ndim - 1)
        device, dtype = residual.device, residual.dtype
        gate = (_random.rand(shape, device, None, dtype) < self.survival).to(dtype)
        a_low, a_high = self.alpha_range
        b_low, b_high = self.beta_range
        alpha = a_low + (a_high - a_low) * _random.rand(shape, device, None, dtype)
        beta = b_low + (b_high - b_low) * _random.rand(shape, device, None, dtype)
        return shake_drop_scale(residual, gate, alpha, beta)

    def extra_repr(self) -> str:
        return f"survival={self.survival:.4f}, alpha_range={self.alpha_range}, beta_range={self.beta_range}"


class PyramidBottleneck(nn.Module):
    """Pyramidal bottleneck with ShakeDrop: B×C_in×H×W → B×4w×⌈H/s⌉×⌈W/s⌉."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int, survival: float):
        super().__init__()
        out_channels = width * self.expansion
        if out_channels < in_channels:
            raise ValueError("a pyramidal block cannot reduce the channel count")
        self.branch = nn.Sequential(
            nn.BatchNorm2d(in_channels), conv1x1(in_channels, width),
            nn.BatchNorm2d(width), nn.ReLU(inplace=True), conv3x3(width, width, stride),
            nn.BatchNorm2d(width), nn.ReLU(inplace=True), conv1x1(width, out_channels),
            nn.BatchNorm2d(out_channels))
        self.shake_drop = ShakeDrop(survival)
        self.pool = nn.AvgPool2d(2, stride=2, ceil_mode=True) if stride != 1 else nn.Identity()
        self.extra_channels = out_channels - in_channels

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        if self.extra_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.shake_drop(self.branch(x))


def pyramid_widths(depth: int, alpha: float) -> List[int]:
    """Bottleneck widths round(16 + α·k/N), k = 1…N, N = 3·(depth − 2)/9."""
    total = 3 * ((depth - 2) // 9)
    return [int(round(16 + alpha * k / total)) for k in range(1, total + 1)]


class PyramidNetShakeDrop(StagedClassifier):
    """Bottleneck PyramidNet-depth (α) with ShakeDrop; see the module docstring."""

    def __init__(self, depth: int = 272, alpha: float = 200, num_classes: int = 10, last_survival: float = 0.5,
                 in_channels: int = 3):
        depth = check_int(depth, "depth", minimum=11)
        if (depth - 2) % 9:
            raise ValueError(f"depth must be 9n + 2 for the bottleneck PyramidNet (11, 20, 29, …, 272), got {depth}")
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
            raise TypeError(f"alpha must be a number >= 0 (the widening), got {alpha!r}")
        if not 0 <= float(alpha) < float("inf"):
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
        if isinstance(last_survival, bool) or not isinstance(last_survival, numbers.Real):
            raise TypeError(f"last_survival must be a number in [0, 1], got {last_survival!r}")
        if not 0.0 <= float(last_survival) <= 1.0:
            raise ValueError(f"last_survival must be in [0, 1], got {last_survival}")
        num_classes = check_int(num_classes, "num_classes", minimum=1)
        in_channels = check_int(in_channels, "in_channels", minimum=1)
        n = (depth - 2) // 9
        total = 3 * n
        widths = pyramid_widths(depth, float(alpha))
        stem = nn.Sequential(conv3x3(in_channels, 16), nn.BatchNorm2d(16))
        stages = []
        current = 16
        for index in range(3):
            layers = []
            for j in range(n):
                k = index * n + j + 1
                survival = 1.0 - (k / total) * (1.0 - float(last_survival))
                layers.append(PyramidBottleneck(current, widths[k - 1], 2 if index > 0 and j == 0 else 1, survival))
                current = widths[k - 1] * PyramidBottleneck.expansion
            stages.append(nn.Sequential(*layers))
        stages[-1].append(nn.BatchNorm2d(current))
        stages[-1].append(nn.ReLU(inplace=True))
        super().__init__(stem, stages, current, num_classes)
        self.depth, self.alpha = depth, float(alpha)
        he_init(self)


def pyramidnet_shakedrop(depth: int = 272, alpha: float = 200, num_classes: int = 10, last_survival: float = 0.5,
                         in_channels: int = 3) -> PyramidNetShakeDrop:
    """Bottleneck PyramidNet-``depth`` with widening ``alpha`` and ShakeDrop (p_L = ``last_survival``)."""
    return PyramidNetShakeDrop(depth, alpha, num_classes, last_survival, in_channels)
