"""Regions: score every candidate window by its summed saliency, threshold, and sample.

KeepAugment scores a rectangular region S of an image by
``I(S) = Σ_{(i,j)∈S} g_ij`` (its Eq. 1), sets a per-image threshold at the
τ-quantile of the scores of *all* candidate regions of the chosen size, and
samples uniformly among the regions strictly below it (selective cut) or
strictly above it (selective paste). This module does that for a whole batch
at once:

* :func:`window_scores` — every full h×w window's sum, B×(H−h+1)×(W−w+1): two
  banded matrix products for maps up to 256 px a side (each window adds its own
  values only), an integral image in exact int64 fixed point beyond (O(HW)); float32
  results accurate to float32 rounding for every window, no float64 on the device.
* :func:`window_scores_per_image` — the same when each image has its own
  window size (Random Erasing, CutMix), over a common grid with a validity mask.
* :func:`quantile_threshold` — the per-image τ-quantile (linear interpolation,
  as ``torch.quantile``; τ=0 is the minimum, τ=1 the maximum).
* :func:`quantile_bound` — the order statistic that splits the windows exactly as
  the τ-quantile does (one selection per image instead of two).
* :func:`sample_windows` — one window per image, uniform among the qualifying
  ones: the exact distribution of the paper's rejection loop, with no loop.
* :func:`select_boxes` — the selective cut/paste of one box per image, with full
  windows or Cutout-style clipped boxes, in a family fair to the baseline's.
* :func:`box_masks` — boolean B×H×W masks of per-image boxes.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from . import _random
from ._cache import device_cache
from ._checks import (SizeLike, check_flag, check_generator, check_maps, check_probability, check_size,
                      input_checks_enabled)
from .saliency import unit_scale_with_peak


class IntegralImage(NamedTuple):
    """A zero-padded integral image in exact fixed point.

    ``table[b, i, j] = Σ_{r<i, c<j} q[b, r, c]`` (int64, B×(H+1)×(W+1)) with
    ``q = round(s · 2^(k − e_b))``: e_b is the binary exponent of max|s_b| (max|s_b| =
    m·2^e_b, ½ ≤ m < 1) and k = 61 − ⌈log₂(HW + 1)⌉, so |q| < 2^k and no sum can overflow.
    The scaling is by powers of two, so integer-valued maps are represented exactly, and any
    window sum is the exact integer difference of four entries, turned back into float32 by
    :meth:`values`: each pixel is rounded to 2^(e_b − k) (about 2^−61·HW of the peak, absolute),
    then every window, small or large, is exact up to float32 rounding of its total (a float32
    prefix sum would lose the small windows next to a large running total), with no float64
    on the device. Maps already on :func:`selection_grid` are represented exactly. ``down``: B×1×1
    float32 factor 2^(e_b − k), applied in two steps.
    """
    table: torch.Tensor
    down_a: torch.Tensor
    down_b: torch.Tensor

    def values(self, exact: torch.Tensor) -> torch.Tensor:
        """Integer sums (int64, any shape broadcasting with B×1×1) → float32 sums of the original map."""
        return exact.float() * self.down_a * self.down_b


def integral_image(saliency: torch.Tensor) -> IntegralImage:
    """The :class:`IntegralImage` of maps B×H×W (any float dtype; computed from float32 values)."""
    s = saliency if saliency.dtype == torch.float32 else saliency.float()
    height, width = s.shape[-2:]
    bits = 61 - math.ceil(math.log2(height * width + 1))
    exponent = torch.frexp(s.abs().amax(dim=(1, 2), keepdim=True)).exponent.float()
    half = torch.floor(exponent / 2)  # two power-of-two factors, each inside float32's range
    down_a, down_b = torch.pow(2.0, half - bits), torch.pow(2.0, exponent - half)
    q = torch.round(s / down_b / down_a).long()
    return IntegralImage(F.pad(q.cumsum(dim=1).cumsum(dim=2), (1, 0, 1, 0)), down_a, down_b)


def window_scores(saliency: torch.Tensor, size: SizeLike) -> torch.Tensor:
    """Sum of ``saliency`` over every full h×w window.

    ``scores[b, t, l] = Σ_{i=t}^{t+h−1} Σ_{j=l}^{l+w−1} saliency[b, i, j]``

    Computed as two banded matrix products, ``A · s · Bᵀ`` with 0/1 bands (:func:`_box_matrix`),
    for maps up to 256 pixels a side: a window's sum adds its own values and no others (no prefix-sum
    cancellation), so every window — small beside large ones included — is accurate to float32
    rounding. Larger maps go through the exact fixed-point :func:`integral_image` (O(HW) work).
    Both run in float32 with the caller's autocast switched off; when float32 matmuls may run at a
    lower precision (``torch.set_float32_matmul_precision`` other than ``"highest"``: TF32 on GPUs,
    bf16 in oneDNN) the integral image is used instead.

    Args:
        saliency: B×H×W float maps.
        size: h or (h, w), with 1 ≤ h ≤ H and 1 ≤ w ≤ W.

    Returns:
        float32 B×(H−h+1)×(W−w+1); entry (t, l) is the window with top-left corner (t, l).
    """
    check_maps(saliency, "saliency")
    h, w = check_size(size)
    height, width = saliency.shape[-2:]
    if h > height or w > width:
        raise ValueError(f"size ({h}, {w}) must fit inside the {height}×{width} maps")
    if _use_matmul(saliency):
        device = saliency.device
        return _banded_sums(saliency, _box_matrix(height - h + 1, height, h, 0, device),
                            _box_matrix(width - w + 1, width, w, 0, device, transpose=True))
    ii = integral_image(saliency)
    table = ii.table
    return ii.values(table[:, h:, w:] - table[:, :-h, w:] - table[:, h:, :-w] + table[:, :-h, :-w])


#: maps with both sides up to this are summed by banded matrix products (two GEMMs, O(HW(H+W)) work:
#: faster here than the integral image up to 224 px, and 2 kernels); larger ones by the integral image
_MATMUL_LIMIT = 256


def _use_matmul(saliency: torch.Tensor) -> bool:
    """Banded products for maps up to the limit, unless float32 matmuls may run at reduced precision
    (TF32 on CUDA; TF32/bf16 anywhere through ``torch.set_float32_matmul_precision``, read outside
    ``torch.compile``, which cannot trace that read)."""
    if max(saliency.shape[-2:]) > _MATMUL_LIMIT:
        return False
    if saliency.is_cuda and torch.backends.cuda.matmul.allow_tf32:
        return False
    return torch.compiler.is_compiling() or torch.get_float32_matmul_precision() == "highest"


@device_cache(256)
def _box_matrix(outputs: int, n: int, length: int, shift: int, device: torch.device,
                transpose: bool = False) -> torch.Tensor:
    """The 0/1 band that sums boxes along one axis: float32 outputs×n (n×outputs if ``transpose``);
    row i is 1 on columns [i − shift, i − shift + length) ∩ [0, n). Made once per arguments."""
    with torch.inference_mode(False), torch.no_grad():
        start = torch.arange(outputs, device=device).view(-1, 1) - shift
        r = torch.arange(n, device=device).view(1, -1)
        band = ((r >= start) & (r < start + length)).float()
        return band.t().contiguous() if transpose else band


def _banded_sums(saliency: torch.Tensor, rows: torch.Tensor, cols_t: torch.Tensor) -> torch.Tensor:
    """``rows · s · cols_t`` in float32: rows (B×)nH×H, s B×H×W, cols_t (B×)W×nW → B×nH×nW."""
    s = saliency if saliency.dtype == torch.float32 else saliency.float()
    with torch.autocast(s.device.type, enabled=False):
        return torch.matmul(rows, torch.matmul(s, cols_t))


def _per_image_bands(sizes: torch.Tensor, n: int, centred: bool, transpose: bool) -> torch.Tensor:
    """Bands with one box length per image: float32 B×n×n; row i of image b is 1 on
    [i − shift_b, i − shift_b + sizes[b]) ∩ [0, n), shift_b = sizes[b] // 2 if ``centred`` else 0
    (each band transposed if ``transpose``). ``sizes``: (B,) int64."""
    offset = _offsets(n, sizes.device, transpose)  # [i, r] = r − i (transposed: [r, i])
    sizes = sizes.view(-1, 1, 1)
    if centred:
        offset = offset + sizes // 2
    return ((offset >= 0) & (offset < sizes)).float()


@device_cache(64)
def _offsets(n: int, device: torch.device, transpose: bool) -> torch.Tensor:
    """int64 n×n, [i, r] = r − i (transposed: [r, i] = r − i); made once per arguments."""
    with torch.inference_mode(False), torch.no_grad():
        offset = torch.arange(n, device=device).view(1, -1) - torch.arange(n, device=device).view(-1, 1)
        return offset.t().contiguous() if transpose else offset


def window_scores_per_image(saliency: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor
                            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Window sums when image b has its own window size (heights[b], widths[b]).

    Scores are laid out on the common H×W grid of top-left corners; a corner is
    valid where the window fits (t ≤ H − h_b, l ≤ W − w_b). Computed as
    :func:`window_scores` does, with each image's own 0/1 bands (B×H×H and B×W×W), or
    by gathers from the integral image for maps over 256 px.

    Returns:
        ``(scores, valid)``: float32 B×H×W (0 where invalid) and bool B×H×W.
    """
    check_maps(saliency, "saliency")
    batch, height, width = saliency.shape
    for name, sizes in (("heights", heights), ("widths", widths)):
        if not isinstance(sizes, torch.Tensor) or sizes.shape != (batch,):
            raise ValueError(f"{name} must be a tensor of shape ({batch},), one window size per map")
    heights = _sizes(heights, batch, saliency.device).view(batch, 1, 1)
    widths = _sizes(widths, batch, saliency.device).view(batch, 1, 1)
    check_flag(((heights >= 1) & (heights <= height) & (widths >= 1) & (widths <= width)).all(),
               f"heights and widths (window sizes) must lie in [1, {height}]×[1, {width}]")
    top = _grid(height, saliency.device).view(1, height, 1)
    left = _grid(width, saliency.device)
    valid = (top <= height - heights) & (left <= width - widths)
    if _use_matmul(saliency):
        scores = _banded_sums(saliency, _per_image_bands(heights.view(-1), height, False, False),
                              _per_image_bands(widths.view(-1), width, False, True))
    else:
        scores = _box_sums(integral_image(saliency), top, left, (top + heights).clamp(max=height),
                           (left + widths).clamp(max=width))
    return torch.where(valid, scores, torch.zeros_like(scores)), valid


def _sizes(sizes: Union[int, torch.Tensor], batch: int, device: torch.device) -> torch.Tensor:
    """Box sides as int64 (B,) on ``device``: an int for every image, or a tensor of B sides (converted
    only when its dtype or device differ: no operator call otherwise)."""
    if not isinstance(sizes, torch.Tensor):
        return _grid(1, device).new_full((batch,), int(sizes))
    if sizes.dtype != torch.long or sizes.device != device:
        sizes = sizes.to(device=device, dtype=torch.long)
    return sizes.expand(batch) if sizes.ndim == 0 else sizes.reshape(batch)


def _box_sums(ii: IntegralImage, top, left, bottom, right) -> torch.Tensor:
    """Σ over rows [top, bottom) × cols [left, right) from an :class:`IntegralImage`; the bounds
    broadcast to B×H×W (one box per grid cell). Returns float32."""
    table = ii.table
    batch, rows, cols = table.shape[0], table.shape[1] - 1, table.shape[2] - 1
    flat = table.flatten(1)
    stride = cols + 1

    def corner(r, c):
        index = (r * stride + c).expand(batch, rows, cols).reshape(batch, -1)
        return flat.gather(1, index).view(batch, rows, cols)

    return ii.values(corner(bottom, right) - corner(top, right) - corner(bottom, left) + corner(top, left))


def quantile_threshold(scores: torch.Tensor, tau: float, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The per-image τ-quantile of the window scores.

    Linear interpolation between order statistics, as ``torch.quantile``:
    with the n valid scores of image b sorted, q_b = v_(⌊p⌋) + (p − ⌊p⌋)(v_(⌈p⌉) − v_(⌊p⌋)),
    p = τ(n − 1). Works for any number of windows (no size limit).

    Args:
        scores: B×… window scores.
        tau: in [0, 1].
        valid: optional bool mask of scores' shape; only valid entries count.

    Returns:
        float32 thresholds (B,).
    """
    tau = check_probability(tau, "tau")
    if not isinstance(scores, torch.Tensor) or scores.ndim < 2:
        raise ValueError("scores must be a tensor B×… with one row of window scores per image")
    flat = scores.flatten(1)
    flat = flat if flat.dtype == torch.float32 else flat.float()
    if valid is None:  # one count for every image: the two order statistics by selection, no sort
        pos = tau * (flat.shape[1] - 1)
        lo, frac = int(math.floor(pos)), pos - math.floor(pos)
        v_lo = flat.kthvalue(lo + 1, dim=1).values
        if frac == 0.0:
            return v_lo
        return torch.lerp(v_lo, flat.kthvalue(lo + 2, dim=1).values, frac)
    else:
        valid = valid.flatten(1)
        count = valid.sum(dim=1)
        ordered = torch.where(valid, flat, torch.full_like(flat, float("inf"))).sort(dim=1).values
    last = (count - 1).clamp_min(0)
    pos = last.float() * tau  # float32: an error in pos moves q continuously (interpolation), never a jump
    lo = pos.floor().long().clamp_max(last)
    hi = pos.ceil().long().clamp_max(last)
    frac = (pos - lo.float()).clamp(0.0, 1.0)
    v_lo = ordered.gather(1, lo.view(-1, 1)).squeeze(1)
    v_hi = ordered.gather(1, hi.view(-1, 1)).squeeze(1)
    # v_lo + frac·(v_hi − v_lo) without inf − inf when frac is 0
    return torch.where(frac > 0, v_lo + frac * (v_hi - v_lo), v_lo)


#: p = τ(n − 1) within this of a whole number is taken as whole (decimal τ: 0.6·5 is 3.0000000000000004 in
#: binary); the order statistic then needs no interpolation
_WHOLE_TOLERANCE = 1e-6
#: fixed-point bits of τ for per-image counts (two int64 products of 30 bits each: exact for counts below 2^31)
_TAU_BITS = 60


def quantile_bound(scores: torch.Tensor, tau: float, below: bool = True,
                   valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The order statistic that splits each image's windows exactly as its τ-quantile does.

    With the n valid scores of image b sorted, v_(0) ≤ … ≤ v_(n−1), and p = τ(n − 1), the
    τ-quantile of :func:`quantile_threshold` is q = v_(⌊p⌋) + (p − ⌊p⌋)(v_(⌈p⌉) − v_(⌊p⌋)). No
    score lies strictly between two consecutive order statistics, and q lies strictly between
    them unless p is whole or they tie, so in exact arithmetic

    * ``{s < q} = {s < v_(⌈p⌉)}`` — returned for ``below=True`` (the selective cut's candidates);
    * ``{s > q} = {s > v_(⌊p⌋)}`` — returned for ``below=False`` (the selective paste's).

    One order statistic per image (a single selection, ``kthvalue``; a sort of the valid scores
    when ``valid`` is given), and no rounding of the interpolation, which can land on an endpoint
    when the two statistics are one float32 step apart. p within 10⁻⁶ of a whole number counts as
    whole, so a decimal τ (0.6 of 5 is 3.0000000000000004 in binary) splits as written.

    Args:
        scores: B×… window scores.
        tau: in [0, 1].
        below: the selective cut's bound (True) or the selective paste's (False).
        valid: optional bool mask of scores' shape; only valid entries count (each row needs one).

    Returns:
        float32 bounds (B,), each one of its row's scores.
    """
    tau = check_probability(tau, "tau")
    if not isinstance(scores, torch.Tensor) or scores.ndim < 2:
        raise ValueError("scores must be a tensor B×… with one row of window scores per image")
    flat = scores.flatten(1)
    if valid is not None:
        if not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool or valid.shape != scores.shape:
            raise ValueError(f"valid must be a bool tensor of the scores' shape {tuple(scores.shape)}")
        valid = valid.flatten(1)
        check_flag(valid.any(dim=1).all(), "valid must mark at least one score per image")
    return _bound(flat if flat.dtype == torch.float32 else flat.float(), tau, below, valid).squeeze(1)


def _bound(flat: torch.Tensor, tau: float, below: bool, valid: Optional[torch.Tensor]) -> torch.Tensor:
    """:func:`quantile_bound` of B×n float32 scores (``valid`` B×n bool or None), as B×1."""
    if valid is None:  # one count for every image: one selection, no sort
        pos = tau * (flat.shape[1] - 1)
        whole = round(pos)
        rank = whole if abs(pos - whole) <= _WHOLE_TOLERANCE else (math.ceil(pos) if below else math.floor(pos))
        return flat.kthvalue(rank + 1, dim=1, keepdim=True).values
    ordered = torch.where(valid, flat, torch.full_like(flat, float("inf"))).sort(dim=1).values
    # p = τ·(count − 1) in exact int64 fixed point: τ ≈ T/2^60 (error ≤ 2^−61) split as T = T_hi·2^30 + T_lo,
    # so both products stay below 2^62 for counts below 2^31; then ⌊p⌋, the fraction to 2^−30, and ⌈p⌉ or ⌊p⌋
    bits, mask = _TAU_BITS // 2, (1 << (_TAU_BITS // 2)) - 1
    t = round(tau * (1 << _TAU_BITS))
    last = (valid.sum(dim=1, keepdim=True) - 1).clamp_min(0)
    fixed = last * (t >> bits) + ((last * (t & mask)) >> bits)  # p · 2^30 (the dropped bits < 2^−30 of p)
    part = fixed & mask
    tolerance = round(_WHOLE_TOLERANCE * (1 << bits))
    rank = (fixed >> bits) + (part > tolerance if below else part >= (1 << bits) - tolerance)
    return ordered.gather(1, rank)


class WindowSample(NamedTuple):
    """Sampled windows: ``top``, ``left`` (B,) int64, and ``fallback`` (B,) bool, true
    where no window was strictly on the requested side of the threshold."""
    top: torch.Tensor
    left: torch.Tensor
    fallback: torch.Tensor


def sample_windows(scores: torch.Tensor, threshold: torch.Tensor, below: bool = True,
                   generator: Optional[torch.Generator] = None, valid: Optional[torch.Tensor] = None
                   ) -> WindowSample:
    """One window per image, uniform among the windows strictly below (or above) the threshold.

    This is the distribution of KeepAugment's loop "repeat: sample a window
    uniformly until I(S) < τ" without the loop (or its hang): an index is drawn
    uniformly from the qualifying windows by a cumulative count and a search.

    Fallback: when no window qualifies strictly (a flat map, where every score
    equals the threshold; τ = 0 for a cut; τ = 1 for a paste), the window is drawn
    uniformly among those *at or* below (above) the threshold instead — never
    empty, because the threshold lies between two scores. For a flat map this is
    plain uniform sampling (the map carries no information). The ``fallback``
    field marks the images where that happened.

    Args:
        scores: B×nH×nW window scores (e.g. from :func:`window_scores`).
        threshold: (B,) per-image thresholds.
        below: True for selective cut, False for selective paste.
        generator: optional ``torch.Generator``; one integer draw per image.
        valid: optional bool mask B×nH×nW of windows that exist.
    """
    check_generator(generator)
    if not isinstance(scores, torch.Tensor) or scores.ndim != 3:
        raise ValueError("scores must be a tensor B×nH×nW")
    batch, _, n_w = scores.shape
    if not isinstance(threshold, torch.Tensor) or threshold.shape != (batch,):
        raise ValueError(f"threshold must be a tensor of shape ({batch},)")
    if valid is not None and (not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool
                              or valid.shape != scores.shape):
        raise ValueError(f"valid must be a bool tensor of the scores' shape {tuple(scores.shape)}")
    check_flag(torch.isfinite(threshold).all(), "threshold must be finite")
    if valid is not None:
        check_flag(valid.flatten(1).any(dim=1).all(), "valid must mark at least one window per image")
    flat = scores.flatten(1)
    thr = (threshold if threshold.dtype == flat.dtype else threshold.to(flat.dtype)).unsqueeze(1)
    return _sample(flat, thr, n_w, below, generator, None if valid is None else valid.flatten(1))


def _sample(flat: torch.Tensor, thr: torch.Tensor, n_w: int, below: bool, generator: Optional[torch.Generator],
            valid: Optional[torch.Tensor]) -> WindowSample:
    """:func:`sample_windows` on B×n scores with B×1 thresholds (``valid`` B×n or None)."""
    # strictly below (above) the threshold; where no valid score is, at or below (above) it instead —
    # for finite floats s ≤ t ⟺ s < nextafter(t, +∞), so both are one comparison with a moved bound
    side = float("inf") if below else float("-inf")
    masked = flat if valid is None else flat.masked_fill(~valid, side)
    extreme = masked.amin(dim=1, keepdim=True) if below else masked.amax(dim=1, keepdim=True)
    fallback = extreme >= thr if below else extreme <= thr
    bound = torch.where(fallback, torch.nextafter(thr, _constant(side, thr.dtype, thr.device)), thr)
    eligible = flat < bound if below else flat > bound
    if valid is not None:
        eligible = eligible & valid
    fallback = fallback.squeeze(1)
    running = eligible.cumsum(dim=1)  # int64
    k = _random.below(running[:, -1], generator)  # the k-th eligible window, k uniform (exact integers)
    index = torch.searchsorted(running, k.unsqueeze(1), right=True).squeeze(1)  # first running count > k
    return WindowSample(index // n_w, index % n_w, fallback)


@device_cache(128)
def _grid(n: int, device: torch.device) -> torch.Tensor:
    """0 … n−1 (int64) on ``device``, made once per (n, device): no arange launch per call
    (its ``view`` is a launch too: callers reshape the other operand instead where they can)."""
    with torch.inference_mode(False), torch.no_grad():
        return torch.arange(n, device=device)


@device_cache(32)
def _constant(value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A 0-d tensor made once per (value, dtype, device): no launch per call."""
    with torch.inference_mode(False), torch.no_grad():
        return torch.tensor(value, dtype=dtype, device=device)


def box_masks(top: torch.Tensor, left: torch.Tensor, height: Union[int, torch.Tensor],
              width: Union[int, torch.Tensor], size: Tuple[int, int]) -> torch.Tensor:
    """Boolean masks (…)×H×W, true on rows [top, top+height) × cols [left, left+width) (clipped to the image).

    ``top``/``left`` are int64 tensors of any shape (…) — (B,) for one box per image, (B, n) for n
    boxes each; ``height``/``width`` are ints or tensors of the same shape. Built from cached row
    and column indices by broadcasting: a dozen operator calls whatever the batch size.
    """
    rows, cols = size
    r, c = _grid(rows, top.device).view(rows, 1), _grid(cols, top.device)  # cached: no launch
    shape = (*top.shape, 1, 1)
    t, l = top.view(shape), left.view(shape)
    h = height.view(shape) if isinstance(height, torch.Tensor) else height
    w = width.view(shape) if isinstance(width, torch.Tensor) else width
    in_rows = (r >= t) & (r < t + h)  # (…)×H×1
    in_cols = (c >= l) & (c < l + w)  # (…)×1×W
    return in_rows & in_cols


def clipped_boxes(centre_y: torch.Tensor, centre_x: torch.Tensor, height, width, size: Tuple[int, int]
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cutout/CutMix boxes: ``height``×``width`` centred on (c_y, c_x), clipped to an H×W image.

    Rows [c_y − ⌊h/2⌋, c_y − ⌊h/2⌋ + h) ∩ [0, H), likewise columns. ``height`` and
    ``width`` are ints or tensors broadcastable to the centres. Returns the clipped
    ``(top, left, height, width)`` as int64 tensors of the centres' shape (sides may be 0).
    """
    rows, cols = size
    top = (centre_y - height // 2).clamp(0, rows)
    bottom = (centre_y - height // 2 + height).clamp(0, rows)
    left = (centre_x - width // 2).clamp(0, cols)
    right = (centre_x - width // 2 + width).clamp(0, cols)
    return top, left, bottom - top, right - left


def clipped_box_scores(saliency: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """Summed saliency of Cutout-style boxes centred on every pixel, one box size per image.

    ``scores[b, y, x]`` = Σ saliency[b] over :func:`clipped_boxes` ``(y, x, heights[b], widths[b])``:
    banded products whose bands are clipped at the border (no padding), as :func:`window_scores`.

    Args:
        saliency: B×H×W maps.
        heights, widths: (B,) int64 box sides ≥ 1 (may exceed the image).

    Returns:
        float32 B×H×W.
    """
    check_maps(saliency, "saliency")
    batch, height, width = saliency.shape
    _check_sides(heights, widths, batch)
    heights, widths = _sizes(heights, batch, saliency.device), _sizes(widths, batch, saliency.device)
    if _use_matmul(saliency):
        return _banded_sums(saliency, _per_image_bands(heights, height, True, False),
                            _per_image_bands(widths, width, True, True))
    cy = _grid(height, saliency.device).view(1, height, 1)
    cx = _grid(width, saliency.device)
    top, left, box_h, box_w = clipped_boxes(cy, cx, heights.view(batch, 1, 1), widths.view(batch, 1, 1),
                                            (height, width))
    return _box_sums(integral_image(saliency), top, left, top + box_h, left + box_w)


def same_clipped_shape(centre_y: torch.Tensor, centre_x: torch.Tensor, heights: torch.Tensor,
                       widths: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """B×H×W bool: the centres whose clipped box has the same height and width as image b's box at
    (centre_y[b], centre_x[b]) — the candidates of a fair selective cut with Cutout-style boxes.

    A clipped box's height depends on its centre row only and its width on its
    centre column only, so the mask is an outer product of a row and a column mask.
    """
    rows, cols = size
    device = centre_y.device
    h = heights.long().view(-1, 1)
    w = widths.long().view(-1, 1)
    cy = torch.arange(rows, device=device).view(1, -1)
    cx = torch.arange(cols, device=device).view(1, -1)
    _, _, grid_h, _ = clipped_boxes(cy, cx.new_zeros(()), h, w, size)
    _, _, _, grid_w = clipped_boxes(cy.new_zeros(()), cx, h, w, size)
    _, _, ref_h, ref_w = clipped_boxes(centre_y.view(-1, 1), centre_x.view(-1, 1), h, w, size)
    return (grid_h == ref_h).unsqueeze(2) & (grid_w == ref_w).unsqueeze(1)


class BoxSample(NamedTuple):
    """Selected boxes: ``top``, ``left``, ``height``, ``width`` (B,) int64 (already clipped to the
    image) and ``fallback`` (B,) bool, as in :class:`WindowSample`."""
    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    fallback: torch.Tensor


def select_boxes(saliency: torch.Tensor, heights: Union[int, torch.Tensor], widths: Union[int, torch.Tensor],
                 tau: float, *,
                 below: bool = True, clip: bool = False, generator: Optional[torch.Generator] = None) -> BoxSample:
    """KeepAugment's selective cut (``below=True``) or paste, one box per image, in a fair box family.

    Image b's box has the size ``heights[b]``×``widths[b]``; only its *position* is
    chosen by saliency. The candidates are

    * ``clip=False`` — every full window inside the image (the paper's candidates;
      the baseline is a box placed uniformly inside, e.g. ``Cutout(inside=True)``);
    * ``clip=True`` — Cutout/CutMix's boxes: centred on any pixel and clipped. A
      reference centre is drawn uniformly, as Cutout does; the candidates are the
      centres whose clipped box has the *same* clipped height and width as the
      reference box (:func:`same_clipped_shape`).

    Among the candidates the box is drawn uniformly from those whose summed
    saliency (KeepAugment's Eq. 1) lies strictly below (above) the τ-quantile
    of the candidates' scores (:func:`quantile_bound`, the same split as :func:`quantile_threshold`;
    :func:`sample_windows`). The sums are taken on the maps rounded to :func:`selection_grid`, where
    every window sum is exact: equal windows tie, and the scores do not depend on the sum path, the
    rest of the batch or the thread count.

    Fairness: the erased shape never depends on the map, so with an
    information-free map (constant: every candidate ties, so the draw is uniform
    among them) the op erases exactly its baseline's box distribution — a clipped
    box is not preferred because it is small. Draws: (clip) two uniform integers,
    then one uniform per image.

    Args:
        saliency: B×H×W maps (any positive scale; only order within an image matters).
        heights, widths: (B,) int64 sides ≥ 1 (≤ H, W unless ``clip``), or ints (one size for all).
        tau: quantile in [0, 1].

    Returns:
        :class:`BoxSample`.
    """
    if isinstance(saliency, torch.Tensor) and saliency.ndim == 3:  # otherwise _select_boxes names the fault
        _check_sides(heights, widths, saliency.shape[0])
    picked = _select_boxes(saliency, heights, widths, tau, below=below, clip=clip, generator=generator,
                           name="saliency")
    if isinstance(picked.height, int):  # the fixed-size path leaves the sides as ints (ops use them so)
        picked = picked._replace(height=torch.full_like(picked.top, picked.height),
                                 width=torch.full_like(picked.top, picked.width))
    return picked


#: float32 holds every integer up to 2^24 exactly: the window sums of the selection stay within it
_EXACT_BITS = 24


def selection_grid(saliency: torch.Tensor, area: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Maps rounded to the fixed-point grid on which every window sum of up to ``area`` pixels is exact.

    ``q = round(s · 2^(m − e_b))`` with max|s_b| = μ·2^(e_b) (½ ≤ μ < 1) and
    m = 24 − ⌈log₂ area⌉: |q| ≤ 2^m, so any sum of at most ``area`` of them, and every partial sum
    on the way, is an integer of at most 2^24 — exact in float32 whatever order a matrix product or a
    prefix sum adds them in. Window scores computed from q are therefore the same on both sum
    paths, for any batch composition and any thread count, and equal windows tie exactly (a flat
    map gives every window the same score, so the selection falls back to a uniform draw). The
    grid step is 2^(−m) of the map's peak (2^−16 for a 16×16 window, 2^−14 for any window of a
    32×32 map): pixels below half a step count as 0. Powers of two scale the map, so the grid,
    and the choice, do not depend on the map's scale.

    Args:
        saliency: B×H×W float maps (float32 or float64; other dtypes are widened).
        area: the largest number of pixels a window sums (≥ 1).

    Returns:
        ``(q, peak)``: float32 B×H×W integer-valued maps, and the peaks max|s_b| (B×1×1; NaN or inf
        exactly when the map holds one).
    """
    scaled, peak = unit_scale_with_peak(saliency)  # a new tensor: |s| < 1
    return scaled.mul_(2.0 ** (_EXACT_BITS - math.ceil(math.log2(max(area, 1))))).round_(), peak


def _check_sides(heights, widths, batch: int) -> None:
    """Box sides for the public functions: ints ≥ 1, or integer tensors of B (or one) sides ≥ 1."""
    for name, sides in (("heights", heights), ("widths", widths)):
        if isinstance(sides, torch.Tensor):
            if sides.dtype == torch.bool or sides.is_floating_point() or sides.is_complex():
                raise TypeError(f"{name} must be an integer tensor of box sides, got {sides.dtype}")
            if sides.numel() not in (1, batch) or sides.ndim > 1:
                raise ValueError(f"{name} must hold one side per map ({batch},) or one for all, "
                                 f"got shape {tuple(sides.shape)}")
            check_flag((sides >= 1).all(), f"{name} (box sides) must be ≥ 1")
        elif isinstance(sides, bool) or not isinstance(sides, int):
            raise TypeError(f"{name} must be an int or an integer tensor, got {type(sides).__name__}")
        elif sides < 1:
            raise ValueError(f"{name} (box side) must be ≥ 1, got {sides}")


def _select_boxes(saliency: torch.Tensor, heights: Union[int, torch.Tensor], widths: Union[int, torch.Tensor],
                  tau: float, *, below: bool, clip: bool, generator: Optional[torch.Generator], name: str
                  ) -> BoxSample:
    """:func:`select_boxes`; the maps' NaN/inf check comes from the peaks :func:`unit_scale` divides by (an op
    passes its maps unchecked, ``compute_maps(…, finite=False)``, and ``name`` is the argument the message names).
    Full windows of one size come back with ``height``/``width`` as ints (no tensor to make)."""
    check_maps(saliency, name)
    batch, height, width = saliency.shape
    if isinstance(heights, int) and isinstance(widths, int):  # the largest window (clipped: inside the map)
        area = max(min(heights, height), 1) * max(min(widths, width), 1)
    else:
        area = height * width
    saliency, peak = selection_grid(saliency, area)
    if input_checks_enabled() and not torch.compiler.is_compiling():
        check_flag(torch.isfinite(peak).all(), f"{name} contains NaN or infinite values")
    if not clip and isinstance(heights, int) and isinstance(widths, int):  # one size: plain window sums
        if heights > height or widths > width:
            raise ValueError(f"size ({heights}, {widths}) must fit inside the {height}×{width} maps "
                             f"(or use clip=True)")
        scores = window_scores(saliency, (heights, widths))
        flat = scores.flatten(1)
        picked = _sample(flat, _bound(flat, tau, below, None), scores.shape[2], below, generator, None)
        return BoxSample(picked.top, picked.left, heights, widths, picked.fallback)  # ints: one size for all
    if clip and isinstance(heights, int) and isinstance(widths, int):
        return _select_clipped_fixed(saliency, heights, widths, tau, below, generator)
    heights, widths = _sizes(heights, batch, saliency.device), _sizes(widths, batch, saliency.device)
    if clip:
        ref_y = _random.randint(0, height, (batch,), saliency.device, generator)
        ref_x = _random.randint(0, width, (batch,), saliency.device, generator)
        scores = clipped_box_scores(saliency, heights, widths)
        valid = same_clipped_shape(ref_y, ref_x, heights, widths, (height, width))
    else:
        scores, valid = window_scores_per_image(saliency, heights, widths)
    flat, valid = scores.flatten(1), valid.flatten(1)
    picked = _sample(flat, _bound(flat, tau, below, valid), scores.shape[2], below, generator, valid)
    if clip:
        top, left, box_h, box_w = clipped_boxes(picked.top, picked.left, heights, widths, (height, width))
    else:
        top, left, box_h, box_w = picked.top, picked.left, heights, widths
    return BoxSample(top, left, box_h, box_w, picked.fallback)


@device_cache(128)
def _clipped_extents(side: int, length: int, device: torch.device) -> torch.Tensor:
    """The clipped extent of a ``length`` box centred on each of ``side`` positions (host-computed, cached)."""
    extents = [min(c - length // 2 + length, side) - max(c - length // 2, 0) for c in range(side)]
    with torch.inference_mode(False), torch.no_grad():
        return torch.tensor(extents, dtype=torch.long, device=device)


def _select_clipped_fixed(saliency: torch.Tensor, h: int, w: int, tau: float, below: bool,
                          generator: Optional[torch.Generator]) -> BoxSample:
    """:func:`select_boxes` with ``clip=True`` and one box size: the same candidates and draws, computed
    from centred, border-clipped box sums (cached bands; window sums of the zero-padded map on the integral
    path) and host-computed extents (a few dozen operator calls)."""
    batch, height, width = saliency.shape
    device = saliency.device
    ref_y = _random.randint(0, height, (batch,), device, generator)
    ref_x = _random.randint(0, width, (batch,), device, generator)
    # a box of 2H + 1 rows or more covers every row from any centre: score with that length (no huge pad)
    sh, sw = min(h, 2 * height + 1), min(w, 2 * width + 1)
    if _use_matmul(saliency):  # B×H×W, indexed by the box centre
        scores = _banded_sums(saliency, _box_matrix(height, height, sh, sh // 2, device),
                              _box_matrix(width, width, sw, sw // 2, device, transpose=True))
    else:  # clipped parts of the zero-padded map sum to 0
        scores = window_scores(F.pad(saliency, (sw // 2, sw - 1 - sw // 2, sh // 2, sh - 1 - sh // 2)), (sh, sw))
    rows, cols = _clipped_extents(height, h, device), _clipped_extents(width, w, device)
    same_rows = rows == rows.index_select(0, ref_y).unsqueeze(1)  # B×H
    same_cols = cols == cols.index_select(0, ref_x).unsqueeze(1)  # B×W
    valid = same_rows.unsqueeze(2) & same_cols.unsqueeze(1)
    flat, valid = scores.flatten(1), valid.flatten(1)
    picked = _sample(flat, _bound(flat, tau, below, valid), scores.shape[2], below, generator, valid)
    top, left = (picked.top - h // 2).clamp_min(0), (picked.left - w // 2).clamp_min(0)
    return BoxSample(top, left, rows.index_select(0, picked.top), cols.index_select(0, picked.left),
                     picked.fallback)


def centred_window_scores(saliency: torch.Tensor, size: SizeLike) -> torch.Tensor:
    """Scores of Cutout-style boxes of one size: :func:`clipped_box_scores` with h×w for every image.

    ``scores[b, y, x]`` sums saliency over rows [y − h//2, y − h//2 + h) ∩ [0, H)
    and cols [x − w//2, x − w//2 + w) ∩ [0, W). Returns float32 B×H×W.
    """
    check_maps(saliency, "saliency")
    h, w = check_size(size)
    batch = saliency.shape[0]
    return clipped_box_scores(saliency, torch.full((batch,), h, device=saliency.device),
                              torch.full((batch,), w, device=saliency.device))
