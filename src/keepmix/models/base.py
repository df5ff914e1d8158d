"""The interface every keepmix model exposes.

* ``features(x)`` → the last feature map B×C×h×w (for CAM-based ops: SnapMix);
* ``classifier`` → the final ``nn.Linear`` applied after global average pooling;
* ``forward(x) = classifier(flatten(pool(features(x))))``;
* ``first_block`` → the module after which KeepAugment's early head is attached
  (the first residual stage);
* ``hidden_blocks()`` → the ordered modules whose outputs Manifold Mixup may mix
  (the input itself is layer 0; block k's output is layer k+1).
"""

from __future__ import annotations

import abc
from typing import List

import torch
from torch import nn


class ClassifierModel(nn.Module, metaclass=abc.ABCMeta):
    pool: nn.Module
    classifier: nn.Linear

    @property
    @abc.abstractmethod
    def first_block(self) -> nn.Module:
        """The module after which the early head attaches."""

    @abc.abstractmethod
    def hidden_blocks(self) -> List[nn.Module]:
        """Modules whose outputs Manifold Mixup may mix, in forward order."""

    @abc.abstractmethod
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map B×C×h×w."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))
