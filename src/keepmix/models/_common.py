"""Pieces shared by the model zoo: argument checks, He initialisation, the staged layout.

Every network here is ``stem → stages[0] → … → stages[-1] → pool → classifier``
(:class:`StagedClassifier`). Whatever a network applies after its last block and
before pooling (the final BN + ReLU of pre-activation networks) is appended to
the last stage, so that

* ``features(x)`` is the rectified last feature map (CAM = classifier weights · features),
* ``hidden_blocks() = [stem, *stages]`` and their composition followed by
  ``pool`` and ``classifier`` *is* the forward pass — a forward hook that
  replaces block k's output (Manifold Mixup) changes nothing else,
* ``first_block = stages[0]`` — KeepAugment's early head attaches to its output.

No block modifies its input in place (no in-place ReLU on a block input), so a
hooked or captured block output stays valid after later blocks have run.
"""

from __future__ import annotations

import numbers
from typing import Callable, List, Sequence, Tuple

import torch
from torch import nn

from .base import ClassifierModel


def check_int(value, name: str, *, minimum: int) -> int:
    """An integer (not bool) ``>= minimum``; TypeError / ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_fraction(value, name: str) -> float:
    """A real number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1), got {value!r}")
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3×3 convolution, padding 1, no bias (a BatchNorm follows or precedes it)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def he_init(model: nn.Module) -> None:
    """He et al. (2015) initialisation as the ResNet/WRN/PyramidNet/Shake-Shake papers use it.

    * convolutions: ``W ~ N(0, 2 / n)`` with ``n = k_h · k_w · out_channels``
      (fan-out, the form of the original Torch code of those papers); biases 0;
    * BatchNorm: weight 1, bias 0;
    * the final Linear: PyTorch's default weight draw, bias 0.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


def residual_stages(make_block: Callable[[int, int, int], nn.Module], in_channels: int,
                    widths: Sequence[int], blocks: Sequence[int], expansion: int = 1) -> Tuple[List[nn.Sequential], int]:
    """Stages of residual blocks: stage k has ``blocks[k]`` blocks of width ``widths[k]``; the first
    block of every stage after the first has stride 2. ``make_block(in_channels, width, stride)``
    builds one block, whose output has ``width · expansion`` channels.

    Returns the stages and the channel count of the last one.
    """
    stages = []
    current = in_channels
    for index, (count, width) in enumerate(zip(blocks, widths)):
        layers = []
        for j in range(count):
            layers.append(make_block(current, width, 2 if index > 0 and j == 0 else 1))
            current = width * expansion
        stages.append(nn.Sequential(*layers))
    return stages, current


class StagedClassifier(ClassifierModel):
    """``stem → stages → AdaptiveAvgPool2d(1) → Linear(num_features, num_classes)``.

    Subclasses build ``stem`` and ``stages`` and pass them in; ``num_features`` is the
    number of channels of the last stage's output (the classifier's input width).
    """

    def __init__(self, stem: nn.Module, stages: Sequence[nn.Module], num_features: int,
                 num_classes: int):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(num_features, num_classes)
        self.num_features = num_features

    @property
    def first_block(self) -> nn.Module:
        return self.stages[0]

    def hidden_blocks(self) -> List[nn.Module]:
        return [self.stem, *self.stages]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """B×C_in×H×W → B×num_features×h×w (h, w: H, W over the network's total stride)."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x
