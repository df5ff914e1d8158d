"""Image operations of the augmentation policies, batched, with one magnitude per image.

Every function takes a batch ``images`` of shape B×C×H×W and returns a batch of
the same shape, dtype and device. Magnitudes (factors, angles, bits, …) are a
number or a tensor of shape ``(B,)``: image ``i`` is transformed with the
``i``-th value, so one call applies a different magnitude to every image.

Scale and dtypes
----------------
* ``uint8`` images (0–255) stay uint8. Each op brings its result to 8 bits the
  way PIL does — truncating where PIL truncates (blends, bilinear resampling,
  autocontrast's table), rounding where PIL rounds (the SMOOTH filter of
  sharpness, the mean of contrast) — so chaining ops on uint8 behaves like
  chaining PIL ops. ``tests/test_policies_pil.py`` checks every op against Pillow
  pixel for pixel; the only known difference is listed under "Differences" below.
* Floating-point images are assumed to lie in [0, 1] (not checked: that would
  cost a device sync). They are never rounded, except where the op is defined
  on integer levels (posterize, equalize, and the threshold comparisons of
  solarize / solarize_add): there the levels ``round(255·x)`` are used.
* Intensity arguments (solarize thresholds, solarize_add additions, fill
  values) are on the 0–255 scale whatever the dtype, so a policy means the same
  on both (a float image uses ``fill / 255``).
* Images are un-normalised: apply mean/std normalisation after these ops.

The definitions are PIL's (the library the AutoAugment, RandAugment and AugMix
policies were searched and published with):

* blends ``out = d + f·(x − d)`` against a degenerate image ``d`` (black for
  brightness, grayscale for color, the grayscale mean for contrast, the
  smoothed image for sharpness), clipped to the valid range; uint8 results are
  truncated to an integer, as ``PIL.Image.blend`` does;
* grayscale ``L = (19595 R + 38470 G + 7471 B + 2^15) >> 16`` on uint8 (PIL's
  fixed-point form of ``0.299 R + 0.587 G + 0.114 B``), the exact weighted sum
  on floats;
* geometric ops map every output pixel centre ``(x + ½, y + ½)`` through an
  affine matrix into the input and sample there (PIL's ``Image.AFFINE``):
  nearest takes the pixel containing the point, bilinear interpolates between
  the four nearest pixel centres (edges replicated) as PIL does,
  ``v = a + (b − a)·dx`` along x then along y, and truncates uint8 results
  (``[[0, 3], [0, 3]]`` moved by half a pixel is ``[[0, 1], [0, 1]]``, as in PIL); points
  outside the input take the fill value.
* enhancement factors (brightness, color, contrast, sharpness) must be ≥ 0:
  a negative factor raises ``ValueError``, as torchvision's ``adjust_*`` do (PIL
  would extrapolate past the degenerate image).

Differences
-----------
* Geometric ops take their magnitudes and compute sample points in float32
  (PIL: float64, accumulated along each row; no float64 on the device). Nearest
  can pick the neighbouring pixel where PIL's point lies within ~1e-5 pixel of a
  pixel edge. Bilinear uint8 can be one level off where PIL's interpolated value
  is (within ~1e-4 of) an integer, which truncation makes sensitive to the last
  bits — common when the weights are simple fractions: measured on random
  images, up to ~2 % of the pixels of a shear by 0.3 or 0.1 and under 0.05 % of
  rotations by 13°, 45° or 7.5° differ, never by more than one level (tested:
  ≤ 1 level, < 3 % of the pixels). Integer and half-pixel translations and
  multiples of 90° match PIL exactly.
* torchvision's tensor ``autocontrast`` computes ``(x − lo)·(255/(hi − lo))`` in
  float32 and truncates, so it, too, maps the maximum to 254 for some
  ``(lo, hi)`` — not always the same ones as PIL; keepmix follows PIL.
"""

from __future__ import annotations

import math
import numbers
from typing import Dict, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .._checks import check_finite, check_flag, check_images, input_checks_enabled

Magnitude = Union[int, float, torch.Tensor]
Fill = Union[int, float, Sequence[float]]

INTERPOLATIONS = ("nearest", "bilinear")

__all__ = [
    "INTERPOLATIONS", "identity", "auto_contrast", "equalize", "invert", "posterize", "solarize",
    "solarize_add", "brightness", "color", "contrast", "sharpness", "affine", "rotate", "shear_x",
    "shear_y", "translate_x", "translate_y", "grayscale", "check_fill", "fill_tensor",
]


# ----------------------------------------------------------------------------------------------
# argument plumbing

def _factor(value: Magnitude, images: torch.Tensor) -> torch.Tensor:
    """An enhancement factor per image; negative factors are refused (ValueError), as torchvision does."""
    factor = _per_sample(value, images, "factor")
    if isinstance(value, torch.Tensor):
        check_flag((factor >= 0).all(), "factor must be non-negative (0 gives the degenerate image, 1 the image)")
    elif float(value) < 0:
        raise ValueError(f"factor must be non-negative (0 gives the degenerate image, 1 the image), got {value}")
    return factor


def _per_sample(value: Magnitude, images: torch.Tensor, name: str) -> torch.Tensor:
    """A number or a (B,) / scalar tensor as a float32 (B,) tensor on the batch's device."""
    batch = images.shape[0]
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name} must hold real numbers, got {value.dtype}")
        if value.ndim == 0:
            value = value.reshape(1).expand(batch)
        elif tuple(value.shape) != (batch,):
            raise ValueError(f"{name} must be a number or a tensor of shape ({batch},) (one value per image), "
                             f"got shape {tuple(value.shape)}")
        value = value.to(device=images.device, dtype=torch.float32)
        check_finite(value, name)
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number or a tensor of shape ({batch},), got {type(value).__name__}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value}")
    return torch.full((batch,), float(value), device=images.device, dtype=torch.float32)


def _check_interpolation(interpolation) -> str:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    return interpolation


def check_fill(fill, name: str = "fill") -> Union[float, Tuple[float, ...]]:
    """A fill value on the 0–255 scale: one number, or one number per channel."""
    if isinstance(fill, bool):
        raise TypeError(f"{name} must be a number or a sequence of numbers on the 0–255 scale, got {fill!r}")
    if isinstance(fill, numbers.Real):
        values: Tuple[float, ...] = (float(fill),)
    else:
        try:
            values = tuple(fill)
        except TypeError:
            raise TypeError(f"{name} must be a number or a sequence of numbers on the 0–255 scale, "
                            f"got {fill!r}") from None
        if not values or any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in values):
            raise TypeError(f"{name} must be a number or a non-empty sequence of numbers, got {fill!r}")
        values = tuple(float(v) for v in values)
    if any(not (0.0 <= v <= 255.0) for v in values):
        raise ValueError(f"{name} must lie in [0, 255] (the 0–255 scale whatever the dtype), got {fill!r}")
    return values[0] if isinstance(fill, numbers.Real) else values


def fill_tensor(fill, images: torch.Tensor) -> torch.Tensor:
    """The fill as a 1×C×1×1 tensor in the images' dtype (uint8: rounded; float: divided by 255)."""
    values = check_fill(fill)
    channels = images.shape[1]
    if isinstance(values, tuple):
        if len(values) != channels:
            raise ValueError(f"fill must have one value per channel ({channels}), got {len(values)}")
    else:
        values = (values,) * channels
    # on the host in double precision (Python floats), then one float32/uint8 tensor on the device
    values = tuple(float(round(v)) if images.dtype == torch.uint8 else v / 255.0 for v in values)
    return torch.tensor(values, dtype=images.dtype, device=images.device).view(1, channels, 1, 1)


def _work(images: torch.Tensor) -> Tuple[torch.Tensor, float]:
    """A floating-point work copy and the top of its scale (255 for uint8, 1 for floats)."""
    if images.dtype == torch.uint8:
        return images.float(), 255.0
    if images.dtype in (torch.float32, torch.float64):
        return images, 1.0
    return images.float(), 1.0  # half precision: compute in float32


def _levels(images: torch.Tensor) -> torch.Tensor:
    """The 8-bit levels of a batch (uint8 as it is, floats as round(255·x) clamped to 0–255)."""
    if images.dtype == torch.uint8:
        return images
    return (images.float() * 255.0).round_().clamp_(0, 255).to(torch.uint8)


def _from_levels(levels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.dtype == torch.uint8:
        return levels
    work_dtype = like.dtype if like.dtype == torch.float64 else torch.float32
    return (levels.to(work_dtype) / 255.0).to(like.dtype)


def _column(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return values.to(dtype).view(-1, 1, 1, 1)


def _blend(degenerate: torch.Tensor, work: torch.Tensor, factor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``d + f·(x − d)`` clipped to the valid range; uint8 truncated like ``PIL.Image.blend``."""
    mixed = degenerate + _column(factor, work.dtype) * (work - degenerate)
    if like.dtype == torch.uint8:
        return mixed.clamp_(0.0, 255.0).floor_().to(torch.uint8)
    return mixed.clamp_(0.0, 1.0).to(like.dtype)


def _grayscale(images: torch.Tensor, work: torch.Tensor, op: str) -> torch.Tensor:
    """B×1×H×W luminance in the work dtype (PIL's 'L' conversion on uint8)."""
    channels = images.shape[1]
    if channels == 1:
        return work
    if channels != 3:
        raise ValueError(f"{op} needs images with 1 or 3 (RGB) channels, got {channels}")
    if images.dtype == torch.uint8:
        rgb = images.to(torch.int32)
        luma = (rgb[:, 0:1] * 19595 + rgb[:, 1:2] * 38470 + rgb[:, 2:3] * 7471 + 32768) >> 16
        return luma.to(work.dtype)
    return 0.299 * work[:, 0:1] + 0.587 * work[:, 1:2] + 0.114 * work[:, 2:3]


# ----------------------------------------------------------------------------------------------
# colour / intensity ops (unchecked implementations used by the policies)

def _identity(images: torch.Tensor) -> torch.Tensor:
    return images


def _invert(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return 255 - images
    return 1.0 - images


def _posterize(images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    shift = (8 - bits.round().long()).clamp(0, 8)
    mask = torch.bitwise_left_shift(torch.bitwise_right_shift(torch.full_like(shift, 255), shift), shift)
    mask = mask.to(torch.uint8).view(-1, 1, 1, 1)
    return _from_levels(_levels(images) & mask, images)


def _solarize(images: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    above = _levels(images).float() >= _column(threshold, torch.float32)
    return torch.where(above, _invert(images), images)


def _solarize_add(images: torch.Tensor, addition: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    below = _levels(images).float() < _column(threshold, torch.float32)
    work, bound = _work(images)
    added = (work + _column(addition, work.dtype) * (bound / 255.0)).clamp_(0.0, bound)
    if images.dtype == torch.uint8:
        added = added.round_().to(torch.uint8)
    else:
        added = added.to(images.dtype)
    return torch.where(below, added, images)


_AUTOCONTRAST_MISSES: Dict[str, torch.Tensor] = {}


def _autocontrast_misses(device: torch.device) -> torch.Tensor:
    """Sorted keys ``lo·65536 + hi·256 + v`` (int64, on ``device``) where PIL's autocontrast table is one
    level below the exact ``⌊(v − lo)·255 / (hi − lo)⌋``.

    PIL builds the table in float64, ``int(v·scale + offset)`` with ``scale = 255.0 / (hi − lo)`` and
    ``offset = −lo·scale``; where the exact value is an integer the float64 sum can fall just below it
    (12 094 of the (lo, hi, v) triples, hi ↦ 254 for 4 852 of the 32 640 (lo, hi) pairs). The triples
    are found once, on the host, with PIL's own arithmetic (NumPy float64: the same two roundings).
    """
    key = str(device)
    if key not in _AUTOCONTRAST_MISSES:
        if "cpu" not in _AUTOCONTRAST_MISSES:
            import numpy as np
            found = []
            v = np.arange(256, dtype=np.int64)
            for lo in range(255):
                hi = np.arange(lo + 1, 256, dtype=np.int64)[:, None]
                scale = 255.0 / (hi - lo)
                pil = np.trunc(v[None, :] * scale + (-lo * scale)).astype(np.int64)
                exact = ((v[None, :] - lo) * 255) // (hi - lo)
                rows, cols = np.nonzero((pil < exact) & (v[None, :] >= lo) & (v[None, :] <= hi))
                found.append(lo * 65536 + hi[rows, 0] * 256 + v[cols])
            _AUTOCONTRAST_MISSES["cpu"] = torch.from_numpy(np.sort(np.concatenate(found)))
        _AUTOCONTRAST_MISSES[key] = _AUTOCONTRAST_MISSES["cpu"].to(device)
    return _AUTOCONTRAST_MISSES[key]


def _auto_contrast_table(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """PIL's autocontrast lookup table, (P, 256) uint8, for the per-plane uint8 extremes ``low``/``high`` (P elements).

    The exact integer ``⌊(v − lo)·255/(hi − lo)⌋``, one level lower at the (lo, hi, v) where PIL's float64
    arithmetic falls just short of an integer (:func:`_autocontrast_misses`); the identity where ``hi ≤ lo``.
    """
    lo, hi = low.reshape(-1, 1).long(), high.reshape(-1, 1).long()
    v = _ramp_long(low.device).view(1, -1)
    exact = torch.div((v - lo).clamp_min(0) * 255, (hi - lo).clamp_min(1), rounding_mode="floor")
    misses = _autocontrast_misses(low.device)
    keys = lo * 65536 + hi * 256 + v
    where = torch.searchsorted(misses, keys).clamp_max(misses.numel() - 1)
    lut = (exact - (misses[where] == keys).long()).clamp_(0, 255)
    return torch.where((hi <= lo), v.expand_as(lut), lut).to(torch.uint8)


def _auto_contrast(images: torch.Tensor) -> torch.Tensor:
    low = images.amin(dim=(2, 3), keepdim=True)
    high = images.amax(dim=(2, 3), keepdim=True)
    flat = high <= low
    if images.dtype == torch.uint8:
        # PIL's table applied as a per-channel lookup
        batch, channels, height, width = images.shape
        planes = images.reshape(batch * channels, height * width).long()
        return _auto_contrast_table(low, high).gather(1, planes).view(batch, channels, height, width)
    work, _ = _work(images)
    lo, hi = low.to(work.dtype), high.to(work.dtype)
    stretched = ((work - lo) / torch.where(flat, torch.ones_like(hi), hi - lo)).clamp_(0.0, 1.0)
    return torch.where(flat, images, stretched.to(images.dtype))


_DEVICE_CONSTANTS: Dict[Tuple, torch.Tensor] = {}


def _device_constant(name: str, device: torch.device, make) -> torch.Tensor:
    """A small constant tensor made once per device by ``make(device)`` (no per-call creation)."""
    key = (name, str(device))
    if key not in _DEVICE_CONSTANTS:
        _DEVICE_CONSTANTS[key] = make(device)
    return _DEVICE_CONSTANTS[key]


def _ramp_long(device: torch.device) -> torch.Tensor:
    """Cached int64 ``arange(256)`` on ``device``."""
    return _device_constant("ramp", device, lambda d: torch.arange(256, device=d))


def _equalize_table(levels: torch.Tensor) -> torch.Tensor:
    """PIL's equalize lookup table, (P, 256) int64, of P planes of 8-bit levels given as a P×N int64 tensor."""
    planes, count = levels.shape
    bins = _ramp_long(levels.device)
    # a histogram per plane by scatter-add into a fixed size (bincount reads its maximum back on CUDA)
    hist = torch.zeros(planes, 256, dtype=torch.int64, device=levels.device)
    one = _device_constant("one", levels.device, lambda d: torch.ones(1, dtype=torch.int64, device=d))
    hist.scatter_add_(1, levels, one.expand(planes, count))
    last_value = ((hist > 0) * bins).amax(dim=1, keepdim=True)
    last_count = hist.gather(1, last_value)
    step = torch.div(count - last_count, 255, rounding_mode="floor")
    before = torch.cumsum(hist, dim=1) - hist
    lut = torch.div(torch.div(step, 2, rounding_mode="floor") + before, step.clamp_min(1), rounding_mode="floor")
    return torch.where(step > 0, lut.clamp_(max=255), bins.unsqueeze(0))


def _equalize(images: torch.Tensor) -> torch.Tensor:
    batch, channels, height, width = images.shape
    levels = _levels(images).reshape(batch * channels, height * width).long()
    equalised = _equalize_table(levels).gather(1, levels).view(batch, channels, height, width).to(torch.uint8)
    return _from_levels(equalised, images)


def _brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    work, _ = _work(images)
    return _blend(torch.zeros_like(work), work, factor, images)


def _color(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    work, _ = _work(images)
    gray = _grayscale(images, work, "color")
    return _blend(gray.expand_as(work), work, factor, images)


def _contrast_mean(images: torch.Tensor, gray: torch.Tensor) -> torch.Tensor:
    """B×1×1×1 mean of the grayscale ``gray`` (work dtype): PIL's ``int(mean(L) + 0.5)`` on uint8."""
    if images.dtype == torch.uint8:
        # PIL: int(mean(L) + 0.5), computed exactly in integers as floor((2·sum + N) / 2N).
        count = gray.shape[2] * gray.shape[3]
        total = gray.to(torch.int64).sum(dim=(1, 2, 3), keepdim=True)
        return torch.div(2 * total + count, 2 * count, rounding_mode="floor").to(gray.dtype)
    # contiguous: the float sum's order follows the memory layout, and the engines' copies of a
    # non-contiguous batch differ in layout (the fused step's resampled copy, the dispatch's gathers)
    return gray.contiguous().mean(dim=(1, 2, 3), keepdim=True)


def _contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    work, _ = _work(images)
    mean = _contrast_mean(images, _grayscale(images, work, "contrast"))
    return _blend(mean.expand_as(work), work, factor, images)


#: PIL's SMOOTH kernel: ((1, 1, 1), (1, 5, 1), (1, 1, 1)) / 13


def _smoothed(images: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """Sharpness's degenerate image: PIL's SMOOTH filter inside, the image itself on the 1-pixel border."""
    batch, channels, height, width = work.shape
    if height < 3 or width < 3:
        return work
    # SMOOTH = (3×3 box sum + 4·centre) / 13: integer weights summed separably (two passes of shifted
    # adds, far cheaper than a 1-channel convolution), one division at the end: exact on uint8 levels.
    rows = work[..., :-2] + work[..., 1:-1] + work[..., 2:]
    box = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]
    smooth = (box + 4.0 * work[..., 1:-1, 1:-1]) / 13.0
    if images.dtype == torch.uint8:
        smooth = smooth.round()  # PIL rounds the filtered image to 8 bits (ties cannot occur: /13)
    degenerate = work.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    return degenerate


def _sharpness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    work, _ = _work(images)
    return _blend(_smoothed(images, work), work, factor, images)


# ----------------------------------------------------------------------------------------------
# geometric ops

def _pixel_centres(height: int, width: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cached float32 pixel-centre coordinates ``x + ½`` (1×1×W) and ``y + ½`` (1×H×1) on ``device``."""
    xs = _device_constant(f"centres_x{width}", device,
                          lambda d: (torch.arange(width, device=d, dtype=torch.float32) + 0.5).view(1, 1, width))
    ys = _device_constant(f"centres_y{height}", device,
                          lambda d: (torch.arange(height, device=d, dtype=torch.float32) + 0.5).view(1, height, 1))
    return xs, ys


def _affine(images: torch.Tensor, matrix: torch.Tensor, fill: torch.Tensor, interpolation: str) -> torch.Tensor:
    batch, channels, height, width = images.shape
    device = images.device
    m0, m1, m2, m3, m4, m5 = matrix.to(device=device, dtype=torch.float32).reshape(batch, 6, 1, 1).unbind(1)
    xs, ys = _pixel_centres(height, width, device)
    src_x = m0 * xs + m1 * ys + m2
    src_y = m3 * xs + m4 * ys + m5
    inside = ((src_x >= 0) & (src_x < width) & (src_y >= 0) & (src_y < height)).unsqueeze(1)

    def gather(source: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        index = (row * width + col).view(batch, 1, height * width).expand(batch, channels, height * width)
        return source.reshape(batch, channels, height * width).gather(2, index).view(batch, channels, height, width)

    if interpolation == "nearest":
        col = src_x.floor().long().clamp_(0, width - 1)
        row = src_y.floor().long().clamp_(0, height - 1)
        return torch.where(inside, gather(images, row, col), fill)

    work, _ = _work(images)
    px, py = src_x - 0.5, src_y - 0.5
    x0, y0 = px.floor(), py.floor()
    wx, wy = (px - x0).unsqueeze(1).to(work.dtype), (py - y0).unsqueeze(1).to(work.dtype)
    c0, r0 = x0.long(), y0.long()
    c1, r1 = (c0 + 1).clamp_(0, width - 1), (r0 + 1).clamp_(0, height - 1)
    c0, r0 = c0.clamp_(0, width - 1), r0.clamp_(0, height - 1)
    # PIL's BILINEAR: v = a + (b − a)·dx along x, then along y; uint8 truncated as PIL's (UINT8) cast
    top_left, bottom_left = gather(work, r0, c0), gather(work, r1, c0)
    top = top_left + (gather(work, r0, c1) - top_left) * wx
    bottom = bottom_left + (gather(work, r1, c1) - bottom_left) * wx
    value = top + (bottom - top) * wy
    if images.dtype == torch.uint8:
        value = value.clamp_(0, 255).floor_().to(torch.uint8)
    else:
        value = value.to(images.dtype)
    return torch.where(inside, value, fill)


def _rotate_matrix(degrees: torch.Tensor, height: int, width: int) -> torch.Tensor:
    theta = degrees.float() * (math.pi / 180.0)  # float32: no float64 on the device
    # Rounded (as PIL rounds) so that multiples of 90° give exact 0/±1 entries; 6 decimals is what float32
    # resolves (cos 90° = −4.4e-8 in float32), and moves a 224-px coordinate by at most 1e-4 pixel.
    cos, sin = torch.cos(theta).round(decimals=6), torch.sin(theta).round(decimals=6)
    cx, cy = width / 2.0, height / 2.0
    return torch.stack([cos, -sin, cx - cos * cx + sin * cy,
                        sin, cos, cy - sin * cx - cos * cy], dim=1).view(-1, 2, 3)


def _shear_matrix(shear: torch.Tensor, axis: str) -> torch.Tensor:
    one, zero = torch.ones_like(shear), torch.zeros_like(shear)
    if axis == "x":
        rows = [one, shear, zero, zero, one, zero]
    else:
        rows = [one, zero, zero, shear, one, zero]
    return torch.stack(rows, dim=1).view(-1, 2, 3)


def _translate_matrix(pixels: torch.Tensor, axis: str) -> torch.Tensor:
    one, zero = torch.ones_like(pixels), torch.zeros_like(pixels)
    if axis == "x":
        rows = [one, zero, -pixels, zero, one, zero]
    else:
        rows = [one, zero, zero, zero, one, -pixels]
    return torch.stack(rows, dim=1).view(-1, 2, 3)


def _rotate(images, degrees, fill, interpolation):
    return _affine(images, _rotate_matrix(degrees, images.shape[2], images.shape[3]), fill, interpolation)


def _shear_x(images, shear, fill, interpolation):
    return _affine(images, _shear_matrix(shear, "x"), fill, interpolation)


def _shear_y(images, shear, fill, interpolation):
    return _affine(images, _shear_matrix(shear, "y"), fill, interpolation)


def _translate_x(images, pixels, fill, interpolation):
    return _affine(images, _translate_matrix(pixels, "x"), fill, interpolation)


def _translate_y(images, pixels, fill, interpolation):
    return _affine(images, _translate_matrix(pixels, "y"), fill, interpolation)


# ----------------------------------------------------------------------------------------------
# public, checked functions

def identity(images: torch.Tensor) -> torch.Tensor:
    """The batch itself (the same tensor object)."""
    return _identity(check_images(images))


def invert(images: torch.Tensor) -> torch.Tensor:
    """``255 − x`` (uint8) or ``1 − x`` (float)."""
    return _invert(check_images(images))


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """B×1×H×W luminance, same dtype as the input.

    uint8: PIL's ``L = (19595 R + 38470 G + 7471 B + 2^15) >> 16``; float:
    ``0.299 R + 0.587 G + 0.114 B``. One-channel images are returned as they are.
    """
    check_images(images)
    work, _ = _work(images)
    gray = _grayscale(images, work, "grayscale")
    return gray.to(images.dtype)


def posterize(images: torch.Tensor, bits: Magnitude) -> torch.Tensor:
    """Keep the ``bits`` most significant bits of every 8-bit level: ``x & (255 << (8 − bits))``.

    ``bits`` (number or (B,) tensor, rounded to integers) must lie in [0, 8]; 0 gives
    black, 8 the image itself. Float input works on the levels ``round(255·x)``.
    """
    check_images(images)
    bits = _per_sample(bits, images, "bits")
    if input_checks_enabled() and bool(((bits.round() < 0) | (bits.round() > 8)).any()):
        raise ValueError("bits must lie in [0, 8]")
    return _posterize(images, bits)


def solarize(images: torch.Tensor, threshold: Magnitude) -> torch.Tensor:
    """Invert every pixel whose level is at least ``threshold`` (0–255 scale): ``x ≥ t ? max − x : x``.

    ``threshold = 256`` (or more) is the identity, ``0`` inverts everything. The
    comparison uses the 8-bit level (``round(255·x)`` for float input).
    """
    check_images(images)
    return _solarize(images, _per_sample(threshold, images, "threshold"))


def solarize_add(images: torch.Tensor, addition: Magnitude, threshold: Magnitude = 128) -> torch.Tensor:
    """Add ``addition`` (0–255 scale) to every pixel whose level is below ``threshold``, clipped.

    The SolarizeAdd op of the TensorFlow AutoAugment / RandAugment code: pixels at
    or above the threshold are kept. uint8 results are rounded to the nearest level.
    """
    check_images(images)
    return _solarize_add(images, _per_sample(addition, images, "addition"),
                         _per_sample(threshold, images, "threshold"))


def auto_contrast(images: torch.Tensor) -> torch.Tensor:
    """Stretch each channel of each image so its minimum goes to 0 and its maximum to the top.

    uint8: PIL's ``ImageOps.autocontrast`` exactly — the table ``int(v·scale + offset)``
    with ``scale = 255.0/(hi − lo)``, ``offset = −lo·scale`` in float64, i.e.
    ``⌊(v − lo)·255/(hi − lo)⌋`` except at the 12 094 (lo, hi, v) where float64 falls
    just below an integer and PIL gives one level less; so the maximum goes to 254 for
    4 852 of the 32 640 (lo, hi) pairs (e.g. lo = 0, hi = 25), as in PIL. Computed as an
    exact integer table plus a lookup of those triples (found once with PIL's float64
    arithmetic on the host), no float64 on the device. Unchanged where the channel is
    flat (``hi == lo``). Float input uses ``(x − lo) / (hi − lo)`` without rounding.
    """
    return _auto_contrast(check_images(images))


def equalize(images: torch.Tensor) -> torch.Tensor:
    """Per-channel histogram equalisation with PIL's rule.

    For each channel of each image with histogram ``h`` over the levels 0–255,
    ``N`` pixels and ``h_last`` the count of the largest level present:
    ``step = (N − h_last) // 255``; if ``step == 0`` the channel is unchanged,
    otherwise ``lut[v] = min(255, (step // 2 + Σ_{u<v} h[u]) // step)``.
    Float input is equalised on its levels ``round(255·x)`` and returned as ``lut/255``.
    Batched with one ``bincount`` and one ``cumsum``.
    """
    return _equalize(check_images(images))


def brightness(images: torch.Tensor, factor: Magnitude) -> torch.Tensor:
    """Blend with black: ``f·x``, clipped (0 gives black, 1 the image); ``f ≥ 0`` (ValueError otherwise)."""
    check_images(images)
    return _brightness(images, _factor(factor, images))


def color(images: torch.Tensor, factor: Magnitude) -> torch.Tensor:
    """Blend with the grayscale image: ``L + f·(x − L)`` per channel, clipped (0 gives gray, 1 the image).

    Needs 1 or 3 channels; a one-channel image is its own grayscale (identity). ``f ≥ 0``
    (a negative factor raises ValueError, as torchvision's ``adjust_saturation``).
    """
    check_images(images)
    return _color(images, _factor(factor, images))


def contrast(images: torch.Tensor, factor: Magnitude) -> torch.Tensor:
    """Blend with the image's mean gray level: ``μ + f·(x − μ)``, clipped.

    ``μ`` is the mean of the grayscale image, one per image (uint8: rounded to an
    integer level as PIL does, ``int(mean + 0.5)``). Needs 1 or 3 channels. ``f ≥ 0``
    (a negative factor raises ValueError, as torchvision's ``adjust_contrast``).
    """
    check_images(images)
    return _contrast(images, _factor(factor, images))


def sharpness(images: torch.Tensor, factor: Magnitude) -> torch.Tensor:
    """Blend with PIL's SMOOTH image: ``S + f·(x − S)``, clipped.

    ``S`` is the image filtered with ``[[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13``
    (rounded to levels on uint8) in the interior and equal to the image on the
    one-pixel border, so borders never change. f > 1 sharpens, f < 1 blurs; ``f ≥ 0``
    (a negative factor raises ValueError, as torchvision's ``adjust_sharpness``).
    """
    check_images(images)
    return _sharpness(images, _factor(factor, images))


def affine(images: torch.Tensor, matrix: torch.Tensor, fill: Fill = 0, interpolation: str = "nearest") -> torch.Tensor:
    """Resample every image through its own inverse affine map (PIL's ``Image.AFFINE``).

    ``matrix`` is (B, 2, 3) or (2, 3), rows ``(a, b, c), (d, e, f)``: output pixel
    ``(x, y)`` takes the input at ``(a·x' + b·y' + c, d·x' + e·y' + f)`` with the
    pixel centre ``(x', y') = (x + ½, y + ½)``, coordinates from the image's
    top-left corner. ``nearest`` takes input pixel ``(⌊·⌋, ⌊·⌋)``; ``bilinear``
    interpolates between pixel centres as PIL does (edge pixels replicated, uint8 truncated).
    Points outside ``[0, W) × [0, H)`` take ``fill`` (0–255 scale, one value or
    one per channel).
    """
    check_images(images)
    interpolation = _check_interpolation(interpolation)
    if not isinstance(matrix, torch.Tensor):
        raise TypeError(f"matrix must be a torch.Tensor of shape (B, 2, 3), got {type(matrix).__name__}")
    if not matrix.is_floating_point():
        raise TypeError(f"matrix must be floating point, got {matrix.dtype}")
    batch = images.shape[0]
    if tuple(matrix.shape) == (2, 3):
        matrix = matrix.unsqueeze(0).expand(batch, 2, 3)
    if tuple(matrix.shape) != (batch, 2, 3):
        raise ValueError(f"matrix must have shape ({batch}, 2, 3) or (2, 3), got {tuple(matrix.shape)}")
    check_finite(matrix, "matrix")
    return _affine(images, matrix, fill_tensor(fill, images), interpolation)


def rotate(images: torch.Tensor, degrees: Magnitude, fill: Fill = 0, interpolation: str = "nearest") -> torch.Tensor:
    """Rotate counter-clockwise by ``degrees`` about the image centre ``(W/2, H/2)``, same size.

    Input point ``= R(θ)·(p − c) + c`` with ``R = [[cos θ, −sin θ], [sin θ, cos θ]]``
    in (x right, y down) pixel coordinates (``PIL.Image.rotate``). Multiples of
    90° are exact on square images (more generally when H and W have the same parity).
    """
    check_images(images)
    return _rotate(images, _per_sample(degrees, images, "degrees"), fill_tensor(fill, images),
                   _check_interpolation(interpolation))


def shear_x(images: torch.Tensor, shear: Magnitude, fill: Fill = 0, interpolation: str = "nearest") -> torch.Tensor:
    """Horizontal shear about the top-left corner: output ``(x, y)`` samples input ``(x + s·y, y)``.

    The AutoAugment / PIL definition (affine data ``(1, s, 0, 0, 1, 0)``, pixel centres).
    """
    check_images(images)
    return _shear_x(images, _per_sample(shear, images, "shear"), fill_tensor(fill, images),
                    _check_interpolation(interpolation))


def shear_y(images: torch.Tensor, shear: Magnitude, fill: Fill = 0, interpolation: str = "nearest") -> torch.Tensor:
    """Vertical shear about the top-left corner: output ``(x, y)`` samples input ``(x, y + s·x)``."""
    check_images(images)
    return _shear_y(images, _per_sample(shear, images, "shear"), fill_tensor(fill, images),
                    _check_interpolation(interpolation))


def translate_x(images: torch.Tensor, pixels: Magnitude, fill: Fill = 0,
                interpolation: str = "nearest") -> torch.Tensor:
    """Move the content ``pixels`` to the right (negative: left): ``out[:, :, y, x] = in[:, :, y, x − t]``.

    Exact for whole pixels; the uncovered strip takes ``fill``.
    """
    check_images(images)
    return _translate_x(images, _per_sample(pixels, images, "pixels"), fill_tensor(fill, images),
                        _check_interpolation(interpolation))


def translate_y(images: torch.Tensor, pixels: Magnitude, fill: Fill = 0,
                interpolation: str = "nearest") -> torch.Tensor:
    """Move the content ``pixels`` down (negative: up): ``out[:, :, y, x] = in[:, :, y − t, x]``."""
    check_images(images)
    return _translate_y(images, _per_sample(pixels, images, "pixels"), fill_tensor(fill, images),
                        _check_interpolation(interpolation))
