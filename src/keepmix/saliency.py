"""Saliency maps: where in an image the label lives.

Every map function takes a float batch B×C×H×W and returns float32 maps B×H×W,
non-negative, on the batch's device.

* :func:`gradient` — vanilla-gradient saliency (Simonyan et al.), in
  KeepAugment's form ``max_c |∂ℓ_y/∂x_c|`` (``reduce="max"``, ℓ_y the label
  logit) or GuidedMixup-AP / PuzzleMix's ``sqrt(mean_c (∂CE/∂x_c)²)``
  (``reduce="rms"``); ``scale < 1`` computes it on a bicubic-downsampled copy.
* :func:`spectral_residual` — GuidedMixup-SR's spectral residual (Hou & Zhang,
  in the GuidedMixup variant), no model pass.
* :class:`EarlyHead` — KeepAugment's early head: pooling + linear classifier on
  the first block's output, an auxiliary loss for training, and saliency
  through that shallow path only.
* :func:`gaussian_blur`, :func:`normalize_sum` — the post-processing
  GuidedMixup applies before pairing and masking; :func:`unit_scale` — the exact power-of-two
  rescale under KeepAugment's box selection.

Saliency *sources* (:class:`GradientSaliency`, :class:`SpectralSaliency`,
:class:`EarlyHeadSaliency`) wrap these as callables ``source(images, targets)
-> maps`` that the ops take.

**How a model is treated.** A saliency pass leaves the model exactly as it
found it — parameters, buffers, the train/eval flag of every submodule and every
``requires_grad`` flag. Only the input gradient is requested
(``torch.autograd.grad`` w.r.t. the input), so no parameter ``.grad`` is
written. BatchNorm: by default (``bn="eval"``) the pass runs the whole model
in eval mode, so normalisation uses the running statistics, dropout is off, and
each image's map depends on that image alone (as PuzzleMix does; the official
GuidedMixup code instead runs in train mode and corrupts the running
statistics). ``bn="train"`` keeps the model's own modes (batch statistics)
and restores every buffer afterwards, so the running statistics are untouched;
dropout and stochastic depth are switched off for the pass in both modes, so a
map is a property of the model and the batch, not of a dropout draw from the
global RNG (an op's maps, and so its output, are bit-identical per seed).
"""

from __future__ import annotations

import contextlib
import math

from typing import Callable, Optional, Tuple, Union

import torch
from torch import nn
import torch.nn.functional as F

from . import _random
from ._cache import device_cache
from ._checks import check_flag, check_generator, check_images, check_maps, check_positive, check_targets
from .convert import check_mean_std, normalize_images

SaliencySource = Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # the grayscale weights of the GuidedMixup SR code


# --------------------------------------------------------------------------- model state


class _PreservedModel:
    """Context manager that snapshots what a saliency pass could change and restores it.

    Snapshot: the ``training`` flag of every submodule, every parameter's
    ``requires_grad`` and, for ``bn="train"``, a copy of every buffer.
    """

    def __init__(self, model: nn.Module, bn: str):
        self.model = model
        self.bn = bn

    def __enter__(self):
        modules = list(self.model.modules())
        self.modes = [m.training for m in modules]
        self.flags = [p.requires_grad for p in self.model.parameters()]
        self.buffers = None
        if self.bn == "eval":
            self.model.eval()
        else:
            self.buffers = [b.detach().clone() for b in self.model.buffers()]
            for m in modules:  # batch statistics yes, random masks no
                if _is_stochastic(m):
                    m.eval()
        return self

    def __exit__(self, *exc):
        for m, mode in zip(self.model.modules(), self.modes):
            m.training = mode
        for p, flag in zip(self.model.parameters(), self.flags):
            p.requires_grad_(flag)
        if self.buffers is not None:
            with torch.no_grad():
                for b, saved in zip(self.model.buffers(), self.buffers):
                    b.copy_(saved)
        return False


def _is_stochastic(module: nn.Module) -> bool:
    """Dropout of any kind (``nn.Dropout*``, ``AlphaDropout``) and timm-style ``DropPath`` / ``DropBlock``."""
    return isinstance(module, nn.modules.dropout._DropoutNd) or type(module).__name__.startswith(("DropPath",
                                                                                                 "DropBlock"))


def _check_bn(bn: str) -> str:
    if bn not in ("eval", "train"):
        raise ValueError(f"bn must be 'eval' or 'train', got {bn!r}")
    return bn


def _check_reduce(reduce: str) -> str:
    if reduce not in ("max", "rms"):
        raise ValueError(f"reduce must be 'max' (KeepAugment) or 'rms' (GuidedMixup-AP), got {reduce!r}")
    return reduce


def _model_dtype(model: nn.Module, fallback: torch.dtype) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return fallback


def _logit_seed(logits: torch.Tensor, targets: Optional[torch.Tensor], reduce: str
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """∂objective/∂logits, factored as ``seed · scale`` with max_k |seed_bk| = 1 (float32).

    The objective is, per image, ``max``: the label logit ℓ_y (soft targets weight the
    logits: Σ_k t_k ℓ_k); ``rms``: the cross-entropy CE(ℓ, y) (soft: −Σ_k t_k log p_k).
    ``targets=None`` uses the predicted class. Backpropagating the unit-scale seed and
    multiplying the input gradient by ``scale`` afterwards (in float32) gives the same
    gradient without underflow in a float16/bfloat16 backward (eval-mode passes keep
    images independent, so each image gets its own scale): a confident image's CE
    gradient p − e_y is ~1e-6 and vanishes in half precision. For hard labels the
    CE seed is exact in any margin: (p − e_y)/(1 − p_y) is the softmax over the other
    classes at k ≠ y and −1 at y, and log(1 − p_y) = logsumexp_{k≠y} ℓ_k − logsumexp_k ℓ_k.
    """
    logits = logits.detach().float()
    batch, classes = logits.shape
    if targets is None:
        targets = logits.argmax(dim=1)
    if targets.ndim == 2:
        if targets.shape[1] != classes:
            raise ValueError(f"targets has {targets.shape[1]} classes but the model outputs {classes}")
        soft = targets.detach().float()
        grad = soft if reduce == "max" else soft.sum(dim=1, keepdim=True) * logits.softmax(dim=1) - soft
        scale = grad.abs().amax(dim=1)
        return grad / scale.clamp_min(torch.finfo(torch.float32).tiny).view(-1, 1), scale
    # the range check reads a value back (a sync), so it runs with the input-checks switch
    targets = targets.detach().long()
    check_flag(((targets >= 0) & (targets < classes)).all(), f"targets must be class indices in [0, {classes})")
    label = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, targets.clamp(0, classes - 1).view(-1, 1), True)
    if reduce == "max":
        return label.float(), torch.ones(batch, device=logits.device)
    if classes == 1:
        return torch.zeros_like(logits), torch.zeros(batch, device=logits.device)
    others = logits.masked_fill(label, float("-inf"))
    log_others = others.logsumexp(dim=1)
    seed = torch.where(label, torch.full_like(logits, -1.0), (others - log_others.view(-1, 1)).exp())
    return seed, (log_others - logits.logsumexp(dim=1)).exp()


def _reduce_channels(grad: torch.Tensor, reduce: str) -> torch.Tensor:
    if reduce == "max":
        return grad.abs().amax(dim=1)
    return grad.pow(2).mean(dim=1).sqrt()


def _resize_maps(maps: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    # bilinear keeps the map non-negative (bicubic would overshoot below 0)
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


def _downsample(images: torch.Tensor, scale: float) -> torch.Tensor:
    h, w = images.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if size == (h, w):
        return images
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False)


# --------------------------------------------------------------------------- gradient saliency


def gradient(model: nn.Module, images: torch.Tensor, targets: Optional[torch.Tensor] = None, *,
             reduce: str = "max", scale: float = 1.0, bn: str = "eval") -> torch.Tensor:
    """Vanilla-gradient saliency of ``model`` at ``images``.

    .. math::
        g_{ij} = \\max_c |∂ℓ_y(x)/∂x_{cij}|                 \\quad (reduce="max", KeepAugment)
        g_{ij} = \\sqrt{\\tfrac{1}{C}\\sum_c (∂CE(x, y)/∂x_{cij})^2} \\quad (reduce="rms", GuidedMixup-AP)

    Args:
        model: classifier mapping B×C×H×W to logits B×K. Left exactly as found.
        images: float B×C×H×W, normalised as the model expects. uint8 is rejected
            (the model needs the normalised input).
        targets: class indices (B,), soft targets (B×K), or ``None`` for the
            predicted class.
        reduce: ``"max"`` or ``"rms"`` (see above).
        scale: in (0, 1]. Below 1 the gradient is taken on a bicubic-downsampled
            copy of size round(H·scale)×round(W·scale) and the map is resized
            back to H×W bilinearly (KeepAugment's low-resolution speed-up).
        bn: ``"eval"`` (default) or ``"train"``; see the module docstring.

    Returns:
        float32 maps B×H×W, ≥ 0.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return _input_gradient_maps(model, [model], images, targets, reduce, scale, bn)


def _check_scale(scale) -> float:
    scale = check_positive(scale, "scale")
    if scale > 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    return scale


def _input_gradient_maps(forward, modules, images, targets, reduce: str, scale: float, bn: str) -> torch.Tensor:
    """The shared gradient-saliency pass: validate, downsample, ``forward`` under preserved
    ``modules``, input gradient of the objective, channel reduction, resize back to H×W."""
    check_images(images, allow_uint8=False)
    if targets is not None:
        check_targets(targets, images.shape[0])
    reduce = _check_reduce(reduce)
    bn = _check_bn(bn)
    scale = _check_scale(scale)
    height, width = images.shape[-2:]
    # Outside any caller's inference mode and autocast: images made under
    # torch.inference_mode() are cloned into ordinary tensors, and the pass runs in
    # the model's own precision, so maps do not depend on the caller's context.
    with torch.inference_mode(False), torch.autocast(images.device.type, enabled=False), \
            contextlib.ExitStack() as stack, torch.enable_grad():
        x = images.detach()
        x = x.clone() if x.is_inference() else x
        x = _downsample(x, scale) if scale < 1 else x
        x = x.to(_model_dtype(modules[0], x.dtype)).requires_grad_(True)
        for module in modules:
            stack.enter_context(_PreservedModel(module, bn))
        logits = forward(x)
        if logits.ndim != 2 or logits.shape[0] != images.shape[0]:
            raise ValueError(f"model must return logits of shape B×K, got {tuple(logits.shape)}")
        seed, seed_scale = _logit_seed(logits, targets, reduce)
        if bn == "train":  # batch statistics couple the images: one scale for the whole batch
            batch_scale = seed_scale.amax()
            seed = seed * (seed_scale / batch_scale.clamp_min(torch.finfo(torch.float32).tiny)).view(-1, 1)
            seed_scale = batch_scale.expand_as(seed_scale)
        (grad,) = torch.autograd.grad(logits, x, grad_outputs=seed.to(logits.dtype))
    maps = _reduce_channels(grad.float(), reduce) * seed_scale.view(-1, 1, 1)
    return _resize_maps(maps, (height, width))


# --------------------------------------------------------------------------- spectral residual


def _box3_replicate(x: torch.Tensor) -> torch.Tensor:
    """3×3 mean filter with replicate padding on B×H×W (two banded matrix products)."""
    return _separable(x, (1.0 / 3.0,) * 3, "replicate", "replicate")


def _filter_taps(kernel_size: int, sigma: float) -> Tuple[float, ...]:
    half = (kernel_size - 1) / 2.0
    taps = [math.exp(-((i - half) ** 2) / (2.0 * sigma ** 2)) for i in range(kernel_size)]
    total = math.fsum(taps)
    return tuple(t / total for t in taps)


@device_cache(64)
def _filter_matrix(n: int, taps: Tuple[float, ...], mode: str, dtype: torch.dtype, device: torch.device
                   ) -> torch.Tensor:
    """The n×n matrix M of a 1-d filter with padding folded in: ``(x @ M)[j] = Σ_t taps[t]·x[src(j + t − pad)]``,
    src reflecting (``"reflect"``: −1 → 1) or clamping (``"replicate"``) outside [0, n). Built on the host in
    double precision once per (n, taps, mode, dtype, device)."""
    pad = len(taps) // 2
    rows = [[0.0] * n for _ in range(n)]
    for j in range(n):
        for t, weight in enumerate(taps):
            src = j + t - pad
            if mode == "reflect":
                src = -src if src < 0 else (2 * (n - 1) - src if src >= n else src)
            else:
                src = min(max(src, 0), n - 1)
            rows[src][j] += weight
    with torch.inference_mode(False), torch.no_grad():
        return torch.tensor(rows, dtype=dtype, device=device)


#: sides up to this are filtered by banded matrix products; longer ones by padding and convolution
#: (a product costs O(side) per value, a convolution O(taps): at 2048 px the convolution is faster)
_MATRIX_SIDE_LIMIT = 256


def _separable(x: torch.Tensor, taps: Tuple[float, ...], mode_h: str, mode_w: str) -> torch.Tensor:
    """A separable filter on B×H×W: two banded matrix products (rows, then columns) for sides up to
    :data:`_MATRIX_SIDE_LIMIT` — two calls where padding and two 1-channel convolutions took six, and
    those convolutions are slow on the CPU — else padding and two 1-channel convolutions."""
    h, w = x.shape[-2:]
    if max(h, w) <= _MATRIX_SIDE_LIMIT:
        rows = x @ _filter_matrix(w, taps, mode_w, x.dtype, x.device)
        return _filter_matrix(h, taps, mode_h, x.dtype, x.device).t() @ rows
    pad = len(taps) // 2
    kernel = _cached(taps, x.dtype, x.device)
    y = F.conv2d(F.pad(x.unsqueeze(1), (pad, pad, 0, 0), mode=mode_w), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(y, (0, 0, pad, pad), mode=mode_h), kernel.view(1, 1, -1, 1)).squeeze(1)


def spectral_residual(images: torch.Tensor, *, max_size: int = 128, blur: Optional[Tuple[int, float]] = (7, 3.0)
                      ) -> torch.Tensor:
    """Spectral-residual saliency, the GuidedMixup-SR variant, batched with ``torch.fft``.

    Steps (B×3×H×W in, B×H×W out):

    1. gray = 0.2989 R + 0.587 G + 0.114 B (a single channel is used as is);
    2. if H > ``max_size`` (128), resize bilinearly to 128×128, and resize the
       map back to H×W at the end;
    3. F = fft2(gray) (not shifted); A = sqrt(Re² + Im² + 1e-10);
    4. R = exp(log A − box₃ₓ₃(log A)), the 3×3 mean filter with replicate padding;
    5. S = |ifft2(R · F / A)| (the magnitude, not squared as in Hou & Zhang);
    6. Gaussian blur (kernel 7, σ 3, reflect padding); ``blur=None`` skips it.

    The result does not depend on the intensity scale, so uint8 input is
    accepted (converted to float). Computed in float32 (float64 input stays float64).
    """
    check_images(images, allow_uint8=True)
    if images.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels for spectral_residual, got {images.shape[1]}")
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
        raise ValueError(f"max_size must be a positive int, got {max_size!r}")
    x = images if images.dtype in (torch.float32, torch.float64) else images.float()
    if x.shape[1] == 3:
        gray = (x * _cached(GRAY_WEIGHTS, x.dtype, x.device).view(1, 3, 1, 1)).sum(dim=1)
    else:
        gray = x[:, 0]
    height, width = gray.shape[-2:]
    resized = height > max_size
    if resized:
        gray = F.interpolate(gray.unsqueeze(1), size=(max_size, max_size), mode="bilinear",
                             align_corners=False).squeeze(1)
    spectrum = torch.fft.fft2(gray)
    # log A = ½ log(Re² + Im² + 1e-10); R·F/A = exp(log A − box(log A))·F/A = exp(−box(log A))·F
    log_amp = torch.log(torch.view_as_real(spectrum).square().sum(dim=-1).add_(1e-10)).mul_(0.5)
    saliency = torch.fft.ifft2(torch.exp(_box3_replicate(log_amp).neg_()) * spectrum).abs()
    if resized:
        saliency = _resize_maps(saliency, (height, width))
    if blur is not None:
        saliency = gaussian_blur(saliency, *blur)
    return saliency if saliency.dtype in (torch.float32, torch.float64) else saliency.float()


# --------------------------------------------------------------------------- post-processing


def gaussian_kernel1d(kernel_size: int, sigma: float, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised 1-d Gaussian taps exp(−x²/2σ²), x = −(k−1)/2 … (k−1)/2 (computed on the host in
    double precision, made once per (k, σ, dtype, device))."""
    return _cached(_filter_taps(kernel_size, sigma), dtype, torch.device(device) if device is not None
                   else torch.device("cpu"))


@device_cache(128)
def _cached(values: Tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small constant tensor made once per (values, dtype, device): no tensor creation per call."""
    with torch.inference_mode(False), torch.no_grad():
        return torch.tensor(values, dtype=dtype, device=device)


def gaussian_blur(maps: torch.Tensor, kernel_size: int = 7, sigma: float = 3.0) -> torch.Tensor:
    """Separable Gaussian blur of maps B×H×W with reflect padding (two banded matrix products).

    Reflect padding needs the pad ((k−1)/2) to be smaller than the side; on a
    side that short the padding falls back to replicate (documented so a 2×2
    map still has a defined blur). ``kernel_size`` must be odd and positive.
    """
    check_maps(maps, "maps")
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
    sigma = check_positive(sigma, "sigma")
    if kernel_size == 1:
        return maps
    dtype = maps.dtype if maps.dtype in (torch.float32, torch.float64) else torch.float32
    x = maps if maps.dtype == dtype else maps.to(dtype)
    pad = kernel_size // 2
    h, w = x.shape[-2:]
    mode_h = "reflect" if h > pad else "replicate"
    mode_w = "reflect" if w > pad else "replicate"
    x = _separable(x, _filter_taps(kernel_size, sigma), mode_h, mode_w)
    return x if x.dtype == maps.dtype else x.to(maps.dtype)


def unit_scale(maps: torch.Tensor) -> torch.Tensor:
    """Each map times the power of two that brings ``max |s_b|`` into [½, 1); float32 out.

    With ``p_b = max(max |s_b|, tiny)`` and ``p_b = m_b·2^(e_b)`` (``torch.frexp``, ½ ≤ m_b < 1),
    the factor ``m_b / p_b`` is exactly ``2^(−e_b)`` (a correctly rounded division whose exact
    quotient is representable). Multiplying by a power of two is exact, so window sums keep their
    rounding and every comparison its outcome: an op that only compares sums within a map (the
    KeepAugment selection) chooses the same for ``c·s`` as for ``s`` at any finite scale c > 0, and
    no sum of a scaled map can overflow (maps near 2^127 used to overflow to inf and change the
    boxes, or raise). Computed in float64 for float64 maps (so maps beyond float32's range survive
    the cast), in float32 otherwise: half-precision maps are widened first (scaling in float16 would
    flush small values to zero). A zero map stays zero; maps below float32's normal range are scaled
    up by 2^125 at most. Shapes: B×H×W in and out.
    """
    return unit_scale_with_peak(maps)[0]


def unit_scale_with_peak(maps: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`unit_scale` and the peaks max |s_b| it scaled by (B×1×1, the maps' dtype after widening;
    NaN or inf exactly when the map holds one — a finiteness check for free)."""
    if maps.dtype not in (torch.float32, torch.float64):
        maps = maps.float()
    peak = maps.abs().amax(dim=(1, 2), keepdim=True)
    tiny = peak.clamp_min(torch.finfo(maps.dtype).tiny)
    scaled = maps * (torch.frexp(tiny).mantissa / tiny)
    return (scaled if scaled.dtype == torch.float32 else scaled.float()), peak


def normalize_sum(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Sum-to-1 normalisation, scale-free: ŝ = s / max s, then (ŝ + ε) / Σ (ŝ + ε) per map.

    s is clamped ≥ 0 first. Dividing by the map's maximum makes the result
    independent of the map's scale: ``normalize_sum(c·s) == normalize_sum(s)`` up
    to rounding for every c > 0 over the finite float range (Guided-AP maps of
    confident images are ~1e-6 or smaller, and must not flatten into uniform ones).
    ε (default 1e-12, relative to the maximum) is then added to every pixel so that
    every map sums to exactly 1 and is strictly positive: an all-zero (flat) map
    becomes uniform 1/(HW), and the guided mask s_i / (s_i + s_j) is never 0/0.

    Args:
        maps: B×H×W float maps.
        eps: ε > 0, relative to each map's maximum.

    Returns:
        float32 B×H×W, each map summing to 1.
    """
    check_maps(maps, "maps")
    eps = check_positive(eps, "eps")
    s = maps.clamp_min(0)  # in the maps' own dtype: float64 maps of 1e-300 stay representable
    peak = s.amax(dim=(1, 2), keepdim=True)
    s = s / peak.clamp_min(torch.finfo(peak.dtype).tiny)  # a zero map stays 0 (0 / tiny)
    s = (s if s.dtype == torch.float32 else s.float()) + eps
    return s / s.sum(dim=(1, 2), keepdim=True)


# --------------------------------------------------------------------------- early head


class _StopForward(Exception):
    def __init__(self, output):
        super().__init__()
        self.output = output


def _resolve_block(model: nn.Module, block: Union[None, str, nn.Module]) -> nn.Module:
    if block is None:
        if not hasattr(model, "first_block"):
            raise ValueError("block must be given for a model without a `first_block` attribute")
        block = model.first_block
    if isinstance(block, str):
        block = model.get_submodule(block)
    if not isinstance(block, nn.Module) or not any(m is block for m in model.modules()):
        raise ValueError("block must be a submodule of model (or its dotted name)")
    return block


def _out_channels(block: nn.Module) -> int:
    channels = None
    for m in block.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
            channels = m.num_features if hasattr(m, "num_features") else m.num_channels
        elif isinstance(m, nn.Conv2d):
            channels = m.out_channels
    if channels is None:
        raise ValueError("cannot infer the block's output channels; pass in_channels")
    return channels


class EarlyHead(nn.Module):
    """KeepAugment's early head: global average pooling + linear classifier after ``block``.

    The head is an ``nn.Module`` of its own; add its parameters to the optimiser
    (``list(model.parameters()) + list(head.parameters())``). Usage in a
    training step::

        head = EarlyHead(model, num_classes=10)          # hooks model.first_block
        logits = model(x)                                # the hook keeps block features
        loss = criterion(logits, y) + head.loss(y)       # weight 0.3 (the paper's)

    Saliency (:meth:`saliency`) runs the model only up to the block (the rest of
    the forward is cut short), so it costs a fraction of a full pass.

    Args:
        model: the classifier.
        num_classes: K.
        block: the module (or dotted name) after which the head sits; default
            ``model.first_block``.
        in_channels: channels of the block's output; inferred from its last
            conv/norm layer when omitted.
        weight: the auxiliary-loss coefficient (0.3 in the paper).
    """

    def __init__(self, model: nn.Module, num_classes: int, block: Union[None, str, nn.Module] = None,
                 in_channels: Optional[int] = None, weight: float = 0.3):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.weight = check_positive(weight, "weight", allow_zero=True)
        block_module = _resolve_block(model, block)
        channels = in_channels if in_channels is not None else _out_channels(block_module)
        self.fc = nn.Linear(channels, num_classes)
        # plain attributes (not submodules): the head must not own the model's parameters
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_block", block_module)
        self._features: Optional[torch.Tensor] = None
        self._stop = False
        self._handle = block_module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if self._stop:
            raise _StopForward(output)
        if module.training or torch.is_grad_enabled():
            self._features = output
        return None

    def remove(self) -> None:
        """Detach the hook from the model."""
        self._handle.remove()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits B×K from block features B×C×h×w."""
        return self.fc(features.float().mean(dim=(2, 3)).to(self.fc.weight.dtype))

    def loss(self, targets: torch.Tensor) -> torch.Tensor:
        """``weight`` × cross-entropy of the head on the features kept by the last forward.

        Soft targets (B×K) use the soft-target cross-entropy.
        """
        if self._features is None:
            raise RuntimeError("EarlyHead.loss needs a forward pass of the model first")
        logits = self(self._features)
        self._features = None
        if targets.ndim == 2:
            loss = -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()
        else:
            loss = F.cross_entropy(logits.float(), targets)
        return self.weight * loss

    def block_features(self, images: torch.Tensor) -> torch.Tensor:
        """Run the model up to the block and return its output (the rest is skipped)."""
        self._stop = True
        try:
            self._model(images)
        except _StopForward as stop:
            return stop.output
        finally:
            self._stop = False
        raise RuntimeError("the model's forward never reached the early-head block")

    def saliency(self, images: torch.Tensor, targets: Optional[torch.Tensor] = None, *, reduce: str = "max",
                 scale: float = 1.0, bn: str = "eval") -> torch.Tensor:
        """Gradient saliency through stem → block → early head only; same maths as :func:`gradient`.

        Leaves the model and the head exactly as found.
        """
        saved_features = self._features
        try:
            return _input_gradient_maps(lambda x: self(self.block_features(x)), [self._model, self], images,
                                        targets, reduce, scale, bn)
        finally:
            self._features = saved_features


# --------------------------------------------------------------------------- sources


class _GradientOptions:
    """The options every gradient-saliency source fixes: ``reduce``, ``scale``, ``bn`` (validated once)."""

    def __init__(self, reduce: str, scale: float, bn: str):
        self.reduce = _check_reduce(reduce)
        self.scale = _check_scale(scale)
        self.bn = _check_bn(bn)

    def _options(self) -> dict:
        return {"reduce": self.reduce, "scale": self.scale, "bn": self.bn}


class GradientSaliency(_GradientOptions):
    """Saliency source: :func:`gradient` of ``model`` with fixed options; ``source(images, targets)``."""

    def __init__(self, model: nn.Module, *, reduce: str = "max", scale: float = 1.0, bn: str = "eval"):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        super().__init__(reduce, scale, bn)
        self.model = model

    def __call__(self, images: torch.Tensor, targets: Optional[torch.Tensor] = None) -> torch.Tensor:
        return gradient(self.model, images, targets, **self._options())

    def __repr__(self) -> str:
        return f"GradientSaliency(model={type(self.model).__name__}, reduce={self.reduce!r}, scale={self.scale})"


class EarlyHeadSaliency(_GradientOptions):
    """Saliency source through an :class:`EarlyHead`."""

    def __init__(self, head: EarlyHead, *, reduce: str = "max", scale: float = 1.0, bn: str = "eval"):
        if not isinstance(head, EarlyHead):
            raise TypeError(f"head must be an EarlyHead, got {type(head).__name__}")
        super().__init__(reduce, scale, bn)
        self.head = head

    def __call__(self, images: torch.Tensor, targets: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.head.saliency(images, targets, **self._options())

    def __repr__(self) -> str:
        return f"EarlyHeadSaliency(reduce={self.reduce!r}, scale={self.scale})"


class SpectralSaliency:
    """Saliency source: :func:`spectral_residual` (no model; targets ignored)."""

    def __init__(self, *, max_size: int = 128, blur: Optional[Tuple[int, float]] = (7, 3.0)):
        self.max_size = max_size
        self.blur = blur

    def __call__(self, images: torch.Tensor, targets: Optional[torch.Tensor] = None) -> torch.Tensor:
        return spectral_residual(images, max_size=self.max_size, blur=self.blur)

    def __repr__(self) -> str:
        return "SpectralSaliency()"


class RandomSaliency:
    """Null-control saliency source: i.i.d. U(0, 1) maps B×H×W that carry no information.

    Feed it to any saliency op (``KeepCutout(16, saliency="random")``) to measure what
    the op gains from the *mechanism* alone; a gain of the real op over its baseline
    counts as the saliency's only where this control does no better than the
    baseline. Draws from ``generator`` (or torch's global generator), on the
    images' device; targets are ignored, uint8 images accepted.
    """

    def __init__(self, generator: Optional[torch.Generator] = None):
        self.generator = check_generator(generator)

    def __call__(self, images: torch.Tensor, targets: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, _, height, width = images.shape
        return _random.rand((batch, height, width), images.device, self.generator)

    def __repr__(self) -> str:
        return "RandomSaliency()"


class NormalizedInput:
    """Wrap a saliency source so it sees normalised images: ((x / 255 if uint8) − mean) / std.

    For pipelines whose ops work on raw images (policies take uint8 or [0, 1]
    floats) while the model expects normalised input, e.g.
    ``SelectivePaste(AutoAugment(), saliency=NormalizedInput(model, mean, std))``.
    ``source`` is anything :func:`as_source` accepts.
    """

    def __init__(self, source, mean, std, *, reduce: str = "max", scale: float = 1.0):
        self.source = as_source(source, reduce=reduce, scale=scale)
        if self.source is None:
            raise ValueError("source must be a saliency source, not None")
        self.mean, self.std = check_mean_std(mean, std)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """:func:`keepmix.convert.normalize_images` (ValueError on a channel-count mismatch)."""
        return normalize_images(images, self.mean, self.std)

    def __call__(self, images: torch.Tensor, targets: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.source(self.normalize(images), targets)

    def __repr__(self) -> str:
        return f"NormalizedInput({self.source!r})"


def as_source(saliency, *, reduce: str = "max", scale: float = 1.0,
              generator: Optional[torch.Generator] = None) -> Optional[SaliencySource]:
    """Turn what an op was given into a source callable.

    ``None`` → no source (maps must be passed at call time); ``"spectral"`` →
    :class:`SpectralSaliency`; ``"random"`` → :class:`RandomSaliency` drawing from
    ``generator`` (the op's); an ``nn.Module`` → :class:`GradientSaliency` of it
    with ``reduce``/``scale``; an :class:`EarlyHead` → :class:`EarlyHeadSaliency`;
    any other callable ``(images, targets) -> maps`` is used as is.
    """
    if saliency is None or isinstance(saliency, (GradientSaliency, SpectralSaliency, EarlyHeadSaliency,
                                                NormalizedInput, RandomSaliency)):
        return saliency
    if isinstance(saliency, str):
        if saliency in ("spectral", "sr"):
            return SpectralSaliency()
        if saliency == "random":
            return RandomSaliency(generator)
        raise ValueError(f"saliency given as a string must be 'spectral' or 'random' (the null control), "
                         f"got {saliency!r}")
    if isinstance(saliency, EarlyHead):
        return EarlyHeadSaliency(saliency, reduce=reduce, scale=scale)
    if isinstance(saliency, nn.Module):
        return GradientSaliency(saliency, reduce=reduce, scale=scale)
    if callable(saliency):
        return saliency
    raise TypeError("saliency must be None, 'spectral', 'random', an nn.Module, an EarlyHead or a callable "
                    f"(images, targets) -> B×H×W maps, got {type(saliency).__name__}")


def takes_uint8(source: Optional[SaliencySource]) -> bool:
    """Whether an op using ``source`` can accept uint8 images: not when a model sees the raw pixels."""
    return not isinstance(source, (GradientSaliency, EarlyHeadSaliency))


def compute_maps(source: Optional[SaliencySource], images: torch.Tensor, targets: Optional[torch.Tensor],
                 maps: Optional[torch.Tensor], op_name: str, *, finite: bool = True) -> torch.Tensor:
    """Maps for an op call: the precomputed ``maps`` if given, else ``source(images, targets)``; validated
    (type and shape always; NaN/inf unless ``finite=False``: the caller checks them itself, as
    :func:`keepmix.regions.select_boxes` does from the peaks it scales by, without another pass)."""
    if maps is None:
        if source is None:
            raise ValueError(f"{op_name} has no saliency source: pass saliency= to the constructor "
                             "or precomputed maps as saliency_maps= to the call")
        maps = source(images, targets)
    check_maps(maps, "saliency_maps", batch=images.shape[0], size=tuple(images.shape[-2:]), boundary=finite)
    # other dtypes reach float32 through an exact power-of-two rescale: float64 maps beyond float32's range
    # would otherwise become inf, half-precision ones lose their small values
    return maps if maps.dtype == torch.float32 else unit_scale(maps)
