"""Window scores, quantile thresholds, uniform window sampling and box masks against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import keepmix.regions as regions
from keepmix.regions import (box_masks, centred_window_scores, integral_image, quantile_bound, quantile_threshold,
                             sample_windows, select_boxes, window_scores, window_scores_per_image)

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _maps(batch, height, width, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, height, width, generator=g)


# --------------------------------------------------------------------------- window sums


def test_window_scores_hand_computed():
    s = torch.arange(12, dtype=torch.float32).view(1, 3, 4)  # rows [0..3], [4..7], [8..11]
    scores = window_scores(s, (2, 3))
    # top-left (0, 0): 0+1+2+4+5+6 = 18; (0, 1): 1+2+3+5+6+7 = 24; (1, 0): 4+5+6+8+9+10 = 42; (1, 1): 48
    assert scores.dtype == torch.float32
    assert torch.equal(scores, torch.tensor([[[18.0, 24.0], [42.0, 48.0]]]))
    # an int size is a square window
    assert torch.equal(window_scores(s, 3), torch.tensor([[[45.0, 54.0]]]))


def test_integral_image_definition():
    """table[b, i, j] = Σ_{r<i, c<j} round(s · 2^(k − e)) exactly (int64), e the peak's binary exponent."""
    s = _maps(2, 5, 4)
    s[1] *= -3.0
    ii = integral_image(s)
    assert ii.table.shape == (2, 6, 5) and ii.table.dtype == torch.int64
    down = (ii.down_a * ii.down_b).view(-1)
    q = torch.round(s / down.view(-1, 1, 1)).long()
    peak_bits = q.abs().amax(dim=(1, 2)).double().log2()
    assert bool(((peak_bits > 61 - 5 - 1) & (peak_bits < 61 - 5)).all())      # k = 61 − ⌈log₂ 21⌉ = 56
    for i in range(6):
        for j in range(5):
            assert torch.equal(ii.table[:, i, j], q[:, :i, :j].sum(dim=(1, 2)))
            np.testing.assert_allclose(ii.values(ii.table[:, i, j].view(-1, 1, 1)).view(-1).numpy(),
                                       s[:, :i, :j].double().sum(dim=(1, 2)).numpy(), rtol=1e-6, atol=1e-12)
    zero = integral_image(torch.zeros(1, 3, 3))
    assert torch.equal(zero.table, torch.zeros(1, 4, 4, dtype=torch.long))
    for scale in (1e-30, 1e30):                                         # far from 1: two-step factors
        tiny = integral_image(s * scale)
        np.testing.assert_allclose(tiny.values(tiny.table[:, -1:, -1:]).view(-1).numpy() / scale,
                                   s.double().sum(dim=(1, 2)).numpy(), rtol=1e-5)


def test_window_scores_of_tiny_windows_next_to_large_ones_are_exact():
    """A float32 prefix sum would lose a 1e-6 window beside a 1e3 one; the fixed-point table does not."""
    maps = torch.full((1, 8, 64), 1e-6)
    maps[0, :, :8] = 1e3
    scores = window_scores(maps, (1, 1))
    np.testing.assert_allclose(scores[0, :, 40:].numpy(), 1e-6, rtol=1e-5)
    np.testing.assert_allclose(window_scores(maps, (8, 56))[0, 0, 8].item(), 8 * 56 * 1e-6, rtol=1e-5)


@pytest.mark.parametrize("shape,size", [((3, 64, 64), (16, 16)), ((2, 64, 64), (1, 1)), ((2, 64, 64), (64, 64)),
                                        ((2, 31, 17), (8, 5)), ((2, 7, 5), (7, 1)), ((1, 40, 64), (13, 40))])
def test_window_scores_match_float64_brute_force(shape, size, brute_window_sums):
    maps = _maps(*shape, seed=sum(shape))
    scores = window_scores(maps, size)
    reference = brute_window_sums(maps.numpy(), *size)
    assert scores.shape == reference.shape
    np.testing.assert_allclose(scores.numpy(), reference, rtol=1e-4, atol=0)


@given(st.integers(1, 3), st.integers(1, 20), st.integers(1, 20), st.data())
@FAST
def test_window_scores_property(brute_window_sums, batch, height, width, data):
    h = data.draw(st.integers(1, height))
    w = data.draw(st.integers(1, width))
    maps = _maps(batch, height, width, seed=height * 31 + width) * 10
    np.testing.assert_allclose(window_scores(maps, (h, w)).numpy(), brute_window_sums(maps.numpy(), h, w),
                               rtol=1e-4)


def test_window_scores_half_precision_maps(brute_window_sums):
    maps = _maps(2, 9, 11).to(torch.bfloat16)
    scores = window_scores(maps, (3, 4))
    assert scores.dtype == torch.float32
    np.testing.assert_allclose(scores.numpy(), brute_window_sums(maps.float().numpy(), 3, 4), rtol=1e-5)


def test_window_scores_errors():
    maps = _maps(2, 8, 6)
    with pytest.raises(ValueError, match="size"):
        window_scores(maps, (9, 2))
    with pytest.raises(ValueError, match="size"):
        window_scores(maps, (2, 7))
    with pytest.raises(ValueError, match="size"):
        window_scores(maps, 0)
    with pytest.raises(TypeError, match="size"):
        window_scores(maps, 2.5)
    with pytest.raises(ValueError, match="saliency"):
        window_scores(maps[0], 2)
    with pytest.raises(TypeError, match="saliency"):
        window_scores(maps.long(), 2)


def test_window_scores_per_image_equals_own_size(brute_window_sums):
    maps = _maps(4, 13, 9, seed=3)
    heights = torch.tensor([1, 13, 5, 7])
    widths = torch.tensor([9, 2, 5, 1])
    scores, valid = window_scores_per_image(maps, heights, widths)
    assert scores.shape == valid.shape == (4, 13, 9)
    assert scores.dtype == torch.float32 and valid.dtype == torch.bool
    for b in range(4):
        h, w = int(heights[b]), int(widths[b])
        own = window_scores(maps[b:b + 1], (h, w))[0]
        expected_valid = torch.zeros(13, 9, dtype=torch.bool)
        expected_valid[:13 - h + 1, :9 - w + 1] = True
        assert torch.equal(valid[b], expected_valid)
        np.testing.assert_allclose(scores[b, :13 - h + 1, :9 - w + 1].numpy(), own.numpy(), rtol=1e-6)
        np.testing.assert_allclose(own.numpy(), brute_window_sums(maps[b:b + 1].numpy(), h, w)[0], rtol=1e-4)
        assert torch.all(scores[b][~expected_valid] == 0)


def test_window_scores_per_image_errors():
    maps = _maps(2, 6, 5)
    with pytest.raises(ValueError, match="heights"):
        window_scores_per_image(maps, torch.tensor([7, 2]), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="widths"):
        window_scores_per_image(maps, torch.tensor([2, 2]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="heights"):
        window_scores_per_image(maps, torch.tensor([2, 2, 2]), torch.tensor([1, 1]))


@pytest.mark.parametrize("shape,size", [((2, 9, 7), (4, 3)), ((1, 6, 6), (5, 5)), ((2, 5, 8), (1, 9)),
                                        ((1, 4, 3), (9, 9))])
def test_centred_window_scores_brute_force(shape, size):
    maps = _maps(*shape, seed=5)
    h, w = size
    scores = centred_window_scores(maps, size)
    batch, height, width = shape
    assert scores.shape == shape
    for y in range(height):
        for x in range(width):
            r0, r1 = max(0, y - h // 2), min(height, y - h // 2 + h)
            c0, c1 = max(0, x - w // 2), min(width, x - w // 2 + w)
            expected = maps[:, r0:r1, c0:c1].double().sum(dim=(1, 2))
            np.testing.assert_allclose(scores[:, y, x].numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


@pytest.fixture
def integral_path(monkeypatch):
    """Window sums through the integral image at every size (the path of maps over 256 px)."""
    monkeypatch.setattr(regions, "_MATMUL_LIMIT", 0)


@pytest.mark.parametrize("shape,size", [((3, 40, 40), (16, 16)), ((2, 31, 17), (8, 5)), ((2, 7, 5), (7, 1))])
def test_integral_path_matches_float64_brute_force(integral_path, shape, size, brute_window_sums):
    maps = _maps(*shape, seed=sum(shape))
    np.testing.assert_allclose(window_scores(maps, size).numpy(), brute_window_sums(maps.numpy(), *size),
                               rtol=1e-6, atol=0)
    heights, widths = torch.full((shape[0],), size[0]), torch.full((shape[0],), size[1])
    scores, valid = window_scores_per_image(maps, heights, widths)
    n_h, n_w = shape[1] - size[0] + 1, shape[2] - size[1] + 1
    np.testing.assert_allclose(scores[:, :n_h, :n_w].numpy(), brute_window_sums(maps.numpy(), *size), rtol=1e-6)


def test_both_paths_agree_on_every_sum_and_every_choice(monkeypatch):
    """The banded products and the integral image differ by a few float32 roundings, and select the same boxes."""
    maps = _maps(64, 24, 20, seed=7)
    sums = {}
    picks = {}
    for limit in (256, 0):
        monkeypatch.setattr(regions, "_MATMUL_LIMIT", limit)
        sums[limit] = window_scores(maps, (9, 7))
        picks[limit] = regions.select_boxes(maps, 9, 7, 0.6, generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(sums[256].numpy(), sums[0].numpy(), rtol=1e-6, atol=0)
    assert torch.equal(picks[256].top, picks[0].top) and torch.equal(picks[256].left, picks[0].left)


@pytest.mark.parametrize("batch,side,size", [(37, 32, 16), (9, 24, 5), (5, 64, 20)])
def test_window_sums_do_not_depend_on_the_rest_of_the_batch(batch, side, size):
    """Image b's sums are the same bits alone, in any sub-batch and in the whole batch (so its box does
    not depend on which images share its batch)."""
    maps = _maps(batch, side, side, seed=side)
    whole = window_scores(maps, size)
    heights, widths = torch.full((batch,), size), torch.full((batch,), size + 1)
    per_image, _ = window_scores_per_image(maps, heights, widths)
    clipped = regions.clipped_box_scores(maps, heights, widths)
    for start in range(0, batch, 4):
        part = slice(start, start + 4)
        assert torch.equal(window_scores(maps[part], size), whole[part])
        assert torch.equal(window_scores_per_image(maps[part], heights[part], widths[part])[0], per_image[part])
        assert torch.equal(regions.clipped_box_scores(maps[part], heights[part], widths[part]), clipped[part])


def test_reduced_matmul_precision_takes_the_integral_path(monkeypatch):
    """With TF32/bf16 matmuls allowed the banded products would lose precision: the exact table is used instead."""
    maps = _maps(2, 20, 20, seed=1)
    monkeypatch.setattr(regions, "_MATMUL_LIMIT", 0)
    exact = window_scores(maps, (5, 6))
    monkeypatch.undo()
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert torch.equal(window_scores(maps, (5, 6)), exact)
    finally:
        torch.set_float32_matmul_precision(previous)


def test_window_scores_ignore_the_callers_autocast():
    maps = _maps(3, 16, 16, seed=2)
    plain = window_scores(maps, (5, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = window_scores(maps, (5, 4))
        per_image, _ = window_scores_per_image(maps, torch.tensor([5, 5, 5]), torch.tensor([4, 4, 4]))
    assert cast.dtype == torch.float32 and torch.equal(cast, plain)
    assert torch.equal(per_image[:, :12, :13], plain)


# --------------------------------------------------------------------------- quantile


@pytest.mark.parametrize("tau", [0.0, 0.1, 0.25, 0.5, 0.6, 0.99, 1.0])
def test_quantile_matches_torch_and_numpy(tau):
    scores = _maps(5, 7, 6, seed=11) * 3
    q = quantile_threshold(scores, tau)
    assert q.shape == (5,) and q.dtype == torch.float32
    expected_torch = torch.quantile(scores.flatten(1), tau, dim=1)
    expected_numpy = np.quantile(scores.flatten(1).double().numpy(), tau, axis=1)
    np.testing.assert_allclose(q.numpy(), expected_torch.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(q.numpy(), expected_numpy, rtol=1e-6, atol=1e-6)


def test_quantile_hand_computed():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0]])  # sorted 1 2 3 4, p = τ·3
    assert quantile_threshold(scores, 0.5).item() == pytest.approx(2.5)
    assert quantile_threshold(scores, 0.6).item() == pytest.approx(2.8)
    assert quantile_threshold(scores, 0.0).item() == 1.0
    assert quantile_threshold(scores, 1.0).item() == 4.0


@pytest.mark.parametrize("tau", [0.0, 0.3, 0.6, 1.0])
def test_quantile_with_valid_mask(tau):
    g = torch.Generator().manual_seed(2)
    scores = torch.rand(6, 5, 4, generator=g)
    valid = torch.rand(6, 5, 4, generator=g) < 0.5
    valid[:, 0, 0] = True          # at least one valid entry per row
    valid[5] = True                # one row entirely valid
    valid[4] = False
    valid[4, 2, 3] = True          # one row with a single valid entry
    # invalid entries hold values that would move the quantile if they were counted
    scores = torch.where(valid, scores, torch.full_like(scores, -100.0))
    q = quantile_threshold(scores, tau, valid)
    for b in range(6):
        kept = scores[b][valid[b]].double().numpy()
        assert q[b].item() == pytest.approx(float(np.quantile(kept, tau)), rel=1e-6, abs=1e-7)


def test_quantile_many_windows():
    scores = torch.rand(2, 300, 400, generator=torch.Generator().manual_seed(0))
    q = quantile_threshold(scores, 0.6)
    np.testing.assert_allclose(q.numpy(), np.quantile(scores.flatten(1).double().numpy(), 0.6, axis=1), rtol=1e-6)


@given(st.integers(1, 4), st.integers(1, 30), st.floats(0.0, 1.0), st.integers(0, 10_000))
@FAST
def test_quantile_between_min_and_max(batch, n, tau, seed):
    g = torch.Generator().manual_seed(seed)
    scores = (torch.rand(batch, n, generator=g) * 10).round()  # ties are common
    q = quantile_threshold(scores, tau)
    assert torch.all(q >= scores.min(dim=1).values) and torch.all(q <= scores.max(dim=1).values)
    np.testing.assert_allclose(q.numpy(), np.quantile(scores.double().numpy(), tau, axis=1), rtol=1e-6, atol=1e-6)


def _exact_split(row, tau, below):
    """The windows strictly below (above) the linear-interpolation τ-quantile in exact rational arithmetic,
    τ read as its decimal string (0.6 is 3/5) and p = τ(n − 1) taken as whole within 10⁻⁶ of a whole number
    (the documented reading: 1/3 of 3 is 0.9999999999999999 in binary)."""
    from fractions import Fraction
    values = sorted(Fraction(float(v)) for v in row)
    p = Fraction(repr(float(tau))) * (len(values) - 1)
    if abs(p - round(p)) <= Fraction(1, 10 ** 6):
        p = Fraction(round(p))
    lo = int(p)
    hi = min(lo + 1, len(values) - 1)
    q = values[lo] + (p - lo) * (values[hi] - values[lo])
    return np.array([(Fraction(float(v)) < q) if below else (Fraction(float(v)) > q) for v in row])


@pytest.mark.parametrize("tau", [0.0, 0.1, 0.2, 0.25, 0.5, 0.6, 0.75, 0.9, 1.0, 1 / 3])
@pytest.mark.parametrize("below", [True, False])
@pytest.mark.parametrize("n", [1, 2, 5, 6, 11, 21, 289])
def test_quantile_bound_splits_as_the_exact_quantile(tau, below, n):
    g = torch.Generator().manual_seed(n)
    for scores in (torch.rand(4, n, generator=g), (torch.rand(4, n, generator=g) * 3).floor()):  # distinct, tied
        bound = quantile_bound(scores, tau, below)
        assert bound.shape == (4,) and bound.dtype == torch.float32
        split = scores < bound.view(-1, 1) if below else scores > bound.view(-1, 1)
        for b in range(4):
            assert np.array_equal(split[b].numpy(), _exact_split(scores[b].numpy(), tau, below)), (b, scores[b])
        # the masked form, with every entry valid and with the invalid ones ignored, splits the same way
        assert torch.equal(quantile_bound(scores, tau, below, torch.ones_like(scores, dtype=torch.bool)), bound)
        valid = torch.rand(4, n, generator=g) < 0.7
        valid[:, 0] = True
        masked = quantile_bound(torch.where(valid, scores, torch.full_like(scores, -7.0)), tau, below, valid)
        for b in range(4):
            kept = scores[b][valid[b]]
            split = kept < masked[b] if below else kept > masked[b]
            assert np.array_equal(split.numpy(), _exact_split(kept.numpy(), tau, below))


def test_quantile_bound_hand_computed():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 5.0, 6.0]])  # sorted 1…6, p = 0.6·5 = 3 (whole)
    assert quantile_bound(scores, 0.6, True).item() == 4.0     # q = 4: below are 1, 2, 3
    assert quantile_bound(scores, 0.6, False).item() == 4.0    # above are 5, 6
    assert quantile_bound(scores, 0.5, True).item() == 4.0     # p = 2.5, q = 3.5: below 1, 2, 3 = below v_(3)
    assert quantile_bound(scores, 0.5, False).item() == 3.0    # above 4, 5, 6 = above v_(2)


def test_quantile_errors():
    with pytest.raises(ValueError, match="tau"):
        quantile_threshold(torch.rand(2, 3), 1.5)
    with pytest.raises(ValueError, match="tau"):
        quantile_threshold(torch.rand(2, 3), -0.1)
    with pytest.raises(ValueError, match="scores"):
        quantile_threshold(torch.rand(3), 0.5)


# --------------------------------------------------------------------------- sampling


def _qualifying(scores_row, threshold, below):
    return scores_row < threshold if below else scores_row > threshold


@pytest.mark.parametrize("below", [True, False])
def test_sample_windows_uniform_over_qualifying(below, chi2_pvalue):
    """Every draw qualifies; counts over the qualifying windows pass a chi-square uniformity test."""
    n = 6000
    base = torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(4))
    maps = base.expand(n, 6, 6).contiguous()
    scores = window_scores(maps, (2, 3))                   # 5×4 = 20 windows
    threshold = quantile_threshold(scores, 0.6)
    picked = sample_windows(scores, threshold, below, torch.Generator().manual_seed(123))
    assert not picked.fallback.any()
    assert picked.top.dtype == torch.long and picked.left.dtype == torch.long
    chosen = scores[torch.arange(n), picked.top, picked.left]
    assert torch.all(_qualifying(chosen, threshold, below))
    index = picked.top * scores.shape[2] + picked.left
    qualifying = _qualifying(scores[0].flatten(), threshold[0], below).nonzero().flatten()
    assert len(qualifying) >= 5
    counts = torch.bincount(index, minlength=20)[qualifying]
    assert counts.sum() == n
    assert chi2_pvalue(counts.numpy()) > 1e-3


def test_sample_windows_uniform_with_valid_mask(chi2_pvalue):
    n = 4000
    maps = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(9)).expand(n, 8, 8).contiguous()
    scores, valid = window_scores_per_image(maps, torch.full((n,), 3), torch.full((n,), 4))
    threshold = quantile_threshold(scores, 0.5, valid)
    picked = sample_windows(scores, threshold, True, torch.Generator().manual_seed(1), valid)
    assert torch.all(valid[torch.arange(n), picked.top, picked.left])
    assert torch.all(scores[torch.arange(n), picked.top, picked.left] < threshold)
    qualifying = (valid[0] & (scores[0] < threshold[0])).flatten().nonzero().flatten()
    counts = torch.bincount(picked.top * 8 + picked.left, minlength=64)[qualifying]
    assert counts.sum() == n
    assert chi2_pvalue(counts.numpy()) > 1e-3


def test_sample_windows_flat_map_falls_back_to_uniform(chi2_pvalue):
    n = 3000
    scores = window_scores(torch.full((n, 4, 5), 0.25), 2)   # 3×4 windows, all equal
    threshold = quantile_threshold(scores, 0.6)
    picked = sample_windows(scores, threshold, True, torch.Generator().manual_seed(0))
    assert picked.fallback.all()
    counts = torch.bincount(picked.top * 4 + picked.left, minlength=12)
    assert chi2_pvalue(counts.numpy()) > 1e-3


def test_sample_windows_tau_extremes():
    scores = window_scores(_maps(64, 6, 5, seed=8), 2)
    flat = scores.flatten(1)
    # τ = 0 cut: nothing strictly below the minimum → fallback to the minimum window(s)
    picked = sample_windows(scores, quantile_threshold(scores, 0.0), True, torch.Generator().manual_seed(0))
    assert picked.fallback.all()
    chosen = scores[torch.arange(64), picked.top, picked.left]
    assert torch.equal(chosen, flat.min(dim=1).values)
    # τ = 1 paste: nothing strictly above the maximum → fallback to the maximum window(s)
    picked = sample_windows(scores, quantile_threshold(scores, 1.0), False, torch.Generator().manual_seed(0))
    assert picked.fallback.all()
    assert torch.equal(scores[torch.arange(64), picked.top, picked.left], flat.max(dim=1).values)
    # τ = 1 cut: everything but the maximum qualifies
    picked = sample_windows(scores, quantile_threshold(scores, 1.0), True, torch.Generator().manual_seed(0))
    assert not picked.fallback.any()
    assert torch.all(scores[torch.arange(64), picked.top, picked.left] < flat.max(dim=1).values)


def test_sample_windows_single_window():
    scores = window_scores(_maps(3, 5, 4), (5, 4))
    picked = sample_windows(scores, quantile_threshold(scores, 0.6), True)
    assert torch.equal(picked.top, torch.zeros(3, dtype=torch.long))
    assert torch.equal(picked.left, torch.zeros(3, dtype=torch.long))
    assert picked.fallback.all()


def test_sample_windows_seeded_and_per_sample():
    scores = window_scores(_maps(1, 12, 12).expand(32, 12, 12).contiguous(), 3)
    threshold = quantile_threshold(scores, 0.6)
    a = sample_windows(scores, threshold, True, torch.Generator().manual_seed(5))
    b = sample_windows(scores, threshold, True, torch.Generator().manual_seed(5))
    c = sample_windows(scores, threshold, True, torch.Generator().manual_seed(6))
    assert torch.equal(a.top, b.top) and torch.equal(a.left, b.left)
    assert not (torch.equal(a.top, c.top) and torch.equal(a.left, c.left))
    # identical maps, yet each image gets its own draw
    assert len(set(zip(a.top.tolist(), a.left.tolist()))) > 5


@given(st.integers(1, 3), st.integers(1, 10), st.integers(1, 10), st.floats(0.0, 1.0), st.booleans(),
       st.integers(0, 1000), st.data())
@FAST
def test_sample_windows_property(batch, height, width, tau, below, seed, data):
    h = data.draw(st.integers(1, height))
    w = data.draw(st.integers(1, width))
    g = torch.Generator().manual_seed(seed)
    maps = (torch.rand(batch, height, width, generator=g) * 4).floor()  # many ties and flat regions
    scores = window_scores(maps, (h, w))
    threshold = quantile_threshold(scores, tau)
    picked = sample_windows(scores, threshold, below, g)
    n_h, n_w = scores.shape[1:]
    assert torch.all((picked.top >= 0) & (picked.top < n_h) & (picked.left >= 0) & (picked.left < n_w))
    chosen = scores[torch.arange(batch), picked.top, picked.left]
    strict = _qualifying(scores.flatten(1), threshold.view(-1, 1), below).any(dim=1)
    assert torch.equal(picked.fallback, ~strict)
    for b in range(batch):
        if picked.fallback[b]:
            assert (chosen[b] <= threshold[b]) if below else (chosen[b] >= threshold[b])
        else:
            assert _qualifying(chosen[b], threshold[b], below)


def test_sample_windows_errors():
    scores = torch.rand(2, 3, 3)
    with pytest.raises(ValueError, match="threshold"):
        sample_windows(scores, torch.zeros(3))
    with pytest.raises(ValueError, match="scores"):
        sample_windows(torch.rand(2, 9), torch.zeros(2))
    with pytest.raises(TypeError, match="generator"):
        sample_windows(scores, torch.zeros(2), generator=0)


# --------------------------------------------------------------------------- box masks


def test_box_masks_hand_computed_and_clipped():
    masks = box_masks(torch.tensor([0, -1, 3]), torch.tensor([1, -2, 2]), 2, 3, (4, 5))
    assert masks.shape == (3, 4, 5) and masks.dtype == torch.bool
    expected = torch.zeros(3, 4, 5, dtype=torch.bool)
    expected[0, 0:2, 1:4] = True
    expected[1, 0:1, 0:1] = True  # rows [-1, 1) ∩ [0, 4), cols [-2, 1) ∩ [0, 5)
    expected[2, 3:4, 2:5] = True
    assert torch.equal(masks, expected)


def test_box_masks_per_image_sizes():
    masks = box_masks(torch.tensor([1, 0]), torch.tensor([0, 2]), torch.tensor([2, 3]), torch.tensor([1, 2]), (3, 4))
    assert masks.sum(dim=(1, 2)).tolist() == [2, 6]
    assert masks[0, 1:3, 0].all() and masks[1, 0:3, 2:4].all()


def test_chi2_helper_against_closed_form(chi2_pvalue):
    # with 3 cells (2 degrees of freedom) the chi-square survival function is exp(−x/2)
    observed = np.array([30.0, 45.0, 25.0])
    stat = ((observed - 100 / 3) ** 2 / (100 / 3)).sum()
    assert chi2_pvalue(observed) == pytest.approx(np.exp(-stat / 2), rel=1e-9)
    assert chi2_pvalue([50, 50]) == pytest.approx(1.0)


def test_select_boxes_on_a_float16_map_equals_the_map_widened_to_float32():
    """Found in review: unit_scale scaled float16 maps in float16, so a map peaking at 6e4 lost every value
    below 2^-9 to zero and its low windows tied (47 of 50 draws picked another box); half-precision maps
    are now widened before the power-of-two scaling."""
    from keepmix.regions import select_boxes
    from keepmix.saliency import unit_scale
    maps = torch.zeros(1, 8, 8)
    maps[0, 0, 0] = 60000.0
    maps[0, 4:, 4:] = torch.rand(4, 4, generator=torch.Generator().manual_seed(0)) * 1e-3 + 1e-3
    half = maps.half()
    assert torch.equal(unit_scale(half), unit_scale(half.float()))
    for seed in range(10):
        a = select_boxes(half, 3, 3, 0.3, below=False, generator=torch.Generator().manual_seed(seed))
        b = select_boxes(half.float(), 3, 3, 0.3, below=False, generator=torch.Generator().manual_seed(seed))
        assert all(torch.equal(x, y) for x, y in zip(a, b))


# ---- the selection's fixed-point grid: exact window sums, true ties (reported by a breaker, as kinds)

@pytest.mark.parametrize("path", ["matmul", "integral"])
def test_flat_maps_tie_exactly_and_fall_back_to_uniform_cuts(monkeypatch, path):
    """A constant map (0.1: not a power of two, so float sums in different orders would differ) gives
    every window the same score: every image falls back, and the draw reaches all 81 positions."""
    if path == "integral":
        monkeypatch.setattr(regions, "_MATMUL_LIMIT", 0)
    maps = torch.full((2000, 32, 32), 0.1)
    picked = select_boxes(maps, 24, 24, 0.6, generator=torch.Generator().manual_seed(0))
    assert picked.fallback.all()
    assert len(set(zip(picked.top.tolist(), picked.left.tolist()))) == 81   # P(miss one) ≈ 1e-9


def _grid_scores(maps, size):
    q, _ = regions.selection_grid(maps, size[0] * size[1])
    return window_scores(q, size)


@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("shape,size", [((2, 2, 200), (1, 50)), ((16, 32, 32), (8, 8)), ((3, 256, 256), (7, 9)),
                                        ((2, 9, 1), (4, 1))])
def test_selection_scores_do_not_depend_on_the_batch_or_threads(shape, size, threads):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        maps = _maps(*shape, seed=7)
        whole = _grid_scores(maps, size)
        for b in range(shape[0]):
            assert torch.equal(whole[b:b + 1], _grid_scores(maps[b:b + 1], size))
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("shape,size", [((3, 40, 40), (16, 16)), ((2, 31, 17), (8, 5)), ((4, 32, 32), (1, 1))])
def test_selection_scores_are_exact_integers_equal_on_both_paths(monkeypatch, shape, size, brute_window_sums):
    maps = _maps(*shape, seed=3) * 1e-3 - 2e-4                      # signed, not a power of two
    q, _ = regions.selection_grid(maps, size[0] * size[1])
    assert torch.equal(q, q.round()) and q.abs().max() <= 2 ** (24 - np.ceil(np.log2(size[0] * size[1])))
    fast = window_scores(q, size)
    np.testing.assert_array_equal(fast.double().numpy(), brute_window_sums(q.double().numpy(), *size))
    monkeypatch.setattr(regions, "_MATMUL_LIMIT", 0)
    assert torch.equal(window_scores(q, size), fast)


def test_pixels_below_the_grid_step_count_as_zero_and_the_spike_is_never_cut():
    """300 px (the integral path): a 1e-14 ramp under a unit spike is below the grid (2^−16 of the peak for
    16×16 windows), so those windows tie at 0 and the cut falls back among them — never onto the spike."""
    maps = (torch.arange(300.0).view(1, 1, 300).expand(1, 300, 300) * 1e-16).clone()
    maps[0, 0, 0] = 1.0
    for seed in range(20):
        picked = select_boxes(maps, 16, 16, 0.6, generator=torch.Generator().manual_seed(seed))
        assert picked.fallback.all() and (picked.top[0] > 0 or picked.left[0] > 0)


def test_masked_quantile_bound_is_exact_for_millions_of_windows():
    scores = torch.arange(3_000_001, dtype=torch.float32).view(1, -1)     # p = 0.6 · 3 000 000, whole
    everywhere = torch.ones_like(scores, dtype=torch.bool)
    for below in (True, False):
        assert quantile_bound(scores, 0.6, below, everywhere).item() == quantile_bound(scores, 0.6, below).item()
    assert quantile_bound(scores, 0.6, True).item() == 1_800_000.0


def test_huge_clipped_boxes_score_without_padding_the_map(integral_path):
    maps = _maps(2, 257, 257, seed=1)
    huge = select_boxes(maps, 20000, 6000, 0.6, clip=True, generator=torch.Generator().manual_seed(0))
    cover = select_boxes(maps, 515, 515, 0.6, clip=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(huge.top, cover.top) and torch.equal(huge.left, cover.left)
    assert (huge.height == 257).all() and (huge.width == 257).all()


def test_valid_masks_of_the_wrong_kind_are_refused():
    scores = torch.rand(2, 4, 4)
    for bad in (torch.ones(2, 4, 4), torch.ones(2, 16, dtype=torch.bool)):
        with pytest.raises(ValueError, match="valid"):
            quantile_bound(scores, 0.5, True, bad)
        with pytest.raises(ValueError, match="valid"):
            sample_windows(scores, torch.zeros(2), True, None, bad)


def test_bad_box_sides_and_empty_candidates_are_refused():
    maps = torch.rand(2, 8, 8)
    for sides, error in ((-1, ValueError), (0, ValueError), (2.5, TypeError), ("3", TypeError), (True, TypeError),
                         (torch.tensor([3.0, 3.0]), TypeError), (torch.tensor([3, 3, 3]), ValueError),
                         (torch.tensor([3, 0]), ValueError), (torch.tensor([3, -2]), ValueError)):
        for clip in (False, True):
            with pytest.raises(error, match="heights"):
                select_boxes(maps, sides, 3, 0.5, clip=clip)
    with pytest.raises(ValueError, match="widths"):
        regions.clipped_box_scores(maps, torch.tensor([3, 3]), torch.tensor([3, 3, 3]))
    with pytest.raises(ValueError, match="at least one pixel"):
        select_boxes(torch.rand(2, 0, 8), 1, 1, 0.5)
    scores, valid = torch.rand(2, 3, 3), torch.ones(2, 3, 3, dtype=torch.bool)
    valid[1] = False
    with pytest.raises(ValueError, match="valid"):
        sample_windows(scores, torch.zeros(2), True, None, valid)
    with pytest.raises(ValueError, match="valid"):
        quantile_bound(scores, 0.5, True, valid)
    with pytest.raises(ValueError, match="threshold"):
        sample_windows(scores, torch.tensor([0.5, float("nan")]))
