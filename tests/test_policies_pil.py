"""Optional cross-check of keepmix.policies.functional against Pillow (skipped when Pillow is missing).

The hand-computed tests in test_policies_functional.py are the specification;
this file confirms that uint8 results coincide with PIL, the library the
policies were published with.
"""

import numpy as np
import pytest
import torch

from keepmix.policies import functional as F

PIL = pytest.importorskip("PIL")
from PIL import Image, ImageEnhance, ImageOps  # noqa: E402


@pytest.fixture(scope="module")
def rgb():
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    array[..., 2] = array[..., 2] // 3 + 40  # a channel that does not span 0–255
    return array


def to_tensor(array):
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def from_tensor(images):
    return images[0].permute(1, 2, 0).numpy()


def pil_affine(image, data, **kwargs):
    return image.transform(image.size, Image.AFFINE, data, **kwargs)


EXACT_CASES = [
    ("posterize", lambda t: F.posterize(t, 3), lambda im: ImageOps.posterize(im, 3)),
    ("solarize", lambda t: F.solarize(t, 100), lambda im: ImageOps.solarize(im, 100)),
    ("equalize", F.equalize, ImageOps.equalize),
    ("invert", F.invert, ImageOps.invert),
    ("rotate90", lambda t: F.rotate(t, 90, fill=(10, 20, 30)), lambda im: im.rotate(90, fillcolor=(10, 20, 30))),
    ("rotate", lambda t: F.rotate(t, 17.3, fill=(10, 20, 30)), lambda im: im.rotate(17.3, fillcolor=(10, 20, 30))),
    ("rotate_neg", lambda t: F.rotate(t, -29), lambda im: im.rotate(-29)),
    ("shear_x", lambda t: F.shear_x(t, 0.3, fill=128),
     lambda im: pil_affine(im, (1, 0.3, 0, 0, 1, 0), fillcolor=(128, 128, 128))),
    ("shear_y", lambda t: F.shear_y(t, -0.17), lambda im: pil_affine(im, (1, 0, 0, -0.17, 1, 0))),
    # PIL's AFFINE data maps output to input, so content moving right by t is data (…, −t, …)
    ("translate_x", lambda t: F.translate_x(t, 3), lambda im: pil_affine(im, (1, 0, -3, 0, 1, 0))),
    ("translate_y", lambda t: F.translate_y(t, -5), lambda im: pil_affine(im, (1, 0, 0, 0, 1, 5))),
]
for factor in (0.1, 0.7, 1.3, 1.9):
    EXACT_CASES += [
        (f"brightness{factor}", lambda t, f=factor: F.brightness(t, f),
         lambda im, f=factor: ImageEnhance.Brightness(im).enhance(f)),
        (f"color{factor}", lambda t, f=factor: F.color(t, f), lambda im, f=factor: ImageEnhance.Color(im).enhance(f)),
        (f"contrast{factor}", lambda t, f=factor: F.contrast(t, f),
         lambda im, f=factor: ImageEnhance.Contrast(im).enhance(f)),
        (f"sharpness{factor}", lambda t, f=factor: F.sharpness(t, f),
         lambda im, f=factor: ImageEnhance.Sharpness(im).enhance(f)),
    ]


@pytest.mark.parametrize("name,ours,theirs", EXACT_CASES, ids=[c[0] for c in EXACT_CASES])
def test_matches_pillow_exactly(rgb, name, ours, theirs):
    expected = np.asarray(theirs(Image.fromarray(rgb)))
    assert np.array_equal(from_tensor(ours(to_tensor(rgb))), expected)


@pytest.mark.slow
def test_auto_contrast_matches_pillow_for_every_lo_hi_pair():
    # PIL builds its table in float64 and maps the maximum to 254 for some (lo, hi): keepmix reproduces it.
    # Every pair 0 <= lo < hi <= 255, each image holding every level of [lo, hi].
    for lo in range(0, 255):
        his = np.arange(lo + 1, 256)
        rows = np.clip(np.arange(lo, lo + 256)[None, :], lo, his[:, None]).astype(np.uint8)
        ours = F.auto_contrast(torch.from_numpy(rows).view(len(his), 1, 1, 256)).view(len(his), 256).numpy()
        theirs = np.stack([np.asarray(ImageOps.autocontrast(Image.fromarray(rows[i:i + 1], mode="L")))[0]
                           for i in range(len(his))])
        assert np.array_equal(ours, theirs), lo
    assert F.auto_contrast(torch.tensor([0, 25], dtype=torch.uint8).view(1, 1, 1, 2)).flatten().tolist() == [0, 254]


def test_auto_contrast_matches_pillow_on_rgb(rgb):
    ours = from_tensor(F.auto_contrast(to_tensor(rgb)))
    assert np.array_equal(ours, np.asarray(ImageOps.autocontrast(Image.fromarray(rgb))))


def test_bilinear_truncates_like_pillow():
    # the case: [[0, 3], [0, 3]] moved right by half a pixel is [[0, 1], [0, 1]] in PIL (1.5 truncated)
    two = np.array([[0, 3], [0, 3]], dtype=np.uint8)
    theirs = np.asarray(pil_affine(Image.fromarray(two, mode="L"), (1, 0, -0.5, 0, 1, 0), resample=Image.BILINEAR))
    ours = F.translate_x(torch.from_numpy(two).view(1, 1, 2, 2), 0.5, interpolation="bilinear")[0, 0].numpy()
    assert theirs.tolist() == [[0, 1], [0, 1]] and np.array_equal(ours, theirs)


def test_bilinear_matches_pillow_exactly_on_half_pixel_moves_and_within_a_level_elsewhere(rgb):
    image = Image.fromarray(rgb)
    for t in (0.5, 1.5, -2.5, 3):
        ours = from_tensor(F.translate_x(to_tensor(rgb), t, interpolation="bilinear"))
        theirs = np.asarray(pil_affine(image, (1, 0, -t, 0, 1, 0), resample=Image.BILINEAR))
        assert np.array_equal(ours, theirs), t
    assert np.array_equal(from_tensor(F.rotate(to_tensor(rgb), 90, interpolation="bilinear")),
                          np.asarray(image.rotate(90, resample=Image.BILINEAR)))
    # float32 sample points (PIL: float64): at most one level, on a small share of the pixels (documented)
    for ours, theirs in [
        (F.rotate(to_tensor(rgb), 13, interpolation="bilinear"), image.rotate(13, resample=Image.BILINEAR)),
        (F.rotate(to_tensor(rgb), 45, interpolation="bilinear"), image.rotate(45, resample=Image.BILINEAR)),
        (F.shear_x(to_tensor(rgb), 0.3, interpolation="bilinear"),
         pil_affine(image, (1, 0.3, 0, 0, 1, 0), resample=Image.BILINEAR)),
    ]:
        diff = np.abs(from_tensor(ours).astype(int) - np.asarray(theirs).astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.03
