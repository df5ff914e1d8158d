"""keepmix.policies.functional: each op against hand-computed results and brute-force references."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from keepmix.policies import functional as F
from keepmix.policies._engine import OPS, apply_per_sample


def u8(values, shape=None):
    t = torch.tensor(values, dtype=torch.uint8)
    return t.view(shape) if shape is not None else t


def row(values):
    """A 1×1×1×W uint8 image holding one row of levels."""
    return u8(values).view(1, 1, 1, -1)


def as_float(images):
    return images.float() / 255.0


def levels_of(images):
    return (images.double() * 255.0).round().long()


# ---------------------------------------------------------------------------------------------
# hand-computed cases


def test_posterize_4_bits_and_per_sample_bits():
    x = row([0, 15, 16, 17, 127, 128, 200, 255])
    assert F.posterize(x, 4).flatten().tolist() == [0, 0, 16, 16, 112, 128, 192, 240]
    batch = x.repeat(4, 1, 1, 1)
    out = F.posterize(batch, torch.tensor([4, 1, 0, 8]))
    assert out[0].flatten().tolist() == [0, 0, 16, 16, 112, 128, 192, 240]
    assert out[1].flatten().tolist() == [0, 0, 0, 0, 0, 128, 128, 128]
    assert out[2].flatten().tolist() == [0] * 8
    assert out[3].flatten().tolist() == x.flatten().tolist()
    # float input: the same levels, divided by 255
    expected = torch.tensor([0, 0, 16, 16, 112, 128, 192, 240])
    assert torch.equal(levels_of(F.posterize(as_float(x), 4)).flatten(), expected)


def test_solarize_at_128_and_per_sample_thresholds():
    x = row([0, 127, 128, 200, 255])
    assert F.solarize(x, 128).flatten().tolist() == [0, 127, 127, 55, 0]
    out = F.solarize(x.repeat(3, 1, 1, 1), torch.tensor([256.0, 0.0, 200.0]))
    assert out[0].flatten().tolist() == [0, 127, 128, 200, 255]  # 256: identity
    assert out[1].flatten().tolist() == [255, 128, 127, 55, 0]  # 0: everything inverted
    assert out[2].flatten().tolist() == [0, 127, 128, 55, 0]
    flt = F.solarize(as_float(x), 128)
    assert torch.allclose(flt.flatten(), torch.tensor([0, 127, 127, 55, 0]) / 255.0, atol=1e-7)


def test_solarize_add():
    x = row([0, 100, 127, 128, 200])
    assert F.solarize_add(x, 100).flatten().tolist() == [100, 200, 227, 128, 200]
    assert F.solarize_add(x, 200).flatten().tolist() == [200, 255, 255, 128, 200]
    assert F.solarize_add(x, 50, threshold=101).flatten().tolist() == [50, 150, 127, 128, 200]


def _shuffled_channel(counts, generator):
    values = torch.cat([torch.full((n,), v, dtype=torch.uint8) for v, n in counts])
    return values[torch.randperm(values.numel(), generator=generator)].view(25, 32)


def test_equalize_on_known_histograms():
    g = torch.Generator().manual_seed(0)
    # 800 pixels per channel
    first = torch.stack([
        _shuffled_channel([(50, 200), (100, 300), (150, 200), (200, 100)], g),  # step (800−100)//255 = 2
        _shuffled_channel([(77, 800)], g),  # one level: unchanged
        _shuffled_channel([(3, 100), (9, 700)], g),  # step (800−700)//255 = 0: unchanged
    ])
    second = torch.stack([
        _shuffled_channel([(0, 255), (1, 256), (2, 289)], g),  # step 2; lut[2] = 256 clipped to 255
        _shuffled_channel([(50, 200), (100, 300), (150, 200), (200, 100)], g),
        _shuffled_channel([(255, 800)], g),
    ])
    images = torch.stack([first, second])
    out = F.equalize(images)
    # lut[v] = (step//2 + count below v) // step
    lut_a = {50: 0, 100: (1 + 200) // 2, 150: (1 + 500) // 2, 200: 255}
    lut_b = {0: 0, 1: (1 + 255) // 2, 2: 255}
    exp0 = first[0].long().clone()
    for v, w in lut_a.items():
        exp0[first[0] == v] = w
    exp1 = second[0].long().clone()
    for v, w in lut_b.items():
        exp1[second[0] == v] = w
    exp1b = second[1].long().clone()
    for v, w in lut_a.items():
        exp1b[second[1] == v] = w
    assert torch.equal(out[0, 0].long(), exp0)
    assert torch.equal(out[0, 1], first[1]) and torch.equal(out[0, 2], first[2])
    assert torch.equal(out[1, 0].long(), exp1)
    assert torch.equal(out[1, 1].long(), exp1b)
    assert torch.equal(out[1, 2], second[2])
    assert sorted(torch.unique(out[0, 0]).tolist()) == [0, 100, 250, 255]
    # float input is equalised on its levels
    assert torch.equal(levels_of(F.equalize(as_float(images))), out.long())


def _pil_equalize_channel(channel):
    """PIL's ImageOps.equalize rule, written out bin by bin."""
    hist = [0] * 256
    for v in channel:
        hist[v] += 1
    present = [h for h in hist if h]
    if len(present) <= 1:
        return list(channel)
    step = (sum(present) - present[-1]) // 255
    if not step:
        return list(channel)
    lut, n = [], step // 2
    for i in range(256):
        lut.append(min(255, n // step))
        n += hist[i]
    return [lut[v] for v in channel]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.integers(1, 12), st.sampled_from([(16, 20), (3, 5), (30, 30)]))
def test_equalize_matches_bin_by_bin_reference(seed, distinct, size):
    g = torch.Generator().manual_seed(seed)
    palette = torch.randint(0, 256, (distinct,), generator=g)
    images = palette[torch.randint(0, distinct, (2, 2) + size, generator=g)].to(torch.uint8)
    out = F.equalize(images)
    for b in range(2):
        for c in range(2):
            channel = images[b, c].flatten().tolist()
            assert out[b, c].flatten().tolist() == _pil_equalize_channel(channel)


def test_invert():
    x = row([0, 1, 254, 255])
    assert F.invert(x).flatten().tolist() == [255, 254, 1, 0]
    f = torch.tensor([0.0, 0.25, 1.0]).view(1, 1, 1, 3)
    assert torch.equal(F.invert(f), 1.0 - f)


def test_auto_contrast_per_channel():
    x = u8([[[[50, 100, 150]], [[7, 7, 7]], [[0, 255, 128]]],
            [[[10, 11, 12]], [[200, 0, 100]], [[3, 4, 3]]]])
    out = F.auto_contrast(x)
    assert out[0, 0].flatten().tolist() == [0, 127, 255]  # 50·255/100 = 127.5 → 127
    assert out[0, 1].flatten().tolist() == [7, 7, 7]  # flat: unchanged
    assert out[0, 2].flatten().tolist() == [0, 255, 128]  # already full range
    assert out[1, 0].flatten().tolist() == [0, 127, 255]
    assert out[1, 1].flatten().tolist() == [254, 0, 127]  # PIL: 200·(255.0/200) = 254.999… → 254
    assert out[1, 2].flatten().tolist() == [0, 255, 0]
    flt = F.auto_contrast(as_float(x))
    assert torch.allclose(flt[0, 0].flatten(), torch.tensor([0.0, 0.5, 1.0]))
    assert torch.equal(flt[0, 1], as_float(x)[0, 1])


def test_contrast_one_channel_by_hand():
    x = u8([0, 100, 200, 255], (1, 1, 2, 2))  # mean 138.75 → int(139.25) = 139
    out = F.contrast(x.repeat(3, 1, 1, 1), torch.tensor([0.5, 2.0, 0.0]))
    assert out[0].flatten().tolist() == [69, 119, 169, 197]  # 139 + (x − 139)/2, truncated
    assert out[1].flatten().tolist() == [0, 61, 255, 255]
    assert out[2].flatten().tolist() == [139] * 4


def test_color_by_hand():
    red = u8([255, 0, 0], (1, 3, 1, 1))  # L = (255·19595 + 32768) >> 16 = 76
    out = F.color(red.repeat(3, 1, 1, 1), torch.tensor([0.0, 0.5, 1.0]))
    assert out[0].flatten().tolist() == [76, 76, 76]
    assert out[1].flatten().tolist() == [165, 38, 38]  # 76 + (255 − 76)/2 = 165.5, 76 − 38
    assert out[2].flatten().tolist() == [255, 0, 0]
    flt = F.color(as_float(red), 0.0)
    assert torch.allclose(flt.flatten(), torch.full((3,), 0.299))
    gray = u8([[[[10, 200]]]])
    assert torch.equal(F.color(gray, 0.3), gray)  # one channel is its own grayscale


def test_brightness_by_hand():
    x = row([0, 10, 100, 170, 200])
    assert F.brightness(x, 1.5).flatten().tolist() == [0, 15, 150, 255, 255]
    assert F.brightness(row([1, 3, 255]), 0.5).flatten().tolist() == [0, 1, 127]
    f = torch.tensor([0.2, 0.8]).view(1, 1, 1, 2)
    assert torch.allclose(F.brightness(f, 1.5).flatten(), torch.tensor([0.3, 1.0]))


def test_sharpness_by_hand():
    x = torch.zeros(1, 1, 3, 3, dtype=torch.uint8)
    x[0, 0, 1, 1] = 130  # smoothed centre: 5·130/13 = 50
    out = F.sharpness(x.repeat(3, 1, 1, 1), torch.tensor([0.0, 0.5, 2.0]))
    assert out[:, 0, 1, 1].tolist() == [50, 90, 210]
    border = torch.ones(3, 3, dtype=torch.bool)
    border[1, 1] = False
    assert (out[:, 0][:, border] == 0).all()  # border pixels never change
    tiny = u8([[[[0, 255], [255, 0]]]])
    assert torch.equal(F.sharpness(tiny, 3.0), tiny)  # no interior


def _numpy_sharpness(image, factor):
    img = image.astype(np.float64)
    h, w = img.shape
    smooth = img.copy()
    for y in range(1, h - 1):
        for x in range(1, w - 1):
            s = img[y - 1:y + 2, x - 1:x + 2].sum() + 4 * img[y, x]
            smooth[y, x] = math.floor(s / 13 + 0.5)
    smooth, img = smooth.astype(np.float32), img.astype(np.float32)  # PIL blends in float32
    out = smooth + np.float32(factor) * (img - smooth)
    return np.floor(np.clip(out, 0, 255)).astype(np.int64)


def _numpy_luma(rgb):
    r, g, b = (rgb[i].astype(np.int64) for i in range(3))
    return (r * 19595 + g * 38470 + b * 7471 + 32768) >> 16


def test_contrast_color_sharpness_match_numpy_rederivation():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (2, 3, 5, 6), dtype=torch.uint8, generator=g)
    factors = torch.tensor([0.3, 1.7])
    con, col, sha = F.contrast(x, factors), F.color(x, factors), F.sharpness(x, factors)
    for b in range(2):
        f = float(factors[b])
        img = x[b].numpy()
        luma = _numpy_luma(img).astype(np.float32)  # PIL blends in float32
        mean = int(_numpy_luma(img).mean() + 0.5)
        exp_con = np.floor(np.clip(mean + np.float32(f) * (img.astype(np.float32) - mean), 0, 255))
        assert np.array_equal(con[b].numpy(), exp_con.astype(np.uint8))
        exp_col = np.floor(np.clip(luma + np.float32(f) * (img.astype(np.float32) - luma), 0, 255))
        assert np.array_equal(col[b].numpy(), exp_col.astype(np.uint8))
        for c in range(3):
            assert np.array_equal(sha[b, c].numpy().astype(np.int64), _numpy_sharpness(img[c], f))


SQUARE = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_rotate_multiples_of_90_are_exact():
    x = u8(SQUARE, (1, 1, 3, 3)).repeat(5, 1, 1, 1)
    out = F.rotate(x, torch.tensor([90.0, -90.0, 180.0, 0.0, 360.0]), fill=200)
    assert out[0, 0].tolist() == [[3, 6, 9], [2, 5, 8], [1, 4, 7]]  # counter-clockwise
    assert out[1, 0].tolist() == [[7, 4, 1], [8, 5, 2], [9, 6, 3]]
    assert out[2, 0].tolist() == [[9, 8, 7], [6, 5, 4], [3, 2, 1]]
    assert out[3, 0].tolist() == SQUARE and out[4, 0].tolist() == SQUARE
    # even size: out[i][j] = in[j][n − 1 − i] for +90°
    n = 4
    even = torch.arange(16, dtype=torch.uint8).view(1, 1, n, n)
    ccw = F.rotate(even, 90)[0, 0].tolist()
    assert ccw == [[int(even[0, 0, j, n - 1 - i]) for j in range(n)] for i in range(n)]


def test_translate_by_whole_pixels():
    x = torch.arange(1, 16, dtype=torch.uint8).view(1, 1, 3, 5).repeat(2, 1, 1, 1)
    out = F.translate_x(x, torch.tensor([2.0, -1.0]), fill=0)
    assert torch.equal(out[0, 0, :, 2:], x[0, 0, :, :3]) and (out[0, 0, :, :2] == 0).all()
    assert torch.equal(out[1, 0, :, :4], x[1, 0, :, 1:]) and (out[1, 0, :, 4] == 0).all()
    down = F.translate_y(x, 1, fill=200)
    assert torch.equal(down[:, :, 1:], x[:, :, :2]) and (down[:, :, 0] == 200).all()
    rgb = torch.full((1, 3, 2, 3), 9, dtype=torch.uint8)
    filled = F.translate_x(rgb, -2, fill=(10, 20, 30))
    assert filled[0, :, :, 1:].flatten(1).tolist() == [[10] * 4, [20] * 4, [30] * 4]
    flt = F.translate_y(as_float(x), -1, fill=255)
    assert (flt[:, :, 2] == 1.0).all()  # fill is on the 0–255 scale


def test_shear_by_hand():
    x = u8(SQUARE, (1, 1, 3, 3))
    f = 0
    assert F.shear_x(x, 1.0, fill=f)[0, 0].tolist() == [[2, 3, f], [6, f, f], [f, f, f]]
    assert F.shear_x(x, -1.0, fill=f)[0, 0].tolist() == [[1, 2, 3], [f, 4, 5], [f, f, 7]]
    assert F.shear_y(x, 1.0, fill=f)[0, 0].tolist() == [[4, 8, f], [7, f, f], [f, f, f]]


def test_bilinear_half_pixel_translation():
    x = row([0, 100, 200])
    assert F.translate_x(x, 0.5, interpolation="bilinear").flatten().tolist() == [0, 50, 150]
    assert torch.equal(F.translate_x(x, 1, interpolation="bilinear"), F.translate_x(x, 1))


def _reference_affine(image, matrix, fill, interpolation):
    """PIL's AFFINE resampling written pixel by pixel (C×H×W float64 image).

    The sample point is computed in float32 in the same order as the library, so
    points that fall exactly on a pixel edge are classified the same way.
    """
    c, h, w = image.shape
    a, b, cc, d, e, f = (np.float32(v) for v in matrix)
    out = np.empty_like(image)
    for y in range(h):
        for x in range(w):
            xc, yc = np.float32(x + 0.5), np.float32(y + 0.5)
            sx = float(a * xc + b * yc + cc)
            sy = float(d * xc + e * yc + f)
            if not (0 <= sx < w and 0 <= sy < h):
                out[:, y, x] = fill
            elif interpolation == "nearest":
                out[:, y, x] = image[:, int(math.floor(sy)), int(math.floor(sx))]
            else:
                px, py = float(np.float32(sx) - np.float32(0.5)), float(np.float32(sy) - np.float32(0.5))
                x0, y0 = math.floor(px), math.floor(py)
                wx, wy = px - x0, py - y0

                def at(yy, xx):
                    return image[:, min(max(yy, 0), h - 1), min(max(xx, 0), w - 1)]

                top = at(y0, x0) * (1 - wx) + at(y0, x0 + 1) * wx
                bottom = at(y0 + 1, x0) * (1 - wx) + at(y0 + 1, x0 + 1) * wx
                out[:, y, x] = top * (1 - wy) + bottom * wy
    return out


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.sampled_from(["nearest", "bilinear"]))
def test_affine_matches_pixel_by_pixel_reference(seed, interpolation):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 2, 5, 6, generator=g, dtype=torch.float64)
    matrix = torch.eye(2, 3, dtype=torch.float64) + 0.6 * (torch.rand(2, 2, 3, generator=g, dtype=torch.float64) - 0.5)
    matrix[:, :, 2] = 4 * (torch.rand(2, 2, generator=g, dtype=torch.float64) - 0.5)
    out = F.affine(images, matrix, fill=51, interpolation=interpolation)
    for b in range(2):
        ref = _reference_affine(images[b].numpy(), matrix[b].flatten().tolist(), 51 / 255, interpolation)
        np.testing.assert_allclose(out[b].numpy(), ref, rtol=0, atol=1e-12)


def test_identity_returns_the_batch():
    x = torch.rand(2, 3, 4, 4)
    assert F.identity(x) is x


def test_grayscale():
    x = u8([[[[255]], [[0]], [[0]]]])
    assert F.grayscale(x).flatten().tolist() == [76]
    assert F.grayscale(x).shape == (1, 1, 1, 1)


# ---------------------------------------------------------------------------------------------
# batches: per-sample magnitudes, dtypes


def _op_call(name, images, magnitude, fill=37, interpolation="nearest"):
    """Public functional API, by op name."""
    if name in ("identity", "auto_contrast", "equalize", "invert"):
        return getattr(F, name)(images)
    if name in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y"):
        return getattr(F, name)(images, magnitude, fill=fill, interpolation=interpolation)
    return getattr(F, name)(images, magnitude)


MAGNITUDE_DRAWS = {
    "posterize": lambda n, g: torch.randint(0, 9, (n,), generator=g).float(),
    "solarize": lambda n, g: torch.randint(0, 257, (n,), generator=g).float(),
    "solarize_add": lambda n, g: torch.randint(0, 111, (n,), generator=g).float(),
    "rotate": lambda n, g: 360 * torch.rand(n, generator=g) - 180,
    "shear_x": lambda n, g: torch.rand(n, generator=g) - 0.5,
    "shear_y": lambda n, g: torch.rand(n, generator=g) - 0.5,
    "translate_x": lambda n, g: torch.randint(-4, 5, (n,), generator=g).float(),
    "translate_y": lambda n, g: torch.randint(-4, 5, (n,), generator=g).float(),
}
ALL_OPS = sorted(OPS)


def _draw(name, n, g):
    return MAGNITUDE_DRAWS.get(name, lambda n, g: 2 * torch.rand(n, generator=g))(n, g)


@pytest.mark.parametrize("name", ALL_OPS)
def test_batched_call_equals_one_image_at_a_time(name):
    g = torch.Generator().manual_seed(11)
    images = torch.randint(0, 256, (6, 3, 7, 9), dtype=torch.uint8, generator=g)
    magnitude = _draw(name, 6, g)
    batched = _op_call(name, images, magnitude)
    for i in range(6):
        single = _op_call(name, images[i:i + 1], magnitude[i:i + 1])
        assert torch.equal(batched[i:i + 1], single), name


EXACT_ACROSS_DTYPES = {"identity", "invert", "posterize", "solarize", "equalize", "rotate", "shear_x", "shear_y",
                       "translate_x", "translate_y"}


@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_uint8_and_float_paths_agree(name, interpolation):
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8, generator=g)
    magnitude = _draw(name, 5, g)
    from_u8 = _op_call(name, images, magnitude, fill=51, interpolation=interpolation).long()
    from_float = _op_call(name, as_float(images), magnitude, fill=51, interpolation=interpolation)
    assert from_float.dtype == torch.float32
    diff = (levels_of(from_float) - from_u8).abs()
    if name in EXACT_ACROSS_DTYPES and interpolation == "nearest":
        assert diff.max() == 0, name
    else:  # uint8 truncates/rounds once; float does not
        assert diff.max() <= 1, name


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
@pytest.mark.parametrize("name", ALL_OPS)
def test_other_float_dtypes_are_kept(name, dtype):
    images = torch.rand(3, 3, 6, 6, generator=torch.Generator().manual_seed(1)).to(dtype)
    out = _op_call(name, images, _draw(name, 3, torch.Generator().manual_seed(2)))
    assert out.dtype == dtype and out.shape == images.shape
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_apply_per_sample_dispatches_each_image_to_its_op():
    g = torch.Generator().manual_seed(4)
    images = torch.randint(0, 256, (7, 3, 6, 6), dtype=torch.uint8, generator=g)
    names = ("identity", "rotate", "posterize", "equalize")
    op_index = torch.tensor([1, 0, 2, 1, 3, 2, 0])
    magnitude = torch.tensor([30.0, 0.0, 3.0, -45.0, 0.0, 6.0, 0.0])
    fill = F.fill_tensor(99, images)
    out = apply_per_sample(images, op_index, magnitude, names, fill, "nearest")
    for i in range(7):
        expected = _op_call(names[op_index[i]], images[i:i + 1], magnitude[i:i + 1], fill=99)
        assert torch.equal(out[i:i + 1], expected)
    with pytest.raises(ValueError, match="op_index"):
        apply_per_sample(images, torch.full((7,), 4), magnitude, names, fill, "nearest")


# ---------------------------------------------------------------------------------------------
# errors


def test_bad_arguments_raise():
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(TypeError, match="images"):
        F.invert(x.int())
    with pytest.raises(ValueError, match="images"):
        F.invert(x[0])
    with pytest.raises(ValueError, match="factor"):
        F.brightness(x, torch.ones(3))
    with pytest.raises(TypeError, match="factor"):
        F.brightness(x, True)
    with pytest.raises(TypeError, match="factor"):
        F.brightness(x, "2")
    with pytest.raises(ValueError, match="factor"):
        F.brightness(x, float("nan"))
    with pytest.raises(ValueError, match="factor"):
        F.brightness(x, torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="bits"):
        F.posterize(x, 9)
    with pytest.raises(ValueError, match="bits"):
        F.posterize(x, torch.tensor([3, -1]))
    with pytest.raises(ValueError, match="fill"):
        F.rotate(x, 10, fill=300)
    with pytest.raises(ValueError, match="fill"):
        F.rotate(x, 10, fill=(1, 2))
    with pytest.raises(TypeError, match="fill"):
        F.rotate(x, 10, fill="gray")
    with pytest.raises(ValueError, match="interpolation"):
        F.rotate(x, 10, interpolation="bicubic")
    with pytest.raises(ValueError, match="channels"):
        F.color(torch.zeros(1, 4, 3, 3), 0.5)
    with pytest.raises(ValueError, match="channels"):
        F.contrast(torch.zeros(1, 2, 3, 3), 0.5)
    with pytest.raises(ValueError, match="matrix"):
        F.affine(x, torch.zeros(3, 2, 3))
    with pytest.raises(TypeError, match="matrix"):
        F.affine(x, torch.zeros(2, 3, dtype=torch.long))


def test_degenerate_images_have_defined_results():
    one = torch.full((2, 3, 1, 1), 0.5)
    for name in ALL_OPS:
        out = _op_call(name, one, _draw(name, 2, torch.Generator().manual_seed(0)))
        assert out.shape == one.shape and torch.isfinite(out).all(), name
    flat = torch.full((1, 3, 5, 5), 130, dtype=torch.uint8)
    assert torch.equal(F.auto_contrast(flat), flat) and torch.equal(F.equalize(flat), flat)


# --------------------------------------------------------------------------- issue 13: PIL's rounding, factor checks


def test_bilinear_uint8_truncates_as_pil():
    x = u8([0, 3, 0, 3], (1, 1, 2, 2))          # [[0, 3], [0, 3]]
    assert F.translate_x(x, 0.5, interpolation="bilinear")[0, 0].tolist() == [[0, 1], [0, 1]]   # 1.5 → 1
    f = F.translate_x(x.float() / 255, 0.5, interpolation="bilinear")   # floats are not rounded
    assert torch.allclose(f[0, 0] * 255, torch.tensor([[0.0, 1.5], [0.0, 1.5]]))


def test_auto_contrast_follows_pils_float64_table():
    # exact (25 − 0)·255/25 = 255, but PIL's 25·(255.0/25) + 0 = 254.99999999999997 → 254
    x = u8([0, 25, 5, 10], (1, 1, 2, 2))
    assert F.auto_contrast(x).flatten().tolist() == [0, 254, 51, 102]
    assert F.auto_contrast(u8([0, 100], (1, 1, 1, 2))).flatten().tolist() == [0, 254]   # 254.99999999999997
    assert F.auto_contrast(u8([0, 51], (1, 1, 1, 2))).flatten().tolist() == [0, 255]    # 255.0 exactly


@pytest.mark.parametrize("name", ["brightness", "color", "contrast", "sharpness"])
def test_negative_enhancement_factors_are_refused(name):
    op = getattr(F, name)
    images = torch.rand(2, 3, 5, 5)
    with pytest.raises(ValueError, match="non-negative"):
        op(images, -0.5)
    with pytest.raises(ValueError, match="non-negative"):
        op(images, torch.tensor([1.0, -0.1]))
    assert op(images, 0.0).shape == images.shape      # 0 is the degenerate image, allowed
