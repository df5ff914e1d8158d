"""Regions: score every candidate window by its summed saliency, threshold, and sample.

KeepAugment scores a rectangular region S of an image by
``I(S) = Σ_{(i,j)∈S} g_ij`` (its Eq. 1), sets a per-image threshold at the
τ-quantile of the scores of *all* candidate regions of the chosen size, and
samples uniformly among the regions strictly below it (selective cut) or
strictly above it (selective paste). This module does that for a whole batch
at once:

* :func:`window_scores` — every full h×w window's sum, B×(H−h+1)×(W−w+1), in
  O(HW) per image from an integral image in exact int64 fixed point (float32
  results accurate to ~1e-7 relative for every window; no float64 on the device).
* :func:`window_scores_per_image` — the same when each image has its own
  window size (Random Erasing, CutMix), over a common grid with a validity mask.
* :func:`quantile_threshold` — the per-image τ-quantile (linear interpolation,
  as ``torch.quantile``; τ=0 is the minimum, τ=1 the maximum).
* :func:`sample_windows` — one window per image, uniform among the qualifying
  ones: the exact distribution of the paper's rejection loop, with no loop.
* :func:`select_boxes` — the selective cut/paste of one box per image, with full
  windows or Cutout-style clipped boxes, in a family fair to the baseline's.
* :func:`box_masks` — boolean B×H×W masks of per-image boxes.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from . import _random
from ._checks import SizeLike, check_flag, check_generator, check_maps, check_probability, check_size
from .saliency import unit_scale


class IntegralImage(NamedTuple):
    """A zero-padded integral image in exact fixed point.

    ``table[b, i, j] = Σ_{r<i, c<j} q[b, r, c]`` (int64, B×(H+1)×(W+1)) with
    ``q = round(s · 2^(k − e_b))``: e_b is the binary exponent of max|s_b| (max|s_b| =
    m·2^e_b, ½ ≤ m < 1) and k = 61 − ⌈log₂(HW + 1)⌉, so |q| < 2^k and no sum can overflow.
    The scaling is by powers of two, so integer-valued maps are represented exactly, and any
    window sum is the exact integer difference of four entries, turned back into float32 by
    :meth:`values`: accurate to float32 rounding for every window, small or large (a float32
    prefix sum would lose the small windows next to a large running total), with no float64
    on the device. ``down``: B×1×1 float32 factor 2^(e_b − k), applied in two steps.
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
    if h + w <= _POOL_LIMIT:  # small windows: two direct 1-d sums (convolutions with ones), 4 kernels
        s = saliency.unsqueeze(1) if saliency.dtype == torch.float32 else saliency.float().unsqueeze(1)
        rows = F.conv2d(s, _ones((1, 1, 1, w), s.device))
        return F.conv2d(rows, _ones((1, 1, h, 1), s.device)).squeeze(1)
    ii = integral_image(saliency)
    table = ii.table
    return ii.values(table[:, h:, w:] - table[:, :-h, w:] - table[:, h:, :-w] + table[:, :-h, :-w])


#: windows with h + w up to this are summed directly (separable, O(HW(h+w)) work in 4 kernels —
#: exact to float32 rounding of each sum, no cancellation);
#: larger ones through the integral image (O(HW) work in ~20 kernels)
_POOL_LIMIT = 32


def window_scores_per_image(saliency: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor
                            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Window sums when image b has its own window size (heights[b], widths[b]).

    Scores are laid out on the common H×W grid of top-left corners; a corner is
    valid where the window fits (t ≤ H − h_b, l ≤ W − w_b).

    Returns:
        ``(scores, valid)``: float32 B×H×W (0 where invalid) and bool B×H×W.
    """
    check_maps(saliency, "saliency")
    batch, height, width = saliency.shape
    for name, sizes in (("heights", heights), ("widths", widths)):
        if not isinstance(sizes, torch.Tensor) or sizes.shape != (batch,):
            raise ValueError(f"{name} must be a tensor of shape ({batch},), one window size per map")
    heights = heights.to(saliency.device).long().view(batch, 1, 1)
    widths = widths.to(saliency.device).long().view(batch, 1, 1)
    check_flag(((heights >= 1) & (heights <= height) & (widths >= 1) & (widths <= width)).all(),
               f"heights and widths (window sizes) must lie in [1, {height}]×[1, {width}]")
    top = torch.arange(height, device=saliency.device).view(1, height, 1)
    left = torch.arange(width, device=saliency.device).view(1, 1, width)
    valid = (top <= height - heights) & (left <= width - widths)
    scores = _box_sums(integral_image(saliency), top, left, (top + heights).clamp(max=height),
                       (left + widths).clamp(max=width))
    return torch.where(valid, scores, torch.zeros_like(scores)), valid


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
    flat = scores.flatten(1)
    thr = (threshold if threshold.dtype == flat.dtype else threshold.to(flat.dtype)).unsqueeze(1)
    strict = flat < thr if below else flat > thr
    loose = flat <= thr if below else flat >= thr
    if valid is not None:
        valid = valid.flatten(1)
        strict = strict & valid
        loose = loose & valid
    fallback = ~strict.any(dim=1)
    eligible = torch.where(fallback.view(-1, 1), loose, strict)
    running = eligible.long().cumsum(dim=1)
    k = _random.below(running[:, -1], generator)  # the k-th eligible window, k uniform (exact integers)
    index = torch.searchsorted(running, k.unsqueeze(1), right=True).squeeze(1)  # first running count > k
    return WindowSample(index // n_w, index % n_w, fallback)


@functools.lru_cache(maxsize=128)
def _ones(shape: Tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A float32 kernel of ones, made once per (shape, device)."""
    with torch.inference_mode(False), torch.no_grad():
        return torch.ones(shape, device=device)


@functools.lru_cache(maxsize=128)
def _grid(n: int, device: torch.device) -> torch.Tensor:
    """0 … n−1 (int64) on ``device``, made once per (n, device): no arange launch per call
    (its ``view`` is a launch too: callers reshape the other operand instead where they can)."""
    with torch.inference_mode(False), torch.no_grad():
        return torch.arange(n, device=device)


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

    ``scores[b, y, x]`` = Σ saliency[b] over :func:`clipped_boxes` ``(y, x, heights[b], widths[b])``.

    Args:
        saliency: B×H×W maps.
        heights, widths: (B,) int64 box sides ≥ 1 (may exceed the image).

    Returns:
        float32 B×H×W.
    """
    check_maps(saliency, "saliency")
    batch, height, width = saliency.shape
    h = heights.to(saliency.device).long().view(batch, 1, 1)
    w = widths.to(saliency.device).long().view(batch, 1, 1)
    cy = torch.arange(height, device=saliency.device).view(1, height, 1)
    cx = torch.arange(width, device=saliency.device).view(1, 1, width)
    top, left, box_h, box_w = clipped_boxes(cy, cx, h, w, (height, width))
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
    of the candidates' scores (:func:`quantile_threshold`, :func:`sample_windows`).

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
    check_maps(saliency, "saliency")
    saliency = unit_scale(saliency)
    batch, height, width = saliency.shape
    if not clip and isinstance(heights, int) and isinstance(widths, int):  # one size: plain window sums
        if heights > height or widths > width:
            raise ValueError(f"size ({heights}, {widths}) must fit inside the {height}×{width} maps "
                             f"(or use clip=True)")
        scores = window_scores(saliency, (heights, widths))
        picked = sample_windows(scores, quantile_threshold(scores, tau), below, generator)
        return BoxSample(picked.top, picked.left, torch.full_like(picked.top, heights),
                         torch.full_like(picked.top, widths), picked.fallback)
    if clip and isinstance(heights, int) and isinstance(widths, int):
        return _select_clipped_fixed(saliency, heights, widths, tau, below, generator)
    heights = torch.as_tensor(heights, device=saliency.device).long().expand(batch)
    widths = torch.as_tensor(widths, device=saliency.device).long().expand(batch)
    if clip:
        ref_y = _random.randint(0, height, (batch,), saliency.device, generator)
        ref_x = _random.randint(0, width, (batch,), saliency.device, generator)
        scores = clipped_box_scores(saliency, heights, widths)
        valid = same_clipped_shape(ref_y, ref_x, heights, widths, (height, width))
    else:
        scores, valid = window_scores_per_image(saliency, heights, widths)
    picked = sample_windows(scores, quantile_threshold(scores, tau, valid), below, generator, valid)
    if clip:
        top, left, box_h, box_w = clipped_boxes(picked.top, picked.left, heights, widths, (height, width))
    else:
        top, left, box_h, box_w = picked.top, picked.left, heights, widths
    return BoxSample(top, left, box_h, box_w, picked.fallback)


@functools.lru_cache(maxsize=128)
def _clipped_extents(side: int, length: int, device: torch.device) -> torch.Tensor:
    """The clipped extent of a ``length`` box centred on each of ``side`` positions (host-computed, cached)."""
    extents = [min(c - length // 2 + length, side) - max(c - length // 2, 0) for c in range(side)]
    with torch.inference_mode(False), torch.no_grad():
        return torch.tensor(extents, dtype=torch.long, device=device)


def _select_clipped_fixed(saliency: torch.Tensor, h: int, w: int, tau: float, below: bool,
                          generator: Optional[torch.Generator]) -> BoxSample:
    """:func:`select_boxes` with ``clip=True`` and one box size: the same candidates and draws, computed
    from window sums of the zero-padded map and host-computed extents (a few dozen operator calls)."""
    batch, height, width = saliency.shape
    device = saliency.device
    ref_y = _random.randint(0, height, (batch,), device, generator)
    ref_x = _random.randint(0, width, (batch,), device, generator)
    padded = F.pad(saliency, (w // 2, w - 1 - w // 2, h // 2, h - 1 - h // 2))  # clipped parts sum to 0
    scores = window_scores(padded, (h, w))  # B×H×W, indexed by the box centre
    rows, cols = _clipped_extents(height, h, device), _clipped_extents(width, w, device)
    same_rows = rows == rows.index_select(0, ref_y).unsqueeze(1)  # B×H
    same_cols = cols == cols.index_select(0, ref_x).unsqueeze(1)  # B×W
    valid = same_rows.unsqueeze(2) & same_cols.unsqueeze(1)
    picked = sample_windows(scores, quantile_threshold(scores, tau, valid), below, generator, valid)
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
