"""KeepAugment (Gong et al., CVPR 2021): augment, but keep what carries the label.

Each op scores every candidate window of an image by its summed saliency
(:mod:`keepmix.regions`), thresholds at the per-image τ-quantile of those
scores, and

* **selective cut** — :class:`KeepCutout`, :class:`KeepRandomErasing`,
  :class:`KeepCutMix`: cuts a window drawn uniformly among those scoring
  *below* the threshold (Eq. 2: x̃ = (1 − M(S)) ⊙ x, or another fill);
* **selective paste** — :class:`SelectivePaste`: applies an image-level
  transform, then pastes back from the original a window drawn uniformly among
  those scoring *above* it (Eq. 3: x̃ = M(S) ⊙ x + (1 − M(S)) ⊙ A(x)).

Candidate windows are the paper's full h×w windows inside the image by
default; ``clip=True`` (KeepCutout, KeepCutMix, SelectivePaste) uses
Cutout-style boxes centred on any pixel and clipped to the image instead.
Saliency chooses only a box's *position*, never its size: with ``clip=True``
the candidates are the boxes of the same clipped shape as a reference box drawn
as Cutout draws it (:func:`keepmix.regions.select_boxes`). So an
information-free map reproduces the baseline's box distribution exactly, and a
KeepX-vs-X comparison differs only in where the box goes. Fair baselines:
``Cutout(inside=True)`` / ``CutMix(inside=True)`` for full windows,
``Cutout()`` / ``CutMix()`` for ``clip=True``; ``saliency="random"`` is the
null control (i.i.d. uniform maps).

Saliency comes from ``saliency=``: a model (KeepAugment's
``max_c |∂ℓ_y/∂x|``; ``scale=0.5`` for the low-resolution variant), an
:class:`~keepmix.saliency.EarlyHead`, ``"spectral"``, any callable
``(images, targets) -> B×H×W``, or maps passed per call as ``saliency_maps=``.

``last_stats`` after a call: ``fallback`` (B,) bool — no window was strictly
on the right side of the threshold (flat map, τ = 0 cut, τ = 1 paste), so the
window was drawn among those at the threshold; ``saliency_kept`` (B,) — the
share of each image's saliency mass left intact (cut) or pasted back (paste);
with a saliency memory (``saliency=MemorySaliency(memory, fallback)``,
:mod:`keepmix.memory`) also ``memory_fallback`` (B,) bool — samples the memory
had not written yet, whose maps came from the fallback source.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch

from . import _random
from ._checks import SizeLike, check_num_classes, check_positive, check_probability, check_size
from .erase import RandomErasing, check_fill_channels, check_fill_value, erase_masked, random_erasing_sizes
from .mix import mix_targets
from .pairing import check_pairing, pair
from .protocol import Batch, Op, Stats, restore_dtype, to_float
from .regions import _select_boxes, box_masks
from .memory import source_stats
from .saliency import as_source, compute_maps, gaussian_blur, normalize_sum, takes_uint8


def _mass_share(maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_{mask} s / Σ s per image (1/2-free: flat zero maps count as uniform)."""
    s = normalize_sum(maps)
    return (s * mask).sum(dim=(1, 2))


class _SelectiveWindow(Op):
    """Shared plumbing: saliency source, τ, window size and candidate layout."""

    def __init__(self, size: SizeLike, tau: float, saliency, clip: bool, scale: float,
                 generator: Optional[torch.Generator]):
        super().__init__(generator)
        self.size = check_size(size)
        self.tau = check_probability(tau, "tau")
        self.clip = bool(clip)
        self.saliency = as_source(saliency, reduce="max", scale=check_positive(scale, "scale"), generator=generator)
        self.accepts_uint8 = takes_uint8(self.saliency)

    def _window(self, images, targets, saliency_maps, below: bool):
        """Maps, then a window per image; returns (mask B×H×W, maps, fallback)."""
        maps = compute_maps(self.saliency, images, targets, saliency_maps, type(self).__name__, finite=False)
        h, w = self.size
        picked = _select_boxes(maps, h, w, self.tau, below=below, clip=self.clip, generator=self.generator,
                               name="saliency_maps")  # also checks the maps (compute_maps did not)
        return box_masks(picked.top, picked.left, picked.height, picked.width, maps.shape[-2:]), maps, picked.fallback


class KeepCutout(_SelectiveWindow):
    """Cutout that never cuts the salient part: a window below the τ-quantile is zeroed.

    Args:
        size: window side h or (h, w) (16 on CIFAR in the paper).
        tau: quantile in [0, 1] (0.6 in every experiment of the paper).
        saliency: saliency source (see the module docstring), or None to pass
            ``saliency_maps=`` at each call.
        p: probability of cutting each image (1.0 = always, as Cutout).
        value: fill (0.0 — the mean of normalised images — as Cutout).
        clip: Cutout-style boxes centred anywhere and clipped, instead of full windows.
        scale: resolution factor for gradient saliency from a model (0.5: low-resolution KeepAugment).
        generator: optional ``torch.Generator``.

    Labels are unchanged. Example::

        keep = KeepCutout(16, tau=0.6, saliency=model, scale=0.5)
        x, y = keep(x, y)                 # then the usual loss
    """

    def __init__(self, size: SizeLike = 16, tau: float = 0.6, saliency=None, *, p: float = 1.0,
                 value: Union[float, Tuple[float, ...], str] = 0.0, clip: bool = False, scale: float = 1.0,
                 generator: Optional[torch.Generator] = None):
        super().__init__(size, tau, saliency, clip, scale, generator)
        self.p = check_probability(p, "p")
        self.value = check_fill_value(value)

    def _repr_fields(self):
        return {"size": self.size, "tau": self.tau, "p": self.p, "clip": self.clip, "saliency": self.saliency}

    def apply(self, images, targets, saliency_maps: Optional[torch.Tensor] = None) -> Batch:
        check_fill_channels(self.value, images.shape[1])  # before the saliency pass is spent
        mask, maps, fallback = self._window(images, targets, saliency_maps, below=True)
        if self.p < 1:
            mask = mask & (_random.rand((images.shape[0],), images.device, self.generator) < self.p).view(-1, 1, 1)
        self.last_stats = Stats(fallback=fallback, saliency_kept=lambda: 1.0 - _mass_share(maps, mask),
                                **source_stats(self.saliency, saliency_maps))
        return erase_masked(images, mask, self.value, self.generator), targets


class KeepRandomErasing(RandomErasing):
    """Random Erasing (Zhong et al.) with selective cut: the erased rectangle avoids salient regions.

    Each image, with probability ``p``, draws up to ``attempts`` (area, aspect)
    pairs — area fraction ∈ U(``scale``), aspect ∈ U(``ratio``) — and keeps the first
    rectangle that fits; its position is then drawn uniformly among the positions
    whose window scores below the image's τ-quantile (of all positions for that
    rectangle size). Pixels are filled with ``value``: ``"random"`` (default;
    N(0, 1) per pixel for float images, U{0..255} for uint8), a number, or per-channel values.
    Labels are unchanged. ``last_stats``: ``fallback``, ``saliency_kept``, ``erased`` (B,) bool.
    """

    def __init__(self, p: float = 0.5, scale: Tuple[float, float] = (0.02, 0.4),
                 ratio: Tuple[float, float] = (0.3, 3.3), value="random", tau: float = 0.6, saliency=None, *,
                 attempts: int = 10, saliency_scale: float = 1.0, generator: Optional[torch.Generator] = None):
        super().__init__(p, scale, ratio, value, attempts=attempts, generator=generator)
        self.tau = check_probability(tau, "tau")
        self.saliency = as_source(saliency, reduce="max", scale=check_positive(saliency_scale, "saliency_scale"),
                                  generator=generator)
        self.accepts_uint8 = takes_uint8(self.saliency)

    def _repr_fields(self):
        return {**super()._repr_fields(), "tau": self.tau, "saliency": self.saliency}

    def apply(self, images, targets, saliency_maps: Optional[torch.Tensor] = None) -> Batch:
        check_fill_channels(self.value, images.shape[1])  # before the saliency pass is spent
        maps = compute_maps(self.saliency, images, targets, saliency_maps, type(self).__name__, finite=False)
        batch, height, width = maps.shape
        h, w, found = random_erasing_sizes(batch, height, width, self.scale, self.ratio, self.attempts,
                                            images.device, self.generator)
        erase = found & (_random.rand((batch,), images.device, self.generator) < self.p)
        picked = _select_boxes(maps, h, w, self.tau, below=True, clip=False, generator=self.generator,
                               name="saliency_maps")  # also checks the maps (compute_maps did not)
        mask = box_masks(picked.top, picked.left, h, w, (height, width)) & erase.view(-1, 1, 1)
        self.last_stats = Stats(fallback=lambda: picked.fallback & erase,
                                saliency_kept=lambda: 1.0 - _mass_share(maps, mask), erased=erase,
                                **source_stats(self.saliency, saliency_maps))
        return erase_masked(images, mask, self.value, self.generator), targets


class KeepCutMix(Op):
    """CutMix (Yun et al.) with selective cut: the region replaced in x_i avoids x_i's salient part.

    Per image: λ ~ Beta(α, α); a window of h = round(H√(1−λ)) × w = round(W√(1−λ))
    is placed uniformly among the positions scoring below the τ-quantile of x_i's
    window scores, and filled with the same region of the partner x_{p(i)}. The label
    weight is the area actually kept, λ_i = 1 − |box|/(HW), and ỹ_i = λ_i y_i + (1 − λ_i) y_{p(i)}.
    With probability 1 − ``prob`` an image is left whole (λ_i = 1).

    Box family (:func:`keepmix.regions.select_boxes`): full windows inside the image
    by default — the fair baseline is ``CutMix(inside=True)``; ``clip=True`` uses
    CutMix's own boxes (centred anywhere, clipped) among those of the clipped shape of
    a uniformly drawn reference — the fair baseline is ``CutMix()``. Either way the box
    size never depends on the map, only its position.

    Args:
        num_classes: K, needed for class-index targets.
        alpha: Beta parameter (1.0 as CutMix).
        tau: quantile for the selective cut.
        saliency: saliency source of the images being cut.
        pairing: ``"random"`` (default, a derangement), ``"greedy"`` (GuidedMixup's
            pairing on the blurred, normalised maps) or a callable.
        prob: per-image probability of mixing.
        scale: resolution factor for gradient saliency from a model.
        clip: CutMix-style clipped boxes instead of full windows (see above).

    Returns soft targets B×K float32; train with
    :func:`keepmix.losses.soft_target_cross_entropy`. ``last_stats``: ``lam``,
    ``fallback``, ``saliency_kept``.
    """

    mixes_labels = True

    def __init__(self, num_classes: Optional[int] = None, alpha: float = 1.0, tau: float = 0.6, saliency=None, *,
                 pairing="random", prob: float = 1.0, scale: float = 1.0, clip: bool = False,
                 generator: Optional[torch.Generator] = None):
        super().__init__(generator)
        self.clip = bool(clip)
        self.num_classes = check_num_classes(num_classes)
        self.alpha = check_positive(alpha, "alpha")
        self.tau = check_probability(tau, "tau")
        self.pairing = check_pairing(pairing)
        self.prob = check_probability(prob, "prob")
        self.saliency = as_source(saliency, reduce="max", scale=check_positive(scale, "scale"), generator=generator)
        self.accepts_uint8 = takes_uint8(self.saliency)

    def _repr_fields(self):
        return {"num_classes": self.num_classes, "alpha": self.alpha, "tau": self.tau, "pairing": self.pairing,
                "clip": self.clip}

    def apply(self, images, targets, saliency_maps: Optional[torch.Tensor] = None) -> Batch:
        if targets is None:
            raise ValueError("KeepCutMix mixes labels: targets are required")
        maps = compute_maps(self.saliency, images, targets, saliency_maps, type(self).__name__, finite=False)
        batch, height, width = maps.shape
        device = images.device
        lam = _random.beta(self.alpha, self.alpha, (batch,), device, self.generator)
        cut = torch.sqrt(1.0 - lam)
        h = (cut * height).round().long()
        w = (cut * width).round().long()
        active = (h > 0) & (w > 0) & (_random.rand((batch,), device, self.generator) < self.prob)
        if batch < 2:
            active = torch.zeros_like(active)
        picked = _select_boxes(maps, h.clamp(1, height), w.clamp(1, width), self.tau, below=True, clip=self.clip,
                               generator=self.generator, name="saliency_maps")  # also checks the maps
        mask = box_masks(picked.top, picked.left, picked.height, picked.width, (height, width)) & active.view(-1, 1, 1)
        # greedy pairing guides with the blurred, sum-to-1 maps, as GuidedMixup does (documented above)
        guide = normalize_sum(gaussian_blur(maps, 7, 3.0)) if self.pairing == "greedy" else maps
        partner = pair(self.pairing, batch, device, guide, self.generator)
        kept = 1.0 - mask.float().mean(dim=(1, 2))
        x = to_float(images)
        mixed = torch.where(mask.unsqueeze(1), x.index_select(0, partner), x)
        self.last_stats = Stats(lam=kept, fallback=lambda: picked.fallback & active,
                                saliency_kept=lambda: 1.0 - _mass_share(maps, mask),
                                **source_stats(self.saliency, saliency_maps))
        return restore_dtype(mixed, images), mix_targets(targets, partner, kept, self.num_classes)


BatchTransform = Callable[[torch.Tensor], torch.Tensor]


class SelectivePaste(_SelectiveWindow):
    """Selective paste: x̃ = M(S) ⊙ x + (1 − M(S)) ⊙ A(x), S drawn above the τ-quantile.

    ``transform`` is any image-level batch transform: a keepmix op (called as
    ``op(images, targets)``; its targets are returned) or a plain callable
    ``images -> images`` of the same shape. Saliency is computed on the original
    images; the window (16 on CIFAR, 40 on ImageNet in the paper) is drawn
    uniformly among those scoring above the per-image τ-quantile and pasted back
    from the original. With a policy such as AutoAugment this is KeepAutoAugment.

    Note: when the transform works on un-normalised images (uint8 or [0, 1]) and
    the saliency source is a model that expects normalised input, pass the maps
    (``saliency_maps=``) or a source that normalises first.
    """

    def __init__(self, transform: Union[Op, BatchTransform], size: SizeLike = 16, tau: float = 0.6, saliency=None,
                 *, clip: bool = False, scale: float = 1.0, generator: Optional[torch.Generator] = None):
        super().__init__(size, tau, saliency, clip, scale, generator)
        if not callable(transform):
            raise TypeError(f"transform must be a keepmix op or a callable images -> images, "
                            f"got {type(transform).__name__}")
        self.transform = transform

    def _repr_fields(self):
        return {"transform": self.transform, "size": self.size, "tau": self.tau, "saliency": self.saliency}

    def apply(self, images, targets, saliency_maps: Optional[torch.Tensor] = None) -> Batch:
        mask, maps, fallback = self._window(images, targets, saliency_maps, below=False)
        if isinstance(self.transform, Op):
            augmented, targets = self.transform(images, targets)
        else:
            augmented = self.transform(images)
        if not isinstance(augmented, torch.Tensor) or augmented.shape != images.shape:
            raise ValueError("transform must return images of the input's shape")
        self.last_stats = Stats(fallback=fallback, saliency_kept=lambda: _mass_share(maps, mask),
                                **source_stats(self.saliency, saliency_maps))
        out = torch.where(mask.unsqueeze(1), images.to(augmented.dtype), augmented)
        return out, targets


# --------------------------------------------------------------------------- Keep variants of the policies


class _KeepPolicy(SelectivePaste):
    """SelectivePaste over a policy built from ``policy_kwargs`` (shares the op's generator)."""

    policy_name: str = ""  # the class in keepmix.policies
    input_space = "raw"  # policies work on un-normalised pixels; so does the paste over them

    def __init__(self, size: SizeLike = 16, tau: float = 0.6, saliency=None, *, clip: bool = False,
                 scale: float = 1.0, generator: Optional[torch.Generator] = None, **policy_kwargs):
        from . import policies  # deferred: only these presets need the policies package
        policy = getattr(policies, self.policy_name)(generator=generator, **policy_kwargs)
        super().__init__(policy, size, tau, saliency, clip=clip, scale=scale, generator=generator)


class KeepAutoAugment(_KeepPolicy):
    """KeepAutoAugment: :class:`SelectivePaste` over :class:`keepmix.policies.AutoAugment`.

    ``KeepAutoAugment(size=16, tau=0.6, saliency=NormalizedInput(model, mean, std), policy="cifar10")``:
    images are un-normalised (uint8 or [0, 1]) like the policy's; the saliency
    source must normalise for the model (:class:`keepmix.saliency.NormalizedInput`).
    Extra keyword arguments go to the policy.
    """

    policy_name = "AutoAugment"


class KeepRandAugment(_KeepPolicy):
    """KeepRandAugment: :class:`SelectivePaste` over :class:`keepmix.policies.RandAugment` (kwargs → policy)."""

    policy_name = "RandAugment"


class KeepTrivialAugment(_KeepPolicy):
    """KeepTrivialAugment: :class:`SelectivePaste` over :class:`keepmix.policies.TrivialAugmentWide`."""

    policy_name = "TrivialAugmentWide"


class KeepAugMix(_KeepPolicy):
    """KeepAugMix: :class:`SelectivePaste` over :class:`keepmix.policies.AugMix` (kwargs → policy)."""

    policy_name = "AugMix"
