"""Baseline mixers: Mixup, CutMix, SaliencyMix, SnapMix, Attentive CutMix and Manifold Mixup.

Every mixer follows the op protocol ``mixer(images, targets) -> (images, soft
targets)`` with, per image i and its partner p(i),

.. math::
    \\tilde x_i = M_i ⊙ x_i + (1 − M_i) ⊙ x_{p(i)}, \\qquad
    \\tilde y_i = λ_i\\, y_i + (1 − λ_i)\\, y_{p(i)}

where M_i and λ_i are the method's own (a constant, a box, a set of grid cells…).
Common to all of them:

* **Per sample.** Each image draws its own λ, box and mixing decision (``prob``:
  the per-image probability of being mixed; an image that is not mixed keeps
  λ_i = 1 and its one-hot target) from the op's optional ``torch.Generator``, on
  the batch's device, without a loop over samples.
* **Pairing.** ``pairing="random"`` (default) is a random derangement — a single
  random cycle, so no image is paired with itself (unlike flipping the batch or a
  plain ``randperm``); ``"greedy"`` is GuidedMixup's farthest-first cycle
  (:func:`keepmix.pairing.greedy_pairing`) on saliency maps blurred (Gaussian,
  kernel 7, σ 3) and normalised to sum 1 as GuidedMixup does — the mixer's own
  maps where it has them (SaliencyMix: its saliency; SnapMix: its CAMs; Attentive
  CutMix: the teacher's attention grid, not blurred) and spectral-residual maps
  otherwise (Mixup, CutMix, Manifold Mixup) — or, with ``pairing=MemoryPairing(memory)``
  (:mod:`keepmix.memory`), the saliency memory's maps of the batch; a callable receives
  those maps and returns int64 partner indices (B,). This is how GuidedMixup's pairing
  plugs into any mixer (GuidedMixup, Table 8).
* **Targets.** Class indices (B,) int64 (then ``num_classes`` is required) or
  soft targets B×K; the result is float32 soft targets B×K whose rows sum to 1
  (for soft inputs that sum to 1), with label weights equal to the area or mask
  weights actually used. Train with :func:`keepmix.losses.soft_target_cross_entropy`.
* **Images.** Float of any dtype; uint8 where the method needs no model (mixed in
  float32, then rounded back). The output has the input's dtype, device and shape.
* ``last_stats``: ``lam`` (B,) — each image's own label weight — ``partner``
  (B,), ``mixed`` (B,) bool, and per-method extras (boxes, cells, CAM masses, layer).

A batch of one image is returned unmixed (λ = 1).
"""

from __future__ import annotations

import difflib
import numbers
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
import torch.nn.functional as F

from . import _random
from ._checks import check_num_classes, check_positive, check_probability
from .losses import to_soft_targets
from .memory import source_stats
from .mix import mix_images, mix_targets
from .pairing import check_pairing, pair
from .protocol import Batch, Op, Stats, restore_dtype, to_float
from .regions import box_masks, clipped_boxes
from .saliency import (_PreservedModel, _check_bn, _model_dtype, as_source, compute_maps, gaussian_blur,
                       normalize_sum, spectral_residual)

PAIRING_BLUR = (7, 3.0)  # GuidedMixup's blur before normalising the maps that drive the pairing


def pairing_maps(maps: torch.Tensor, blur: bool = True) -> torch.Tensor:
    """The maps that drive ``"greedy"`` / callable pairing: Gaussian blur (7, σ 3) then sum-to-1, float32 B×H×W."""
    if blur:
        maps = gaussian_blur(maps.float(), *PAIRING_BLUR)
    return normalize_sum(maps)


def _cut_sizes(lam: torch.Tensor, size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """CutMix's box sides for a kept share λ: h = round(H √(1 − λ)), w = round(W √(1 − λ))."""
    cut = torch.sqrt((1.0 - lam).clamp_(0.0, 1.0))
    h = (cut * size[0]).round_().long()
    return h, (h if size[1] == size[0] else (cut * size[1]).round_().long())


class _Mixer(Op):
    """Shared plumbing: num_classes, α, per-image probability, pairing, generator."""

    mixes_labels = True
    #: "elem": λ, box and mixing decision per image; "batch": one of each for the whole batch (Mixup, CutMix)
    lam_mode = "elem"

    def __init__(self, num_classes: Optional[int], alpha: Optional[float], prob: float, pairing,
                 generator: Optional[torch.Generator]):
        super().__init__(generator)
        self.num_classes = check_num_classes(num_classes)
        self.alpha = None if alpha is None else check_positive(alpha, "alpha")
        self.prob = check_probability(prob, "prob")
        self.pairing = check_pairing(pairing)

    def _repr_fields(self):
        return {"num_classes": self.num_classes, "alpha": self.alpha, "prob": self.prob, "pairing": self.pairing}

    def _require_targets(self, targets) -> None:
        """Fail early (no tensor work) on missing targets or a missing or mismatched num_classes."""
        if targets is None:
            raise ValueError(f"{type(self).__name__} mixes labels: targets are required")
        if targets.ndim == 1 and self.num_classes is None:
            raise ValueError("num_classes is needed to turn class indices into soft targets")
        if targets.ndim == 2 and self.num_classes is not None and targets.shape[1] != self.num_classes:
            raise ValueError(f"targets has {targets.shape[1]} classes, expected num_classes={self.num_classes}")

    def _lam(self, batch: int, device) -> torch.Tensor:
        if self.lam_mode == "batch":  # one λ for the whole batch (timm's mode="batch")
            return _random.beta(self.alpha, self.alpha, (1,), device, self.generator).repeat(batch)
        return _random.beta(self.alpha, self.alpha, (batch,), device, self.generator)

    def _selected(self, batch: int, device) -> torch.Tensor:
        """Per-image mixing decision (B,) bool: U < prob (never for a batch of one); one decision with
        ``lam_mode="batch"``."""
        return self._mixed_flags(self._selection(batch, device), batch, device)

    def _selection(self, batch: int, device) -> Optional[torch.Tensor]:
        """:meth:`_selected`, except ``None`` when every image mixes (prob = 1, B ≥ 2): no draw, no kernel."""
        if batch < 2:
            return torch.zeros(batch, dtype=torch.bool, device=device)
        if self.prob >= 1.0:
            return None
        if self.lam_mode == "batch":
            return (_random.rand((1,), device, self.generator) < self.prob).expand(batch)
        return _random.rand((batch,), device, self.generator) < self.prob

    @staticmethod
    def _where_mixed(mixed: Optional[torch.Tensor], value: torch.Tensor, unmixed: float) -> torch.Tensor:
        """``value`` where mixed, ``unmixed`` elsewhere (``value`` itself when every image mixes)."""
        return value if mixed is None else torch.where(mixed, value, unmixed)

    @staticmethod
    def _mixed_flags(mixed: Optional[torch.Tensor], batch: int, device) -> torch.Tensor:
        return torch.ones(batch, dtype=torch.bool, device=device) if mixed is None else mixed

    def _partner(self, images: torch.Tensor, maps: Optional[torch.Tensor] = None, blur: bool = True
                 ) -> torch.Tensor:
        """Partner indices; maps are computed (spectral residual) only when the pairing needs them."""
        batch = images.shape[0]
        if self.pairing == "random":
            return pair("random", batch, images.device, None, self.generator)
        if maps is None:  # a pairing that brings its own maps (keepmix.memory.MemoryPairing), else spectral
            own_source = getattr(self.pairing, "saliency", None)
            maps = own_source(images, None) if own_source is not None else spectral_residual(images)
        return pair(self.pairing, batch, images.device, pairing_maps(maps, blur), self.generator)


class Mixup(_Mixer):
    """Mixup (Zhang et al., ICLR 2018) with a λ per image.

    .. math::
        λ_i \\sim \\mathrm{Beta}(α, α), \\quad \\tilde x_i = λ_i x_i + (1 − λ_i) x_{p(i)}, \\quad
        \\tilde y_i = λ_i y_i + (1 − λ_i) y_{p(i)}

    Like timm's ``mode="elem"`` but paired by a derangement (or GuidedMixup's
    greedy pairing) instead of flipping the batch, and seeded through torch. An
    image not selected (probability 1 − ``prob``) keeps λ_i = 1. ``lam_mode="batch"`` draws one λ ~ Beta(α, α) and one
    mixing decision (probability ``prob``) for the whole batch, as timm's default ``mode="batch"``.

    Args:
        num_classes: K, needed for class-index targets.
        alpha: Beta parameter α (1.0; 0.2–0.4 on ImageNet in the paper).
        prob: per-image mixing probability (per batch with ``lam_mode="batch"``).
        pairing: ``"random"``, ``"greedy"`` or a callable ``maps -> partner``.
        lam_mode: ``"elem"`` (a λ per image, default) or ``"batch"`` (one λ per batch).
        generator: optional ``torch.Generator``.

    Shapes: images B×C×H×W (float or uint8), targets (B,) int64 or B×K →
    (B×C×H×W same dtype, B×K float32). Loss: soft-target cross-entropy.
    ``last_stats``: ``lam``, ``partner``, ``mixed``, ``own`` (= λ: each pixel's share of the image's
    own pixel, which a :class:`keepmix.memory.SaliencyMemory` writes by).
    """

    def __init__(self, num_classes: Optional[int] = None, alpha: float = 1.0, *, prob: float = 1.0,
                 pairing="random", lam_mode: str = "elem", generator: Optional[torch.Generator] = None):
        super().__init__(num_classes, alpha, prob, pairing, generator)
        self.lam_mode = _check_lam_mode(lam_mode)

    def _repr_fields(self):
        return {**super()._repr_fields(), "lam_mode": self.lam_mode}

    def apply(self, images, targets) -> Batch:
        self._require_targets(targets)
        batch, device = images.shape[0], images.device
        mixed = self._selection(batch, device)
        lam = self._where_mixed(mixed, self._lam(batch, device), 1.0)
        partner = self._partner(images)
        self.last_stats = Stats(lam=lam, partner=partner, mixed=lambda: self._mixed_flags(mixed, batch, device),
                                own=lam)
        return mix_images(images, partner, lam), mix_targets(targets, partner, lam, self.num_classes)


def _check_lam_mode(lam_mode) -> str:
    if lam_mode not in ("elem", "batch"):
        raise ValueError(f"lam_mode must be 'elem' (per image) or 'batch' (one λ per batch), got {lam_mode!r}")
    return lam_mode


def _paste_box(images: torch.Tensor, partner: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x_i outside ``mask`` (B×H×W bool), x_{p(i)} inside (same positions); input dtype (a copy, exact)."""
    return torch.where(mask.unsqueeze(1), images.index_select(0, partner), images)


class CutMix(_Mixer):
    """CutMix (Yun et al., ICCV 2019) with a box and λ per image.

    Per image: λ̂_i ~ Beta(α, α); a box of h = round(H √(1 − λ̂_i)) ×
    w = round(W √(1 − λ̂_i)) centred on a pixel drawn uniformly over the image,
    clipped to it, is filled with the same region of x_{p(i)}. With
    ``correct_lam=True`` (default) the label weight is the area actually kept,
    λ_i = 1 − |box ∩ image| / (H W); otherwise the drawn λ̂_i (then the labels no
    longer match the pixels when the box is clipped).

    Clipping makes boxes smaller on average: for α = 1 the drawn λ̂ has mean 1/2
    but the corrected λ has mean ≈ 1 − E[(c − c²/4)²] ≈ 0.68 with c = √(1 − λ̂)
    (continuous limit; a centre uniform on the image). ``inside=True`` places the
    whole h×w box inside the image instead (top-left corner uniform where it fits),
    so λ = 1 − hw/(HW) exactly: the box family of :class:`keepmix.keep.KeepCutMix`
    with its default full windows, and its fair baseline. ``lam_mode="batch"`` draws one λ̂,
    one box (size and centre) and one mixing decision for the whole batch, as timm's
    default ``mode="batch"``.

    Args:
        num_classes: K, needed for class-index targets.
        alpha: Beta parameter (1.0 as CutMix).
        prob: per-image mixing probability (per batch with ``lam_mode="batch"``).
        pairing: ``"random"``, ``"greedy"`` or a callable.
        correct_lam: label weight from the clipped area (True) or the drawn λ̂.
        inside: boxes wholly inside the image instead of centred anywhere and clipped.
        lam_mode: ``"elem"`` (a λ and box per image, default) or ``"batch"`` (one per batch).
        generator: optional ``torch.Generator``.

    Shapes: as :class:`Mixup`. ``last_stats``: ``lam`` (label weight used),
    ``lam_drawn`` (λ̂), ``box`` (B, 4) int64 clipped (top, left, height, width; 0×0
    where not mixed), ``centre`` (B, 2) int64 (y, x), ``partner``, ``mixed``.
    """

    def __init__(self, num_classes: Optional[int] = None, alpha: float = 1.0, *, prob: float = 1.0,
                 pairing="random", correct_lam: bool = True, inside: bool = False, lam_mode: str = "elem",
                 generator: Optional[torch.Generator] = None):
        super().__init__(num_classes, alpha, prob, pairing, generator)
        self.correct_lam = bool(correct_lam)
        self.inside = bool(inside)
        self.lam_mode = _check_lam_mode(lam_mode)

    def _repr_fields(self):
        return {**super()._repr_fields(), "correct_lam": self.correct_lam, "inside": self.inside,
                "lam_mode": self.lam_mode}

    def apply(self, images, targets) -> Batch:
        self._require_targets(targets)
        batch, _, height, width = images.shape
        device = images.device
        lam_drawn = self._lam(batch, device)
        cut_h, cut_w = _cut_sizes(lam_drawn, (height, width))
        if self.inside:  # the whole box inside: the top-left corner uniform where it fits
            centre_y = _random.below(height - cut_h + 1, self.generator) + cut_h // 2
            centre_x = _random.below(width - cut_w + 1, self.generator) + cut_w // 2
        else:
            centre_y = _random.randint(0, height, (batch,), device, self.generator)
            centre_x = _random.randint(0, width, (batch,), device, self.generator)
        if self.lam_mode == "batch":  # one box for the whole batch
            centre_y, centre_x = centre_y[:1].repeat(batch), centre_x[:1].repeat(batch)
        mixed = self._selection(batch, device)
        # the mask of the unclipped box is already clipped by the image grid
        mask = box_masks(centre_y - cut_h // 2, centre_x - cut_w // 2, cut_h, cut_w, (height, width))
        if mixed is not None:
            mask = mask & mixed.view(-1, 1, 1)
        if self.correct_lam:  # the share of the image actually kept
            lam = mask.sum(dim=(1, 2)).float().mul_(-1.0 / (height * width)).add_(1.0)
        else:
            lam = self._where_mixed(mixed, lam_drawn, 1.0)
        partner = self._partner(images)

        def box():
            top, left, box_h, box_w = clipped_boxes(centre_y, centre_x, cut_h, cut_w, (height, width))
            flags = self._mixed_flags(mixed, batch, device)
            return torch.stack([top, left, box_h * flags, box_w * flags], 1)

        self.last_stats = Stats(lam=lam, lam_drawn=lam_drawn, box=box,
                                centre=lambda: torch.stack([centre_y, centre_x], 1), partner=partner,
                                mixed=lambda: self._mixed_flags(mixed, batch, device))
        return _paste_box(images, partner, mask), mix_targets(targets, partner, lam, self.num_classes)


class SaliencyMix(_Mixer):
    """SaliencyMix (Uddin et al., ICLR 2021), per sample: the pasted box sits on the source's saliency peak.

    Per image i with source (partner) x_{p(i)}: λ̂_i ~ Beta(α, α) sets the box
    size as in CutMix; the box is centred on argmax s_{p(i)} — the peak of the
    *source's* saliency map (first maximum in row-major order) — clipped to the
    image, and x_{p(i)}'s pixels there replace x_i's at the same location. The
    label weight is the area actually kept, λ_i = 1 − |box| / (H W).

    Unlike the published code (one box computed from one image for the whole
    batch, from OpenCV maps of misread float tensors), every image gets the box
    of its own source. The saliency is any source: spectral residual by default
    (the GuidedMixup-SR variant, batched on the device; the paper used OpenCV's
    fine-grained static saliency), a model (gradient saliency), a callable
    ``(images, targets) -> B×H×W``, or maps passed per call as ``saliency_maps=``.

    Args:
        num_classes: K, needed for class-index targets.
        alpha: Beta parameter (1.0).
        saliency: saliency source (see above), or None to pass maps per call.
        prob: per-image mixing probability.
        pairing: ``"random"``, ``"greedy"`` (on these maps, blurred and
            normalised) or a callable.
        generator: optional ``torch.Generator``.

    Shapes: as :class:`Mixup` (uint8 works with spectral or precomputed maps).
    ``last_stats``: ``lam``, ``lam_drawn``, ``box`` (B, 4), ``peak`` (B, 2) — the
    (y, x) saliency peak of each image's source — ``partner``, ``mixed``.
    """

    def __init__(self, num_classes: Optional[int] = None, alpha: float = 1.0, saliency="spectral", *,
                 prob: float = 1.0, pairing="random", generator: Optional[torch.Generator] = None):
        super().__init__(num_classes, alpha, prob, pairing, generator)
        self.saliency = as_source(saliency, reduce="max", generator=generator)

    def _repr_fields(self):
        return {**super()._repr_fields(), "saliency": self.saliency}

    def apply(self, images, targets, saliency_maps: Optional[torch.Tensor] = None) -> Batch:
        self._require_targets(targets)
        batch, _, height, width = images.shape
        device = images.device
        maps = compute_maps(self.saliency, images, targets, saliency_maps, type(self).__name__)
        partner = self._partner(images, maps)
        peak = maps.flatten(1).argmax(dim=1).index_select(0, partner)  # the source's peak, row-major
        peak_y, peak_x = torch.div(peak, width, rounding_mode="floor"), torch.remainder(peak, width)
        lam_drawn = self._lam(batch, device)
        cut_h, cut_w = _cut_sizes(lam_drawn, (height, width))
        mixed = self._selection(batch, device)
        mask = box_masks(peak_y - cut_h // 2, peak_x - cut_w // 2, cut_h, cut_w, (height, width))
        if mixed is not None:
            mask = mask & mixed.view(-1, 1, 1)
        lam = mask.sum(dim=(1, 2)).float().mul_(-1.0 / (height * width)).add_(1.0)

        def box():
            top, left, box_h, box_w = clipped_boxes(peak_y, peak_x, cut_h, cut_w, (height, width))
            flags = self._mixed_flags(mixed, batch, device)
            return torch.stack([top, left, box_h * flags, box_w * flags], 1)

        self.last_stats = Stats(lam=lam, lam_drawn=lam_drawn, box=box, peak=lambda: torch.stack([peak_y, peak_x], 1),
                                partner=partner, mixed=lambda: self._mixed_flags(mixed, batch, device),
                                **source_stats(self.saliency, saliency_maps))
        return _paste_box(images, partner, mask), mix_targets(targets, partner, lam, self.num_classes)


def resize_boxes_into(source: torch.Tensor, src_box: Tuple[torch.Tensor, ...], dst_box: Tuple[torch.Tensor, ...],
                      size: Tuple[int, int]) -> torch.Tensor:
    """Each source image's box resized bilinearly onto the destination box, batched.

    For image b, output pixel (y, x) inside ``dst_box[b]`` = (t', l', h', w') samples
    ``source[b]`` at

    .. math:: s_y = t + (y − t' + ½)\\,h / h' − ½, \\qquad s_x = l + (x − l' + ½)\\,w / w' − ½

    clamped to the source box [t, t + h − 1] × [l, l + w − 1] — exactly
    ``F.interpolate(crop, (h', w'), mode="bilinear", align_corners=False)`` of the
    crop, done for all images at once with ``grid_sample`` on per-image affine grids.
    Pixels outside the destination box get arbitrary values (mask them out).

    Args:
        source: float B×C×H×W.
        src_box, dst_box: (top, left, height, width) int64 (B,) each; heights and
            widths ≥ 1 where used (0 is clamped to 1 to stay defined).
        size: (H, W) of the output.

    Returns:
        float B×C×H×W in ``source``'s dtype.
    """
    rows, cols = size
    device = source.device
    t, l, h, w = (v.float() for v in src_box)
    t2, l2, h2, w2 = (v.float() for v in dst_box)
    h, w, h2, w2 = h.clamp_min(1), w.clamp_min(1), h2.clamp_min(1), w2.clamp_min(1)
    y = torch.arange(rows, device=device, dtype=torch.float32).view(1, -1)
    x = torch.arange(cols, device=device, dtype=torch.float32).view(1, -1)
    sy = t.view(-1, 1) + (y - t2.view(-1, 1) + 0.5) * (h / h2).view(-1, 1) - 0.5
    sx = l.view(-1, 1) + (x - l2.view(-1, 1) + 0.5) * (w / w2).view(-1, 1) - 0.5
    sy = torch.minimum(torch.maximum(sy, t.view(-1, 1)), (t + h - 1).view(-1, 1))
    sx = torch.minimum(torch.maximum(sx, l.view(-1, 1)), (l + w - 1).view(-1, 1))
    in_h, in_w = source.shape[-2:]
    # pixel coordinate → grid_sample's normalised coordinate (align_corners=False)
    gy = (2.0 * sy + 1.0) / in_h - 1.0
    gx = (2.0 * sx + 1.0) / in_w - 1.0
    grid = torch.stack([gx.unsqueeze(1).expand(-1, rows, -1), gy.unsqueeze(2).expand(-1, -1, cols)], dim=-1)
    work = source.float() if source.dtype in (torch.float16, torch.bfloat16) else source
    out = F.grid_sample(work, grid.to(work.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return out.to(source.dtype)


class SnapMix(_Mixer):
    """SnapMix (Huang et al., AAAI 2021): asymmetric boxes, label weights from the CAM mass they move.

    1. **Semantic percent maps.** One extra no-grad forward of the model being
       trained gives its last feature map F (B×C×h×w). The class activation map of
       the label, CAM_i = Σ_c (y_i W)_c F_{i,c} (W: the classifier weights K×C; soft
       targets weight the classes; the bias is a constant and drops out), is
       resized bilinearly to H×W, shifted to a minimum of 0 and divided by its sum:
       S_i ≥ 0, Σ S_i = 1 (a flat CAM gives the uniform map).
    2. **Boxes.** Per image, two independent boxes as in CutMix: box a in x_i from
       λ_a ~ Beta(α, α) and box b in the partner x_{p(i)} from λ_b ~ Beta(α, α), each
       centred uniformly and clipped. Box b's content is resized (bilinear) into box
       a (:func:`resize_boxes_into`).
    3. **Label weights.** ρ_a = 1 − Σ_{box a} S_i (the CAM mass x_i keeps),
       ρ_b = Σ_{box b} S_{p(i)} (the mass pasted from the partner). They need not
       sum to 1; with ``normalize=True`` (default) the soft target is
       ỹ_i = (ρ_a y_i + ρ_b y_{p(i)}) / (ρ_a + ρ_b) (rows sum to 1; if ρ_a + ρ_b = 0
       the area weights are used), and ``last_stats`` keeps the raw ρ. With
       ``normalize=False`` ỹ_i = ρ_a y_i + ρ_b y_{p(i)} and the soft-target
       cross-entropy equals SnapMix's loss ρ_a CE(y_i) + ρ_b CE(y_{p(i)}) exactly.

    An image is mixed when selected (``prob``) and both boxes are non-empty.

    **Getting features and classifier.** By default ``model.features(x)`` and
    ``model.classifier`` (an ``nn.Linear`` after global average pooling) — the
    :class:`keepmix.models.ClassifierModel` interface every keepmix model has. For
    another model pass ``features=`` (a callable x → B×C×h×w, the map that the
    classifier sees after pooling) and ``classifier=`` (its ``nn.Linear``).

    The CAM pass leaves the model exactly as found; ``bn="eval"`` (default) runs it
    in eval mode (running BatchNorm statistics, no update), ``bn="train"`` in the
    model's own mode with every buffer restored afterwards.

    Args:
        model: the classifier being trained.
        num_classes: K, needed for class-index targets.
        alpha: Beta parameter for both boxes (5.0, SnapMix's fine-grained setting).
        prob: per-image mixing probability.
        pairing: ``"random"``, ``"greedy"`` (on the CAM maps) or a callable.
        normalize: rescale (ρ_a, ρ_b) to sum 1 (see 3).
        features, classifier: overrides for models outside the keepmix interface.
        bn: ``"eval"`` or ``"train"`` for the CAM pass.
        generator: optional ``torch.Generator``.

    Shapes: images float B×C×H×W (normalised, as the model expects; uint8 is
    rejected), targets (B,) or B×K → (B×C×H×W, B×K float32).
    ``last_stats``: ``lam`` (own-label weight used), ``rho_a``, ``rho_b`` (B,),
    ``box_a``, ``box_b`` (B, 4) int64 (top, left, height, width), ``partner``, ``mixed``.
    """

    accepts_uint8 = False

    def __init__(self, model: nn.Module, num_classes: Optional[int] = None, alpha: float = 5.0, *,
                 prob: float = 1.0, pairing="random", normalize: bool = True,
                 features: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 classifier: Optional[nn.Linear] = None, bn: str = "eval",
                 generator: Optional[torch.Generator] = None):
        super().__init__(num_classes, alpha, prob, pairing, generator)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        features = features if features is not None else getattr(model, "features", None)
        if not callable(features):
            raise TypeError("SnapMix needs the last feature map: the model must have a features(x) method "
                            "(keepmix ClassifierModel interface) or features= must be given")
        classifier = classifier if classifier is not None else getattr(model, "classifier", None)
        if not isinstance(classifier, nn.Linear):
            raise TypeError("SnapMix needs the classifier weights: the model must have a `classifier` nn.Linear "
                            "(keepmix ClassifierModel interface) or classifier= must be given")
        self.features = features
        self.classifier = classifier
        self.normalize = bool(normalize)
        self.bn = _check_bn(bn)

    def _repr_fields(self):
        return {**super()._repr_fields(), "model": type(self.model).__name__, "normalize": self.normalize}

    def semantic_percent_maps(self, images: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
        """S: the label CAMs resized to H×W, minimum 0, sum 1; float32 B×H×W (one no-grad forward)."""
        height, width = images.shape[-2:]
        x = images.detach().to(_model_dtype(self.model, images.dtype))
        with _PreservedModel(self.model, self.bn), torch.no_grad():
            fmap = self.features(x)
            if not isinstance(fmap, torch.Tensor) or fmap.ndim != 4 or fmap.shape[0] != images.shape[0]:
                raise ValueError("the features must be a feature map B×C×h×w")
            weight = self.classifier.weight.detach().float()
            if weight.shape[1] != fmap.shape[1] or weight.shape[0] != soft_targets.shape[1]:
                raise ValueError(f"classifier weight {tuple(weight.shape)} does not match {fmap.shape[1]} feature "
                                 f"channels and {soft_targets.shape[1]} classes")
            class_weights = soft_targets.to(weight.device) @ weight  # B×C
            cam = torch.einsum("bc,bchw->bhw", class_weights, fmap.float())
        cam = F.interpolate(cam.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False).squeeze(1)
        cam = cam - cam.amin(dim=(1, 2), keepdim=True)
        return normalize_sum(cam)

    def _box(self, lam: torch.Tensor, size: Tuple[int, int], device):
        cut_h, cut_w = _cut_sizes(lam, size)
        centre_y = _random.randint(0, size[0], (lam.shape[0],), device, self.generator)
        centre_x = _random.randint(0, size[1], (lam.shape[0],), device, self.generator)
        return clipped_boxes(centre_y, centre_x, cut_h, cut_w, size)

    def apply(self, images, targets) -> Batch:
        self._require_targets(targets)
        batch, _, height, width = images.shape
        device = images.device
        size = (height, width)
        soft = to_soft_targets(targets, self.num_classes).to(device)
        spm = self.semantic_percent_maps(images, soft)
        partner = self._partner(images, spm)
        box_a = self._box(self._lam(batch, device), size, device)
        box_b = self._box(self._lam(batch, device), size, device)
        mixed = self._selected(batch, device) & (box_a[2] * box_a[3] > 0) & (box_b[2] * box_b[3] > 0)
        box_a = (*box_a[:2], box_a[2] * mixed, box_a[3] * mixed)
        box_b = (*box_b[:2], box_b[2] * mixed, box_b[3] * mixed)
        mask_a = box_masks(*box_a, size)
        mask_b = box_masks(*box_b, size)
        rho_a = (spm * ~mask_a).sum(dim=(1, 2))  # the mass kept, summed (not 1 − cut: exact 0 for a full box)
        rho_b = (spm.index_select(0, partner) * mask_b).sum(dim=(1, 2))

        x = to_float(images)
        pasted = resize_boxes_into(x.index_select(0, partner), box_b, box_a, size)
        out = torch.where(mask_a.unsqueeze(1), pasted, x)

        if self.normalize:
            total = rho_a + rho_b
            area_kept = 1.0 - (box_a[2] * box_a[3]).float() / (height * width)
            w_a = torch.where(total > 0, rho_a / total.clamp_min(torch.finfo(total.dtype).tiny), area_kept)
            w_b = 1.0 - w_a
        else:
            w_a, w_b = rho_a, rho_b
        mixed_targets = w_a.view(-1, 1) * soft + w_b.view(-1, 1) * soft.index_select(0, partner)
        self.last_stats = {"lam": w_a, "rho_a": rho_a, "rho_b": rho_b, "box_a": torch.stack(box_a, 1),
                           "box_b": torch.stack(box_b, 1), "partner": partner, "mixed": mixed}
        return restore_dtype(out, images), mixed_targets


class AttentiveCutMix(_Mixer):
    """Attentive CutMix (Walawalkar et al., ICASSP 2020): paste the partner's most attended grid cells.

    A frozen pretrained ``teacher`` gives each image's last feature map; its
    channel mean, adaptive-average-pooled to a g×g grid (g = ``grid``, 7), is the
    attention map. For image i the k = ``top_k`` (6) cells with the highest
    attention *in the partner* x_{p(i)} are copied from x_{p(i)} into x_i at the
    same cells. Cell (r, c) covers rows [⌈rH/g⌉, ⌈(r+1)H/g⌉) and columns
    [⌈cW/g⌉, ⌈(c+1)W/g⌉). The label weight is the area kept,
    λ_i = 1 − |pasted| / (H W) — 1 − k/g² (= 43/49) when g divides H and W.
    Ties in attention are broken by ``torch.topk``.

    The teacher is any ``nn.Module``: its ``features(x)`` when it has one (the
    keepmix ClassifierModel interface), else its output, which must be a feature
    map B×C×h×w. It runs without gradients, in eval mode, and is left exactly as
    found. Images must be what the teacher expects (normalised float).

    Args:
        teacher: the frozen feature extractor.
        num_classes: K, needed for class-index targets.
        top_k: cells pasted, 1 ≤ k ≤ g² (6).
        grid: g (7).
        prob: per-image mixing probability.
        pairing: ``"random"``, ``"greedy"`` (on the attention grids, normalised,
            not blurred) or a callable.
        generator: optional ``torch.Generator``.

    Shapes: images float B×C×H×W, targets (B,) or B×K → (B×C×H×W, B×K float32).
    ``last_stats``: ``lam``, ``cells`` (B, g, g) bool — the cells pasted into each
    image — ``partner``, ``mixed``.
    """

    accepts_uint8 = False

    def __init__(self, teacher: nn.Module, num_classes: Optional[int] = None, *, top_k: int = 6, grid: int = 7,
                 prob: float = 1.0, pairing="random", generator: Optional[torch.Generator] = None):
        super().__init__(num_classes, None, prob, pairing, generator)
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
        self.teacher = teacher
        if isinstance(grid, bool) or not isinstance(grid, numbers.Integral) or grid < 1:
            raise ValueError(f"grid must be a positive int, got {grid!r}")
        self.grid = int(grid)
        if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or not 1 <= top_k <= grid * grid:
            raise ValueError(f"top_k must be an int in [1, grid² = {grid * grid}], got {top_k!r}")
        self.top_k = int(top_k)

    def _repr_fields(self):
        return {"num_classes": self.num_classes, "top_k": self.top_k, "grid": self.grid, "prob": self.prob,
                "pairing": self.pairing}

    def attention(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's attention grid: channel mean of its feature map, pooled to g×g; float32 B×g×g."""
        x = images.detach().to(_model_dtype(self.teacher, images.dtype))
        extract = getattr(self.teacher, "features", None)
        extract = extract if callable(extract) else self.teacher
        with _PreservedModel(self.teacher, "eval"), torch.no_grad():
            fmap = extract(x)
        if not isinstance(fmap, torch.Tensor) or fmap.ndim != 4 or fmap.shape[0] != images.shape[0]:
            raise ValueError("the teacher must produce a feature map B×C×h×w (its features(x) or its output)")
        return F.adaptive_avg_pool2d(fmap.float().mean(dim=1, keepdim=True), self.grid).squeeze(1)

    def apply(self, images, targets) -> Batch:
        self._require_targets(targets)
        batch, _, height, width = images.shape
        device = images.device
        g = self.grid
        attention = self.attention(images)
        partner = self._partner(images, attention, blur=False)
        top = attention.flatten(1).topk(self.top_k, dim=1).indices
        chosen = torch.zeros((batch, g * g), dtype=torch.bool, device=device).scatter_(1, top, True)
        mixed = self._selected(batch, device)
        cells = chosen.view(batch, g, g).index_select(0, partner) & mixed.view(-1, 1, 1)
        cell_row = torch.div(torch.arange(height, device=device) * g, height, rounding_mode="floor")
        cell_col = torch.div(torch.arange(width, device=device) * g, width, rounding_mode="floor")
        mask = cells[:, cell_row][:, :, cell_col]
        lam = 1.0 - mask.float().mean(dim=(1, 2))
        self.last_stats = {"lam": lam, "cells": cells, "partner": partner, "mixed": mixed}
        return _paste_box(images, partner, mask), mix_targets(targets, partner, lam, self.num_classes)


class ManifoldMixup(_Mixer):
    """Manifold Mixup (Verma et al., ICML 2019): mix the hidden representation at a random layer.

    A layer is named (``"input"``, or any module of the model by its
    ``named_modules()`` name, e.g. ``"stages.0"``: that module's output) or
    numbered as in :meth:`keepmix.models.ClassifierModel.hidden_blocks`: 0 is the
    input, k ≥ 1 the output of ``hidden_blocks()[k − 1]`` — for the keepmix ResNets
    1 is the *stem*, 2 the first stage, 3 the second. The paper's setting (mix at the
    input, after the first and after the second residual stage) is therefore
    ``layers=("input", "stages.0", "stages.1")`` = ``(0, 2, 3)``. Per call one
    layer is drawn uniformly from ``layers`` (one per batch: all images must mix
    at the same depth so that partners are mixed representations of the same
    layer), a λ_i ~ Beta(α, α) per image (1 where not selected) and a pairing; then

    .. math:: \\tilde h_i = λ_i h_i + (1 − λ_i) h_{p(i)}, \\qquad \\tilde y_i = λ_i y_i + (1 − λ_i) y_{p(i)}

    **How to use it in a training step.** The call returns (images, soft targets)
    like every op, and, for k ≥ 1, *arms a one-shot forward hook* on the chosen
    block. The next forward of ``model`` mixes that block's output and removes the
    hook, so call the op, then call ``model(images)`` exactly once::

        manifold = ManifoldMixup(model, num_classes=10, alpha=2.0, layers=("input", "stages.0", "stages.1"))
        x, y_soft = manifold(x, y)          # k = 0: x is mixed here; k ≥ 1: hook armed
        loss = soft_target_cross_entropy(model(x), y_soft)

    Put it last in a pipeline (after any op that runs the model, such as a
    saliency pass), and do not run other forwards of ``model`` in between; the
    hook raises if the next forward has a different batch size. ``disarm()``
    removes an armed hook; a new call replaces it. A block called several times in
    one forward is mixed at its first call only; forward hooks registered on the
    same block before this one (e.g. an :class:`~keepmix.saliency.EarlyHead` on
    ``first_block``) see the unmixed output.

    **Supported models**: any ``nn.Module`` with ``hidden_blocks()`` returning its
    blocks in forward order whose outputs are tensors with the batch first — every
    keepmix model (``keepmix.models``); for others pass ``blocks=`` or name modules.

    Args:
        model: the classifier being trained.
        num_classes: K, needed for class-index targets.
        alpha: Beta parameter (2.0, the paper's setting).
        layers: eligible layers, ints or names (default ``(0, 2, 3)``: the input and the
            outputs of the first and second stage of a keepmix ResNet, as the paper).
        prob: per-image mixing probability.
        pairing: ``"random"``, ``"greedy"`` (on spectral maps of the input) or a callable.
        blocks: override for ``model.hidden_blocks()``.
        generator: optional ``torch.Generator``; the layer draw reads one number
            back to the host per call (none when the generator is on the CPU).

    Shapes: images float B×C×H×W → (B×C×H×W, B×K float32). ``last_stats``:
    ``lam``, ``layer`` (int64 scalar: the position in ``layers`` drawn), ``partner``, ``mixed``.
    """

    accepts_uint8 = False

    def __init__(self, model: nn.Module, num_classes: Optional[int] = None, alpha: float = 2.0,
                 layers: Sequence[Union[int, str]] = (0, 2, 3), *, prob: float = 1.0, pairing="random",
                 blocks: Optional[Sequence[nn.Module]] = None, generator: Optional[torch.Generator] = None):
        super().__init__(num_classes, alpha, prob, pairing, generator)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        if blocks is None:
            if not callable(getattr(model, "hidden_blocks", None)):
                raise TypeError("model must have hidden_blocks() (keepmix ClassifierModel interface) "
                                "or blocks= must be given")
            blocks = model.hidden_blocks()
        blocks = list(blocks)
        if not all(isinstance(b, nn.Module) for b in blocks):
            raise TypeError("blocks must be nn.Modules")
        self.blocks: List[nn.Module] = blocks
        if isinstance(layers, (str, numbers.Integral)):
            layers = (layers,)
        try:
            layers = tuple(layers)
        except TypeError:
            raise TypeError(f"layers must be a sequence of ints or module names, got {layers!r}") from None
        if not layers or any(isinstance(k, bool) or not isinstance(k, (numbers.Integral, str)) for k in layers):
            raise TypeError(f"layers must be a non-empty sequence of ints or module names, got {layers!r}")
        named = dict(model.named_modules())
        targets: List[Optional[nn.Module]] = []
        for k in layers:
            if isinstance(k, str):
                if k == "input":
                    targets.append(None)
                elif k in named and k != "":
                    targets.append(named[k])
                else:
                    hint = difflib.get_close_matches(k, [n for n in named if n], n=3)
                    raise ValueError(f"layers: {k!r} is not 'input' nor a module of the model"
                                     + (f"; did you mean {', '.join(map(repr, hint))}?" if hint else ""))
            elif 0 <= k <= len(blocks):
                targets.append(None if k == 0 else blocks[k - 1])
            else:
                raise ValueError(f"layers: {k!r} is out of range; ints lie in [0, {len(blocks)}] (0 = input, "
                                 f"k = output of hidden_blocks()[k − 1]), or name a module ('input', 'stages.0')")
        if len({id(t) for t in targets}) != len(targets):
            raise ValueError(f"layers must name distinct places, got {layers!r}")
        self.layers = tuple(k if isinstance(k, str) else int(k) for k in layers)
        self._targets = targets
        self._handle = None

    def _repr_fields(self):
        return {**super()._repr_fields(), "layers": self.layers}

    @property
    def armed(self) -> bool:
        """Whether a hook is waiting for the next forward."""
        return self._handle is not None

    def disarm(self) -> None:
        """Remove the pending hook, if any."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _arm(self, block: nn.Module, partner: torch.Tensor, lam: torch.Tensor) -> None:
        batch = partner.shape[0]

        def hook(module, inputs, output):
            self.disarm()
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"ManifoldMixup can only mix tensor outputs, got {type(output).__name__}")
            if output.shape[0] != batch:
                raise RuntimeError(f"ManifoldMixup's hook was armed for a batch of {batch} but the next forward has "
                                   f"{output.shape[0]}: call model(images) right after the op")
            weight = lam.to(output.device, output.dtype).view(-1, *([1] * (output.ndim - 1)))
            return torch.lerp(output.index_select(0, partner.to(output.device)), output, weight)

        self._handle = block.register_forward_hook(hook)

    def apply(self, images, targets) -> Batch:
        self.disarm()
        self._require_targets(targets)
        batch, device = images.shape[0], images.device
        origin = "cpu" if self.generator is None else self.generator.device  # the layer choice is read on the host
        layer = int(_random.randint(0, len(self.layers), (1,), origin, self.generator))
        block = self._targets[layer]
        lam = self._lam(batch, device)
        mixed = self._selected(batch, device)
        lam = torch.where(mixed, lam, torch.ones_like(lam))
        partner = self._partner(images)
        self.last_stats = {"lam": lam, "layer": torch.tensor(layer), "partner": partner, "mixed": mixed}
        soft = mix_targets(targets, partner, lam, self.num_classes)
        if block is None:
            return mix_images(images, partner, lam), soft
        if batch >= 2:
            self._arm(block, partner, lam)
        return images, soft
