"""Random draws through torch, on the batch's device, from an optional generator.

A ``torch.Generator`` lives on one device; draws are made there and moved to the
batch's device, so a CPU generator seeds a CUDA pipeline too (the copy is
asynchronous and costs no sync). Without a generator torch's global RNG of the
target device is used, and so it is under ``torch.compile`` (dynamo cannot trace a
Generator argument): compiled ops are seeded by ``torch.manual_seed``. Every draw is
float32 or int64 — no float64 on the device (Apple's MPS has none, consumer GPUs run it
at 1/32 speed).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ._cache import device_cache


def _source(generator: Optional[torch.Generator], device: torch.device):
    """(generator to pass, device to draw on). Under ``torch.compile`` the draw uses torch's global
    RNG on the target device instead (a Generator object cannot be traced; seed compiled runs with
    ``torch.manual_seed``)."""
    if generator is None or torch.compiler.is_compiling():
        return None, device
    return generator, generator.device


def _deliver(out: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``out`` on ``device`` (an asynchronous copy only when the devices differ)."""
    if out.device.type == device.type and (device.index is None or out.device.index == device.index):
        return out
    return out.to(device, non_blocking=True)


def rand(shape: Sequence[int], device, generator: Optional[torch.Generator] = None,
         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform [0, 1) draws of ``shape`` on ``device``."""
    device = torch.device(device)
    gen, origin = _source(generator, device)
    return _deliver(torch.rand(tuple(shape), generator=gen, device=origin, dtype=dtype), device)


def randn(shape: Sequence[int], device, generator: Optional[torch.Generator] = None,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal draws of ``shape`` on ``device``."""
    device = torch.device(device)
    gen, origin = _source(generator, device)
    return _deliver(torch.randn(tuple(shape), generator=gen, device=origin, dtype=dtype), device)


def randint(low: int, high: int, shape: Sequence[int], device,
            generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Uniform integers in [low, high) of ``shape`` (int64) on ``device``."""
    device = torch.device(device)
    gen, origin = _source(generator, device)
    return _deliver(torch.randint(low, high, tuple(shape), generator=gen, device=origin), device)


#: bound of the raw integers behind :func:`below`; the modulo bias is at most count / 2**62
_RAW_HIGH = 2 ** 62


def below(count: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One integer uniform on {0, …, count[i] − 1} per entry (count ≥ 1; int64, on count's device).

    Drawn as a raw int64 in [0, 2⁶²) reduced modulo count: exact integer arithmetic on the
    device (no float64, bias ≤ count/2⁶²), one draw per entry whatever its count.
    """
    raw = randint(0, _RAW_HIGH, tuple(count.shape), count.device, generator)
    return torch.remainder(raw, count.clamp_min(1))


def randperm(n: int, device, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A uniformly random permutation of 0…n−1 (int64) on ``device``."""
    device = torch.device(device)
    gen, origin = _source(generator, device)
    return _deliver(torch.randperm(n, generator=gen, device=origin), device)


def beta(alpha: float, beta_: float, shape: Sequence[int], device,
         generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Beta(alpha, beta) draws through the generator, float32 on ``device``.

    ``torch.distributions.Beta`` takes no generator; the draw is the first component of a
    Dirichlet(alpha, beta) sample (Beta(a, b) = G_a / (G_a + G_b)) from torch's own
    generator-aware sampler — one kernel, no rejection loop in Python.
    """
    device = torch.device(device)
    gen, origin = _source(generator, device)
    concentration = _constant((float(alpha), float(beta_)), origin)
    draw = torch._sample_dirichlet(concentration.expand(*tuple(shape), 2), generator=gen)
    return _deliver(draw[..., 0], device)


@device_cache(64)
def _constant(values, device: torch.device) -> torch.Tensor:
    """A small float32 constant made once per (values, device): no tensor creation per call."""
    with torch.inference_mode(False), torch.no_grad():
        return torch.tensor(values, dtype=torch.float32, device=device)


def dirichlet(alpha: float, k: int, shape: Sequence[int], device,
              generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Symmetric Dirichlet(alpha·1_k) draws of shape (*shape, k) through the generator, float32 on ``device``;
    each row sums to 1 (normalised by torch's sampler, so tiny ``alpha`` stays defined)."""
    device = torch.device(device)
    gen, origin = _source(generator, device)
    concentration = torch.full((*tuple(shape), int(k)), float(alpha), dtype=torch.float32, device=origin)
    return _deliver(torch._sample_dirichlet(concentration, generator=gen), device)


def gamma(shape_k: float, shape: Sequence[int], device, generator: Optional[torch.Generator] = None
          ) -> torch.Tensor:
    """Gamma(k, 1) draws through the generator (torch's generator-aware sampler), float32 on ``device``."""
    device = torch.device(device)
    gen, origin = _source(generator, device)
    concentration = torch.full(tuple(shape), float(shape_k), dtype=torch.float32, device=origin)
    return _deliver(torch._standard_gamma(concentration, generator=gen), device)
