"""Soft targets and the loss to train on them.

Mixers return soft targets y ∈ Δ^{K−1} (B×K). Train on them with
:func:`soft_target_cross_entropy`:

.. math::
    L = -\\frac{1}{B}\\sum_b \\sum_k \\tilde y_{bk} \\log \\mathrm{softmax}(z_b)_k,
    \\qquad \\tilde y = (1 − ε)\\,y + ε/K

Label smoothing ε is applied here and nowhere else: no op smooths its targets.
On class indices it equals ``F.cross_entropy(z, y, label_smoothing=ε)``.

Semi-supervised training (UDA, Xie et al., arXiv 1904.12848) has its two terms here too:
:func:`tsa_threshold` / :func:`tsa_mask` / :func:`tsa_cross_entropy` (the supervised term with Training
Signal Annealing) and :func:`uda_consistency` (the sharpened, confidence-masked KL between the weak and
the strong view); the loop that combines them is :mod:`keepmix.engine.semi`.
"""

from __future__ import annotations

import math
from typing import Tuple

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


# --------------------------------------------------------------------------- UDA (semi-supervised)
#
# Unsupervised Data Augmentation (Xie, Dai, Hovy, Luong & Le, "Unsupervised Data Augmentation for
# Consistency Training", arXiv 1904.12848, NeurIPS 2020), Eq. 1:
#
#     min_θ  E_{x₁∼p_L}[−log p_θ(y*|x₁)]  +  λ · E_{x₂∼p_U} E_{x̂∼q(x̂|x₂)}[ CE(p_θ̃(y|x₂) ‖ p_θ(y|x̂)) ]
#
# θ̃ is a fixed copy of θ: no gradient flows through the prediction on the original view x₂. Section 3.2
# adds Training Signal Annealing (TSA) to the supervised term and sharpening (confidence mask β,
# softmax temperature τ) to the consistency term. KeepAugment (Gong et al., CVPR 2021, Section 4.3 and
# Table 7) keeps this loss and replaces the strong augmentation q (RandAugment) by KeepRandAugment,
# whose saliency uses the predicted class (the unlabelled images have no label).
#
# Where the values come from: the loss above, the TSA threshold η_t = α_t·(1 − 1/K) + 1/K with its
# three α_t schedules, β = 0.8 on CIFAR-10 and SVHN (0.5 on ImageNet) and τ = 0.4 are UDA's Section 3.2
# and its experiment settings as we recall the paper; the paper's full text was not available to us
# while writing this (only its abstract, introduction and summaries of Section 3.2), so the
# normalisations below (mean over kept labelled examples; mean over the whole unlabelled batch) are
# documented choices, each stated where it is made.

#: TSA schedules of α_t (UDA Section 3.2); ``none`` keeps every labelled example (η_t = 1)
TSA_SCHEDULES = ("none", "linear", "log", "exp")


def tsa_threshold(step: int, total: int, num_classes: int, schedule: str = "linear") -> float:
    """UDA's Training Signal Annealing threshold η_t at optimiser step ``step`` of ``total``.

    .. math::
        η_t = α_t\\,(1 − 1/K) + 1/K, \\qquad
        α_t = \\begin{cases} t/T & \\text{linear} \\\\ 1 − e^{−5\\,t/T} & \\text{log} \\\\
        e^{5\\,(t/T − 1)} & \\text{exp} \\\\ 1 & \\text{none} \\end{cases}

    (Xie et al., UDA, arXiv 1904.12848, Section 3.2.) η_t rises from 1/K — the probability of a
    uniform guess — at t = 0 to 1 at t = T (0.9933·(1 − 1/K) + 1/K for ``log``, whose α_T = 1 − e^{−5}).
    A labelled example whose predicted probability of its true class exceeds η_t is left out of the
    supervised loss (:func:`tsa_mask`): the model may not become more confident on the few labels
    than the schedule allows, so it does not overfit them before the unlabelled signal has spread.
    The paper's guidance: ``exp`` (signal released late) when the model overfits easily — few labels,
    an easy task —, ``log`` (released early) when it does not; ``linear`` in between.

    Args:
        step: t, the 0-based optimiser step (steps beyond ``total`` count as ``total``).
        total: T ≥ 1, the run's number of optimiser steps.
        num_classes: K ≥ 1.
        schedule: one of :data:`TSA_SCHEDULES`.

    Returns:
        η_t as a Python float in [1/K, 1].
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise ValueError(f"total must be a positive int (the run's steps), got {total!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if schedule not in TSA_SCHEDULES:
        raise ValueError(f"schedule must be one of {TSA_SCHEDULES}, got {schedule!r}")
    progress = min(step, total) / total
    if schedule == "linear":
        alpha = progress
    elif schedule == "log":
        alpha = 1.0 - math.exp(-5.0 * progress)
    elif schedule == "exp":
        alpha = math.exp(5.0 * (progress - 1.0))
    else:
        alpha = 1.0
    return alpha * (1.0 - 1.0 / num_classes) + 1.0 / num_classes


def _check_logits(logits, name: str) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {logits.dtype}")
    if logits.ndim != 2 or logits.shape[1] < 1:
        raise ValueError(f"{name} must be B×K, got shape {tuple(logits.shape)}")
    return logits


def _check_class_indices(targets, batch: int, classes: int) -> torch.Tensor:
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.is_floating_point() or targets.dtype == torch.bool or targets.ndim != 1:
        raise TypeError(f"targets must be class indices (B,) of an integer dtype, got {targets.dtype} "
                        f"{tuple(targets.shape)}")
    if targets.shape[0] != batch:
        raise ValueError(f"targets must hold one class per row of logits ({batch}), got {targets.shape[0]}")
    index = targets.long()
    check_flag(((index >= 0) & (index < classes)).all(), f"targets must be class indices in [0, {classes})")
    return index.clamp(0, classes - 1)


def tsa_mask(logits: torch.Tensor, targets: torch.Tensor, threshold: float) -> torch.Tensor:
    """Which labelled examples TSA keeps: ``softmax(z_b)[y_b] ≤ η`` (B,) bool.

    UDA (arXiv 1904.12848, Section 3.2): an example whose predicted probability of its correct class
    is *higher* than η_t is removed from the loss, so it is kept when ``p ≤ η``; η = 1 keeps every
    example. ``logits`` B×K (any float dtype, computed in float32, no gradient), ``targets`` class
    indices (B,), ``threshold`` η ∈ [0, 1] (from :func:`tsa_threshold`).
    """
    logits = _check_logits(logits, "logits")
    index = _check_class_indices(targets, logits.shape[0], logits.shape[1])
    eta = check_probability(threshold, "threshold")
    correct = logits.detach().float().softmax(dim=1).gather(1, index.view(-1, 1)).squeeze(1)
    return correct <= eta


def tsa_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, threshold: float = 1.0,
                      label_smoothing: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """UDA's supervised term with Training Signal Annealing: cross-entropy over the kept examples.

    .. math::
        m_b = [\\,\\mathrm{softmax}(z_b)_{y_b} ≤ η_t\\,], \\qquad
        L_{sup} = \\frac{\\sum_b m_b\\,\\mathrm{CE}(z_b, y_b)}{\\max(1, \\sum_b m_b)}

    (Xie et al., UDA, arXiv 1904.12848, Section 3.2.) The normaliser — the number of kept examples,
    at least 1 — is a documented choice (the paper's text at hand does not fix it): a batch whose
    examples all pass the threshold gives a loss of exactly 0 and no gradient, never 0/0. ``mask``
    is taken without gradient; the loss is differentiable in ``logits`` through the kept rows.
    ``label_smoothing`` ε smooths the targets as :func:`soft_target_cross_entropy` does.

    Args:
        logits: B×K logits of the labelled batch (float32 computation).
        targets: class indices (B,).
        threshold: η_t ∈ [0, 1] (:func:`tsa_threshold`); 1 keeps every example (plain cross-entropy).
        label_smoothing: ε ∈ [0, 1].

    Returns:
        ``(loss, kept)``: the scalar loss and the share of the batch kept, a float32 scalar in [0, 1].
    """
    logits = _check_logits(logits, "logits")
    index = _check_class_indices(targets, logits.shape[0], logits.shape[1])  # one range check (one host read)
    eta = check_probability(threshold, "threshold")
    log_p = F.log_softmax(logits.float(), dim=1)
    keep = log_p.detach().gather(1, index.view(-1, 1)).squeeze(1).exp() <= eta
    soft = smooth_targets(torch.zeros_like(log_p).scatter_(1, index.view(-1, 1), 1.0), label_smoothing)
    per_example = -(soft * log_p).sum(dim=1)
    kept = keep.float()
    loss = (per_example * kept).sum() / kept.sum().clamp_min(1.0)
    return loss, kept.mean()


def uda_consistency(logits_weak: torch.Tensor, logits_strong: torch.Tensor, temperature: float = 0.4,
                    threshold: float = 0.8) -> Tuple[torch.Tensor, torch.Tensor]:
    """UDA's consistency term: KL from the sharpened, confidence-masked weak prediction to the strong one.

    With z^w the logits of the original (weakly augmented) unlabelled images and z^s those of their
    strongly augmented copies (RandAugment, KeepRandAugment), per image b:

    .. math::
        p_b = \\mathrm{softmax}(z^w_b), \\qquad
        q_b = \\mathrm{softmax}(z^w_b / τ), \\qquad
        m_b = [\\,\\max_k p_{bk} > β\\,]

        L_{cons} = \\frac{1}{B}\\sum_b m_b\\,\\mathrm{KL}(q_b \\,\\|\\, \\mathrm{softmax}(z^s_b))
                 = \\frac{1}{B}\\sum_b m_b \\sum_k q_{bk}\\,(\\log q_{bk} − \\log \\mathrm{softmax}(z^s_b)_k)

    (Xie et al., UDA, arXiv 1904.12848: Eq. 1 for the KL with θ̃ a fixed copy of θ; Section 3.2 for
    "confidence-based masking" — only images whose highest class probability exceeds β count — and
    "sharpening predictions" with a softmax temperature τ < 1.) β = 0.8 and τ = 0.4 are the values we
    recall for CIFAR-10 (β = 0.5 on ImageNet); KeepAugment Table 7 keeps UDA's settings.

    Both ``q`` and the mask come from ``logits_weak`` **detached**: the target is a constant and the
    gradient flows only through ``logits_strong``. The confidence is that of the un-sharpened p
    (sharpening only shapes the target). Documented choice: the sum is divided by the whole
    unlabelled batch B, not by the number of masked-in images, so the loss is the masked mean
    λ multiplies and a mask that keeps nothing gives exactly 0, never 0/0. Computed in float32.

    Args:
        logits_weak: B×K logits of the original / weak view.
        logits_strong: B×K logits of the strong view of the same images, same order.
        temperature: τ > 0 (1 = no sharpening; 0.4 in UDA).
        threshold: β ∈ [0, 1] (0.8 in UDA on CIFAR-10; 0 masks nothing out, 1 masks everything out).

    Returns:
        ``(loss, mask_ratio)``: the scalar loss and the share of images in the mask (float32 scalar).
    """
    logits_weak = _check_logits(logits_weak, "logits_weak")
    logits_strong = _check_logits(logits_strong, "logits_strong")
    if logits_weak.shape != logits_strong.shape:
        raise ValueError(f"logits_weak and logits_strong must have the same shape, got "
                         f"{tuple(logits_weak.shape)} and {tuple(logits_strong.shape)}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0 \
            or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    beta = check_probability(threshold, "threshold")
    weak = logits_weak.detach().float()
    confidence = weak.softmax(dim=1).amax(dim=1)
    mask = (confidence > beta).float()
    log_q = F.log_softmax(weak / float(temperature), dim=1)
    log_p = F.log_softmax(logits_strong.float(), dim=1)
    kl = (log_q.exp() * (log_q - log_p)).sum(dim=1)
    return (kl * mask).mean(), mask.mean()
