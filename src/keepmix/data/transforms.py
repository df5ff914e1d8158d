"""Per-sample geometric transforms of the streaming input path, run in ``DataLoader`` workers on PIL images.

Each transform takes a decoded RGB PIL image (W×H pixels), returns a uint8 3×S×S tensor and
reports the crop it made as ``(top, left, height, width, flip, source_height, source_width)`` in
the source image's own pixels — the per-sample form of :class:`keepmix.data.BatchGeometry`, which
:func:`keepmix.data.collate_with_geometry` stacks into the batch's geometry. So whatever keepmix
keeps in the data set's coordinates (the saliency memory) maps through worker-side crops exactly
as through the device-side ones.

* :func:`random_resized_box` — the random-resized-crop box (Szegedy et al.; torchvision's
  algorithm): up to ten tries of an area share ``s ~ U(scale)`` and a log-uniform aspect ratio
  ``r ~ exp(U(log ratio))``, box sides ``w = round(√(s·A·r))``, ``h = round(√(s·A/r))``, the first box
  that fits placed uniformly; else the centre crop with the ratio clamped to ``ratio``.
* :func:`crop_resize` — the box resampled to S×S in one Pillow ``resize(box=…)`` call (bilinear,
  antialiased when shrinking), then mirrored. Pillow samples output pixel i at source position
  ``top + (i + ½)·height/S − ½``, which is :func:`keepmix.data.output_to_source` — the reported box
  is the exact geometry of the pixels.
* :func:`center_box` — evaluation: the image's shorter side resized to ``resize`` and the central
  S×S kept, written as one box in source pixels (one resampling, not two).

Randomness: a sample's draws come from a ``torch.Generator`` seeded with
``derive_seed(seed, epoch, index)`` — a function of the run's seed, the epoch and the sample's
data-set index only (never of the worker, the batch or the rank), 41 uniforms per sample (four per
try, one for the flip).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from .images import require_pillow, resize_image
from .loader import derive_seed

__all__ = ["random_resized_box", "center_box", "crop_resize", "pil_to_tensor", "tensor_to_pil",
           "SampleTransform", "TRIES", "DEFAULT_SCALE", "DEFAULT_RATIO"]

#: tries of the random-resized-crop box before the centre-crop fallback
TRIES = 10
DEFAULT_SCALE = (0.08, 1.0)
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)

Crop = Tuple[float, float, float, float, bool, int, int]


def _check_range(value: Sequence[float], name: str, low: float) -> Tuple[float, float]:
    if len(value) != 2:
        raise ValueError(f"{name} must be two numbers (low, high), got {value!r}")
    a, b = float(value[0]), float(value[1])
    if not (low < a <= b) or not math.isfinite(b):
        raise ValueError(f"{name} must satisfy {low} < low <= high, got {value!r}")
    return a, b


def random_resized_box(height: int, width: int, uniforms: Sequence[float], scale: Sequence[float] = DEFAULT_SCALE,
                       ratio: Sequence[float] = DEFAULT_RATIO) -> Tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random-resized crop of an image of ``height`` × ``width`` pixels.

    ``uniforms``: at least ``4·TRIES`` numbers in [0, 1); try k uses ``uniforms[4k:4k+4]`` for the
    area share, the log aspect ratio, the row and the column (``top = ⌊u·(H − h + 1)⌋``). When no
    try fits, the centre crop of the whole image with its aspect ratio clamped to ``ratio``.
    """
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for k in range(TRIES):
        u_area, u_ratio, u_top, u_left = uniforms[4 * k:4 * k + 4]
        target = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect = math.exp(log_low + (log_high - log_low) * u_ratio)
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u_top * (height - h + 1)), height - h)
            left = min(int(u_left * (width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    h, w = max(1, min(h, height)), max(1, min(w, width))
    return (height - h) // 2, (width - w) // 2, h, w


def center_box(height: int, width: int, size, resize: int) -> Tuple[float, float, float, float]:
    """``(top, left, h, w)``: the central ``size`` = (S_h, S_w) (or S) of the image after its shorter side is
    resized to ``resize`` — in source pixels ``h = S_h · min(H, W) / resize`` (likewise w), centred."""
    if isinstance(size, int):
        size = (size, size)
    factor = min(height, width) / resize
    h, w = size[0] * factor, size[1] * factor
    return (height - h) / 2.0, (width - w) / 2.0, h, w


def pil_to_tensor(image) -> torch.Tensor:
    """An RGB PIL image as uint8 3×H×W."""
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()


def tensor_to_pil(image: torch.Tensor):
    """A uint8 C×H×W tensor (1 or 3 channels) as an RGB PIL image."""
    pil = require_pillow()
    array = image.detach().to("cpu", torch.uint8).permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        return pil.fromarray(array[:, :, 0], "L").convert("RGB")
    return pil.fromarray(np.ascontiguousarray(array), "RGB")


def crop_resize(image, box: Tuple[float, float, float, float], size: Tuple[int, int], flip: bool = False
                ) -> torch.Tensor:
    """The box ``(top, left, h, w)`` of a PIL image resampled to ``size`` = (S_h, S_w) (bilinear, antialiased
    when shrinking), mirrored when ``flip``; uint8 3×S_h×S_w."""
    pil = require_pillow()
    top, left, h, w = box
    out = image.resize((int(size[1]), int(size[0])), pil.Resampling.BILINEAR,
                       box=(float(left), float(top), float(left + w), float(top + h)))
    if flip:
        out = out.transpose(pil.Transpose.FLIP_LEFT_RIGHT)
    return pil_to_tensor(out)


class SampleTransform:
    """The worker-side transform of one sample: ``(PIL image, index, epoch) → (uint8 3×S×S, crop)``.

    Modes:
        ``"resized"``: training — :func:`random_resized_box` with ``scale``/``ratio``, resampled to
            S×S, mirrored with probability ½ when ``flip``; draws seeded ``derive_seed(seed, epoch, index)``.
        ``"center"``: evaluation — :func:`center_box` (shorter side to ``resize``, central S×S); no randomness.
        ``"whole"``: the whole image resized to S×S with :func:`keepmix.data.resize_image` (bilinear,
            antialiased, the decoding of the in-memory path), unflipped; a device-side pad-and-crop
            (``data.crop: pad``) comes after it.
    """

    MODES = ("resized", "center", "whole")

    def __init__(self, mode: str, size, *, scale: Sequence[float] = DEFAULT_SCALE,
                 ratio: Sequence[float] = DEFAULT_RATIO, flip: bool = True, resize: Optional[int] = None,
                 seed: int = 0):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        if isinstance(size, int):
            size = (size, size)
        self.size = (int(size[0]), int(size[1]))
        if min(self.size) < 1:
            raise ValueError(f"size must be positive, got {size!r}")
        self.mode = mode
        self.scale = _check_range(scale, "scale", 0.0)
        if self.scale[1] > 1.0:
            raise ValueError(f"scale must lie in (0, 1], got {scale!r}")
        self.ratio = _check_range(ratio, "ratio", 0.0)
        self.flip = bool(flip)
        if resize is None:
            resize = int(round(max(self.size) / 0.875))
        if resize < max(self.size):
            raise ValueError(f"resize ({resize}) must be at least the crop size {max(self.size)}")
        self.resize = int(resize)
        self.seed = int(seed)

    def __repr__(self) -> str:
        return (f"SampleTransform(mode={self.mode!r}, size={self.size}, scale={self.scale}, ratio={self.ratio}, "
                f"flip={self.flip}, resize={self.resize})")

    def uniforms(self, index: int, epoch: int) -> torch.Tensor:
        """The sample's 41 uniforms: ``4·TRIES`` for the box, one for the flip."""
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, index))
        return torch.rand(4 * TRIES + 1, generator=generator, dtype=torch.float64)

    def __call__(self, image, index: int, epoch: int) -> Tuple[torch.Tensor, Crop]:
        width, height = image.size
        if self.mode == "whole":
            out = resize_image(pil_to_tensor(image), self.size)
            return out, (0.0, 0.0, float(height), float(width), False, height, width)
        if self.mode == "center":
            box = center_box(height, width, self.size, self.resize)
            flip = False
        else:
            u = self.uniforms(index, epoch).tolist()
            box = random_resized_box(height, width, u, self.scale, self.ratio)
            flip = self.flip and u[4 * TRIES] < 0.5
        out = crop_resize(image, box, self.size, flip)
        return out, (float(box[0]), float(box[1]), float(box[2]), float(box[3]), bool(flip), height, width)
