"""Per-batch λ for Mixup/CutMix (timm's mode="batch") and keepmix.integrations.timm.Mixup, the drop-in for
timm's Mixup: tested by definition here, and against timm's own Mixup where timm is installed."""

from __future__ import annotations

import math

import pytest
import torch

from keepmix import CutMix, GuidedMixup, Mixup
from keepmix.integrations.timm import MinMaxCutMix, Mixup as TimmMixup


def gen(seed):
    return torch.Generator().manual_seed(seed)


def ks_statistic(samples, cdf):
    """One-sample Kolmogorov–Smirnov D of ``samples`` against the continuous ``cdf``."""
    x, _ = torch.sort(torch.as_tensor(samples, dtype=torch.float64))
    n = x.numel()
    f = cdf(x)
    upper = torch.arange(1, n + 1, dtype=torch.float64) / n - f
    lower = f - torch.arange(0, n, dtype=torch.float64) / n
    return float(torch.maximum(upper, lower).max())


def arcsine_cdf(x):  # Beta(1/2, 1/2)
    return 2.0 / math.pi * torch.asin(torch.sqrt(x.clamp(0, 1)))


def distinct_batch(batch=8, k=10):
    images = torch.rand(batch, 3, 16, 16, generator=gen(0))
    labels = torch.randperm(k, generator=gen(1))[:batch]
    return images, labels


# --------------------------------------------------------------------------- lam_mode on keepmix's Mixup/CutMix


def test_mixup_batch_mode_draws_one_beta_lambda_per_batch():
    images, labels = distinct_batch()
    op = Mixup(10, alpha=0.5, lam_mode="batch", generator=gen(2))
    lams = []
    for _ in range(400):
        out, soft = op(images, labels)
        lam = op.last_stats["lam"]
        assert torch.all(lam == lam[0])                         # one λ for the whole batch
        partner = op.last_stats["partner"]
        assert torch.allclose(out, lam[0] * images + (1 - lam[0]) * images[partner], atol=1e-6)
        assert torch.allclose(soft[torch.arange(8), labels], lam)
        lams.append(float(lam[0]))
    # λ ~ Beta(0.5, 0.5): KS at the 1 % level (critical value 1.63 / √n)
    assert ks_statistic(lams, arcsine_cdf) < 1.63 / math.sqrt(len(lams))
    # the per-image mode really differs: λ varies within a batch
    elem = Mixup(10, alpha=0.5, generator=gen(3))
    elem(images, labels)
    assert elem.last_stats["lam"].unique().numel() > 1


def test_batch_mode_mixing_decision_is_one_coin_per_batch():
    images, labels = distinct_batch()
    op = Mixup(10, alpha=1.0, prob=0.3, lam_mode="batch", generator=gen(4))
    mixed_batches = 0
    calls = 2000
    for _ in range(calls):
        op(images, labels)
        mixed = op.last_stats["mixed"]
        assert bool(mixed.all()) or not bool(mixed.any())     # all or none
        mixed_batches += int(mixed[0])
    # binomial(2000, 0.3): 4 standard deviations
    assert abs(mixed_batches / calls - 0.3) < 4 * math.sqrt(0.3 * 0.7 / calls)


def test_cutmix_batch_mode_uses_one_box_for_the_batch():
    images, labels = distinct_batch()
    op = CutMix(10, alpha=1.0, lam_mode="batch", generator=gen(5))
    draws = []
    for _ in range(250):
        out, soft = op(images, labels)
        box, lam = op.last_stats["box"], op.last_stats["lam"]
        assert torch.all(box == box[0]) and torch.all(lam == lam[0])
        top, left, h, w = box[0].tolist()
        assert float(lam[0]) == pytest.approx(1 - h * w / 256)
        partner = op.last_stats["partner"]
        inside = torch.zeros(16, 16, dtype=torch.bool)
        inside[top:top + h, left:left + w] = True
        assert torch.equal(out[:, :, inside], images[partner][:, :, inside])
        assert torch.equal(out[:, :, ~inside], images[:, :, ~inside])
        draws.append(float(op.last_stats["lam_drawn"][0]))
    assert ks_statistic(draws, lambda x: x) < 1.63 / math.sqrt(len(draws))     # λ̂ ~ Beta(1, 1)


def test_lam_mode_is_checked_and_printed():
    with pytest.raises(ValueError, match="lam_mode"):
        Mixup(10, lam_mode="pair")
    assert "lam_mode='batch'" in repr(CutMix(10, lam_mode="batch"))


# --------------------------------------------------------------------------- the timm drop-in


def one_hot_smoothed(labels, k, eps):
    return torch.nn.functional.one_hot(labels, k).float() * (1 - eps) + eps / k


def test_timm_mixup_disabled_returns_smoothed_one_hot_and_the_images():
    images, labels = distinct_batch()
    fn = TimmMixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10, generator=gen(6))
    assert fn.mixup_enabled is True
    fn.mixup_enabled = False                                 # what timm's --mixup-off-epoch does
    x, y = fn(images.clone(), labels)
    assert torch.equal(x, images)
    assert torch.allclose(y, one_hot_smoothed(labels, 10, 0.1))
    assert y.dtype == torch.float32 and y.shape == (8, 10)


def test_timm_mixup_batch_mode_is_mixup_with_one_lambda_and_smoothing():
    images, labels = distinct_batch()
    fn = TimmMixup(mixup_alpha=1.0, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=10, generator=gen(7))
    x, y = fn(images, labels)
    lam = fn.op.last_stats["lam"]
    partner = fn.op.last_stats["partner"]
    assert torch.all(lam == lam[0])
    assert torch.allclose(x, lam[0] * images + (1 - lam[0]) * images[partner], atol=1e-6)
    expected = lam[0] * one_hot_smoothed(labels, 10, 0.1) + (1 - lam[0]) * one_hot_smoothed(labels[partner], 10, 0.1)
    assert torch.allclose(y, expected, atol=1e-6)
    assert torch.allclose(y.sum(1), torch.ones(8))


def test_timm_mixup_switch_prob_and_prob_per_batch():
    images, labels = distinct_batch()
    fn = TimmMixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.8, switch_prob=0.25, num_classes=10, generator=gen(8))
    calls, cut, clean = 1500, 0, 0
    for _ in range(calls):
        x, y = fn(images, labels)
        if torch.equal(x, images):
            clean += 1
            assert torch.allclose(y, one_hot_smoothed(labels, 10, 0.0))
            continue
        choice = fn.op.last_stats["op.choice"]
        cut += int(choice)
        inner = fn.op.op.ops[int(choice)]
        assert torch.all(inner.last_stats["lam"] == inner.last_stats["lam"][0])
    # P(unmixed) = 0.2 (a λ of exactly 1 has probability 0); P(CutMix | mixed) = 0.25
    assert abs(clean / calls - 0.2) < 4 * math.sqrt(0.2 * 0.8 / calls)
    mixed = calls - clean
    assert abs(cut / mixed - 0.25) < 4 * math.sqrt(0.25 * 0.75 / mixed)


def test_timm_mixup_elem_mode_draws_per_image():
    images, labels = distinct_batch(batch=16, k=16)
    fn = TimmMixup(mixup_alpha=1.0, cutmix_alpha=1.0, prob=1.0, mode="elem", num_classes=16, generator=gen(9))
    x, y = fn(images, labels)
    choice = fn.op.last_stats["choice"]
    assert choice.shape == (16,)
    mixup_lam = fn.op.ops[0].last_stats["lam"]
    assert mixup_lam.unique().numel() > 1
    assert torch.allclose(y.sum(1), torch.ones(16))
    for mode in ("pair", "elem"):
        assert TimmMixup(num_classes=3, mode=mode)(images[:4], labels[:4] % 3)[1].shape == (4, 3)


def test_minmax_cutmix_boxes_and_lambda():
    images, labels = distinct_batch()
    op = MinMaxCutMix(10, (0.25, 0.75), generator=gen(10))
    for _ in range(200):
        out, soft = op(images, labels)
        top, left, h, w = op.last_stats["box"].unbind(1)
        assert bool(((h >= 4) & (h < 12) & (w >= 4) & (w < 12)).all())
        assert bool(((top + h <= 16) & (left + w <= 16)).all())
        assert torch.allclose(op.last_stats["lam"], 1 - (h * w).float() / 256)
    fn = TimmMixup(mixup_alpha=0.0, cutmix_minmax=(0.2, 0.5), num_classes=10, generator=gen(11))
    assert fn.cutmix_alpha == 1.0 and isinstance(fn.op, MinMaxCutMix) and fn.op.lam_mode == "batch"
    fn(images, labels)
    box = fn.op.last_stats["box"]
    assert torch.all(box == box[0])


def test_timm_mixup_runs_any_keepmix_mixer():
    images, labels = distinct_batch()
    guided = GuidedMixup(10, mix_prob=1.0, generator=gen(12))
    fn = TimmMixup(label_smoothing=0.1, num_classes=10, mixer=guided)
    x, y = fn(images, labels)
    assert fn.op is guided and x.shape == images.shape and not torch.equal(x, images)
    assert torch.allclose(y.sum(1), torch.ones(8)) and float(y.min()) >= 0.01 - 1e-7
    fn.mixup_enabled = False
    x, y = fn(images, labels)
    assert torch.equal(x, images) and torch.allclose(y, one_hot_smoothed(labels, 10, 0.1))
    sometimes = TimmMixup(prob=0.5, num_classes=10, mixer=GuidedMixup(10, mix_prob=1.0), generator=gen(13))
    outcomes = {torch.equal(sometimes(images, labels)[0], images) for _ in range(12)}
    assert outcomes == {True, False}


def test_timm_mixup_argument_errors():
    with pytest.raises(ValueError, match="num_classes"):
        TimmMixup()
    with pytest.raises(ValueError, match="mode"):
        TimmMixup(num_classes=10, mode="half")
    with pytest.raises(ValueError, match="mixup_alpha > 0"):
        TimmMixup(mixup_alpha=0.0, cutmix_alpha=0.0, num_classes=10)
    with pytest.raises(TypeError, match="mixer"):
        TimmMixup(num_classes=10, mixer=torch.nn.Identity())
    with pytest.raises(ValueError, match="cutmix_minmax"):
        TimmMixup(num_classes=10, cutmix_minmax=(0.8, 0.2))


# --------------------------------------------------------------------------- against timm itself (when installed)


def timm_lambdas(fn, images, labels, calls):
    """λ of each call, read from the targets (distinct labels: row 0's weight on its own class)."""
    out = []
    for _ in range(calls):
        _, y = fn(images.clone(), labels)
        out.append(float(y[0, labels[0]]))
    return out


def test_against_timm_disabled_and_prob_zero_are_identical():
    timm_mixup = pytest.importorskip("timm.data").Mixup
    images, labels = distinct_batch()
    for kwargs in ({"prob": 0.0}, {}):
        ours = TimmMixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10, **kwargs)
        theirs = timm_mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10, **kwargs)
        if not kwargs:
            ours.mixup_enabled = theirs.mixup_enabled = False
        x1, y1 = ours(images.clone(), labels)
        x2, y2 = theirs(images.clone(), labels)
        assert torch.equal(x1, x2) and torch.allclose(y1, y2.to(y1.device).float())


def test_against_timm_lambda_distributions_match():
    timm_mixup = pytest.importorskip("timm.data").Mixup
    scipy_stats = pytest.importorskip("scipy.stats")
    import numpy as np
    np.random.seed(0)
    images, labels = distinct_batch()
    for kwargs in ({"mixup_alpha": 0.8, "cutmix_alpha": 0.0}, {"mixup_alpha": 0.0, "cutmix_alpha": 1.0},
                   {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "prob": 0.7}):
        ours = TimmMixup(num_classes=10, label_smoothing=0.1, generator=gen(14), **kwargs)
        theirs = timm_mixup(num_classes=10, label_smoothing=0.1, **kwargs)
        a, b = timm_lambdas(ours, images, labels, 400), timm_lambdas(theirs, images, labels, 400)
        assert scipy_stats.ks_2samp(a, b).pvalue > 1e-3, kwargs
        # targets of both: rows sum to 1, smoothing floor ε/K
        _, y1 = ours(images.clone(), labels)
        _, y2 = theirs(images.clone(), labels)
        for y in (y1, y2.float().cpu()):
            assert torch.allclose(y.sum(1), torch.ones(8), atol=1e-5) and float(y.min()) >= 0.01 - 1e-6
