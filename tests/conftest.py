"""Shared fixtures: tiny models, brute-force references and a chi-square p-value.

One autouse fixture seeds torch's global RNG before every test, and hypothesis runs
derandomised, so the suite draws the same numbers on every run (no flaky tolerance hits).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import settings
from torch import nn

settings.register_profile("keepmix", derandomize=True, deadline=None)
settings.load_profile("keepmix")


@pytest.fixture(autouse=True)
def _seeded_global_rng():
    torch.manual_seed(20261121)
    yield


class TinyNet(nn.Module):
    """A small conv classifier with BatchNorm and Dropout that follows the ClassifierModel interface.

    stem (conv-BN-ReLU) → block1 (conv-BN-ReLU, the early-head block) → dropout → block2 → pool → classifier.
    """

    def __init__(self, num_classes: int = 5, in_channels: int = 3, width: int = 4, dropout: float = 0.3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.drop = nn.Dropout(dropout)
        self.block2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2 * width, num_classes)

    @property
    def first_block(self) -> nn.Module:
        return self.block1

    def hidden_blocks(self):
        return [self.stem, self.block1, self.block2]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.drop(self.block1(self.stem(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@pytest.fixture
def make_tiny_net():
    """Factory ``(num_classes=5, in_channels=3, width=4, dropout=0.3, seed=0) -> TinyNet`` with
    non-trivial BatchNorm running statistics (so that a corrupted buffer would be visible)."""

    def factory(num_classes=5, in_channels=3, width=4, dropout=0.3, seed=0):
        with torch.random.fork_rng():           # seeded weights without touching the global RNG
            torch.manual_seed(seed)
            net = TinyNet(num_classes, in_channels, width, dropout)
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
                    m.num_batches_tracked.fill_(7)
        return net

    return factory


@pytest.fixture
def brute_window_sums():
    """Float64 brute force: ``f(maps B×H×W, h, w) -> B×(H−h+1)×(W−w+1)`` numpy, every window summed."""

    def reference(maps, h, w):
        s = np.asarray(maps, dtype=np.float64)
        batch, height, width = s.shape
        out = np.zeros((batch, height - h + 1, width - w + 1))
        for t in range(height - h + 1):
            for left in range(width - w + 1):
                out[:, t, left] = s[:, t:t + h, left:left + w].sum(axis=(1, 2))
        return out

    return reference


@pytest.fixture
def chi2_pvalue():
    """``f(observed counts, expected counts=None) -> p`` of Pearson's chi-square goodness-of-fit test
    (uniform expectation by default). Same value as ``scipy.stats.chisquare(...).pvalue`` without
    importing scipy (its import alone costs seconds)."""

    def pvalue(observed, expected=None):
        observed = np.asarray(observed, dtype=np.float64)
        if expected is None:
            expected = np.full_like(observed, observed.sum() / observed.size)
        expected = np.asarray(expected, dtype=np.float64)
        stat = float(((observed - expected) ** 2 / expected).sum())
        dof = observed.size - 1
        # P(χ²_dof > stat) = Q(dof/2, stat/2), the regularised upper incomplete gamma function
        return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                             torch.tensor(stat / 2, dtype=torch.float64)))

    return pvalue
