"""Region-erasing ops: Cutout, Random Erasing and GridMask, per sample and batched.

All three are label-preserving: ``op(images, targets) -> (erased images, targets)``
with the targets object returned unchanged, so train with the usual loss
(cross-entropy, or :func:`keepmix.losses.soft_target_cross_entropy` on soft
targets). Every image draws its own region(s) from the op's optional
``torch.Generator``, on the batch's device, with no Python loop over samples.

Images are B×C×H×W, floating point (any dtype) or uint8 (0–255); the output has
the input's dtype, device and shape. The fill ``value`` is a number, a
per-channel sequence, or ``"random"`` (N(0, 1) per pixel for float images — the
random values of normalised data — and U{0, …, 255} for uint8).

Saliency-aware variants: :class:`keepmix.keep.KeepCutout` and
:class:`keepmix.keep.KeepRandomErasing` use the same box definitions with
KeepAugment's selective cut. There is deliberately no ``KeepGridMask``: see
:class:`GridMask`.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple, Union

import torch

from . import _random
from ._cache import device_cache
from ._checks import SizeLike, check_probability, check_range, check_size
from .protocol import Batch, Op, Stats, restore_dtype, to_float
from .regions import box_masks

FillValue = Union[float, Sequence[float], str]


def _check_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


@device_cache(64)
def _int_table(values: Tuple[int, ...], device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():
        return torch.tensor(values, dtype=torch.long, device=device)


@device_cache(64)
def _channel_fill(values: Tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A per-channel fill as a cached 1×C×1×1 tensor (no tensor creation per call)."""
    with torch.inference_mode(False), torch.no_grad():
        return torch.tensor(values, dtype=dtype, device=device).view(1, -1, 1, 1)


def _fill_values(value, images: torch.Tensor, generator):
    """What is written into erased pixels: a Python number, a cached 1×C×1×1 tensor, or a random
    B×C×H×W tensor (``"random"``: N(0, 1) per pixel for float images, U{0..255} for uint8)."""
    if isinstance(value, str):
        if images.dtype == torch.uint8:
            return _random.randint(0, 256, images.shape, images.device, generator).to(torch.uint8)
        return _random.randn(images.shape, images.device, generator, dtype=images.dtype)
    if isinstance(value, tuple):
        return _channel_fill(value, images.dtype if images.dtype != torch.uint8 else torch.float32, images.device)
    return value


def check_fill_value(value):
    """A fill for erased pixels: ``"random"``, a number, or per-channel numbers."""
    if isinstance(value, str):
        if value != "random":
            raise ValueError(f"value must be a number, a per-channel sequence or 'random', got {value!r}")
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"value must be a number, a per-channel sequence or 'random', got {value!r}") from None
    return values


def check_fill_channels(value, channels: int, name: str = "value") -> None:
    """A per-channel fill must have one value per image channel (ValueError naming ``name`` otherwise)."""
    if isinstance(value, tuple) and len(value) not in (1, channels):
        raise ValueError(f"{name} has {len(value)} per-channel values but the images have {channels} "
                         f"channel{'s' if channels != 1 else ''}; give one value per channel or a single number")


def erase_masked(images: torch.Tensor, mask: torch.Tensor, value, generator) -> torch.Tensor:
    """Fill the pixels under ``mask`` (B×H×W bool) with ``value``; returns the input's dtype.

    One ``where`` over the batch (uint8 with a numeric fill: computed in float and rounded back).
    Raises ValueError when a per-channel ``value`` does not have one entry per channel."""
    check_fill_channels(value, images.shape[1])
    fill = _fill_values(value, images, generator)
    where = mask.unsqueeze(1)
    if images.dtype == torch.uint8 and not isinstance(fill, torch.Tensor) or \
            isinstance(fill, torch.Tensor) and fill.dtype != images.dtype:
        return restore_dtype(torch.where(where, fill, to_float(images)), images)
    return torch.where(where, fill, images)


def random_erasing_sizes(batch: int, height: int, width: int, scale, ratio, attempts: int, device, generator):
    """Per-image (h, w, found): the first of ``attempts`` (area, aspect) draws that fits.

    Area ∈ U(scale)·HW and aspect r ∈ U(ratio) as in Zhong et al.'s Algorithm 1;
    h = round(√(area·r)), w = round(√(area/r)); a draw fits when 1 ≤ h < H and 1 ≤ w < W.
    """
    area = (scale[0] + (scale[1] - scale[0]) * _random.rand((batch, attempts), device, generator)) * height * width
    aspect = ratio[0] + (ratio[1] - ratio[0]) * _random.rand((batch, attempts), device, generator)
    h = torch.sqrt(area * aspect).round().long()
    w = torch.sqrt(area / aspect).round().long()
    fits = (h >= 1) & (h < height) & (w >= 1) & (w < width)
    found = fits.any(dim=1)
    first = fits.long().argmax(dim=1, keepdim=True)  # first fitting attempt (0 if none)
    h = h.gather(1, first).squeeze(1).clamp(1, height)
    w = w.gather(1, first).squeeze(1).clamp(1, width)
    return h, w, found


class Cutout(Op):
    """Cutout (DeVries & Taylor, 2017): erase ``n_holes`` boxes centred anywhere, clipped to the image.

    Per image and hole, a centre (c_y, c_x) is drawn uniformly over all H×W
    pixels; the hole covers rows [c_y − ⌊h/2⌋, c_y − ⌊h/2⌋ + h) and columns
    [c_x − ⌊w/2⌋, c_x − ⌊w/2⌋ + w), intersected with the image — so holes near the
    border are partly outside and erase less. ``inside=True`` instead places the
    whole h×w hole inside the image (top-left corner uniform on [0, H−h]×[0, W−w]):
    the box family of :class:`keepmix.keep.KeepCutout` with full windows
    (``clip=False``), and so its fair baseline. Holes may overlap. The erased set is
    the union of the holes, filled with ``value``:

    .. math:: \\tilde x = (1 − M) ⊙ x + M ⊙ v, \\qquad M = \\bigcup_k \\mathrm{box}_k

    Args:
        length: hole side h or (h, w) in pixels (16 for CIFAR-10, 8 for CIFAR-100
            in the paper).
        n_holes: holes per image (1 in the paper).
        p: probability that an image is cut at all (1.0 = always, as Cutout).
        value: fill (0.0 — the mean of normalised images — as Cutout), per-channel
            values (one per image channel), or ``"random"``.
        inside: whole holes inside the image instead of centred anywhere and clipped.
        generator: optional ``torch.Generator``.

    Shapes: images B×C×H×W float or uint8 → same; targets returned unchanged.
    ``last_stats``: ``centres`` (B, n_holes, 2) int64 (y, x), ``applied`` (B,) bool,
    ``erased_fraction`` (B,) float32 — the share of pixels erased.

    Example::

        cutout = Cutout(16)
        x, y = cutout(x, y)          # then cross-entropy as usual
    """

    def __init__(self, length: SizeLike = 16, n_holes: int = 1, *, p: float = 1.0, value: FillValue = 0.0,
                 inside: bool = False, generator: Optional[torch.Generator] = None):
        super().__init__(generator)
        self.length = check_size(length, "length")
        self.n_holes = _check_count(n_holes, "n_holes")
        self.p = check_probability(p, "p")
        self.value = check_fill_value(value)
        self.inside = bool(inside)

    def _repr_fields(self):
        return {"length": self.length, "n_holes": self.n_holes, "p": self.p, "value": self.value,
                "inside": self.inside}

    def apply(self, images, targets) -> Batch:
        batch, channels, height, width = images.shape
        check_fill_channels(self.value, channels)
        device = images.device
        h, w = self.length
        # the box's top-left corner directly: a centre uniform on [0, H) is a top on [−⌊h/2⌋, H − ⌊h/2⌋)
        if self.inside:  # whole boxes: top-left uniform on [0, H − h] × [0, W − w]
            if h > height or w > width:
                raise ValueError(f"length {self.length} must fit inside the {height}×{width} images "
                                 f"when inside=True")
            top_range, left_range = (0, height - h + 1), (0, width - w + 1)
        else:
            top_range, left_range = (-(h // 2), height - h // 2), (-(w // 2), width - w // 2)
        holes = (batch,) if self.n_holes == 1 else (batch, self.n_holes)
        top = _random.randint(*top_range, holes, device, self.generator)
        left = _random.randint(*left_range, holes, device, self.generator)
        mask = box_masks(top, left, h, w, (height, width))  # B×H×W, or B×n×H×W: every hole at once
        if self.n_holes > 1:
            mask = mask.any(dim=1)
        applied = None
        if self.p < 1:
            applied = _random.rand((batch, 1, 1), device, self.generator) < self.p
            mask = mask & applied
        self.last_stats = Stats(
            centres=lambda: torch.stack([top + h // 2, left + w // 2], dim=-1).view(batch, self.n_holes, 2),
            applied=lambda: applied.view(-1) if applied is not None else torch.ones(batch, dtype=torch.bool,
                                                                                      device=device),
            erased_fraction=lambda: mask.float().mean(dim=(1, 2)))
        return erase_masked(images, mask, self.value, self.generator), targets


class RandomErasing(Op):
    """Random Erasing (Zhong et al., AAAI 2020), per image.

    With probability ``p`` an image is erased. Its rectangle is the first of
    ``attempts`` draws that fits (Algorithm 1 of the paper, with a bounded number
    of tries): target area S_e = s · H W with s ~ U(``scale``), aspect
    r_e ~ U(``ratio``), h = round(√(S_e r_e)), w = round(√(S_e / r_e)); a draw fits
    when 1 ≤ h < H and 1 ≤ w < W. The top-left corner is then uniform over the
    (H − h + 1)(W − w + 1) positions where the rectangle lies inside the image. An
    image none of whose draws fits is left unchanged (``erased`` false). Pixels
    are filled with ``value`` (``"random"`` by default, as the paper).

    Because large areas with extreme aspects do not fit, the erased area is
    U(``scale``) conditioned on fitting: exactly uniform for square rectangles
    (``ratio=(1, 1)``) and ``scale[1] < 1``.

    Args:
        p: erasing probability (0.5 in the paper).
        scale: (s_l, s_h) area fraction range (0.02, 0.4).
        ratio: (r_1, r_2) aspect range (0.3, 3.3).
        value: ``"random"``, a number or per-channel values.
        attempts: draws per image before giving up (10).
        generator: optional ``torch.Generator``.

    Shapes: images B×C×H×W float or uint8 → same; targets unchanged.
    ``last_stats``: ``erased`` (B,) bool, ``boxes`` (B, 4) int64 (top, left,
    height, width — meaningful where erased), ``area`` (B,) float32 erased fraction.
    """

    def __init__(self, p: float = 0.5, scale: Tuple[float, float] = (0.02, 0.4),
                 ratio: Tuple[float, float] = (0.3, 3.3), value: FillValue = "random", *, attempts: int = 10,
                 generator: Optional[torch.Generator] = None):
        super().__init__(generator)
        self.p = check_probability(p, "p")
        self.scale = check_range(scale, "scale", low=0.0, high=1.0)
        self.ratio = check_range(ratio, "ratio", low=1e-6, high=1e6)
        self.value = check_fill_value(value)
        self.attempts = _check_count(attempts, "attempts")

    def _repr_fields(self):
        return {"p": self.p, "scale": self.scale, "ratio": self.ratio, "value": self.value}

    def apply(self, images, targets) -> Batch:
        batch, _, height, width = images.shape
        device = images.device
        h, w, found = random_erasing_sizes(batch, height, width, self.scale, self.ratio, self.attempts, device,
                                            self.generator)
        # uniform corner among the positions that keep the rectangle inside the image
        top = _random.below(height - h + 1, self.generator)
        left = _random.below(width - w + 1, self.generator)
        erased = found & (_random.rand((batch,), device, self.generator) < self.p)
        mask = box_masks(top, left, h, w, (height, width)) & erased.view(-1, 1, 1)
        self.last_stats = {"erased": erased, "boxes": torch.stack([top, left, h, w], dim=1),
                           "area": mask.float().mean(dim=(1, 2))}
        return erase_masked(images, mask, self.value, self.generator), targets


class GridMask(Op):
    """GridMask (Chen et al., 2020): erase a (rotated) lattice of squares, per image.

    Per image (applied with probability ``p``): a unit size d uniform over the
    integers ``d_range[0] … d_range[1]`` (inclusive), a kept band width
    l = ⌈r d⌉ (r = ``ratio``), offsets δ_y, δ_x uniform over {0, …, d − 1} and an
    angle θ ~ U[0, ``rotate``) degrees. A pixel (y, x) is mapped to lattice
    coordinates by rotating its centre about the image centre,

    .. math::
        u = \\lfloor \\cos θ\\,(x + ½ − W/2) + \\sin θ\\,(y + ½ − H/2) + W/2 \\rfloor, \\quad
        v = \\lfloor −\\sin θ\\,(x + ½ − W/2) + \\cos θ\\,(y + ½ − H/2) + H/2 \\rfloor

    and erased iff ((v − δ_y) mod d) ≥ l and ((u − δ_x) mod d) ≥ l: each d×d unit
    keeps a band of width l along two sides and loses a (d − l)² square. Without
    rotation (θ = 0) u = x and v = y, and since the offsets are uniform over a
    period, every pixel is erased with probability exactly ((d − l)/d)² — the
    kept fraction averages 1 − ((d − l)/d)² ≈ 1 − (1 − r)² (the paper's keep ratio).

    Paper settings (ImageNet): d ∈ [96, 224], r = 0.6, rotation on, p rising
    linearly to 0.8 over training (set ``op.p`` from the training loop for that).

    Args:
        d_range: (d_min, d_max) unit sizes in pixels, 1 ≤ d_min ≤ d_max.
        ratio: r ∈ [0, 1], the kept band's share of a unit side (0 erases
            everything, 1 nothing).
        rotate: maximum rotation in degrees, in [0, 360] (0: axis-aligned grid).
        p: probability that an image is masked.
        value: fill (0.0), per-channel values or ``"random"``.
        generator: optional ``torch.Generator``.

    Shapes: images B×C×H×W float or uint8 → same; targets unchanged.
    ``last_stats``: ``d`` (B,) int64, ``band`` (B,) int64 (l), ``offsets`` (B, 2)
    int64 (δ_y, δ_x), ``angle`` (B,) float32 degrees, ``applied`` (B,) bool,
    ``kept_fraction`` (B,) float32.

    **Why there is no KeepGridMask.** KeepAugment's selective cut ranks a family
    of candidate regions by the saliency they contain and cuts one below the
    τ-quantile. GridMask's erased set is not one region but a lattice spread over
    the whole image, erasing the same (1 − r)² share of every unit; its only
    free choices are the lattice offset and angle. Ranking offsets by erased
    saliency would be a new method rather than KeepAugment's rule (the paper
    defines selective cut for a single cut region only), and whenever d is small
    against the object every offset erases nearly the same share of saliency.
    Combine ``SelectivePaste(GridMask(...))`` instead to keep a salient window intact.
    """

    def __init__(self, d_range: Tuple[int, int], ratio: float = 0.6, rotate: float = 360.0, *, p: float = 0.8,
                 value: FillValue = 0.0, generator: Optional[torch.Generator] = None):
        super().__init__(generator)
        try:
            d_min, d_max = d_range
        except (TypeError, ValueError):
            raise TypeError(f"d_range must be a pair (d_min, d_max) of ints, got {d_range!r}") from None
        for v in (d_min, d_max):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"d_range must be a pair (d_min, d_max) of ints, got {d_range!r}")
        if not 1 <= d_min <= d_max:
            raise ValueError(f"d_range must satisfy 1 <= d_min <= d_max, got {d_range!r}")
        self.d_range = (int(d_min), int(d_max))
        self.ratio = check_probability(ratio, "ratio")
        if isinstance(rotate, bool) or not isinstance(rotate, numbers.Real) or not 0.0 <= float(rotate) <= 360.0:
            raise ValueError(f"rotate must be a number of degrees in [0, 360], got {rotate!r}")
        self.rotate = float(rotate)
        self.p = check_probability(p, "p")
        self.value = check_fill_value(value)

    def _repr_fields(self):
        return {"d_range": self.d_range, "ratio": self.ratio, "rotate": self.rotate, "p": self.p}

    def band_width(self, d: torch.Tensor) -> torch.Tensor:
        """l = ⌈r d⌉ in [0, d], looked up in a table computed on the host in double precision for every d of
        ``d_range`` (a 1e-9 slack so that r d exactly an integer is not pushed up by rounding)."""
        low, high = self.d_range
        table = [min(max(math.ceil(k * self.ratio - 1e-9), 0), k) for k in range(low, high + 1)]
        return _int_table(tuple(table), d.device).index_select(0, d - low)

    def apply(self, images, targets) -> Batch:
        batch, _, height, width = images.shape
        device = images.device
        gen = self.generator
        d = _random.randint(self.d_range[0], self.d_range[1] + 1, (batch,), device, gen)
        band = self.band_width(d)
        offset_y = _random.below(d, gen)
        offset_x = _random.below(d, gen)
        angle = _random.rand((batch,), device, gen) * self.rotate
        applied = _random.rand((batch,), device, gen) < self.p

        theta = angle * (math.pi / 180.0)
        cos = torch.cos(theta).view(-1, 1, 1)
        sin = torch.sin(theta).view(-1, 1, 1)
        yc = (torch.arange(height, device=device, dtype=torch.float32) + 0.5 - height / 2).view(1, -1, 1)
        xc = (torch.arange(width, device=device, dtype=torch.float32) + 0.5 - width / 2).view(1, 1, -1)
        u = torch.floor(cos * xc + sin * yc + width / 2).long()
        v = torch.floor(cos * yc - sin * xc + height / 2).long()
        period = d.view(-1, 1, 1)
        kept_band = band.view(-1, 1, 1)
        in_row_gap = torch.remainder(v - offset_y.view(-1, 1, 1), period) >= kept_band
        in_col_gap = torch.remainder(u - offset_x.view(-1, 1, 1), period) >= kept_band
        mask = in_row_gap & in_col_gap & applied.view(-1, 1, 1)
        self.last_stats = {"d": d, "band": band, "offsets": torch.stack([offset_y, offset_x], dim=1),
                           "angle": angle, "applied": applied, "kept_fraction": 1.0 - mask.float().mean(dim=(1, 2))}
        return erase_masked(images, mask, self.value, self.generator), targets
