"""Test-time corruptions for robustness evaluation: pure tensor functions, seeded through torch.

Two corruptions run on the batch's device, batched, with no host read:

* :func:`gaussian_noise` — additive i.i.d. Gaussian noise, ``x' = clip(x + σ·n)``, ``n ~ N(0, 1)`` per pixel
  and channel.
* :func:`replace_pixels` — random pixel replacement: exactly ``k = round(p·H·W)`` pixel positions per image,
  drawn uniformly without replacement, take all their channels from *another* image.

They are the two corruption types of GuidedMixup's ImageNet robustness table (Kang & Kim, AAAI 2023,
Table 5: "images partially random-replaced by other images and images distorted by random Gaussian
noise"), which reuses the corrupted ImageNet validation sets of Co-Mixup (Kim, Choo, Jeong & Song, ICLR
2021, arXiv 2102.03065). Those sets were generated once and published as files, and they corrupt the
*background* (the pixels outside ImageNet's object bounding boxes), which other data sets do not have.
The noise σ and the replaced share of those files are not stated in the text available to this project
(GuidedMixup's §5.5 and Table 5; the Co-Mixup code release ships the files, not their generator), so
keepmix's defaults are its own, stated here and printed with every result:

* ``NOISE_STD = 0.1`` on the 0–1 pixel scale — the σ of CIFAR-10-C's Gaussian noise at severity 5 and
  between ImageNet-C's severities 1 and 2 (Hendrycks & Dietterich, ICLR 2019);
* ``REPLACE_FRACTION = 0.5`` — half of the pixels, standing in for "the background" of an image whose
  object covers about half of it.

Both are arguments; ``keepmix eval --corruptions noise=0.2,replace=0.3`` sets them.

The 15 ImageNet-C corruption types (Hendrycks & Dietterich 2019) come from the maintained
``imagecorruptions`` package (the optional extra ``keepmix[corruptions]``): :func:`imagenet_c`. That
package corrupts one H×W×3 uint8 NumPy image at a time on the host with NumPy's global random state —
an evaluation-only path, seeded through ``numpy.random.seed``, not a training op.

Conventions (docs/DESIGN.md): images B×C×H×W, uint8 (0–255) or floating point on the 0–1 scale; the
output has the input's dtype, device and shape; uint8 results are rounded and clamped to 0–255, float
results clamped to [0, 1] (``clip=False`` keeps them unclamped, e.g. for normalised inputs).
Wrong kinds raise ``TypeError``, wrong values ``ValueError``, naming the argument.
"""

from __future__ import annotations

import numbers
from typing import Dict, List, Optional, Tuple

import torch

from . import _random
from ._checks import check_generator, check_images, check_positive, check_probability

__all__ = ["gaussian_noise", "replace_pixels", "imagenet_c", "imagenet_c_names", "NOISE_STD", "REPLACE_FRACTION",
           "ON_THE_FLY", "IMAGENET_C_TYPES", "replacement_count"]

#: keepmix's default σ of :func:`gaussian_noise` (0–1 scale; see the module docstring for where it comes from)
NOISE_STD = 0.1
#: keepmix's default share of replaced pixels of :func:`replace_pixels`
REPLACE_FRACTION = 0.5

#: the 15 ImageNet-C corruption types (Hendrycks & Dietterich 2019), in the benchmark's order
IMAGENET_C_TYPES: Tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression")


def _scale(images: torch.Tensor) -> float:
    """Full scale of the pixel values: 255 for uint8, 1 for floats."""
    return 255.0 if images.dtype == torch.uint8 else 1.0


def _finish(result: torch.Tensor, like: torch.Tensor, clip: bool) -> torch.Tensor:
    if like.dtype == torch.uint8:
        return result.round_().clamp_(0, 255).to(torch.uint8)
    if clip:
        result = result.clamp(0.0, 1.0)
    return result if result.dtype == like.dtype else result.to(like.dtype)


def gaussian_noise(images: torch.Tensor, std: float = NOISE_STD, generator: Optional[torch.Generator] = None, *,
                   clip: bool = True) -> torch.Tensor:
    """Additive Gaussian noise: ``x' = clip(x + s·σ·n)``, ``n ~ N(0, 1)`` i.i.d. per image, channel and pixel.

    ``s`` is the full scale of the pixels (255 for uint8, 1 for floats), so ``std`` is always on the
    0–1 scale. The noise is one float32 ``randn`` of shape B×C×H×W from ``generator`` (through
    :mod:`keepmix._random`: drawn on the generator's device, delivered to the batch's device), so the
    same seed gives the same noise: ``out == clip(x + s·σ·torch.randn(x.shape, generator=g))`` exactly
    (uint8: rounded half to even, then clamped to 0–255). The noise type of GuidedMixup Table 5 (see the
    module docstring for the strength).

    Args:
        images: B×C×H×W uint8 (0–255) or float (0–1; any float dtype).
        std: σ ≥ 0 on the 0–1 scale (default :data:`NOISE_STD` = 0.1). σ = 0 returns an equal copy of a
            batch on the pixel scale (``clip`` still clamps float values outside [0, 1]).
        generator: optional ``torch.Generator``.
        clip: clamp float results to [0, 1] (uint8 results are always clamped to 0–255).

    Returns:
        The corrupted batch, same dtype, device and shape.

    Raises:
        TypeError: ``images`` not a uint8/float tensor, ``std`` not a number, ``generator`` not a Generator.
        ValueError: ``images`` not 4-d, ``std`` negative or NaN.
    """
    check_images(images, "images")
    std = check_positive(std, "std", allow_zero=True)
    if std == float("inf"):
        raise ValueError("std must be finite, got inf")
    check_generator(generator)
    if not isinstance(clip, bool):
        raise TypeError(f"clip must be a bool, got {clip!r}")
    noise = _random.randn(tuple(images.shape), images.device, generator)
    work = images.float() if images.dtype == torch.uint8 else images
    result = work + noise.to(work.dtype) * (std * _scale(images))
    return _finish(result, images, clip)


def replacement_count(fraction: float, height: int, width: int) -> int:
    """``k = round(fraction · H · W)`` pixel positions replaced per image (Python's round: half to even)."""
    return int(round(fraction * height * width))


def replace_pixels(images: torch.Tensor, fraction: float = REPLACE_FRACTION,
                   generator: Optional[torch.Generator] = None, *, source: Optional[torch.Tensor] = None
                   ) -> torch.Tensor:
    """Random pixel replacement: ``k = round(p·H·W)`` pixels of each image take their values from another image.

    For image ``i`` a set ``P_i`` of exactly ``k`` positions is drawn uniformly among the ``H·W`` (the ``k``
    smallest of ``H·W`` i.i.d. uniforms, one ``rand`` B×H·W), and

        ``x'_i[c, u] = s_i[c, u]`` for ``u ∈ P_i`` (every channel c), ``x'_i[c, u] = x_i[c, u]`` elsewhere,

    where ``s = source`` if given, else the batch itself under a random cyclic shift
    ``s_i = x_{(i + t) mod B}`` with ``t`` uniform on {1, …, B−1} (one draw per call): a derangement, so
    every image is corrupted by a *different* image ("images partially random-replaced by other images",
    GuidedMixup Table 5; see the module docstring for the strength). Values are copied, not blended, so
    the output holds only values of ``x`` and ``s`` (uint8 stays exact). ``p = 0`` returns an equal copy,
    ``p = 1`` the source.

    Args:
        images: B×C×H×W uint8 or float.
        fraction: p in [0, 1] (default :data:`REPLACE_FRACTION` = 0.5).
        generator: optional ``torch.Generator`` (the shift, then the positions).
        source: optional B×C×H×W images the replacing pixels come from (the shape, dtype and device of
            ``images``). Evaluations pass the whole evaluation set under one random shift, so batch sizes
            (a last batch of 1) do not matter.

    Returns:
        The corrupted batch, same dtype, device and shape.

    Raises:
        TypeError: wrong kinds (``images``, ``fraction``, ``source`` — also of another dtype, ``generator``).
        ValueError: ``fraction`` outside [0, 1]; ``source`` of another shape or device; B = 1 without
            ``source`` (there is no other image).
    """
    check_images(images, "images")
    fraction = check_probability(fraction, "fraction")
    check_generator(generator)
    b, c, h, w = images.shape
    if source is None:
        if b < 2:
            raise ValueError("images must hold at least 2 images to replace pixels by other images "
                             f"(got {b}); pass source= to take them from elsewhere")
        shift = _random.randint(1, b, (1,), images.device, generator)
        order = torch.remainder(torch.arange(b, device=images.device) + shift, b)
        source = images.index_select(0, order)
    else:
        check_images(source, "source")
        if tuple(source.shape) != tuple(images.shape):
            raise ValueError(f"source must have the shape of images {tuple(images.shape)}, got {tuple(source.shape)}")
        if source.device != images.device:
            raise ValueError(f"source must be on the device of images ({images.device}), got {source.device}")
        if source.dtype != images.dtype:
            raise TypeError(f"source must have the dtype of images ({images.dtype}, the same pixel scale), "
                            f"got {source.dtype}")
    k = replacement_count(fraction, h, w)
    draws = _random.rand((b, h * w), images.device, generator)
    if k == 0:
        return images.clone()
    if k == h * w:
        return source.clone()
    positions = draws.topk(k, dim=1, largest=False).indices
    mask = torch.zeros((b, h * w), dtype=torch.bool, device=images.device).scatter_(1, positions, True)
    return torch.where(mask.view(b, 1, h, w), source, images)


# --------------------------------------------------------------------------- ImageNet-C through imagecorruptions

class MissingPackageError(ImportError, RuntimeError):
    """An optional package is not installed: an ``ImportError`` to Python code, and a ``RuntimeError``, so the
    command line reports it as one ``keepmix …: error:`` line."""


def _imagecorruptions():
    try:
        import imagecorruptions
    except ImportError as error:
        raise MissingPackageError("the ImageNet-C corruption types need the optional package imagecorruptions: "
                                  "pip install 'keepmix[corruptions]'") from error
    return imagecorruptions


def imagenet_c_names() -> List[str]:
    """The 15 benchmark corruption names as ``imagecorruptions`` spells them (the package must be installed)."""
    return list(_imagecorruptions().get_corruption_names("common"))


def imagenet_c(images: torch.Tensor, corruption: str, severity: int = 1, *, seed: Optional[int] = None
               ) -> torch.Tensor:
    """One of the 15 ImageNet-C corruptions (Hendrycks & Dietterich 2019) at ``severity`` 1–5, per image.

    Runs ``imagecorruptions.corrupt(image, corruption_name=…, severity=…)`` on each H×W×3 uint8 image on
    the host (the package's definition: its own constants per severity, NumPy's global random state, which
    ``seed`` sets once before the batch). An evaluation path with a host loop over images — never a
    training op. Needs ``pip install 'keepmix[corruptions]'``.

    Args:
        images: B×3×H×W uint8 or float (0–1); float images are quantised to uint8 first, as the package
            works on 8-bit images.
        corruption: one of :data:`IMAGENET_C_TYPES`.
        severity: 1–5.
        seed: ``numpy.random.seed(seed)`` before the batch, an int in [0, 2³²) (``None`` leaves NumPy's state
            as it is).

    Returns:
        The corrupted batch, same dtype, device and shape (float results on the 0–1 scale).
    """
    check_images(images, "images")
    if images.shape[1] != 3:
        raise ValueError(f"images must have 3 channels for the ImageNet-C corruptions, got {images.shape[1]}")
    if not isinstance(corruption, str):
        raise TypeError(f"corruption must be a string, got {type(corruption).__name__}")
    if corruption not in IMAGENET_C_TYPES:
        raise ValueError(f"corruption must be one of {', '.join(IMAGENET_C_TYPES)}, got {corruption!r}")
    if isinstance(severity, bool) or not isinstance(severity, numbers.Integral):
        raise TypeError(f"severity must be an int in 1–5, got {severity!r}")
    if not 1 <= int(severity) <= 5:
        raise ValueError(f"severity must be in 1–5, got {severity}")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an int in [0, 2**32) or None, got {seed!r}")
        if not 0 <= int(seed) < 2 ** 32:  # numpy.random.seed's range
            raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    package = _imagecorruptions()
    import numpy as np
    if seed is not None:
        np.random.seed(int(seed))
    pixels = images if images.dtype == torch.uint8 else (images.float() * 255).round().clamp(0, 255).to(torch.uint8)
    host = pixels.permute(0, 2, 3, 1).cpu().numpy()
    h, w = host.shape[1:3]
    out = np.empty_like(host)
    for i in range(host.shape[0]):  # the package corrupts one image at a time (evaluation only)
        corrupted = np.asarray(package.corrupt(host[i], corruption_name=corruption, severity=int(severity)))
        out[i] = np.clip(np.round(corrupted[:h, :w, :3].astype(np.float64)), 0, 255).astype(np.uint8)
    result = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(images.device)
    return result if images.dtype == torch.uint8 else (result.float() / 255).to(images.dtype)


#: on-the-fly corruptions by CLI name: (function, its strength argument, default strength, description)
ON_THE_FLY: Dict[str, Tuple[object, str, float, str]] = {
    "noise": (gaussian_noise, "std", NOISE_STD, "additive Gaussian noise, σ on the 0–1 scale"),
    "replace": (replace_pixels, "fraction", REPLACE_FRACTION, "random pixel replacement by another image"),
}
