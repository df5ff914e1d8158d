"""Conversion ops that sit between raw-image ops (policies) and model-facing ops."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .protocol import Batch, Op


class Normalize(Op):
    """``((x / 255 if uint8) − mean) / std`` per channel; returns float32 (the one op that changes dtype).

    Put it between ops that work on raw images (policies, uint8 or [0, 1] floats)
    and ops that feed a model (gradient saliency), e.g. GuidedMixup's "Aug"
    setting (its Table 4): ``Compose([AugMix(), Normalize(mean, std),
    GuidedMixup(saliency="gradient", model=model)])``. Targets unchanged.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__(None)
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        if self.mean.numel() != self.std.numel():
            raise ValueError("mean and std must have the same number of channels")
        if bool((self.std <= 0).any()):
            raise ValueError(f"std must be positive, got {self.std.flatten().tolist()}")

    def _repr_fields(self):
        return {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}

    def apply(self, images: torch.Tensor, targets: Optional[torch.Tensor]) -> Batch:
        if images.shape[1] != self.mean.numel() and self.mean.numel() != 1:
            raise ValueError(f"images have {images.shape[1]} channels but mean/std have {self.mean.numel()}")
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        return (x - self.mean.to(x.device)) / self.std.to(x.device), targets
