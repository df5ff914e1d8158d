"""Stratified subsets and splits of a labelled set (data-scarcity studies, held-out validation).

Both functions work on the label vector only and return indices into it, sorted ascending,
int64, on the labels' device. The randomness is one ``randperm`` of all samples through the
optional ``torch.Generator``: shuffling, then a stable sort by label, lists every class's
samples in random order, and each sample's rank within its class decides where it goes.
No loop over samples or classes.

Counts per class (``n_c`` samples of class c):

* :func:`stratified_subset` keeps ``k_c = per_class`` or ``k_c = ⌊fraction·n_c + ½⌋`` samples
  of every class (round half up); a class that cannot supply ``k_c ≥ 1`` raises ``ValueError``.
* :func:`train_val_split` holds out ``v_c = min(⌊val_fraction·n_c + ½⌋, n_c − 1)`` samples of
  every class for validation, so every class keeps at least one training sample (a class with
  a single sample has none in validation).
"""

from __future__ import annotations

import numbers
from typing import Optional, Tuple

import torch

from .. import _random
from .._checks import check_generator

__all__ = ["stratified_subset", "train_val_split"]


def _check_labels(labels, num_classes: Optional[int]) -> Tuple[torch.Tensor, int]:
    if not isinstance(labels, torch.Tensor):
        try:
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"labels must be a 1-d tensor or sequence of class indices, "
                            f"got {type(labels).__name__}") from None
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must hold integer class indices, got {labels.dtype}")
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-d (N,), got shape {tuple(labels.shape)}")
    if labels.numel() == 0:
        raise ValueError("labels must hold at least one sample")
    labels = labels.long()
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise ValueError(f"labels must be non-negative class indices, got {low}")
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
        if high >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}) for num_classes={num_classes}, got {high}")
        return labels, int(num_classes)
    return labels, high + 1


def _grouped_by_class(labels: torch.Tensor, num_classes: int, generator: Optional[torch.Generator]):
    """Sample indices grouped by class (random order inside a class), their classes and ranks."""
    n = labels.shape[0]
    perm = _random.randperm(n, labels.device, generator)
    order = torch.sort(labels[perm], stable=True).indices
    grouped = perm[order]
    grouped_labels = labels[grouped]
    counts = torch.bincount(labels, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    ranks = torch.arange(n, device=labels.device) - starts[grouped_labels]
    return grouped, grouped_labels, ranks, counts


def _round_half_up(fraction: float, counts: torch.Tensor) -> torch.Tensor:
    return torch.floor(counts.double() * fraction + 0.5).long()


def stratified_subset(labels, per_class: Optional[int] = None, fraction: Optional[float] = None,
                      generator: Optional[torch.Generator] = None, *,
                      num_classes: Optional[int] = None) -> torch.Tensor:
    """Indices of a class-stratified random subset.

    Args:
        labels: (N,) integer class indices.
        per_class: keep exactly this many samples of every class; or
        fraction: keep ``⌊fraction·n_c + ½⌋`` samples of class c, ``fraction`` in (0, 1].
        generator: optional ``torch.Generator`` (same seed → same subset).
        num_classes: classes ``0..num_classes-1`` that must all be represented; by default the
            classes present in ``labels``.

    Returns:
        int64 indices, sorted ascending, on ``labels``' device.

    Raises:
        ValueError: both or neither of ``per_class``/``fraction``, or a class with too few samples.
    """
    check_generator(generator)
    labels, k_classes = _check_labels(labels, num_classes)
    if (per_class is None) == (fraction is None):
        raise ValueError("pass exactly one of per_class and fraction")
    grouped, grouped_labels, ranks, counts = _grouped_by_class(labels, k_classes, generator)
    required = counts > 0 if num_classes is None else torch.ones_like(counts, dtype=torch.bool)
    if per_class is not None:
        if isinstance(per_class, bool) or not isinstance(per_class, numbers.Integral) or per_class < 1:
            raise ValueError(f"per_class must be a positive int, got {per_class!r}")
        keep = torch.full_like(counts, int(per_class))
        short = required & (counts < keep)
        what = f"per_class={per_class}"
    else:
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
        keep = _round_half_up(float(fraction), counts)
        short = required & (keep < 1)
        what = f"fraction={fraction} (keeps round(fraction·count) samples)"
    if bool(short.any()):
        bad = torch.nonzero(short).flatten().tolist()
        detail = ", ".join(f"class {c} has {int(counts[c])}" for c in bad[:10])
        raise ValueError(f"too few samples for {what}: {detail}{' …' if len(bad) > 10 else ''}")
    chosen = grouped[ranks < keep[grouped_labels]]
    return torch.sort(chosen).values


def train_val_split(labels, val_fraction: float, generator: Optional[torch.Generator] = None, *,
                    num_classes: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Class-stratified split into training and held-out validation indices.

    Class c contributes ``v_c = min(⌊val_fraction·n_c + ½⌋, n_c − 1)`` samples to validation
    and the rest to training; the two index sets partition ``range(N)``.

    Args:
        labels: (N,) integer class indices.
        val_fraction: share held out, in (0, 1).
        generator: optional ``torch.Generator`` (same seed → same split).
        num_classes: optional number of classes (labels must lie below it).

    Returns:
        ``(train_indices, val_indices)``, each int64, sorted ascending, on ``labels``' device.
    """
    check_generator(generator)
    labels, k_classes = _check_labels(labels, num_classes)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) \
            or not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    grouped, grouped_labels, ranks, counts = _grouped_by_class(labels, k_classes, generator)
    held_out = torch.minimum(_round_half_up(float(val_fraction), counts), (counts - 1).clamp_min(0))
    in_val = ranks < held_out[grouped_labels]
    return torch.sort(grouped[~in_val]).values, torch.sort(grouped[in_val]).values
