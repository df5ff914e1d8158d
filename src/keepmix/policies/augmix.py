"""AugMix (Hendrycks et al., ICLR 2020) and its Jensen–Shannon consistency loss.

For every image ``x`` (all draws per image):

* chain weights ``w ~ Dirichlet(α, …, α)`` over ``width`` chains, and
  ``m ~ Beta(α, α)``;
* chain ``k`` applies ``d_k`` ops in sequence, ``d_k = depth`` or, when
  ``depth = −1``, ``d_k ~ U{1, 2, 3}``; each op is drawn uniformly from the
  AugMix set with its own level ``ℓ ~ U[0.1, severity]``;
* ``x_aug = (1 − m)·x + m·Σ_k w_k·chain_k(x)``.

The AugMix op set avoids the colour/blur ops that overlap the corruption
benchmark (CIFAR-10-C / ImageNet-C): auto_contrast, equalize, posterize,
rotate, solarize, shear_x, shear_y, translate_x, translate_y; ``all_ops=True``
adds color, contrast, brightness, sharpness. Arguments, with ``f = ℓ/10``
(the official code's scaling):

* posterize: ``4 − ⌊4f⌋`` bits; solarize: threshold ``256 − ⌊256f⌋``;
* rotate: ``±⌊30f⌋``°; shear: ``±0.3f``; translate: ``±⌊f·size/3⌋`` pixels;
* color, contrast, brightness, sharpness: ``0.1 + 1.8f``.

Geometric ops default to bilinear resampling with black fill, as in the
official code. Chains run in the input dtype (uint8 chains round every op to 8
bits, as PIL does); the mixture is formed in floating point and rounded once
for uint8 output. Pass float images in [0, 1] to keep the mixture exact;
normalise after AugMix.

For the consistency loss the caller makes two AugMix views of each clean image
and adds ``λ · jensen_shannon_loss(logits_clean, logits_aug1, logits_aug2)``
(``λ = 12`` in the paper) to the cross-entropy on the clean logits.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as TF

from .. import _random
from .._checks import check_finite
from ..protocol import restore_dtype, to_float
from . import functional as F
from ._engine import (ImagePolicy, MagnitudeRange, check_int, check_real, chunk_size, magnitude_values,
                      use_fused)

#: the AugMix op set (no ops that overlap the corruption benchmarks)
AUGMIX_OPS = ("auto_contrast", "equalize", "posterize", "rotate", "solarize",
              "shear_x", "shear_y", "translate_x", "translate_y")
#: the extra ops of ``all_ops=True``
AUGMIX_COLOR_OPS = ("color", "contrast", "brightness", "sharpness")

#: the official code maps a level ℓ through ℓ/10
LEVEL_DENOMINATOR = 10.0
#: chains of random depth have 1 to this many ops
MAX_RANDOM_DEPTH = 3


def _range(name: str, height: int, width: int) -> MagnitudeRange:
    if name == "posterize":
        return MagnitudeRange(4.0, 0.0, "ceil")  # ceil(4 − 4f) = 4 − ⌊4f⌋
    if name == "solarize":
        return MagnitudeRange(256.0, 0.0, "ceil")
    if name == "rotate":
        return MagnitudeRange(0.0, 30.0, "floor", signed=True)
    if name in ("shear_x", "shear_y"):
        return MagnitudeRange(0.0, 0.3, signed=True)
    if name == "translate_x":
        return MagnitudeRange(0.0, width / 3.0, "floor", signed=True)
    if name == "translate_y":
        return MagnitudeRange(0.0, height / 3.0, "floor", signed=True)
    if name in AUGMIX_COLOR_OPS:
        return MagnitudeRange(0.1, 1.9)
    return MagnitudeRange()


class AugMix(ImagePolicy):
    """AugMix: a convex mixture of the image and ``width`` random op chains, drawn per image.

    Args:
        severity: upper end of the op level ``ℓ ~ U[0.1, severity]``, in [1, 10] (default 3).
        width: number of chains (≥ 1, default 3).
        depth: ops per chain (≥ 1), or −1 for a random depth in {1, 2, 3} per chain and image.
        alpha: Dirichlet and Beta concentration (> 0, default 1).
        all_ops: also use color, contrast, brightness and sharpness.
        fill: 0–255 fill of the geometric ops (default 0, black, like the official code).
        interpolation: ``"bilinear"`` (default, the official code) or ``"nearest"``.
        generator: optional ``torch.Generator``.
        engine: ``"auto"``, ``"fused"`` or ``"dispatch"`` (see :class:`RandAugment`). The chains
            run side by side as one batch of ``width·B`` images.

    Images B×C×H×W, uint8 or float in [0, 1], un-normalised; output of the same
    dtype; targets returned unchanged. ``last_stats``: ``chain_weights`` (B, width),
    ``mix_weight`` (B,), ``depth`` (B, width), ``op_index`` / ``magnitude``
    (B, width, max depth; index ``len(op_names) − 1`` is the identity that pads
    chains shorter than the longest).
    """

    def __init__(self, severity: float = 3, width: int = 3, depth: int = -1, alpha: float = 1.0,
                 all_ops: bool = False, fill=0, interpolation: str = "bilinear",
                 generator: Optional[torch.Generator] = None, engine: str = "auto"):
        super().__init__(fill, interpolation, generator, engine)
        self.severity = check_real(severity, "severity", low=1.0, high=10.0)
        self.width = check_int(width, "width", low=1)
        if isinstance(depth, bool) or not isinstance(depth, int) or (depth < 1 and depth != -1):
            raise ValueError(f"depth must be a positive int or -1 (random depth 1–{MAX_RANDOM_DEPTH}), got {depth!r}")
        self.depth = depth
        self.alpha = check_real(alpha, "alpha", low=0.0, high=float("inf"))
        if self.alpha == 0.0:
            raise ValueError("alpha must be > 0")
        if not isinstance(all_ops, bool):
            raise TypeError(f"all_ops must be a bool, got {all_ops!r}")
        self.all_ops = all_ops
        drawn = AUGMIX_OPS + (AUGMIX_COLOR_OPS if all_ops else ())
        self.drawn_ops = drawn
        self.op_names = drawn + ("identity",)

    @property
    def max_depth(self) -> int:
        return self.depth if self.depth > 0 else MAX_RANDOM_DEPTH

    def sample_plan(self, batch_size: int, height: int, width: int, device) -> Dict[str, torch.Tensor]:
        """Draw chain weights, the mixing weight, depths, ops, levels and signs."""
        device = torch.device(device)
        chain_weights = _random.dirichlet(self.alpha, self.width, (batch_size,), device, self.generator)
        mix_weight = _random.beta(self.alpha, self.alpha, (batch_size,), device, self.generator)
        if self.depth > 0:
            depth = torch.full((batch_size, self.width), self.depth, device=device, dtype=torch.long)
        else:
            depth = _random.randint(1, MAX_RANDOM_DEPTH + 1, (batch_size, self.width), device, self.generator)
        shape = (batch_size, self.width, self.max_depth)
        drawn = _random.randint(0, len(self.drawn_ops), shape, device, self.generator)
        level = 0.1 + (self.severity - 0.1) * _random.rand(shape, device, self.generator)
        negate = _random.rand(shape, device, self.generator) < 0.5
        steps = torch.arange(self.max_depth, device=device).view(1, 1, -1)
        op_index = torch.where(steps < depth.unsqueeze(2), drawn, torch.full_like(drawn, len(self.drawn_ops)))
        ranges = [_range(name, height, width) for name in self.op_names]
        magnitude = magnitude_values(op_index, level, LEVEL_DENOMINATOR, negate, ranges)
        return {"chain_weights": chain_weights, "mix_weight": mix_weight, "depth": depth,
                "op_index": op_index, "level": level, "magnitude": magnitude}

    def apply(self, images, targets, **kwargs):
        self._check_channels(images)
        batch, _, height, width = images.shape
        plan = self.sample_plan(batch, height, width, images.device)
        fill = F.fill_tensor(self.fill, images)
        # the chains run side by side as one (width·B) batch: chain k of image i is row k·B + i
        chains = images.repeat(self.width, 1, 1, 1)
        op_index = plan["op_index"].transpose(0, 1).reshape(self.width * batch, self.max_depth)
        magnitude = plan["magnitude"].transpose(0, 1).reshape(self.width * batch, self.max_depth)
        for step in range(self.max_depth):
            chains = self._run(chains, op_index[:, step], magnitude[:, step], fill)
        chains = chains.view(self.width, *images.shape)
        weights = plan["chain_weights"].t().reshape(self.width, batch, 1, 1, 1)
        mix = plan["mix_weight"].view(-1, 1, 1, 1)
        # the mixture in cache-sized chunks of images under the CPU dispatch, in one piece when fused
        per = batch if use_fused(images, self.engine) else chunk_size(images)
        pieces = [self._mix(images[i:i + per], chains[:, i:i + per], weights[:, i:i + per], mix[i:i + per])
                  for i in range(0, batch, per)]
        self.last_stats = plan
        return (pieces[0] if len(pieces) == 1 else torch.cat(pieces)), targets

    def _mix(self, images, chains, weights, mix):
        """``(1 − m)·x + m·Σ_k w_k·chain_k`` (chains summed in order), back in the images' dtype."""
        clean = to_float(images)
        weights, mix = weights.to(clean.dtype), mix.to(clean.dtype)
        mixture = weights[0] * to_float(chains[0])
        for chain in range(1, self.width):  # summed in chain order (a fixed width, not the batch)
            mixture = mixture + weights[chain] * to_float(chains[chain])
        mixed = (1 - mix) * clean + mix * mixture
        return restore_dtype(mixed, images)

    def _repr_fields(self):
        return {"severity": self.severity, "width": self.width, "depth": self.depth, "alpha": self.alpha,
                "all_ops": self.all_ops, "fill": self.fill, "interpolation": self.interpolation}


def jensen_shannon_loss(logits_clean: torch.Tensor, logits_aug1: torch.Tensor,
                        logits_aug2: torch.Tensor) -> torch.Tensor:
    """AugMix's Jensen–Shannon consistency between the predictions on a clean image and two AugMix views.

    With ``p_c, p_1, p_2`` the softmax of the three B×K logits and
    ``M = clamp((p_c + p_1 + p_2)/3, 1e-7, 1)``::

        JS = 1/3 · [KL(p_c ‖ M) + KL(p_1 ‖ M) + KL(p_2 ‖ M)],   KL(p ‖ M) = Σ_k p_k (log p_k − log M_k)

    averaged over the batch (a scalar). The clamp keeps ``log M`` finite, as in
    the paper's code. The paper weights this term by λ = 12 in the total loss;
    the weight is the caller's: ``loss = CE(logits_clean, y) + 12 · JS``.
    Zero when the three logits are equal; differentiable in all three.
    """
    named = (("logits_clean", logits_clean), ("logits_aug1", logits_aug1), ("logits_aug2", logits_aug2))
    for name, logits in named:
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape B×K, got {type(logits).__name__}")
        if not logits.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {logits.dtype}")
        if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 1:
            raise ValueError(f"{name} must have shape B×K, got {tuple(logits.shape)}")
        if logits.shape != logits_clean.shape:
            raise ValueError(f"{name} must have the shape of logits_clean {tuple(logits_clean.shape)}, "
                             f"got {tuple(logits.shape)}")
        check_finite(logits, name)
    log_probs = [TF.log_softmax(logits, dim=1) for _, logits in named]
    probs = [lp.exp() for lp in log_probs]
    log_mixture = ((probs[0] + probs[1] + probs[2]) / 3.0).clamp(1e-7, 1.0).log()
    divergence = sum((p * (lp - log_mixture)).sum(dim=1) for p, lp in zip(probs, log_probs))
    return (divergence / 3.0).mean()
