"""Soft targets and the loss to train on them.

Mixers return soft targets y ∈ Δ^{K−1} (B×K). Train on them with
:func:`soft_target_cross_entropy`:

.. math::
    L = -\\frac{1}{B}\\sum_b \\sum_k \\tilde y_{bk} \\log \\mathrm{softmax}(z_b)_k,
    \\qquad \\tilde y = (1 − ε)\\,y + ε/K

Label smoothing ε is applied here and nowhere else: no op smooths its targets.
On class indices it equals ``F.cross_entropy(z, y, label_smoothing=ε)``.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ._checks import check_flag, check_probability


def to_soft_targets(targets: torch.Tensor, num_classes: int = None) -> torch.Tensor:
    """Class indices (B,) → one-hot float32 B×K; soft targets B×K → float32 (K checked if given)."""
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.ndim == 2 and targets.is_floating_point():
        if num_classes is not None and targets.shape[1] != num_classes:
            raise ValueError(f"targets has {targets.shape[1]} classes, expected num_classes={num_classes}")
        return targets.float()
    if targets.ndim != 1 or targets.is_floating_point():
        raise ValueError(f"targets must be class indices (B,) or soft targets (B×K), got {tuple(targets.shape)} "
                         f"{targets.dtype}")
    if num_classes is None:
        raise ValueError("num_classes is needed to turn class indices into soft targets")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    index = targets if targets.dtype == torch.long else targets.long()
    # F.one_hot reads the maximum back to check it (a host sync); the range check joins the op's
    # deferred checks instead, and the scatter never writes outside the row
    inside = index.clamp(0, num_classes - 1)
    check_flag((inside == index).all(), f"targets must be class indices in [0, {num_classes})")
    soft = torch.zeros((index.shape[0], num_classes), dtype=torch.float32, device=index.device)
    return soft.scatter_(1, inside.unsqueeze(1), 1.0)


def smooth_targets(soft: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """(1 − ε)·y + ε/K."""
    eps = check_probability(label_smoothing, "label_smoothing")
    return soft * (1.0 - eps) + eps / soft.shape[-1] if eps > 0 else soft


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0,
                              reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy against soft (B×K) or hard (B,) targets, with label smoothing ε.

    Computed in float32 (safe under AMP). ``reduction``: ``"mean"``, ``"sum"`` or ``"none"``.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if logits.ndim != 2:
        raise ValueError(f"logits must be B×K, got shape {tuple(logits.shape)}")
    soft = smooth_targets(to_soft_targets(targets, logits.shape[1]), label_smoothing).to(logits.device)
    loss = -(soft * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class SoftTargetCrossEntropy(nn.Module):
    """Module form of :func:`soft_target_cross_entropy`."""

    def __init__(self, label_smoothing: float = 0.0, reduction: str = "mean"):
        super().__init__()
        self.label_smoothing = check_probability(label_smoothing, "label_smoothing")
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return soft_target_cross_entropy(logits, targets, self.label_smoothing, self.reduction)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"
