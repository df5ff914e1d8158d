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


def test_auto_contrast_within_one_level_of_pillow(rgb):
    # PIL builds its table in floating point and sometimes maps the maximum to 254;
    # keepmix computes (x − lo)·255/(hi − lo) exactly, so the maximum always reaches 255.
    ours = from_tensor(F.auto_contrast(to_tensor(rgb))).astype(int)
    theirs = np.asarray(ImageOps.autocontrast(Image.fromarray(rgb))).astype(int)
    assert np.abs(ours - theirs).max() <= 1
    assert (ours != theirs).mean() < 0.02


def test_bilinear_within_one_level_of_pillow(rgb):
    # PIL truncates the interpolated value; keepmix rounds it.
    image = Image.fromarray(rgb)
    ours = from_tensor(F.rotate(to_tensor(rgb), 13, interpolation="bilinear")).astype(int)
    theirs = np.asarray(image.rotate(13, resample=Image.BILINEAR)).astype(int)
    assert np.abs(ours - theirs).max() <= 1
    ours = from_tensor(F.shear_x(to_tensor(rgb), 0.3, interpolation="bilinear")).astype(int)
    theirs = np.asarray(pil_affine(image, (1, 0.3, 0, 0, 1, 0), resample=Image.BILINEAR)).astype(int)
    assert np.abs(ours - theirs).max() <= 1
