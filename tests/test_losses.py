"""Soft-target cross-entropy against F.cross_entropy; label smoothing lives in the loss only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from keepmix import GuidedMixup, KeepCutMix, KeepCutout
from keepmix.losses import SoftTargetCrossEntropy, smooth_targets, soft_target_cross_entropy, to_soft_targets


def _logits(batch=6, classes=5, seed=0):
    return torch.randn(batch, classes, generator=torch.Generator().manual_seed(seed)) * 3


def test_one_hot_equals_cross_entropy():
    logits = _logits()
    y = torch.tensor([0, 4, 2, 2, 1, 3])
    expected = F.cross_entropy(logits, y)
    assert soft_target_cross_entropy(logits, F.one_hot(y, 5).float()).item() == pytest.approx(expected.item(),
                                                                                             rel=1e-6)
    assert soft_target_cross_entropy(logits, y).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3, 1.0])
def test_label_smoothing_on_indices_equals_cross_entropy(eps):
    logits = _logits(seed=1)
    y = torch.tensor([1, 1, 0, 4, 3, 2])
    for reduction in ("mean", "sum", "none"):
        expected = F.cross_entropy(logits, y, label_smoothing=eps, reduction=reduction)
        got = soft_target_cross_entropy(logits, y, label_smoothing=eps, reduction=reduction)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    # the module form
    module = SoftTargetCrossEntropy(label_smoothing=eps)
    assert module(logits, y).item() == pytest.approx(F.cross_entropy(logits, y, label_smoothing=eps).item(),
                                                     rel=1e-5)


def test_soft_targets_definition_and_gradient():
    logits = _logits(seed=2).requires_grad_(True)
    soft = torch.softmax(torch.randn(6, 5, generator=torch.Generator().manual_seed(3)), dim=1)
    loss = soft_target_cross_entropy(logits, soft, label_smoothing=0.2, reduction="none")
    smoothed = 0.8 * soft + 0.2 / 5
    expected = -(smoothed * torch.log_softmax(logits.detach().double(), dim=1).float()).sum(dim=1)
    np.testing.assert_allclose(loss.detach().numpy(), expected.numpy(), rtol=1e-5)
    # ∂L/∂z = (softmax(z) − ỹ)/B for the mean
    (grad,) = torch.autograd.grad(soft_target_cross_entropy(logits, soft, label_smoothing=0.2), logits)
    np.testing.assert_allclose(grad.numpy(), ((torch.softmax(logits, 1) - smoothed) / 6).detach().numpy(),
                               rtol=1e-5, atol=1e-7)


def test_half_precision_logits_are_computed_in_float32():
    logits = _logits(seed=4).to(torch.float16)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    loss = soft_target_cross_entropy(logits, y)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(F.cross_entropy(logits.float(), y).item(), rel=1e-6)


def test_smooth_targets_and_to_soft_targets():
    y = torch.tensor([2, 0])
    soft = to_soft_targets(y, 3)
    assert soft.dtype == torch.float32 and torch.equal(soft, torch.tensor([[0., 0., 1.], [1., 0., 0.]]))
    np.testing.assert_allclose(smooth_targets(soft, 0.3).numpy(), (soft * 0.7 + 0.1).numpy(), rtol=1e-6)
    assert smooth_targets(soft, 0.0) is soft
    double = torch.tensor([[0.25, 0.75]], dtype=torch.float64)
    assert to_soft_targets(double).dtype == torch.float32
    with pytest.raises(ValueError, match="num_classes"):
        to_soft_targets(y)
    with pytest.raises(ValueError, match="num_classes"):
        to_soft_targets(double, num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        to_soft_targets(y, num_classes=0)
    with pytest.raises(ValueError, match="targets"):
        to_soft_targets(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="targets"):
        to_soft_targets([0, 1], 2)


def test_loss_errors():
    logits = _logits()
    y = torch.zeros(6, dtype=torch.long)
    with pytest.raises(ValueError, match="reduction"):
        soft_target_cross_entropy(logits, y, reduction="avg")
    with pytest.raises(ValueError, match="logits"):
        soft_target_cross_entropy(logits[0], y)
    with pytest.raises(ValueError, match="label_smoothing"):
        soft_target_cross_entropy(logits, y, label_smoothing=1.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        SoftTargetCrossEntropy(label_smoothing=-0.1)


def test_ops_never_smooth_targets():
    """Unmixed batches come back as exact one-hot rows; mixed rows hold only λ and 1 − λ."""
    g = torch.Generator().manual_seed(5)
    x = torch.rand(6, 3, 8, 8, generator=g)
    maps = torch.rand(6, 8, 8, generator=g)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    _, soft = GuidedMixup(5, saliency=None, mix_prob=0.0)(x, y, saliency_maps=maps)
    assert torch.equal(soft, F.one_hot(y, 5).float())
    _, soft = KeepCutMix(5, prob=0.0)(x, y, saliency_maps=maps)
    assert torch.equal(soft, F.one_hot(y, 5).float())
    mixer = KeepCutMix(5, generator=torch.Generator().manual_seed(1))
    _, soft = mixer(x, y, saliency_maps=maps)
    lam = mixer.last_stats["lam"]
    for i in range(6):
        nonzero = soft[i][soft[i] > 0]
        assert nonzero.numel() <= 2                         # no ε/K mass anywhere
        assert soft[i, y[i]].item() >= float(lam[i]) - 1e-6
    # label-preserving ops hand the targets back untouched
    _, same = KeepCutout(3)(x, y, saliency_maps=maps)
    assert same is y
