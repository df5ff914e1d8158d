"""Mixing maths and GuidedMixup.

Given a pairing ``partner`` (image i mixes with image ``partner[i]``) and a
per-pixel ratio M_i ∈ [0, 1]^{H×W}:

.. math::
    \\tilde x_i = M_i ⊙ x_i + (1 − M_i) ⊙ x_{p(i)}, \\qquad
    λ_i = \\tfrac{1}{HW}\\sum M_i, \\qquad
    \\tilde y_i = λ_i\\, y_i + (1 − λ_i)\\, y_{p(i)}

GuidedMixup's ratio is built from blurred, sum-to-1 saliency maps s:
``M_i = s_i / (s_i + s_{p(i)})`` per pixel, so every pixel follows the image that
is more salient there. Train on the soft targets with
:func:`keepmix.losses.soft_target_cross_entropy`.
"""

from __future__ import annotations

import numbers
from typing import Optional, Tuple, Union

import torch

from . import _random
from ._checks import check_maps, check_num_classes, check_probability
from .losses import to_soft_targets
from .pairing import check_pairing, pair
from .protocol import Batch, Op, Stats, restore_dtype, to_float
from .memory import source_stats
from .saliency import as_source, compute_maps, gaussian_blur, normalize_sum, takes_uint8


def guided_mask(maps: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """GuidedMixup's per-pixel ratio ``M_i = s_i / (s_i + s_{p(i)})``, float32 B×H×W.

    Where both maps are 0 the ratio is 1/2 (defined, never NaN); for maps from
    :func:`keepmix.saliency.normalize_sum` that cannot happen. ``M_i + M_{p(i)}``
    is 1 wherever p(p(i)) = i; in general the partner's share in image i is 1 − M_i.
    """
    check_maps(maps, "maps")
    s = (maps if maps.dtype == torch.float32 else maps.float()).clamp_min(0)
    total = s + s.index_select(0, partner)
    return torch.where(total > 0, s / total, 0.5)  # 0/0 where both are 0 is computed, then replaced by ½


def mix_images(images: torch.Tensor, partner: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """``ratio ⊙ x + (1 − ratio) ⊙ x[partner]``; ratio is B×H×W (per pixel) or (B,) (per image).

    Computed in float32 for half-precision and uint8 input; returns the input dtype.
    """
    x = to_float(images)
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    r = ratio if ratio.dtype == work.dtype else ratio.to(work.dtype)
    r = r.view(-1, 1, 1, 1) if r.ndim == 1 else r.unsqueeze(1)
    mixed = torch.lerp(work.index_select(0, partner), work, r)
    return restore_dtype(mixed, images)


def mix_targets(targets: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor,
                num_classes: Optional[int] = None) -> torch.Tensor:
    """``λ_i y_i + (1 − λ_i) y_{p(i)}`` as float32 B×K (class indices are one-hot encoded first)."""
    soft = to_soft_targets(targets, num_classes)
    weight = lam.view(-1, 1) if lam.dtype == torch.float32 else lam.float().view(-1, 1)
    return torch.lerp(soft.index_select(0, partner), soft, weight)


def _check_blur(blur) -> Optional[Tuple[int, float]]:
    if blur is None:
        return None
    try:
        k, sigma = blur
    except (TypeError, ValueError):
        raise TypeError(f"blur must be (kernel_size, sigma) or None, got {blur!r}") from None
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1 or k % 2 == 0:
        raise ValueError(f"blur kernel size must be a positive odd int, got {k!r}")
    if not isinstance(sigma, numbers.Real) or sigma <= 0:
        raise ValueError(f"blur sigma must be > 0, got {sigma!r}")
    return int(k), float(sigma)


class GuidedMixup(Op):
    """GuidedMixup (Kang & Kim, AAAI 2023): saliency-guided pairing and per-pixel mixing.

    Per batch, with probability ``mix_prob``:

    1. saliency maps s (spectral residual for Guided-SR — no model pass — or the
       channel-RMS input gradient of the cross-entropy for Guided-AP);
    2. Gaussian blur (kernel 7, σ 3) and sum-to-1 normalisation (ε-safe);
    3. pairing: ``"greedy"`` — the farthest-first cycle on the Euclidean distances
       of the maps, so paired salient regions overlap least; ``"random"`` — a
       random derangement; or a callable ``maps -> partner``;
    4. ``M_i = s_i / (s_i + s_{p(i)})``; x̃_i = M_i x_i + (1 − M_i) x_{p(i)};
       λ_i = mean(M_i); ỹ_i = λ_i y_i + (1 − λ_i) y_{p(i)}.

    Otherwise (and for a batch of one) the images are returned unchanged with
    λ = 1. Targets come back as float32 soft targets B×K in both cases; train
    with :func:`keepmix.losses.soft_target_cross_entropy`.

    Args:
        num_classes: K, needed when targets are class indices.
        saliency: ``"spectral"`` (Guided-SR), ``"gradient"`` (Guided-AP; needs
            ``model``), or any source accepted by :func:`keepmix.saliency.as_source`.
        pairing: ``"greedy"`` (default), ``"random"`` or a callable.
        mix_prob: probability that a batch is mixed; default 0.5 for spectral
            saliency and 0.8 for gradient saliency (the paper's settings).
        blur: (kernel_size, sigma) applied to the maps before normalising, or None.
        model: the classifier for ``saliency="gradient"``.
        generator: optional ``torch.Generator``.

    Shapes: images B×C×H×W (float, or uint8 with spectral/precomputed maps),
    targets (B,) int64 or B×K float; returns (B×C×H×W same dtype, B×K float32).
    ``last_stats``: ``lam`` (B,), ``mixed`` (bool), ``saliency_kept`` (B,): the
    share of each image's saliency mass that its own pixels keep, Σ M_i s_i; when
    mixed also ``own`` (B×H×W, the ratio M_i: each pixel's share of the image's own
    pixel, which a :class:`keepmix.memory.SaliencyMemory` writes by) and, with a memory
    source, ``memory_fallback`` (B,) bool.

    Example::

        mixer = GuidedMixup(num_classes=100)                      # Guided-SR
        x, y_soft = mixer(x, y)
        loss = soft_target_cross_entropy(model(x), y_soft)
    """

    mixes_labels = True

    def __init__(self, num_classes: Optional[int] = None, saliency: Union[str, object] = "spectral",
                 pairing="greedy", mix_prob: Optional[float] = None, blur: Optional[Tuple[int, float]] = (7, 3.0),
                 model=None, generator: Optional[torch.Generator] = None):
        super().__init__(generator)
        self.num_classes = check_num_classes(num_classes)
        if isinstance(saliency, str) and saliency not in ("spectral", "sr", "gradient", "random"):
            raise ValueError(f"saliency given as a string must be 'spectral' (Guided-SR), 'gradient' (Guided-AP, "
                             f"with model=) or 'random' (the null control), got {saliency!r}")
        if saliency == "gradient":
            if model is None:
                raise ValueError("saliency='gradient' needs model=")
            source = as_source(model, reduce="rms")
        else:
            source = as_source(saliency, reduce="rms", generator=generator)
        self.saliency = source
        self.pairing = check_pairing(pairing)
        if mix_prob is None:
            mix_prob = 0.5 if saliency in ("spectral", "sr") else 0.8
        self.mix_prob = check_probability(mix_prob, "mix_prob")
        self.blur = _check_blur(blur)
        self.accepts_uint8 = takes_uint8(self.saliency)

    def _repr_fields(self):
        return {"num_classes": self.num_classes, "saliency": self.saliency, "pairing": self.pairing,
                "mix_prob": self.mix_prob, "blur": self.blur}

    def guide(self, images: torch.Tensor, targets: Optional[torch.Tensor],
              saliency_maps: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pairing and mask without mixing: ``(partner, mask M, normalised maps)``."""
        maps = compute_maps(self.saliency, images, targets, saliency_maps, type(self).__name__)
        if self.blur is not None:
            maps = gaussian_blur(maps, *self.blur)
        maps = normalize_sum(maps)
        partner = pair(self.pairing, images.shape[0], images.device, maps, self.generator)
        return partner, guided_mask(maps, partner), maps

    def apply(self, images: torch.Tensor, targets: Optional[torch.Tensor],
              saliency_maps: Optional[torch.Tensor] = None) -> Batch:
        if targets is None:
            raise ValueError("GuidedMixup mixes labels: targets are required")
        batch = images.shape[0]
        if batch < 2 or self.mix_prob <= 0.0 or (self.mix_prob < 1.0 and not self._coin()):
            ones = torch.ones(batch, device=images.device)
            self.last_stats = Stats(lam=ones, mixed=lambda: torch.tensor(False), saliency_kept=ones)
            return images, to_soft_targets(targets, self.num_classes)
        partner, mask, maps = self.guide(images, targets, saliency_maps)
        lam = mask.mean(dim=(1, 2))
        self.last_stats = Stats(lam=lam, mixed=lambda: torch.tensor(True),
                                saliency_kept=lambda: (mask * maps).sum(dim=(1, 2)), own=mask,
                                **source_stats(self.saliency, saliency_maps))
        return mix_images(images, partner, mask), mix_targets(targets, partner, lam, self.num_classes)

    def _coin(self) -> bool:
        """The per-batch mixing decision, U < mix_prob, drawn on the host (the generator's device, else the
        CPU): a Python branch that skips the whole saliency pass when the batch is not mixed. Reading a CPU
        scalar never waits for an accelerator. A branch cannot be traced: to compile the op with
        ``fullgraph=True`` use ``mix_prob=1`` (no coin) and decide outside the compiled region."""
        coin = _random.rand((1,), "cpu" if self.generator is None else self.generator.device, self.generator)
        return float(coin) < self.mix_prob
