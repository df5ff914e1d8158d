"""Regions: score every candidate window by its summed saliency, threshold, and sample.

KeepAugment scores a rectangular region S of an image by
``I(S) = Σ_{(i,j)∈S} g_ij`` (its Eq. 1), sets a per-image threshold at the
τ-quantile of the scores of *all* candidate regions of the chosen size, and
samples uniformly among the regions strictly below it (selective cut) or
strictly above it (selective paste). This module does that for a whole batch
at once:

* :func:`window_scores` — every full h×w window's sum, B×(H−h+1)×(W−w+1), in
  O(HW) per image from an integral image (accumulated in float64 where the
  device has it, so float32 results are exact to ~1e-7 relative).
* :func:`window_scores_per_image` — the same when each image has its own
  window size (Random Erasing, CutMix), over a common grid with a validity mask.
* :func:`quantile_threshold` — the per-image τ-quantile (linear interpolation,
  as ``torch.quantile``; τ=0 is the minimum, τ=1 the maximum).
* :func:`sample_windows` — one window per image, uniform among the qualifying
  ones: the exact distribution of the paper's rejection loop, with no loop.
* :func:`box_masks` — boolean B×H×W masks of per-image boxes.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from . import _random
from ._checks import SizeLike, check_generator, check_maps, check_probability, check_size


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def integral_image(saliency: torch.Tensor) -> torch.Tensor:
    """Zero-padded integral image B×(H+1)×(W+1): ``I[b, i, j] = Σ_{r<i, c<j} s[b, r, c]`` (float64)."""
    s = saliency.to(_accumulator_dtype(saliency.device))
    return F.pad(s.cumsum(dim=1).cumsum(dim=2), (1, 0, 1, 0))


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
    ii = integral_image(saliency)
    scores = ii[:, h:, w:] - ii[:, :-h, w:] - ii[:, h:, :-w] + ii[:, :-h, :-w]
    return scores.float()


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
    if bool(((heights < 1) | (heights > height) | (widths < 1) | (widths > width)).any()):
        raise ValueError(f"heights and widths (window sizes) must lie in [1, {height}]×[1, {width}]")
    ii = integral_image(saliency)
    top = torch.arange(height, device=saliency.device).view(1, height, 1)
    left = torch.arange(width, device=saliency.device).view(1, 1, width)
    valid = (top <= height - heights) & (left <= width - widths)
    bottom = (top + heights).clamp(max=height)
    right = (left + widths).clamp(max=width)
    flat = ii.flatten(1)
    stride = width + 1

    def corner(r, c):
        return flat.gather(1, (r * stride + c).expand(batch, height, width).reshape(batch, -1)).view(batch, height,
                                                                                                     width)

    scores = corner(bottom, right) - corner(top, right) - corner(bottom, left) + corner(top, left)
    return torch.where(valid, scores, torch.zeros_like(scores)).float(), valid


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
    flat = scores.flatten(1).float()
    if valid is None:
        count = torch.full((flat.shape[0],), flat.shape[1], device=flat.device, dtype=torch.long)
        ordered = flat.sort(dim=1).values
    else:
        valid = valid.flatten(1)
        count = valid.sum(dim=1)
        ordered = torch.where(valid, flat, torch.full_like(flat, float("inf"))).sort(dim=1).values
    pos = tau * (count - 1).clamp_min(0).double()
    lo = pos.floor().long()
    hi = pos.ceil().long()
    frac = (pos - lo.double()).float()
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
        generator: optional ``torch.Generator``; one uniform draw per image.
        valid: optional bool mask B×nH×nW of windows that exist.
    """
    check_generator(generator)
    if not isinstance(scores, torch.Tensor) or scores.ndim != 3:
        raise ValueError("scores must be a tensor B×nH×nW")
    batch, _, n_w = scores.shape
    if not isinstance(threshold, torch.Tensor) or threshold.shape != (batch,):
        raise ValueError(f"threshold must be a tensor of shape ({batch},)")
    flat = scores.flatten(1)
    thr = threshold.to(flat.dtype).view(-1, 1)
    strict = flat < thr if below else flat > thr
    loose = flat <= thr if below else flat >= thr
    if valid is not None:
        valid = valid.flatten(1)
        strict = strict & valid
        loose = loose & valid
    fallback = ~strict.any(dim=1)
    eligible = torch.where(fallback.view(-1, 1), loose, strict)
    running = eligible.long().cumsum(dim=1)
    count = running[:, -1]
    u = _random.rand((batch,), flat.device, generator, dtype=torch.float64)
    k = (u * count.double()).floor().long().clamp_max(count - 1).clamp_min(0)
    index = torch.searchsorted(running, (k + 1).view(-1, 1)).squeeze(1)
    return WindowSample(index // n_w, index % n_w, fallback)


def box_masks(top: torch.Tensor, left: torch.Tensor, height: Union[int, torch.Tensor],
              width: Union[int, torch.Tensor], size: Tuple[int, int]) -> torch.Tensor:
    """Boolean B×H×W masks, true on rows [top, top+height) × cols [left, left+width) (clipped to the image)."""
    rows, cols = size
    device = top.device
    top = top.view(-1, 1)
    left = left.view(-1, 1)
    height = height.view(-1, 1) if isinstance(height, torch.Tensor) else height
    width = width.view(-1, 1) if isinstance(width, torch.Tensor) else width
    r = torch.arange(rows, device=device).view(1, -1)
    c = torch.arange(cols, device=device).view(1, -1)
    in_rows = (r >= top) & (r < top + height)
    in_cols = (c >= left) & (c < left + width)
    return in_rows.unsqueeze(2) & in_cols.unsqueeze(1)


def centred_window_scores(saliency: torch.Tensor, size: SizeLike) -> torch.Tensor:
    """Scores of Cutout-style boxes: an h×w box centred on every pixel, clipped to the image.

    ``scores[b, y, x]`` sums saliency over rows [y − h//2, y − h//2 + h) ∩ [0, H)
    and cols [x − w//2, x − w//2 + w) ∩ [0, W): the zero-padded map's full windows.

    Returns float32 B×H×W.
    """
    check_maps(saliency, "saliency")
    h, w = check_size(size)
    padded = F.pad(saliency, (w // 2, w - 1 - w // 2, h // 2, h - 1 - h // 2))
    return window_scores(padded, (h, w))
