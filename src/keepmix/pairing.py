"""Pairing: who mixes with whom.

A pairing is a permutation ``partner`` (B,) int64 of the batch with no fixed
point: image i is mixed with image ``partner[i]``.

* :func:`saliency_distance` — the B×B Euclidean distances between flattened
  saliency maps (GuidedMixup's pair compatibility), without a B·B·HW tensor.
* :func:`greedy_pairing` — GuidedMixup's greedy farthest-first single cycle
  (its Algorithm 1), entirely on the device.
* :func:`random_pairing` — a uniformly random single cycle (a derangement).
"""

from __future__ import annotations

from typing import Optional

import torch

from . import _random
from ._checks import check_finite, check_generator, check_maps


def saliency_distance(maps: torch.Tensor) -> torch.Tensor:
    """Euclidean distance between every pair of maps.

    ``D[i, j] = ‖vec(s_i) − vec(s_j)‖₂``, float32 B×B, symmetric, zero diagonal.
    Computed pairwise by ``torch.cdist`` without the matrix-product shortcut,
    so there is no cancellation error and no B·B·HW intermediate.
    """
    check_maps(maps, "maps")
    flat = maps.flatten(1).float()
    return torch.cdist(flat.unsqueeze(0), flat.unsqueeze(0),
                       compute_mode="donot_use_mm_for_euclid_dist").squeeze(0)


def greedy_pairing(distance: torch.Tensor) -> torch.Tensor:
    """GuidedMixup's greedy pairing: one farthest-first cycle through the batch.

    1. Mask the diagonal. Start at the globally farthest pair (r, c): the first
       maximum in row-major order.
    2. From the current image jump to the farthest image not yet visited
       (ties go to the lowest index).
    3. When every image is visited, the last one pairs with the first.

    The visiting order v₀ = r, v₁ = c, v₂, … gives ``partner[v_k] = v_{k+1}`` and
    ``partner[v_{B−1}] = v₀``: a single B-cycle, no fixed point for B ≥ 2
    (``partner = [0]`` for B = 1). O(B²) work in B small device steps; no value
    is copied to the host.

    Args:
        distance: B×B float matrix (need not be symmetric; NaN is rejected when
            input checks are on).

    Returns:
        int64 (B,) partner indices on ``distance.device``.
    """
    if not isinstance(distance, torch.Tensor) or distance.ndim != 2 or distance.shape[0] != distance.shape[1]:
        raise ValueError("distance must be a square B×B tensor")
    if not distance.is_floating_point():
        raise TypeError(f"distance must be floating point, got {distance.dtype}")
    check_finite(distance, "distance")
    batch = distance.shape[0]
    device = distance.device
    if batch == 1:
        return torch.zeros(1, dtype=torch.long, device=device)
    ninf = torch.tensor(float("-inf"), dtype=distance.dtype, device=device)
    eye = torch.eye(batch, dtype=torch.bool, device=device)
    d = torch.where(eye, ninf, distance)
    first = d.flatten().argmax()
    start, current = first // batch, first % batch
    order = torch.empty(batch, dtype=torch.long, device=device)
    order[0] = start
    order[1] = current
    visited = torch.zeros(batch, dtype=torch.bool, device=device)
    visited[start] = True
    visited[current] = True
    for step in range(2, batch):
        row = torch.where(visited, ninf, d.index_select(0, current.view(1)).squeeze(0))
        current = row.argmax()
        order[step] = current
        visited[current] = True
    return _cycle_partner(order)


def random_pairing(batch_size: int, generator: Optional[torch.Generator] = None,
                   device: Optional[torch.device] = None) -> torch.Tensor:
    """A uniformly random single cycle through the batch (a derangement; ``[0]`` for B = 1).

    A random permutation v gives ``partner[v_k] = v_{k+1 mod B}``. Unlike
    ``x.flip(0)`` or an unconstrained ``randperm``, no image is ever paired with
    itself and the pairing is drawn fresh from torch's RNG every call.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    check_generator(generator)
    device = torch.device(device) if device is not None else (generator.device if generator is not None
                                                             else torch.device("cpu"))
    order = _random.randperm(batch_size, device, generator)
    return _cycle_partner(order)


def _cycle_partner(order: torch.Tensor) -> torch.Tensor:
    """The partner permutation of the cycle that visits ``order`` (partner[v_k] = v_{k+1 mod B})."""
    partner = torch.empty_like(order)
    partner[order] = order.roll(-1)
    return partner


PAIRINGS = ("greedy", "random")


def check_pairing(pairing):
    """Validate a pairing choice: ``"greedy"``, ``"random"`` or a callable ``maps -> partner``."""
    if isinstance(pairing, str):
        if pairing not in PAIRINGS:
            raise ValueError(f"pairing must be 'greedy', 'random' or a callable, got {pairing!r}")
    elif not callable(pairing):
        raise TypeError(f"pairing must be 'greedy', 'random' or a callable, got {type(pairing).__name__}")
    return pairing


def pair(pairing, batch_size: int, device, maps: Optional[torch.Tensor] = None,
         generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Partner indices for one batch under ``pairing``.

    ``"greedy"`` needs ``maps`` (sum-to-1 saliency maps B×H×W) and runs
    :func:`greedy_pairing` on their :func:`saliency_distance`; ``"random"`` is
    :func:`random_pairing`; a callable receives ``maps`` and returns partners.
    """
    if pairing == "random":
        return random_pairing(batch_size, generator, device)
    if pairing == "greedy":
        if maps is None:
            raise ValueError("greedy pairing needs saliency maps")
        return greedy_pairing(saliency_distance(maps))
    partner = pairing(maps)
    if not isinstance(partner, torch.Tensor) or partner.shape != (batch_size,) or partner.dtype != torch.long:
        raise ValueError(f"a pairing callable must return int64 partner indices of shape ({batch_size},)")
    return partner.to(device)
