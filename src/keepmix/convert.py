"""Conversion ops that sit between raw-image ops (policies) and model-facing ops."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .protocol import Batch, Op


def check_mean_std(mean: Sequence[float], std: Sequence[float]):
    """mean and std as 1×C×1×1 float32 tensors (same channel count, std > 0), else ValueError."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
    if mean_t.numel() != std_t.numel():
        raise ValueError(f"mean and std must have the same number of channels, got {mean_t.numel()} and "
                         f"{std_t.numel()}")
    if bool((std_t <= 0).any()):
        raise ValueError(f"std must be positive, got {std_t.flatten().tolist()}")
    return mean_t, std_t


def normalize_images(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``((x / 255 if uint8) − mean) / std`` per channel, float32 B×C×H×W.

    ``mean``/``std`` are 1×C×1×1 (from :func:`check_mean_std`); one value applies to
    every channel. A batch whose channel count differs from theirs is a ValueError —
    never a silent broadcast of a grey image to fake RGB.
    """
    if mean.numel() != 1 and images.shape[1] != mean.numel():
        raise ValueError(f"images have {images.shape[1]} channel{'s' if images.shape[1] != 1 else ''} but "
                         f"mean/std have {mean.numel()}")
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    return (x - mean.to(x.device)) / std.to(x.device)


class Normalize(Op):
    """``((x / 255 if uint8) − mean) / std`` per channel; returns float32 (the one op that changes dtype).

    Put it between ops that work on raw images (policies, uint8 or [0, 1] floats)
    and ops that feed a model (gradient saliency), e.g. GuidedMixup's "Aug"
    setting (its Table 4): ``Compose([AugMix(), Normalize(mean, std),
    GuidedMixup(saliency="gradient", model=model)])``. Targets unchanged.
    Raises ValueError when the images' channel count differs from mean/std's.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__(None)
        self.mean, self.std = check_mean_std(mean, std)

    def _repr_fields(self):
        return {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}

    def apply(self, images: torch.Tensor, targets: Optional[torch.Tensor]) -> Batch:
        return normalize_images(images, self.mean, self.std), targets
