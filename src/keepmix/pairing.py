"""Pairing: who mixes with whom.

A pairing is a permutation ``partner`` (B,) int64 of the batch with no fixed
point: image i is mixed with image ``partner[i]``.

* :func:`saliency_distance` — the B×B Euclidean distances between flattened
  saliency maps (GuidedMixup's pair compatibility), each pair once, without a B·B·HW tensor.
* :func:`greedy_pairing` — GuidedMixup's greedy farthest-first single cycle
  (its Algorithm 1), one custom operator (NumPy on the CPU, device steps elsewhere).
* :func:`random_pairing` — a uniformly random single cycle (a derangement).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from . import _random
from ._cache import device_cache
from ._checks import check_finite, check_generator, check_maps


def saliency_distance(maps: torch.Tensor) -> torch.Tensor:
    """Euclidean distance between every pair of maps.

    ``D[i, j] = ‖vec(s_i) − vec(s_j)‖₂``, float32 B×B, symmetric, zero diagonal.
    Computed once per unordered pair by ``torch.pdist`` (direct differences: no
    matrix-product shortcut, so no cancellation error — identical maps are exactly
    0 apart — and no B·B·HW intermediate), then written to both triangles.
    """
    check_maps(maps, "maps")
    flat = maps.flatten(1)
    flat = flat if flat.dtype == torch.float32 else flat.float()
    batch = flat.shape[0]
    if batch < 2:
        return flat.new_zeros((batch, batch))
    rows, cols = _upper_pairs(batch, flat.device)
    pairs = torch.pdist(flat)
    return flat.new_zeros((batch, batch)).index_put_((rows, cols), pairs).index_put_((cols, rows), pairs)


@device_cache(32)
def _upper_pairs(batch: int, device: torch.device):
    """(rows, cols) of the strict upper triangle in ``torch.pdist``'s order, made once per (B, device)."""
    with torch.inference_mode(False), torch.no_grad():
        rows, cols = torch.triu_indices(batch, batch, 1, device=device)
        return rows, cols


def greedy_pairing(distance: torch.Tensor) -> torch.Tensor:
    """GuidedMixup's greedy pairing: one farthest-first cycle through the batch.

    1. Mask the diagonal. Start at the globally farthest pair (r, c): the first
       maximum in row-major order.
    2. From the current image jump to the farthest image not yet visited
       (ties go to the lowest index).
    3. When every image is visited, the last one pairs with the first.

    The visiting order v₀ = r, v₁ = c, v₂, … gives ``partner[v_k] = v_{k+1}`` and
    ``partner[v_{B−1}] = v₀``: a single B-cycle, no fixed point for B ≥ 2
    (``partner = [0]`` for B = 1).

    The B steps are inherently sequential. They run inside one custom operator,
    ``keepmix::greedy_order`` (opaque to ``torch.compile``, so an op using it still
    compiles with ``fullgraph=True``): on the CPU as one NumPy pass over the B×B matrix
    (O(B²), no tensor kernels per step); on an accelerator as B small device steps
    with no host sync. ``benchmarks/overhead.py`` times this operator (row *greedy pairing given
    maps*) beside the host-copy form (*[loop reference] greedy pairing, host copy*), on a GPU with
    ``--device cuda``; ``benchmarks/launches.py`` counts its launches.

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
    if distance.shape[0] == 1:
        return torch.zeros(1, dtype=torch.long, device=distance.device)
    return _cycle_partner(_greedy_order(distance))


def _greedy_order_numpy(distance: np.ndarray) -> np.ndarray:
    """The visiting order of the greedy cycle, on the host (the reference semantics)."""
    batch = distance.shape[0]
    d = np.array(distance, dtype=np.float64, copy=True)
    np.fill_diagonal(d, -np.inf)
    start, current = divmod(int(np.argmax(d)), batch)  # first maximum in row-major order
    order = np.empty(batch, dtype=np.int64)
    order[0], order[1] = start, current
    visited = np.zeros(batch, dtype=bool)
    visited[start] = visited[current] = True
    for step in range(2, batch):
        current = int(np.argmax(np.where(visited, -np.inf, d[current])))  # ties: lowest index
        order[step] = current
        visited[current] = True
    return order


def _greedy_order_device(distance: torch.Tensor) -> torch.Tensor:
    """The same order as B small steps on the tensor's device, with no host sync."""
    batch = distance.shape[0]
    ninf = torch.full((), float("-inf"), dtype=distance.dtype, device=distance.device)
    d = torch.where(torch.eye(batch, dtype=torch.bool, device=distance.device), ninf, distance)
    first = d.flatten().argmax()
    current = torch.remainder(first, batch)
    order = torch.empty(batch, dtype=torch.long, device=distance.device)
    order[0] = torch.div(first, batch, rounding_mode="floor")
    order[1] = current
    visited = torch.zeros(batch, dtype=torch.bool, device=distance.device)
    visited.index_fill_(0, order[:2], True)
    for step in range(2, batch):
        current = torch.where(visited, ninf, d.index_select(0, current.view(1)).squeeze(0)).argmax()
        order[step] = current
        visited.index_fill_(0, current.view(1), True)
    return order


def _greedy_order_impl(distance: torch.Tensor) -> torch.Tensor:
    if distance.device.type == "cpu":
        return torch.from_numpy(_greedy_order_numpy(distance.detach().numpy()))
    return _greedy_order_device(distance.detach())


if hasattr(torch.library, "custom_op"):  # torch ≥ 2.4: one opaque operator, traceable by torch.compile
    @torch.library.custom_op("keepmix::greedy_order", mutates_args=())
    def _greedy_order(distance: torch.Tensor) -> torch.Tensor:
        return _greedy_order_impl(distance)

    @_greedy_order.register_fake
    def _(distance: torch.Tensor) -> torch.Tensor:
        return distance.new_empty((distance.shape[0],), dtype=torch.long)
else:  # pragma: no cover - older torch: the same function, called directly
    _greedy_order = _greedy_order_impl


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
    return torch.empty_like(order).scatter_(0, order, order.roll(-1))


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
