"""A drop-in for timm's ``Mixup`` that runs keepmix mixers — GuidedMixup included — inside timm's loop.

timm's ``train.py`` builds ``mixup_fn = Mixup(**mixup_args)`` and calls ``x, y_soft = mixup_fn(x, y)``
on every batch (normalised float images on the device, class indices), then trains on ``y_soft``
with ``SoftTargetCrossEntropy``; ``--mixup-off-epoch`` sets ``mixup_fn.mixup_enabled = False``.
:class:`Mixup` here takes the same arguments and keeps that contract::

    from keepmix.integrations.timm import Mixup            # instead of: from timm.data import Mixup
    mixup_fn = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=1000)

    from keepmix import GuidedMixup                          # or any keepmix mixer
    mixup_fn = Mixup(label_smoothing=0.1, num_classes=1000,
                     mixer=GuidedMixup(1000, saliency="gradient", model=model))

**The one flag timm needs: ``--no-prefetcher``.** With its prefetcher (the default on CUDA) timm
mixes inside the collate function (``FastCollateMixup``, on uint8 CPU arrays) and never calls a
``Mixup`` object; ``--no-prefetcher`` makes ``train.py`` call ``mixup_fn(x, y)`` in the loop, on the
device, where this class (and a saliency model) can run.

**What matches timm.** The arguments and their defaults, ``mixup_enabled``, the output (images of
the input's shape and dtype; float32 soft targets B×K), label smoothing ((1 − ε)·y + ε/K applied
to the mixed one-hot targets, as timm's ``mixup_target``), ``prob`` (per batch in ``mode="batch"``,
per image otherwise), ``switch_prob`` (CutMix instead of Mixup), ``correct_lam`` and
``cutmix_minmax`` (box sides uniform in [⌊min·H⌋, ⌊max·H⌋), whole box inside the image, λ the
area kept, α forced to 1). In ``mode="batch"`` one λ, one box and one Mixup/CutMix decision serve
the whole batch (keepmix's ``lam_mode="batch"``); in ``"elem"`` each image draws its own.

**What differs, on purpose.** Partners are keepmix's pairing (a random derangement by default —
no image is mixed with itself, where timm pairs image i with B − 1 − i, which mixes the middle
image of an odd batch with itself; ``pairing="greedy"`` is GuidedMixup's); draws come from torch
(the ``generator``), not NumPy's global state; CutMix boxes are keepmix's (sides
round(H√(1 − λ)), centre uniform, clipped); ``mode="pair"`` is accepted and runs as ``"elem"``
(timm's pair mode halves a per-image Python loop that keepmix does not have); any batch size ≥ 2
works (timm asserts an even one); the input tensor is not modified in place.

**Any keepmix mixer.** ``mixer=`` replaces Mixup/CutMix: with probability ``prob`` per batch the
batch goes through ``mixer(x, y_one_hot)``; the mixer's own per-image settings apply
(GuidedMixup's ``mix_prob``, its pairing, its saliency); ``mixup_alpha``, ``cutmix_alpha``,
``cutmix_minmax``, ``switch_prob``, ``correct_lam`` and ``mode`` are then unused.
"""

from __future__ import annotations

import numbers
from typing import Optional, Sequence, Tuple

import torch

from .. import _random
from .._checks import check_probability
from ..compose import RandomApply, RandomChoice
from ..losses import smooth_targets, to_soft_targets
from ..mix import mix_targets
from ..mixers import CutMix, Mixup as _KeepMixup, _Mixer, _paste_box, _check_lam_mode
from ..protocol import Batch, Op
from ..regions import box_masks

MODES = ("batch", "pair", "elem")


class MinMaxCutMix(_Mixer):
    """CutMix with timm's ``cutmix_minmax`` boxes: sides uniform in [⌊lo·H⌋, ⌊hi·H⌋) × [⌊lo·W⌋, ⌊hi·W⌋).

    The box lies wholly inside the image (top-left corner uniform where it fits) and is filled
    from the partner; the label weight is the area kept, λ = 1 − hw/(HW) (timm's
    ``rand_bbox_minmax``; no α). ``lam_mode="batch"``: one box for the whole batch.

    ``last_stats``: ``lam``, ``box`` (B, 4) int64 (top, left, height, width), ``partner``, ``mixed``.
    """

    def __init__(self, num_classes: Optional[int] = None, minmax: Sequence[float] = (0.2, 0.8), *,
                 prob: float = 1.0, pairing="random", lam_mode: str = "elem",
                 generator: Optional[torch.Generator] = None):
        super().__init__(num_classes, None, prob, pairing, generator)
        self.minmax = _check_minmax(minmax)
        self.lam_mode = _check_lam_mode(lam_mode)

    def _repr_fields(self):
        return {**super()._repr_fields(), "minmax": self.minmax, "lam_mode": self.lam_mode}

    def apply(self, images, targets) -> Batch:
        self._require_targets(targets)
        batch, _, height, width = images.shape
        device = images.device
        draws = 1 if self.lam_mode == "batch" else batch
        lo, hi = self.minmax
        sides = []
        for size in (height, width):
            low, high = int(size * lo), max(int(size * hi), int(size * lo) + 1)
            sides.append(_random.randint(low, high, (draws,), device, self.generator).clamp_max(size))
        cut_h, cut_w = sides
        top = _random.below(height - cut_h + 1, self.generator)
        left = _random.below(width - cut_w + 1, self.generator)
        if draws == 1:
            cut_h, cut_w, top, left = (v.repeat(batch) for v in (cut_h, cut_w, top, left))
        mixed = self._selected(batch, device)
        cut_h, cut_w = cut_h * mixed, cut_w * mixed
        mask = box_masks(top, left, cut_h, cut_w, (height, width))
        lam = 1.0 - (cut_h * cut_w).float() / (height * width)
        partner = self._partner(images)
        self.last_stats = {"lam": lam, "box": torch.stack([top, left, cut_h, cut_w], 1), "partner": partner,
                           "mixed": mixed}
        return _paste_box(images, partner, mask), mix_targets(targets, partner, lam, self.num_classes)


def _check_minmax(minmax) -> Tuple[float, float]:
    try:
        lo, hi = (float(v) for v in minmax)
    except (TypeError, ValueError):
        raise TypeError(f"cutmix_minmax must be two numbers (min, max), got {minmax!r}") from None
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"cutmix_minmax must satisfy 0 <= min < max <= 1, got {minmax!r}")
    return lo, hi


class Mixup:
    """timm's ``Mixup(mixup_alpha, cutmix_alpha, cutmix_minmax, prob, switch_prob, mode, correct_lam,
    label_smoothing, num_classes)`` on keepmix ops; ``mixup_fn(x, target) -> (x, soft target)``.

    Args (timm's, same defaults):
        mixup_alpha: Mixup's Beta α; Mixup is active when > 0.
        cutmix_alpha: CutMix's Beta α; CutMix is active when > 0 (or when ``cutmix_minmax`` is set).
        cutmix_minmax: (min, max) box side ratios, instead of α (then α is 1, as in timm).
        prob: probability of mixing, per batch (``mode="batch"``) or per image.
        switch_prob: probability of CutMix instead of Mixup when both are active.
        mode: ``"batch"`` (one λ for the batch, timm's default), ``"elem"`` (per image) or
            ``"pair"`` (runs as ``"elem"``).
        correct_lam: CutMix label weight from the clipped box area.
        label_smoothing: ε of the soft targets.
        num_classes: K (required, > 0).

    keepmix's own (keyword-only):
        mixer: any keepmix mixer (GuidedMixup, KeepCutMix, SnapMix…) used instead of Mixup/CutMix.
        pairing: ``"random"`` (a derangement), ``"greedy"`` or a callable, for Mixup/CutMix.
        generator: ``torch.Generator`` for every draw.

    Attributes:
        mixup_enabled: set to False to stop mixing (timm's ``--mixup-off-epoch``); the targets are
            then the smoothed one-hot vectors and the images come back unchanged.
        op: the keepmix op that mixes (``None`` when ``mixup_enabled`` is False and nothing is built).
    """

    def __init__(self, mixup_alpha: float = 1.0, cutmix_alpha: float = 0.0,
                 cutmix_minmax: Optional[Sequence[float]] = None, prob: float = 1.0, switch_prob: float = 0.5,
                 mode: str = "batch", correct_lam: bool = True, label_smoothing: float = 0.0,
                 num_classes: int = 0, *, mixer: Optional[Op] = None, pairing="random",
                 generator: Optional[torch.Generator] = None):
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes <= 0:
            raise ValueError(f"num_classes must be set (a positive int) for target generation, got {num_classes!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.num_classes = int(num_classes)
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha!r}, {cutmix_alpha!r}")
        self.cutmix_minmax = None if cutmix_minmax is None else _check_minmax(cutmix_minmax)
        if self.cutmix_minmax is not None:
            self.cutmix_alpha = 1.0  # as timm: minmax boxes need no α, CutMix is active
        self.mix_prob = check_probability(prob, "prob")
        self.switch_prob = check_probability(switch_prob, "switch_prob")
        self.mode = mode
        self.correct_lam = bool(correct_lam)
        self.label_smoothing = check_probability(label_smoothing, "label_smoothing")
        self.mixup_enabled = True
        self.generator = generator
        if mixer is not None:
            if not getattr(mixer, "mixes_labels", False):
                raise TypeError(f"mixer must be a keepmix mixer (an op that mixes labels), got {type(mixer).__name__}")
            self.op = RandomApply(mixer, p=self.mix_prob, num_classes=self.num_classes, generator=generator) \
                if self.mix_prob < 1 else mixer
            return
        if self.mixup_alpha <= 0 and self.cutmix_alpha <= 0:
            raise ValueError("one of mixup_alpha > 0, cutmix_alpha > 0 or cutmix_minmax must be set")
        self.op = self._build(pairing, generator)

    def _build(self, pairing, generator) -> Op:
        per_batch = self.mode == "batch"
        lam_mode = "batch" if per_batch else "elem"
        inner_prob = 1.0 if per_batch else self.mix_prob   # per image, the mixers' own prob
        k = self.num_classes
        candidates, weights = [], []
        if self.mixup_alpha > 0:
            candidates.append(_KeepMixup(k, self.mixup_alpha, prob=inner_prob, pairing=pairing, lam_mode=lam_mode,
                                         generator=generator))
            weights.append(1.0 - self.switch_prob if self.cutmix_alpha > 0 else 1.0)
        if self.cutmix_alpha > 0:
            if self.cutmix_minmax is not None:
                cut: Op = MinMaxCutMix(k, self.cutmix_minmax, prob=inner_prob, pairing=pairing, lam_mode=lam_mode,
                                       generator=generator)
            else:
                cut = CutMix(k, self.cutmix_alpha, prob=inner_prob, pairing=pairing, correct_lam=self.correct_lam,
                             lam_mode=lam_mode, generator=generator)
            candidates.append(cut)
            weights.append(self.switch_prob if self.mixup_alpha > 0 else 1.0)
        op: Op = candidates[0] if len(candidates) == 1 else RandomChoice(
            candidates, weights, per_sample=not per_batch, num_classes=k, generator=generator)
        if per_batch and self.mix_prob < 1:
            op = RandomApply(op, p=self.mix_prob, num_classes=k, generator=generator)
        return op

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if target.ndim == 1:
            soft = to_soft_targets(target.to(x.device), self.num_classes)
        else:
            soft = to_soft_targets(target, self.num_classes).to(x.device)
        if self.mixup_enabled:
            x, soft = self.op(x, soft)
        return x, smooth_targets(soft.float(), self.label_smoothing)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, "
                f"cutmix_minmax={self.cutmix_minmax}, prob={self.mix_prob}, switch_prob={self.switch_prob}, "
                f"mode={self.mode!r}, correct_lam={self.correct_lam}, label_smoothing={self.label_smoothing}, "
                f"num_classes={self.num_classes}, op={self.op!r})")


__all__ = ["MinMaxCutMix", "Mixup"]
