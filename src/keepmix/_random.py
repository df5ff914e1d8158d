"""Random draws through torch, on the batch's device, from an optional generator.

A ``torch.Generator`` lives on one device; draws are made there and moved to the
batch's device, so a CPU generator seeds a CUDA pipeline too (the copy is
asynchronous and costs no sync). Without a generator torch's global RNG of the
target device is used.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def _origin(generator: Optional[torch.Generator], device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def rand(shape: Sequence[int], device, generator: Optional[torch.Generator] = None,
         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform [0, 1) draws of ``shape`` on ``device``."""
    device = torch.device(device)
    out = torch.rand(tuple(shape), generator=generator, device=_origin(generator, device), dtype=dtype)
    return out.to(device, non_blocking=True)


def randn(shape: Sequence[int], device, generator: Optional[torch.Generator] = None,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    device = torch.device(device)
    out = torch.randn(tuple(shape), generator=generator, device=_origin(generator, device), dtype=dtype)
    return out.to(device, non_blocking=True)


def randint(low: int, high: int, shape: Sequence[int], device,
            generator: Optional[torch.Generator] = None) -> torch.Tensor:
    device = torch.device(device)
    out = torch.randint(low, high, tuple(shape), generator=generator, device=_origin(generator, device))
    return out.to(device, non_blocking=True)


def randperm(n: int, device, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    device = torch.device(device)
    return torch.randperm(n, generator=generator, device=_origin(generator, device)).to(device, non_blocking=True)


def beta(alpha: float, beta_: float, shape: Sequence[int], device,
         generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Beta(alpha, beta) draws through the generator, float32 on ``device``.

    ``torch.distributions.Beta`` takes no generator; the draw is the first component of a
    Dirichlet(alpha, beta) sample (Beta(a, b) = G_a / (G_a + G_b)) from torch's own
    generator-aware sampler — one kernel, no rejection loop in Python.
    """
    origin = _origin(generator, torch.device(device))
    concentration = torch.tensor([float(alpha), float(beta_)], dtype=torch.float64, device=origin)
    draw = torch._sample_dirichlet(concentration.expand(*tuple(shape), 2), generator=generator)
    return draw[..., 0].to(device=torch.device(device), dtype=torch.float32, non_blocking=True)


def dirichlet(alpha: float, k: int, shape: Sequence[int], device,
              generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Symmetric Dirichlet(alpha·1_k) draws of shape (*shape, k) through the generator, float32 on ``device``;
    each row sums to 1 (normalised in float64 by torch's sampler, so tiny ``alpha`` stays defined)."""
    origin = _origin(generator, torch.device(device))
    concentration = torch.full((*tuple(shape), int(k)), float(alpha), dtype=torch.float64, device=origin)
    draw = torch._sample_dirichlet(concentration, generator=generator)
    return draw.to(device=torch.device(device), dtype=torch.float32, non_blocking=True)


def gamma(shape_k: float, shape: Sequence[int], device, generator: Optional[torch.Generator] = None
          ) -> torch.Tensor:
    """Gamma(k, 1) draws through the generator (torch's generator-aware sampler), float32 on ``device``."""
    origin = _origin(generator, torch.device(device))
    concentration = torch.full(tuple(shape), float(shape_k), dtype=torch.float64, device=origin)
    draw = torch._standard_gamma(concentration, generator=generator)
    return draw.to(device=torch.device(device), dtype=torch.float32, non_blocking=True)
