"""The optimisation-based mixers GuidedMixup is measured against: PuzzleMix and Co-Mixup.

Both choose their masks by minimising a discrete energy on a grid of blocks with graph cuts
(:mod:`keepmix.graphcut`), from the gradient saliency of the model being trained. They are the
expensive end of GuidedMixup's trade-off (its Table 2: PuzzleMix +134–140 %, Co-Mixup +292–717 % of
training time); keepmix's versions are framework-free (SciPy's BSD max-flow instead of a research-only
C++ library), run on any device, are seeded through ``torch.Generator``, solve every problem of a
batch in one graph per move, and leave the model exactly as found.

**Where the work runs.** Saliency, pooling, seam costs, transport and mixing run on the batch's
device; the graph cuts run on the CPU: the block costs of the whole batch are copied to the host once
and the labels back once per call (plus, for transport, one flag read per auction round).

**The papers' full texts** were not at hand while this was written (only their abstracts and their
published default hyper-parameters); the objectives below are keepmix's reading, with each paper's
terms, names and default values, documented term by term so that they can be checked against the
papers and changed. Where a choice was ours (scales, the seam cost, the reading of Co-Mixup's τ and
η) it says so.

Needs SciPy: ``pip install 'keepmix[optmix]'`` (constructing either op without it raises ImportError
naming the extra).
"""

from __future__ import annotations

import numbers
import time
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from . import _random
from . import graphcut as gc
from ._checks import check_num_classes, check_positive, check_probability
from .losses import to_soft_targets
from .mix import mix_targets
from .mixers import _Mixer
from .protocol import Batch, Op, restore_dtype, to_float
from .saliency import (EarlyHead, GradientSaliency, _check_bn, as_source, compute_maps, takes_uint8)


def _gradient_source(model, saliency, bn: str, generator):
    """The op's saliency source: channel-RMS gradient of the cross-entropy (PuzzleMix's formula)."""
    if saliency is None:
        saliency = model
    if isinstance(saliency, nn.Module) and not isinstance(saliency, EarlyHead):
        return GradientSaliency(saliency, reduce="rms", bn=bn)
    return as_source(saliency, reduce="rms", generator=generator)


def _check_int(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


class PuzzleMix(_Mixer):
    """PuzzleMix (Kim, Choo & Song, ICML 2020): saliency-optimal masks by graph cut, then transport.

    Per batch: a block count g is drawn uniformly from ``block_counts`` (blocks per side; the paper's
    {2, 4, 8, 16}), the image is cut into a g×g grid of blocks (:func:`keepmix.graphcut.block_grid`:
    clamped to the image, the last row/column of blocks takes any remainder) and each image i is
    paired with a partner p(i). Per pair:

    1. **Saliency.** s = sqrt(mean_c (∂CE/∂x_c)²) — the channel RMS of the input gradient of the
       cross-entropy (:func:`keepmix.saliency.gradient` with ``reduce="rms"``, eval mode by default,
       the model left exactly as found), summed over each block and rescaled to mean 1 per image (ŝ).
    2. **Mask.** λ ~ Beta(α, α); labels ℓ ∈ {0, …, L − 1} (``n_labels``, the paper's 3) give the own
       image's share m_ℓ = ℓ/(L − 1) of a block (0, ½, 1 for L = 3). The mask minimises

       .. math::
           E(z) = −\\sum_i \\big(m_{z_i} ŝ^{i}_b + (1 − m_{z_i}) ŝ^{p(i)}_b\\big)
                 + β \\sum_{(b,b') ∈ \\mathcal N} (m_{z_b} − m_{z_{b'}})^2
                 + γ \\sum_{(b,b') ∈ \\mathcal N} δ_{bb'} |m_{z_b} − m_{z_{b'}}|
                 − η \\sum_b \\log \\mathrm{Binom}(z_b;\\, L − 1, λ)

       — saliency kept (unary), smoothness β, local statistics γ (a label change across the boundary
       of blocks b, b' costs the seam δ: the mean absolute difference of the two images on the
       boundary pixels, :func:`keepmix.graphcut.seam_costs`), and the label prior η (a binomial with
       mean share λ). 𝒩 is the 4-neighbourhood of the block grid (the paper's neighbourhood size 4).
       Solved by α-β swap (the paper's solver) built on exact s–t minimum cuts, every pair of the batch
       in one graph per move; with L = 2 one exact cut. The pairwise term is a semi-metric, so every
       move is exact.
    3. **Transport** (``transport=True``, the paper's default): each image's blocks are permuted so
       that its salient blocks move to where the mask shows that image, cost
       C_ab = ‖p_a − p_b‖₁ − ŝ_a w_b (block steps against saliency gained; w = M for the image, 1 − M
       for the partner), by PuzzleMix's iterative approximation — an auction in which contested
       destinations cost each losing bidder ``transport_eps`` more per round
       (:func:`keepmix.graphcut.transport_plan`). Block contents move whole: the transport preserves
       every block's mass.
    4. **Mix.** x̃_i = M ⊙ T_i(x_i) + (1 − M) ⊙ T'_i(x_{p(i)}) per pixel; λ_i = mean(M), the share of
       the pixels actually used; ỹ_i = λ_i y_i + (1 − λ_i) y_{p(i)}.

    Scales (keepmix's choice, so that the defaults mean the same at every grid size): saliency is in
    units of an average block (mean 1), the smoothness and prior are per block or per boundary, and
    the transport distance is in block steps.

    Defaults (the paper's for CIFAR): α = 1, β = 1.2, γ = 0.5, η = 0.2, L = 3, neighbourhood 4,
    transport ε = 0.8, block counts {2, 4, 8, 16}.

    Args:
        model: the classifier being trained (its gradient saliency), unless ``saliency`` is given.
        num_classes: K, needed for class-index targets.
        alpha: Beta(α, α) for λ.
        block_counts: blocks per side, one drawn uniformly per batch.
        n_labels: L ≥ 2 mask levels.
        beta, gamma, eta: smoothness, local statistics, label prior weights.
        transport: move salient blocks (step 3).
        transport_eps: ε of the transport auction.
        transport_iters: at most this many auction rounds (then the remaining sources take the free
            destinations in order).
        sweeps: at most this many α-β swap sweeps over the label pairs.
        saliency: another saliency source (any :func:`keepmix.saliency.as_source` value, a model gets
            ``reduce="rms"``), or maps per call as ``saliency_maps=``.
        bn: ``"eval"`` (default, as the paper) or ``"train"`` for the saliency pass.
        prob: per-image mixing probability (unmixed images keep λ = 1).
        pairing: ``"random"`` (derangement), ``"greedy"`` (GuidedMixup's pairing on these maps) or a callable.
        generator: optional ``torch.Generator``.

    Shapes: images B×C×H×W float (uint8 with precomputed maps), targets (B,) int64 or B×K →
    (B×C×H×W same dtype, B×K float32). Loss: :func:`keepmix.losses.soft_target_cross_entropy`.
    ``last_stats``: ``lam`` (B,) pixel share kept, ``lam_drawn`` (B,), ``mask`` (B, g, g) block
    shares, ``blocks`` (g), ``energy`` (B,) of the mask, ``dest`` / ``partner_dest`` (B, g²) the
    transport of the image and of its partner (block a goes to ``dest[a]``), ``moved`` (B,) blocks
    the transport moved in the image, ``partner``, ``mixed``, ``solver_time`` (seconds on the host, graph cuts and transport),
    ``cuts`` (max-flow calls).

    Example::

        mixer = PuzzleMix(model, num_classes=100)
        x, y_soft = mixer(x, y)
        loss = soft_target_cross_entropy(model(x), y_soft)
    """

    def __init__(self, model: Optional[nn.Module] = None, num_classes: Optional[int] = None, alpha: float = 1.0, *,
                 block_counts: Sequence[int] = (2, 4, 8, 16), n_labels: int = 3, beta: float = 1.2,
                 gamma: float = 0.5, eta: float = 0.2, transport: bool = True, transport_eps: float = 0.8,
                 transport_iters: int = 64, sweeps: int = 2, saliency=None, bn: str = "eval", prob: float = 1.0,
                 pairing="random", generator: Optional[torch.Generator] = None):
        super().__init__(num_classes, alpha, prob, pairing, generator)
        gc.require_scipy()
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
        self.bn = _check_bn(bn)
        self.saliency = _gradient_source(model, saliency, self.bn, generator)
        self.accepts_uint8 = takes_uint8(self.saliency)
        try:
            counts = tuple(block_counts)
        except TypeError:
            raise TypeError(f"block_counts must be a sequence of ints, got {block_counts!r}") from None
        if not counts:
            raise ValueError("block_counts must not be empty")
        self.block_counts = tuple(_check_int(c, "block_counts", 1) for c in counts)
        self.n_labels = _check_int(n_labels, "n_labels", 2)
        self.beta = check_positive(beta, "beta", allow_zero=True)
        self.gamma = check_positive(gamma, "gamma", allow_zero=True)
        self.eta = check_positive(eta, "eta", allow_zero=True)
        self.transport = bool(transport)
        self.transport_eps = check_positive(transport_eps, "transport_eps")
        self.transport_iters = _check_int(transport_iters, "transport_iters", 0)
        self.sweeps = _check_int(sweeps, "sweeps", 1)

    def _repr_fields(self):
        return {**super()._repr_fields(), "block_counts": self.block_counts, "n_labels": self.n_labels,
                "beta": self.beta, "gamma": self.gamma, "eta": self.eta, "transport": self.transport,
                "transport_eps": self.transport_eps}

    def _draw_blocks(self) -> int:
        origin = "cpu" if self.generator is None else self.generator.device
        index = int(_random.randint(0, len(self.block_counts), (1,), origin, self.generator))
        return self.block_counts[index]

    def apply(self, images, targets, saliency_maps: Optional[torch.Tensor] = None) -> Batch:
        self._require_targets(targets)
        batch, _, height, width = images.shape
        device = images.device
        blocks = self._draw_blocks()
        grid = gc.block_grid((height, width), blocks)
        lam_drawn = self._lam(batch, device)
        mixed = self._selected(batch, device)
        if batch < 2:
            ones = torch.ones(batch, device=device)
            self.last_stats = {"lam": ones, "lam_drawn": lam_drawn, "mask": torch.ones(batch, grid.rows, grid.cols,
                               device=device), "blocks": torch.tensor(blocks), "energy": torch.zeros(batch),
                               "moved": torch.zeros(batch, dtype=torch.long), "dest": torch.zeros(batch, 1,
                               dtype=torch.long, device=device), "partner_dest": torch.zeros(batch, 1,
                               dtype=torch.long, device=device), "partner": torch.zeros(batch,
                               dtype=torch.long, device=device), "mixed": mixed, "solver_time": torch.tensor(0.0),
                               "cuts": torch.tensor(0)}
            return images, mix_targets(targets, torch.zeros(batch, dtype=torch.long, device=device), ones,
                                       self.num_classes)
        maps = compute_maps(self.saliency, images, targets, saliency_maps, type(self).__name__)
        partner = self._partner(images, maps)
        x = to_float(images)
        scale = 1.0 / 255.0 if images.dtype == torch.uint8 else 1.0
        block_sal = gc.pool_blocks(maps.float(), grid).flatten(1)  # B×n
        seams = gc.seam_costs(x * scale, x.index_select(0, partner) * scale, grid)  # B×E
        # one transfer to the host for the whole batch
        host = torch.cat([block_sal, block_sal.index_select(0, partner), seams,
                          lam_drawn.float().view(-1, 1), mixed.float().view(-1, 1)], dim=1).cpu().double().numpy()
        n, n_edges = grid.n, seams.shape[1]
        sal_own, sal_par = host[:, :n], host[:, n:2 * n]
        seam_np, lam_np, chosen = host[:, 2 * n:2 * n + n_edges], host[:, -2], host[:, -1] > 0.5
        start = time.perf_counter()
        labels = np.full((batch, n), self.n_labels - 1, dtype=np.int64)
        energy = np.zeros(batch)
        cuts = 0
        rows = np.flatnonzero(chosen)
        if rows.size:
            unary = gc.puzzle_unary(sal_own[rows], sal_par[rows], lam_np[rows], self.n_labels, self.eta)
            pairwise = gc.puzzle_pairwise(seam_np[rows], self.n_labels, self.beta, self.gamma)
            result = gc.alpha_beta_swap(unary, gc.grid_edges(grid.rows, grid.cols), pairwise,
                                        max_sweeps=self.sweeps)
            labels[rows], energy[rows], cuts = result.labels, result.energy, result.cuts
        mask_blocks = torch.as_tensor(gc.label_values(self.n_labels)[labels], dtype=torch.float32).to(device)
        own, other = x, x.index_select(0, partner)
        identity = torch.arange(n, device=device).expand(batch, n)
        dest_own = dest_par = identity
        if self.transport and n > 1 and rows.size:
            count = rows.size
            sal_hat = torch.as_tensor(gc.mean_one(np.concatenate([sal_own[rows], sal_par[rows]])),
                                      dtype=torch.float32).to(device)
            index = torch.as_tensor(rows, device=device)
            chosen_mask = mask_blocks.index_select(0, index)
            cost = gc.transport_cost(sal_hat, torch.cat([chosen_mask, 1.0 - chosen_mask]), grid)
            dest = gc.transport_plan(cost, self.transport_eps, self.transport_iters)
            dest_own = identity.clone().index_copy_(0, index, dest[:count])
            dest_par = identity.clone().index_copy_(0, index, dest[count:])
            own = gc.permute_blocks(own, dest_own, grid)
            other = gc.permute_blocks(other, dest_par, grid)
        solver_time = time.perf_counter() - start
        mask = gc.expand_blocks(mask_blocks, grid)  # B×H×W own share per pixel
        work = own.float() if own.dtype in (torch.float16, torch.bfloat16) else own
        out = torch.lerp(other.to(work.dtype), work, mask.to(work.dtype).unsqueeze(1))
        lam = mask.mean(dim=(1, 2))
        self.last_stats = {"lam": lam, "lam_drawn": lam_drawn, "mask": mask_blocks.view(batch, grid.rows, grid.cols),
                           "blocks": torch.tensor(blocks), "energy": torch.as_tensor(energy),
                           "moved": (dest_own != identity).sum(dim=1), "dest": dest_own, "partner_dest": dest_par,
                           "partner": partner, "mixed": mixed, "solver_time": torch.tensor(solver_time),
                           "cuts": torch.tensor(cuts)}
        return restore_dtype(out, images), mix_targets(targets, partner, lam, self.num_classes)


class CoMixup(Op):
    """Co-Mixup (Kim, Choo, Jeong & Song, ICLR 2021): a batch of outputs jointly assembled from a batch of inputs.

    The batch is shuffled (through the generator) and split into G = ⌈B / ``m_part``⌉ groups of
    nearly equal size (the paper's partition into groups of 20, for speed). In each group of m inputs,
    m outputs are built on a ``grid``×``grid`` block grid (clamped to the image; the paper's 4×4): every
    block of output j is taken whole from one input, z_{jk} ∈ {inputs}. The assignment minimises
    (:func:`keepmix.graphcut.comixup_objective`)

    .. math::
        f(Z) = \\sum_j \\Big[ −\\sum_i \\min(τ n,\\, w_{ji})
               + β \\sum_{(k,k') ∈ \\mathcal N} [z_{jk} ≠ z_{jk'}] − η \\sum_k [z_{jk} = j] \\Big]
             + γ \\sum_{j ≠ j'} o_j^⊤ A_c\\, o_{j'}

    with ŝ_i the block saliency of input i (channel-RMS gradient of the cross-entropy, rescaled to
    mean 1), w_{ji} the saliency output j collects from input i — **τ** caps it at a share τ of the
    input's saliency (mask sizes beyond it earn nothing, so no output is one input again); **β**
    smoothness (Potts, 4-neighbourhood); **η** the label prior (keepmix's reading: a prior towards each
    output's own input, which makes output j "image j mixed with others" and fixes where it goes in
    the batch); **γ** the supermodular diversity term — o_j = c_j/n, c_j counting how many blocks of
    output j each input fills (shares, so that one moved block costs about 2γ/n: see
    :func:`keepmix.graphcut.comixup_objective` for why not counts), and two outputs made of the same
    inputs are penalised through the compatibility
    matrix A_c = (1 − ω) I + ω A, A the cosine similarity of the inputs' saliency (**ω**).

    Solved by the paper's iterative modular approximation: output by output (all groups at once),
    the supermodular terms are replaced by modular upper bounds tight at the current assignment and
    the remaining submodular energy is minimised by α-expansion over exact minimum cuts
    (:func:`keepmix.graphcut.comixup_assign`); the objective never increases. Soft targets are each
    output's composition: ỹ_j = Σ_i o_{ji} y_i with o_{ji} the share of output j's pixels taken from
    input i (exact pixel counts when the grid does not divide the image).

    Defaults (the paper's): m_part = 20, 4×4 blocks, β = 0.32, γ = 1.0, η = 0.05, τ = 0.83, ω = 0.001;
    saliency in train mode (``bn="train"``, every buffer restored afterwards) as the paper computes it.

    Args:
        model: the classifier being trained (its gradient saliency), unless ``saliency`` is given.
        num_classes: K, needed for class-index targets.
        m_part: group size.
        grid: blocks per side (int or (rows, cols)).
        beta, gamma, eta, tau, omega: see above.
        sweeps: at most this many sweeps over the outputs.
        candidates: inputs tried per output besides those it uses (None: all; see ``comixup_assign``).
        saliency, bn: the saliency source and BatchNorm mode (as :class:`PuzzleMix`).
        prob: per-image probability that an output is optimised; the others stay copies of their input
            (they still lend blocks to the others).
        generator: optional ``torch.Generator``.

    Shapes: images B×C×H×W float (uint8 with precomputed maps), targets (B,) or B×K →
    (B×C×H×W same dtype, B×K float32). Loss: soft-target cross-entropy. ``last_stats``: ``lam`` (B,)
    each output's share of its own input, ``composition`` (B, B) o_{ji} in batch indices,
    ``source`` (B, n) the batch index of the input each block of each output comes from, ``group`` (B,), ``objective`` (G,), ``sweeps``, ``cuts``, ``solver_time`` (seconds on the host),
    ``mixed`` (B,).
    """

    mixes_labels = True

    def __init__(self, model: Optional[nn.Module] = None, num_classes: Optional[int] = None, *, m_part: int = 20,
                 grid=4, beta: float = 0.32, gamma: float = 1.0, eta: float = 0.05, tau: float = 0.83,
                 omega: float = 0.001, sweeps: int = 2, candidates: Optional[int] = 3, saliency=None,
                 bn: str = "train", prob: float = 1.0, generator: Optional[torch.Generator] = None):
        super().__init__(generator)
        gc.require_scipy()
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
        self.num_classes = check_num_classes(num_classes)
        self.bn = _check_bn(bn)
        self.saliency = _gradient_source(model, saliency, self.bn, generator)
        self.accepts_uint8 = takes_uint8(self.saliency)
        self.m_part = _check_int(m_part, "m_part", 2)
        if isinstance(grid, numbers.Integral) and not isinstance(grid, bool):
            grid = (grid, grid)
        try:
            rows, cols = grid
        except (TypeError, ValueError):
            raise TypeError(f"grid must be an int or a pair (rows, cols), got {grid!r}") from None
        self.grid = (_check_int(rows, "grid", 1), _check_int(cols, "grid", 1))
        self.beta = check_positive(beta, "beta", allow_zero=True)
        self.gamma = check_positive(gamma, "gamma", allow_zero=True)
        self.eta = check_positive(eta, "eta", allow_zero=True)
        self.tau = check_probability(tau, "tau", low_open=True)
        self.omega = check_probability(omega, "omega")
        self.sweeps = _check_int(sweeps, "sweeps", 1)
        self.candidates = None if candidates is None else _check_int(candidates, "candidates", 1)
        self.prob = check_probability(prob, "prob")

    def _repr_fields(self):
        return {"num_classes": self.num_classes, "m_part": self.m_part, "grid": self.grid, "beta": self.beta,
                "gamma": self.gamma, "eta": self.eta, "tau": self.tau, "omega": self.omega, "prob": self.prob}

    def groups(self, batch: int, device) -> torch.Tensor:
        """A random partition of the batch: (G, m) batch indices, −1 where a smaller group is padded."""
        count = max(1, -(-batch // self.m_part))
        order = _random.randperm(batch, device, self.generator)
        size = -(-batch // count)
        padded = torch.full((count * size,), -1, dtype=torch.long, device=device)
        # group g takes positions g, g + G, g + 2G… of the shuffled order: sizes differ by at most one
        slots = torch.arange(batch, device=device)
        padded[(slots % count) * size + slots // count] = order
        return padded.view(count, size)

    def apply(self, images, targets, saliency_maps: Optional[torch.Tensor] = None) -> Batch:
        if targets is None:
            raise ValueError("CoMixup mixes labels: targets are required")
        to_soft_targets(targets[:1], self.num_classes)
        batch, channels, height, width = images.shape
        device = images.device
        grid = gc.block_grid((height, width), self.grid)
        n = grid.n
        selected = (_random.rand((batch,), device, self.generator) < self.prob) & (batch >= 2)
        members = self.groups(batch, device)  # G×m
        soft = to_soft_targets(targets, self.num_classes).to(device)
        if batch < 2:
            self.last_stats = {"lam": torch.ones(batch, device=device), "composition": torch.eye(batch, device=device),
                               "group": torch.zeros(batch, dtype=torch.long, device=device),
                               "source": torch.zeros(batch, n, dtype=torch.long, device=device),
                               "objective": torch.zeros(1, dtype=torch.float64), "sweeps": torch.tensor(0),
                               "cuts": torch.tensor(0), "solver_time": torch.tensor(0.0), "mixed": selected}
            return images, soft
        maps = compute_maps(self.saliency, images, targets, saliency_maps, type(self).__name__)
        block_sal = gc.pool_blocks(maps.float(), grid).flatten(1)  # B×n
        valid = members >= 0
        safe = members.clamp_min(0)
        grouped = block_sal[safe] * valid.unsqueeze(2)  # G×m×n
        update = selected[safe] & valid
        host = torch.cat([grouped.flatten(1), update.float(), valid.float()], dim=1).cpu().double().numpy()
        count, size = members.shape
        sal_np = host[:, :size * n].reshape(count, size, n)
        update_np = host[:, size * n:size * (n + 1)] > 0.5
        valid_np = host[:, size * (n + 1):] > 0.5
        start = time.perf_counter()
        result = gc.comixup_assign(sal_np, (grid.rows, grid.cols), valid_np, update_np, beta=self.beta,
                                   gamma=self.gamma, eta=self.eta, tau=self.tau, omega=self.omega,
                                   max_sweeps=self.sweeps, candidates=self.candidates)
        solver_time = time.perf_counter() - start
        assign = torch.as_tensor(result.assign, device=device)  # G×m×n local input index
        source = torch.gather(safe, 1, assign.flatten(1)).view(count, size, n)  # batch index of each block's input
        flat_members = members.flatten()
        keep = flat_members >= 0
        block_source = torch.empty(batch, n, dtype=torch.long, device=device)
        block_source[flat_members[keep]] = source.flatten(0, 1)[keep]
        pixel_source = block_source[:, grid.block_index(device).flatten()].view(batch, height, width)
        ys = torch.arange(height, device=device).view(1, -1, 1).expand(batch, height, width)
        xs = torch.arange(width, device=device).view(1, 1, -1).expand(batch, height, width)
        out = images.permute(0, 2, 3, 1)[pixel_source, ys, xs].permute(0, 3, 1, 2).contiguous()
        areas = grid.areas(device).float() / float(height * width)
        composition = torch.zeros(batch, batch, device=device).scatter_add_(
            1, block_source, areas.expand(batch, n).contiguous())
        group = torch.empty(batch, dtype=torch.long, device=device)
        group[flat_members[keep]] = torch.arange(count, device=device).repeat_interleave(size)[keep]
        self.last_stats = {"lam": composition.diagonal().clone(), "composition": composition, "group": group,
                           "source": block_source,
                           "objective": torch.as_tensor(result.objective), "sweeps": torch.tensor(result.sweeps),
                           "cuts": torch.tensor(result.cuts), "solver_time": torch.tensor(solver_time),
                           "mixed": selected}
        return out, composition @ soft


__all__ = ["CoMixup", "PuzzleMix"]
