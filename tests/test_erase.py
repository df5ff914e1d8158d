"""Cutout, RandomErasing and GridMask against their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from keepmix.erase import Cutout, GridMask, RandomErasing


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def changed(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Pixels (B×H×W) where any channel changed."""
    return (before != after).any(dim=1)


def clipped_length(centre: int, length: int, size: int) -> int:
    start = centre - length // 2
    return max(0, min(start + length, size) - max(start, 0))


# --------------------------------------------------------------------------- Cutout


def test_cutout_mask_is_the_union_of_clipped_boxes_at_the_drawn_centres():
    images = torch.rand(16, 3, 20, 17) + 1.0  # never 0, so every erased pixel shows
    op = Cutout((6, 5), n_holes=3, generator=gen(1))
    out, _ = op(images, None)
    centres = op.last_stats["centres"]
    expected = torch.zeros(16, 20, 17, dtype=torch.bool)
    for b in range(16):
        for k in range(3):
            cy, cx = centres[b, k].tolist()
            expected[b, max(cy - 3, 0):max(cy - 3 + 6, 0), max(cx - 2, 0):max(cx - 2 + 5, 0)] = True
    assert torch.equal(changed(images, out), expected)
    assert torch.all(out.permute(0, 2, 3, 1)[expected] == 0)  # default fill 0
    assert torch.allclose(op.last_stats["erased_fraction"], expected.float().mean(dim=(1, 2)))


def test_cutout_hole_count_with_single_pixel_holes():
    images = torch.ones(300, 1, 64, 64)
    op = Cutout(1, n_holes=3, generator=gen(2))
    out, _ = op(images, None)
    erased = (out == 0).flatten(1).sum(dim=1)
    centres = op.last_stats["centres"]
    distinct = torch.tensor([len(set(map(tuple, c.tolist()))) for c in centres])
    assert torch.equal(erased, distinct)
    assert (erased == 3).float().mean() > 0.95  # collisions have probability ~3/4096 per image


def test_cutout_centres_are_uniform_over_the_image_and_independent_per_sample(chi2_pvalue):
    op = Cutout(4, n_holes=2, generator=gen(3))
    op(torch.ones(4000, 1, 8, 6), None)
    centres = op.last_stats["centres"]
    assert chi2_pvalue(np.bincount(centres[..., 0].flatten().numpy(), minlength=8)) > 1e-3
    assert chi2_pvalue(np.bincount(centres[..., 1].flatten().numpy(), minlength=6)) > 1e-3
    # joint (y, x) uniform over the 48 pixels: independence of the two coordinates too
    flat = (centres[..., 0] * 6 + centres[..., 1]).flatten().numpy()
    assert chi2_pvalue(np.bincount(flat, minlength=48)) > 1e-3
    # different images receive different holes in one call
    assert len({tuple(c.flatten().tolist()) for c in centres[:50]}) > 45


def test_cutout_mean_erased_area_matches_the_clipped_box_expectation():
    height, width, length = 12, 10, 5
    op = Cutout(length, generator=gen(4))
    op(torch.ones(6000, 1, height, width), None)
    frac = op.last_stats["erased_fraction"].double()
    rows = np.mean([clipped_length(c, length, height) for c in range(height)])
    cols = np.mean([clipped_length(c, length, width) for c in range(width)])
    expected = rows * cols / (height * width)
    assert abs(float(frac.mean()) - expected) < 5 * float(frac.std()) / math.sqrt(6000)


def test_cutout_probability_uint8_and_targets_identity():
    images = torch.randint(1, 256, (2000, 3, 8, 8), dtype=torch.uint8)
    targets = torch.arange(2000)
    op = Cutout(4, p=0.3, value=(7, 8, 9), generator=gen(5))
    out, out_targets = op(images, targets)
    assert out.dtype == torch.uint8 and out_targets is targets
    applied = op.last_stats["applied"]
    assert abs(float(applied.float().mean()) - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 2000)
    assert torch.equal(out[~applied], images[~applied])
    erased = (out != images).any(dim=1)
    assert torch.all(erased.flatten(1).any(dim=1) <= applied)
    filled = out.permute(0, 2, 3, 1)[erased]
    assert torch.all(filled == torch.tensor([7, 8, 9], dtype=torch.uint8))


def test_cutout_random_fill_is_standard_normal_for_float_and_bytes_for_uint8():
    op = Cutout(8, value="random", generator=gen(6))
    out, _ = op(torch.full((200, 3, 8, 8), 100.0), None)
    fill = out[out != 100.0]
    assert fill.numel() == round(float(op.last_stats["erased_fraction"].sum()) * 64 * 3)
    assert abs(float(fill.mean())) < 0.02 and abs(float(fill.std()) - 1) < 0.02
    out8, _ = op(torch.zeros(50, 3, 8, 8, dtype=torch.uint8), None)
    erased = float(op.last_stats["erased_fraction"].sum()) * 64 * 3
    assert out8.dtype == torch.uint8 and abs(float(out8.double().sum()) / erased - 127.5) < 3  # U{0..255}


def test_cutout_is_seeded_bit_identically_and_on_the_batch_device():
    images = torch.randn(8, 3, 16, 16)
    a, _ = Cutout(8, 2, value="random", generator=gen(7))(images, None)
    b, _ = Cutout(8, 2, value="random", generator=gen(7))(images, None)
    c, _ = Cutout(8, 2, value="random", generator=gen(8))(images, None)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.device == images.device


@pytest.mark.parametrize("kwargs, error", [
    ({"length": 0}, ValueError), ({"length": (3, 0)}, ValueError), ({"length": 2.5}, TypeError),
    ({"n_holes": 0}, ValueError), ({"p": 1.5}, ValueError), ({"value": "noise"}, ValueError),
    ({"generator": 3}, TypeError),
])
def test_cutout_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error):
        Cutout(**kwargs)


def test_cutout_rejects_bad_images():
    with pytest.raises(ValueError, match="images"):
        Cutout(4)(torch.zeros(8, 8), None)  # 2-d: neither a batch nor one C×H×W image
    with pytest.raises(TypeError, match="images"):
        Cutout(4)(torch.zeros(1, 3, 8, 8, dtype=torch.int32), None)


# --------------------------------------------------------------------------- RandomErasing


def test_random_erasing_erases_exactly_the_recorded_box_inside_the_image():
    images = torch.rand(64, 3, 30, 40) + 2.0
    op = RandomErasing(p=1.0, value=0.0, generator=gen(10))
    out, _ = op(images, None)
    boxes, erased = op.last_stats["boxes"], op.last_stats["erased"]
    expected = torch.zeros(64, 30, 40, dtype=torch.bool)
    for b in range(64):
        if erased[b]:
            top, left, h, w = boxes[b].tolist()
            assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 40
            assert 1 <= h < 30 and 1 <= w < 40
            expected[b, top:top + h, left:left + w] = True
    assert torch.equal(changed(images, out), expected)
    assert erased.float().mean() > 0.9  # 10 attempts: almost every image finds a fitting box


def test_random_erasing_area_and_aspect_follow_the_definition():
    op = RandomErasing(p=1.0, generator=gen(11))
    op(torch.zeros(3000, 1, 50, 50), None)
    erased = op.last_stats["erased"]
    top, left, h, w = op.last_stats["boxes"][erased].double().unbind(1)
    area = h * w / 2500
    # rounding h and w moves the area by at most (h + w + 1) / 2 pixels
    slack = (h + w + 1) / 2 / 2500
    assert torch.all(area >= 0.02 - slack) and torch.all(area <= 0.4 + slack)
    aspect = h / w
    assert torch.all(aspect >= 0.3 * (1 - 1 / w) - 1 / w) and torch.all(aspect <= 3.3 * (1 + 1 / w) + 1 / w)
    assert area.min() < 0.05 and area.max() > 0.3  # the whole range is used
    # per-image draws: many distinct boxes in one call
    assert len(set(zip(h.tolist(), w.tolist()))) > 300


def test_random_erasing_square_area_distribution_is_exactly_uniform(chi2_pvalue):
    """ratio=(1, 1): h = w = round(√(s·HW)), s ~ U(0.02, 0.4), so P(h = k) is known in closed form."""
    n, side = 4000, 40
    op = RandomErasing(p=1.0, ratio=(1.0, 1.0), generator=gen(12))
    op(torch.zeros(n, 1, side, side), None)
    assert op.last_stats["erased"].all()
    h = op.last_stats["boxes"][:, 2].numpy()
    assert np.array_equal(h, op.last_stats["boxes"][:, 3].numpy())
    low, high = 0.02, 0.4
    ks = np.arange(h.min(), h.max() + 1)
    upper = np.clip((ks + 0.5) ** 2 / side ** 2, low, high)
    lower = np.clip((ks - 0.5) ** 2 / side ** 2, low, high)
    expected = (upper - lower) / (high - low) * n
    observed = np.array([(h == k).sum() for k in ks])
    assert abs(expected.sum() - n) < 1e-6
    # merge thin edge bins so every expected count is >= 5
    keep = expected >= 5
    obs = np.append(observed[keep], observed[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    assert chi2_pvalue(obs, exp) > 1e-3


def test_random_erasing_position_is_uniform_over_fitting_corners(chi2_pvalue):
    # scale fixed at 0.25 of a 16×16 image, square: an 8×8 box, corners 0..8
    op = RandomErasing(p=1.0, scale=(0.25, 0.25), ratio=(1.0, 1.0), generator=gen(13))
    op(torch.zeros(3000, 1, 16, 16), None)
    boxes = op.last_stats["boxes"]
    assert torch.all(boxes[:, 2:] == 8)
    assert chi2_pvalue(np.bincount(boxes[:, 0].numpy(), minlength=9)) > 1e-3
    assert chi2_pvalue(np.bincount(boxes[:, 1].numpy(), minlength=9)) > 1e-3


def test_random_erasing_probability_and_unchanged_images():
    # square boxes of at most 0.4 of the area always fit: the erasing rate is exactly p
    images = torch.randn(4000, 1, 10, 10)
    targets = torch.zeros(4000, 3)
    op = RandomErasing(p=0.5, ratio=(1.0, 1.0), generator=gen(14))
    out, out_targets = op(images, targets)
    assert out_targets is targets
    touched = changed(images, out).flatten(1).any(dim=1)
    assert torch.equal(touched, op.last_stats["erased"])
    assert abs(float(touched.float().mean()) - 0.5) < 4 * math.sqrt(0.25 / 4000)


def test_random_erasing_no_fitting_box_leaves_the_image_unchanged():
    # a 1×1 image admits no box with 1 <= h < H: every draw fails, nothing is erased, no error
    images = torch.randn(5, 3, 1, 1)
    op = RandomErasing(p=1.0, generator=gen(15))
    out, _ = op(images, None)
    assert torch.equal(out, images) and not op.last_stats["erased"].any()


@pytest.mark.parametrize("kwargs, error", [
    ({"p": -0.1}, ValueError), ({"scale": (0.5, 0.2)}, ValueError), ({"scale": 0.3}, TypeError),
    ({"ratio": (0.0, 2.0)}, ValueError), ({"attempts": 0}, ValueError), ({"value": [1, "a"]}, TypeError),
])
def test_random_erasing_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error):
        RandomErasing(**kwargs)


# --------------------------------------------------------------------------- GridMask


def test_gridmask_without_rotation_keeps_exactly_the_definition_fraction():
    # d = 8 divides 24: every offset erases (d − l)² per unit; l = ⌈0.6·8⌉ = 5
    op = GridMask((8, 8), ratio=0.6, rotate=0, p=1.0, generator=gen(20))
    out, _ = op(torch.ones(32, 1, 24, 24), None)
    assert torch.all(op.last_stats["band"] == 5)
    kept = (out != 0).float().mean(dim=(1, 2, 3))
    assert torch.allclose(kept, torch.full((32,), 1 - 9 / 64))
    assert torch.allclose(op.last_stats["kept_fraction"], kept)


def test_gridmask_band_width_is_the_ceiling_of_ratio_times_d():
    op = GridMask((1, 40), ratio=0.6)
    d = torch.arange(1, 41)
    expected = torch.tensor([math.ceil(round(0.6 * k, 9)) for k in range(1, 41)])
    assert torch.equal(op.band_width(d), expected)


def test_gridmask_pattern_matches_a_brute_force_reference_unrotated():
    images = torch.ones(20, 1, 19, 23)
    op = GridMask((3, 9), ratio=0.5, rotate=0, p=1.0, generator=gen(21))
    out, _ = op(images, None)
    stats = op.last_stats
    for b in range(20):
        d, band = int(stats["d"][b]), int(stats["band"][b])
        oy, ox = stats["offsets"][b].tolist()
        ref = torch.tensor([[((y - oy) % d >= band) and ((x - ox) % d >= band) for x in range(23)]
                            for y in range(19)])
        assert torch.equal(out[b, 0] == 0, ref)
        assert 0 <= oy < d and 0 <= ox < d


def test_gridmask_rotated_pattern_matches_a_brute_force_reference():
    images = torch.ones(6, 1, 21, 17)
    op = GridMask((4, 10), ratio=0.4, rotate=360, p=1.0, generator=gen(22))
    out, _ = op(images, None)
    stats = op.last_stats
    mismatches = 0
    for b in range(6):
        d, band = int(stats["d"][b]), int(stats["band"][b])
        oy, ox = stats["offsets"][b].tolist()
        theta = math.radians(float(stats["angle"][b]))
        for y in range(21):
            for x in range(17):
                xc, yc = x + 0.5 - 17 / 2, y + 0.5 - 21 / 2
                u = math.floor(math.cos(theta) * xc + math.sin(theta) * yc + 17 / 2)
                v = math.floor(-math.sin(theta) * xc + math.cos(theta) * yc + 21 / 2)
                ref = (v - oy) % d >= band and (u - ox) % d >= band
                mismatches += ref != bool(out[b, 0, y, x] == 0)
    assert mismatches <= 3  # float32 vs float64 rounding exactly at a lattice line
    assert len(set(stats["angle"].tolist())) == 6


def test_gridmask_d_is_uniform_over_the_inclusive_range_and_per_sample(chi2_pvalue):
    op = GridMask((5, 12), rotate=90, p=1.0, generator=gen(23))
    op(torch.ones(3000, 1, 8, 8), None)
    d = op.last_stats["d"].numpy()
    assert d.min() == 5 and d.max() == 12
    assert chi2_pvalue(np.bincount(d - 5, minlength=8)) > 1e-3
    angle = op.last_stats["angle"]
    assert float(angle.min()) >= 0 and float(angle.max()) < 90
    assert abs(float(angle.mean()) - 45) < 2.0


def test_gridmask_mean_kept_fraction_matches_the_expectation_over_d():
    """Unrotated, with uniform offsets every pixel is erased with probability ((d − l)/d)², exactly."""
    n = 4000
    op = GridMask((6, 15), ratio=0.3, rotate=0, p=1.0, generator=gen(24))
    op(torch.ones(n, 1, 20, 20), None)
    d = op.last_stats["d"].double()
    band = op.band_width(op.last_stats["d"]).double()
    kept = op.last_stats["kept_fraction"].double()
    conditional = 1 - ((d - band) / d) ** 2
    assert abs(float((kept - conditional).mean())) < 5 * float((kept - conditional).std()) / math.sqrt(n)
    d_values = torch.arange(6, 16, dtype=torch.float64)
    overall = float((1 - ((d_values - op.band_width(d_values.long())) / d_values) ** 2).mean())
    assert abs(float(kept.mean()) - overall) < 0.01


def test_gridmask_ratio_extremes_probability_and_dtype():
    images = torch.randint(1, 255, (400, 3, 16, 16), dtype=torch.uint8)
    out, _ = GridMask((4, 8), ratio=1.0, p=1.0, generator=gen(25))(images, None)
    assert torch.equal(out, images)
    out, _ = GridMask((4, 8), ratio=0.0, p=1.0, generator=gen(25))(images, None)
    assert torch.all(out == 0) and out.dtype == torch.uint8
    op = GridMask((4, 8), ratio=0.5, p=0.25, generator=gen(26))
    out, _ = op(images, None)
    applied = op.last_stats["applied"]
    assert torch.equal(out[~applied], images[~applied])
    assert abs(float(applied.float().mean()) - 0.25) < 0.07


@pytest.mark.parametrize("kwargs, error", [
    ({"d_range": (0, 4)}, ValueError), ({"d_range": (5, 4)}, ValueError), ({"d_range": 4}, TypeError),
    ({"d_range": (2.5, 4)}, TypeError), ({"d_range": (2, 4), "ratio": 1.5}, ValueError),
    ({"d_range": (2, 4), "rotate": -1}, ValueError), ({"d_range": (2, 4), "p": 2}, ValueError),
])
def test_gridmask_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error):
        GridMask(**kwargs)


def test_region_ops_follow_the_input_dtype_and_device():
    for op in (Cutout(4, generator=gen(1)), RandomErasing(p=1, generator=gen(1)),
               GridMask((2, 4), generator=gen(1))):
        for dtype in (torch.float16, torch.float64, torch.uint8):
            images = torch.ones(3, 3, 12, 12, dtype=dtype)
            out, _ = op(images, None)
            assert out.dtype == dtype and out.shape == images.shape
