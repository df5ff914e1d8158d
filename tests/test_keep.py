"""KeepAugment ops: the cut window scores strictly below the τ-quantile, the pasted one strictly above;
labels, areas and λ follow their definitions; degenerate input gives a defined result."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from keepmix import GuidedMixup, KeepCutMix, KeepCutout, KeepRandomErasing, Op, SelectivePaste, input_checks
from keepmix.pairing import greedy_pairing, saliency_distance
from keepmix.saliency import EarlyHead, gaussian_blur, gradient, normalize_sum


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _batch(batch, height, width, seed=0, channels=3):
    g = _gen(seed)
    images = torch.rand(batch, channels, height, width, generator=g) + 0.5   # no zeros: a zeroed pixel shows
    maps = torch.rand(batch, height, width, generator=g) ** 3
    return images, maps


def _box(region):
    """(top, bottom, left, right) of a boolean H×W region, asserting it is a full rectangle."""
    rows = region.any(dim=1).nonzero().flatten()
    cols = region.any(dim=0).nonzero().flatten()
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    assert region[top:bottom, left:right].all() and region.sum() == (bottom - top) * (right - left)
    return top, bottom, left, right


def _threshold(maps_b, h, w, tau, brute_window_sums):
    scores = brute_window_sums(maps_b[None].numpy(), h, w)[0]
    return scores, float(np.quantile(scores, tau))


# --------------------------------------------------------------------------- KeepCutout


def test_keep_cutout_cuts_strictly_below_threshold(brute_window_sums):
    x, maps = _batch(24, 12, 10, seed=1)
    maps[5] = 0.5                                 # a flat map: the fallback row
    y = torch.arange(24)
    op = KeepCutout((4, 3), tau=0.6, generator=_gen(0))
    out, targets = op(x, y, saliency_maps=maps)
    assert targets is y and out.dtype == x.dtype and out.shape == x.shape
    fallback = op.last_stats["fallback"]
    assert fallback.tolist() == [b == 5 for b in range(24)]
    cut = (out != x).any(dim=1)
    assert torch.all(out[cut.unsqueeze(1).expand_as(out)] == 0)           # the cut pixels are zeroed
    for b in range(24):
        top, bottom, left, right = _box(cut[b])
        assert (bottom - top, right - left) == (4, 3)
        scores, threshold = _threshold(maps[b], 4, 3, 0.6, brute_window_sums)
        if not fallback[b]:
            assert scores[top, left] < threshold
        else:
            assert scores[top, left] <= threshold
    kept = 1 - (normalize_sum(maps) * cut).sum(dim=(1, 2))
    np.testing.assert_allclose(op.last_stats["saliency_kept"].numpy(), kept.numpy(), rtol=1e-5)


def test_keep_cutout_per_sample_windows_on_identical_maps():
    x, maps = _batch(1, 16, 16, seed=2)
    x, maps = x.expand(32, -1, -1, -1).clone(), maps.expand(32, -1, -1).clone()
    out, _ = KeepCutout(4, generator=_gen(1))(x, None, saliency_maps=maps)
    boxes = {_box((out[b] != x[b]).any(dim=0)) for b in range(32)}
    assert len(boxes) > 5


def _clipped_extent(centre, length, side):
    return min(centre - length // 2 + length, side) - max(centre - length // 2, 0)


def test_keep_cutout_clip_boxes_are_clipped_cutout_boxes():
    """clip=True: the cut is a Cutout box (centred on a pixel, clipped), scoring strictly below the
    τ-quantile of the scores of every centre whose clipped box has the same shape (brute force)."""
    x, maps = _batch(300, 9, 11, seed=3)
    h, w = 4, 5
    op = KeepCutout((h, w), tau=0.6, clip=True, generator=_gen(2))
    out, _ = op(x, None, saliency_maps=maps)
    areas = []
    for b in range(300):
        top, bottom, left, right = _box((out[b] != x[b]).any(dim=0))
        areas.append((bottom - top) * (right - left))
        assert bottom - top <= h and right - left <= w
        assert top == 0 or bottom == 9 or bottom - top == h
        assert left == 0 or right == 11 or right - left == w
        candidates = {}
        for cy in range(9):
            for cx in range(11):
                if (_clipped_extent(cy, h, 9), _clipped_extent(cx, w, 11)) != (bottom - top, right - left):
                    continue
                t, l = max(cy - h // 2, 0), max(cx - w // 2, 0)
                candidates[(t, l)] = float(maps[b, t:t + bottom - top, l:l + right - left].double().sum())
        assert (top, left) in candidates
        threshold = np.quantile(list(candidates.values()), 0.6)
        if op.last_stats["fallback"][b]:
            assert candidates[(top, left)] <= threshold + 1e-6
        else:
            assert candidates[(top, left)] < threshold + 1e-6
    assert max(areas) == h * w and min(areas) < h * w                   # some boxes clipped, some not


def test_keep_cutout_window_as_large_as_image_and_clip_beyond():
    x, maps = _batch(3, 7, 5, seed=4)
    out, _ = KeepCutout((7, 5), generator=_gen(0))(x, None, saliency_maps=maps)
    assert torch.all(out == 0)
    with pytest.raises(ValueError, match="size"):
        KeepCutout((8, 5))(x, None, saliency_maps=maps)
    out, _ = KeepCutout(20, clip=True, generator=_gen(0))(x, None, saliency_maps=maps)
    assert torch.all(out == 0)


def test_keep_cutout_tau_extremes(brute_window_sums):
    x, maps = _batch(16, 8, 8, seed=5)
    op = KeepCutout(3, tau=0.0, generator=_gen(0))
    out, _ = op(x, None, saliency_maps=maps)
    assert op.last_stats["fallback"].all()
    for b in range(16):
        top, _, left, _ = _box((out[b] != x[b]).any(dim=0))
        scores = brute_window_sums(maps[b:b + 1].numpy(), 3, 3)[0]
        assert scores[top, left] == pytest.approx(scores.min(), rel=1e-6)  # τ = 0: the least salient window
    op = KeepCutout(3, tau=1.0, generator=_gen(0))
    out, _ = op(x, None, saliency_maps=maps)
    assert not op.last_stats["fallback"].any()
    for b in range(16):
        top, _, left, _ = _box((out[b] != x[b]).any(dim=0))
        scores = brute_window_sums(maps[b:b + 1].numpy(), 3, 3)[0]
        assert scores[top, left] < scores.max()


def test_keep_cutout_probability_and_values():
    x, maps = _batch(64, 8, 8, seed=6)
    out, _ = KeepCutout(3, p=0.0, generator=_gen(0))(x, None, saliency_maps=maps)
    assert torch.equal(out, x)
    out, _ = KeepCutout(3, p=0.5, generator=_gen(0))(x, None, saliency_maps=maps)
    cut = (out != x).flatten(1).any(dim=1)
    assert 16 < int(cut.sum()) < 48
    out, _ = KeepCutout(3, value=(1.0, 2.0, 3.0), generator=_gen(0))(x, None, saliency_maps=maps)
    region = (out != x).any(dim=1)
    for c, v in enumerate((1.0, 2.0, 3.0)):
        assert torch.all(out[:, c][region] == v)
    out, _ = KeepCutout(3, value="random", generator=_gen(0))(x, None, saliency_maps=maps)
    filled = out[(out != x)]
    assert filled.numel() > 0 and filled.std() > 0.5                     # N(0, 1) noise


def test_keep_cutout_degenerate_inputs():
    # all-zero images with spectral saliency: flat map, fallback, no NaN
    zeros = torch.zeros(2, 3, 7, 5)
    op = KeepCutout(3, saliency="spectral", generator=_gen(0))
    out, _ = op(zeros, None)
    assert torch.isfinite(out).all() and op.last_stats["fallback"].all()
    assert torch.isfinite(op.last_stats["saliency_kept"]).all()
    # batch of one, odd and non-square sizes
    x, maps = _batch(1, 31, 17, seed=7)
    out, _ = KeepCutout((5, 4), generator=_gen(0))(x, None, saliency_maps=maps)
    top, bottom, left, right = _box((out[0] != x[0]).any(dim=0))
    assert (bottom - top, right - left) == (5, 4)
    # constant saliency: every window ties with the threshold → fallback, uniform over all windows
    op = KeepCutout((5, 4), generator=_gen(0))
    out, _ = op(x, None, saliency_maps=torch.full((1, 31, 17), 0.3))
    assert op.last_stats["fallback"].all() and int((out != x).any(dim=1).sum()) == 20


def test_keep_cutout_dtypes(make_tiny_net):
    x, maps = _batch(4, 8, 8, seed=8)
    x8 = (x * 100).to(torch.uint8)
    out, _ = KeepCutout(3, generator=_gen(0))(x8, None, saliency_maps=maps)
    assert out.dtype == torch.uint8 and int((out != x8).any(dim=1).sum(dim=(1, 2)).max()) <= 9
    out, _ = KeepCutout(3, saliency="spectral", generator=_gen(0))(x8, None)
    assert out.dtype == torch.uint8
    for dtype in (torch.float16, torch.bfloat16):
        out, _ = KeepCutout(3, saliency="spectral", generator=_gen(0))(x.to(dtype), None)
        assert out.dtype == dtype and torch.isfinite(out).all()
    with pytest.raises(TypeError, match="images"):
        KeepCutout(3, saliency=make_tiny_net())(x8, torch.tensor([0, 1, 2, 3]))


def test_keep_cutout_model_and_early_head_sources(make_tiny_net):
    net = make_tiny_net().train()
    head = EarlyHead(net, num_classes=5)
    x = torch.randn(4, 3, 8, 8, generator=_gen(9))
    y = torch.tensor([0, 1, 2, 3])
    out, _ = KeepCutout(3, saliency=net, scale=0.5, generator=_gen(3))(x, y)
    expected, _ = KeepCutout(3, generator=_gen(3))(x, y, saliency_maps=gradient(net, x, y, scale=0.5))
    assert torch.equal(out, expected)
    out, _ = KeepCutout(3, saliency=head, generator=_gen(3))(x, y)
    expected, _ = KeepCutout(3, generator=_gen(3))(x, y, saliency_maps=head.saliency(x, y))
    assert torch.equal(out, expected)
    assert net.training
    head.remove()


def test_keep_cutout_errors():
    x, maps = _batch(2, 6, 6)
    with pytest.raises(ValueError, match="size"):
        KeepCutout(0)
    with pytest.raises(ValueError, match="tau"):
        KeepCutout(3, tau=1.2)
    with pytest.raises(ValueError, match="p"):
        KeepCutout(3, p=-0.1)
    with pytest.raises(ValueError, match="value"):
        KeepCutout(3, value="noise")
    with pytest.raises(TypeError, match="value"):
        KeepCutout(3, value=object())
    with pytest.raises(ValueError, match="saliency"):
        KeepCutout(3)(x, None)
    with pytest.raises(ValueError, match="saliency_maps"):
        KeepCutout(3)(x, None, saliency_maps=maps[:, :5])
    with pytest.raises(ValueError, match="images"):
        KeepCutout(3)(x[0, 0], None, saliency_maps=maps)  # 2-d: neither a batch nor one image
    with pytest.raises(TypeError, match="images"):
        KeepCutout(3)(x.long(), None, saliency_maps=maps)
    with pytest.raises(TypeError, match="generator"):
        KeepCutout(3, generator=1)


# --------------------------------------------------------------------------- KeepRandomErasing


def test_keep_random_erasing_area_aspect_and_threshold(brute_window_sums):
    x, maps = _batch(64, 16, 12, seed=10)
    scale, ratio = (0.05, 0.3), (0.5, 2.0)
    op = KeepRandomErasing(p=1.0, scale=scale, ratio=ratio, value=-5.0, tau=0.6, generator=_gen(0))
    out, targets = op(x, None, saliency_maps=maps)
    assert targets is None
    erased = (out != x).any(dim=1)
    assert torch.equal(erased.flatten(1).any(dim=1), op.last_stats["erased"])
    assert int(op.last_stats["erased"].sum()) >= 60
    for b in range(64):
        if not erased[b].any():
            continue
        assert torch.all(out[b][:, erased[b]] == -5.0)
        top, bottom, left, right = _box(erased[b])
        h, w = bottom - top, right - left
        # h = round(√(A·r)), w = round(√(A/r)) with A/HW ∈ scale, r ∈ ratio: bounds up to rounding
        assert (h - 0.5) * (w - 0.5) <= scale[1] * 16 * 12 + 1e-9
        assert (h + 0.5) * (w + 0.5) >= scale[0] * 16 * 12 - 1e-9
        assert (h + 0.5) / (w - 0.5) >= ratio[0] and (h - 0.5) / (w + 0.5) <= ratio[1]
        assert h < 16 and w < 12
        scores, threshold = _threshold(maps[b], h, w, 0.6, brute_window_sums)
        if op.last_stats["fallback"][b]:
            assert scores[top, left] <= threshold
        else:
            assert scores[top, left] < threshold


def test_keep_random_erasing_no_erase_cases():
    x, maps = _batch(8, 10, 10, seed=11)
    op = KeepRandomErasing(p=0.0, generator=_gen(0))
    out, _ = op(x, None, saliency_maps=maps)
    assert torch.equal(out, x) and not op.last_stats["erased"].any()
    # a rectangle that never fits (square, the whole image): no erase, no hang
    op = KeepRandomErasing(p=1.0, scale=(0.99, 1.0), ratio=(1.0, 1.0), generator=_gen(0))
    out, _ = op(x, None, saliency_maps=maps)
    assert torch.equal(out, x) and not op.last_stats["erased"].any()


def test_keep_random_erasing_probability_dtypes_and_values():
    x, maps = _batch(64, 10, 10, seed=12)
    op = KeepRandomErasing(p=0.5, generator=_gen(1))
    out, _ = op(x, None, saliency_maps=maps)
    assert 16 < int(op.last_stats["erased"].sum()) < 48
    x8 = (x * 100).to(torch.uint8)
    out8, _ = KeepRandomErasing(p=1.0, generator=_gen(1))(x8, None, saliency_maps=maps)
    assert out8.dtype == torch.uint8 and (out8 != x8).any()
    for dtype in (torch.float16, torch.bfloat16):
        outh, _ = KeepRandomErasing(p=1.0, saliency="spectral", generator=_gen(1))(x.to(dtype), None)
        assert outh.dtype == dtype and torch.isfinite(outh).all()
    out, _ = KeepRandomErasing(p=1.0, value=(0.0, 1.0, 2.0), generator=_gen(1))(x, None, saliency_maps=maps)
    region = (out != x).any(dim=1)
    assert torch.all(out[:, 2][region] == 2.0)


def test_keep_random_erasing_errors():
    with pytest.raises(ValueError, match="scale"):
        KeepRandomErasing(scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="scale"):
        KeepRandomErasing(scale=(0.1, 1.5))
    with pytest.raises(ValueError, match="ratio"):
        KeepRandomErasing(ratio=(0.0, 1.0))
    with pytest.raises(TypeError, match="ratio"):
        KeepRandomErasing(ratio=2.0)
    with pytest.raises(ValueError, match="attempts"):
        KeepRandomErasing(attempts=0)
    with pytest.raises(ValueError, match="p"):
        KeepRandomErasing(p=2.0)
    with pytest.raises(ValueError, match="tau"):
        KeepRandomErasing(tau=-1.0)


# --------------------------------------------------------------------------- KeepCutMix


def _constant_images(batch, height, width):
    values = (torch.arange(batch, dtype=torch.float32) + 1) * 10
    return values, values.view(-1, 1, 1, 1).expand(batch, 3, height, width).clone()


@pytest.mark.parametrize("pairing", ["random", "greedy"])
def test_keep_cutmix_lambda_is_kept_area(pairing, brute_window_sums):
    batch, height, width = 12, 16, 14
    values, x = _constant_images(batch, height, width)
    _, maps = _batch(batch, height, width, seed=13)
    y = torch.arange(batch)
    op = KeepCutMix(batch, alpha=1.0, tau=0.6, pairing=pairing, generator=_gen(4))
    out, soft = op(x, y, saliency_maps=maps)
    assert soft.dtype == torch.float32 and soft.shape == (batch, batch)
    np.testing.assert_allclose(soft.sum(dim=1).numpy(), np.ones(batch), rtol=1e-6)
    if pairing == "greedy":
        greedy = greedy_pairing(saliency_distance(normalize_sum(gaussian_blur(maps, 7, 3.0))))
    lam = op.last_stats["lam"]
    for i in range(batch):
        changed = out[i, 0] != values[i]
        kept = 1 - changed.float().mean()
        assert float(lam[i]) == pytest.approx(float(kept), abs=1e-6)          # λ = area actually kept
        if not changed.any():
            assert torch.equal(soft[i], F.one_hot(y[i], batch).float())
            continue
        partner_values = out[i, :, changed].unique()
        assert partner_values.numel() == 1                              # one partner fills the window
        p = int((values == partner_values[0]).nonzero())
        assert p != i
        if pairing == "greedy":
            assert p == int(greedy[i])
        expected = kept * F.one_hot(y[i], batch).float() + (1 - kept) * F.one_hot(y[p], batch).float()
        np.testing.assert_allclose(soft[i].numpy(), expected.numpy(), atol=1e-6)
        top, bottom, left, right = _box(changed)
        scores, threshold = _threshold(maps[i], bottom - top, right - left, 0.6, brute_window_sums)
        if op.last_stats["fallback"][i]:
            assert scores[top, left] <= threshold
        else:
            assert scores[top, left] < threshold


def test_keep_cutmix_unmixed_cases():
    values, x = _constant_images(4, 8, 8)
    _, maps = _batch(4, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    op = KeepCutMix(4, prob=0.0, generator=_gen(0))
    out, soft = op(x, y, saliency_maps=maps)
    assert torch.equal(out, x) and torch.equal(soft, F.one_hot(y, 4).float())
    assert torch.equal(op.last_stats["lam"], torch.ones(4))
    op = KeepCutMix(4, generator=_gen(0))
    out, soft = op(x[:1], y[:1], saliency_maps=maps[:1])                  # batch of one
    assert torch.equal(out, x[:1]) and torch.equal(soft, F.one_hot(y[:1], 4).float())
    assert op.last_stats["lam"].tolist() == [1.0]


def test_keep_cutmix_dtypes_and_degenerate():
    values, x = _constant_images(6, 9, 7)
    y = torch.arange(6)
    out8, soft = KeepCutMix(6, saliency="spectral", generator=_gen(0))(x.to(torch.uint8), y)
    assert out8.dtype == torch.uint8 and torch.isfinite(soft).all()
    for dtype in (torch.float16, torch.bfloat16):
        outh, softh = KeepCutMix(6, saliency="spectral", generator=_gen(0))(x.to(dtype) / 100, y)
        assert outh.dtype == dtype and torch.isfinite(outh).all() and torch.isfinite(softh).all()
    zeros = torch.zeros(6, 3, 9, 7)
    out, soft = KeepCutMix(6, saliency="spectral", generator=_gen(0))(zeros, y)
    assert torch.isfinite(out).all() and torch.isfinite(soft).all()


def test_keep_cutmix_errors():
    with pytest.raises(ValueError, match="alpha"):
        KeepCutMix(3, alpha=0.0)
    with pytest.raises(ValueError, match="prob"):
        KeepCutMix(3, prob=1.5)
    with pytest.raises(ValueError, match="pairing"):
        KeepCutMix(3, pairing="flip")
    with pytest.raises(ValueError, match="tau"):
        KeepCutMix(3, tau=2.0)
    x, maps = _batch(2, 6, 6)
    with pytest.raises(ValueError, match="targets"):
        KeepCutMix(3)(x, None, saliency_maps=maps)


# --------------------------------------------------------------------------- SelectivePaste


def _negate(images):
    return -images - 1.0


class _NegateOp(Op):
    def apply(self, images, targets, **kwargs):
        return _negate(images), (None if targets is None else targets + 1)


@pytest.mark.parametrize("size", [(4, 3), (5, 5)])
def test_selective_paste_pastes_above_threshold(size, brute_window_sums):
    x, maps = _batch(20, 11, 9, seed=14)
    maps[7] = 0.0                                  # flat: fallback row
    h, w = size
    op = SelectivePaste(_negate, size, tau=0.6, generator=_gen(5))
    out, targets = op(x, None, saliency_maps=maps)
    transformed = _negate(x)
    pasted = (out == x).all(dim=1)
    assert torch.equal(out[~pasted.unsqueeze(1).expand_as(out)], transformed[~pasted.unsqueeze(1).expand_as(out)])
    assert op.last_stats["fallback"].tolist() == [b == 7 for b in range(20)]
    for b in range(20):
        top, bottom, left, right = _box(pasted[b])
        assert (bottom - top, right - left) == (h, w)
        scores, threshold = _threshold(maps[b], h, w, 0.6, brute_window_sums)
        if op.last_stats["fallback"][b]:
            assert scores[top, left] >= threshold
        else:
            assert scores[top, left] > threshold
    np.testing.assert_allclose(op.last_stats["saliency_kept"].numpy(),
                               (normalize_sum(maps) * pasted).sum(dim=(1, 2)).numpy(), rtol=1e-5)


def test_selective_paste_clip_and_op_transform():
    x, maps = _batch(50, 8, 8, seed=15)
    y = torch.arange(50)
    op = SelectivePaste(_NegateOp(), 4, clip=True, generator=_gen(6))
    out, targets = op(x, y, saliency_maps=maps)
    assert torch.equal(targets, y + 1)             # an op transform's targets are returned
    for b in range(50):
        top, bottom, left, right = _box((out[b] == x[b]).all(dim=0))
        assert bottom - top <= 4 and right - left <= 4
        assert top == 0 or bottom == 8 or bottom - top == 4


def test_selective_paste_tau_one_and_uint8():
    x, maps = _batch(8, 6, 6, seed=16)
    op = SelectivePaste(_negate, 2, tau=1.0, generator=_gen(0))
    out, _ = op(x, None, saliency_maps=maps)
    assert op.last_stats["fallback"].all()         # nothing strictly above the maximum: the best window
    from keepmix.regions import window_scores
    scores = window_scores(maps, 2)
    for b in range(8):
        top, _, left, _ = _box((out[b] == x[b]).all(dim=0))
        assert scores[b, top, left] == scores[b].max()
    x8 = (x * 100).to(torch.uint8)
    out8, _ = SelectivePaste(lambda im: 255 - im, 3, generator=_gen(0))(x8, None, saliency_maps=maps)
    assert out8.dtype == torch.uint8
    assert int(((out8 == x8).all(dim=1)).sum()) == 8 * 9


def test_selective_paste_errors():
    x, maps = _batch(2, 6, 6)
    with pytest.raises(TypeError, match="transform"):
        SelectivePaste("flip", 3)
    with pytest.raises(ValueError, match="transform"):
        SelectivePaste(lambda im: im[:, :, :3], 2)(x, None, saliency_maps=maps)
    with pytest.raises(ValueError, match="size"):
        SelectivePaste(_negate, 7)(x, None, saliency_maps=maps)
    with pytest.raises(ValueError, match="tau"):
        SelectivePaste(_negate, 3, tau=1.1)


# --------------------------------------------------------------------------- seeds


def _ops(seed):
    g = _gen(seed)
    return {
        "KeepCutout": KeepCutout(3, generator=g),
        "KeepRandomErasing": KeepRandomErasing(p=1.0, generator=g),
        "KeepCutMix": KeepCutMix(16, generator=g),
        "SelectivePaste": SelectivePaste(_negate, 3, generator=g),
        "GuidedMixup": GuidedMixup(16, saliency=None, pairing="random", mix_prob=1.0, generator=g),
    }


@pytest.mark.parametrize("name", list(_ops(0)))
def test_same_seed_same_output_different_seed_differs(name):
    x, maps = _batch(16, 10, 10, seed=17)
    y = torch.arange(16)
    a = _ops(1)[name](x, y, saliency_maps=maps)
    b = _ops(1)[name](x, y, saliency_maps=maps)
    c = _ops(2)[name](x, y, saliency_maps=maps)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_input_checks_switch_on_ops():
    x, maps = _batch(2, 6, 6)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    bad_maps = maps.clone()
    bad_maps[1, 2, 2] = float("inf")
    with input_checks(True):
        with pytest.raises(ValueError, match="images"):
            KeepCutout(3)(bad, None, saliency_maps=maps)
        with pytest.raises(ValueError, match="saliency_maps"):
            KeepCutout(3)(x, None, saliency_maps=bad_maps)


def test_ops_with_a_model_source_reject_uint8_before_any_pass(make_tiny_net):
    import keepmix
    from keepmix.saliency import SpectralSaliency
    net = make_tiny_net()
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    y = torch.tensor([0, 1])
    for op in (keepmix.KeepCutout(4, saliency=net), keepmix.KeepRandomErasing(saliency=net),
               keepmix.KeepCutMix(3, saliency=net), keepmix.SelectivePaste(lambda t: t, 4, saliency=net),
               keepmix.GuidedMixup(3, saliency="gradient", model=net)):
        with pytest.raises(TypeError, match="images"):
            op(x, y)
    # a spectral source instance (not only the string) accepts uint8
    out, _ = keepmix.GuidedMixup(3, saliency=SpectralSaliency(), mix_prob=1.0)(x, y)
    assert out.dtype == torch.uint8
