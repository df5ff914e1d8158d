"""Graph cuts, multi-label moves, block transport and the Co-Mixup assignment.

The functional core of :class:`keepmix.optmix.PuzzleMix` and :class:`keepmix.optmix.CoMixup`.
Pure functions, tested against brute force (``tests/test_graphcut.py``).

**Energies.** Every labelling problem here is a pairwise energy on the nodes of a graph,

.. math::
    E(z) = \\sum_i U_i(z_i) + \\sum_{(u, v) \\in \\mathcal E} V_{uv}(z_u, z_v), \\qquad z_i \\in \\{0, …, L − 1\\}

with unary costs ``U`` (N×L) and one L×L table ``V`` per edge.

* :func:`min_cut` minimises a **binary** energy (L = 2) exactly by an s–t minimum cut when every pair
  is submodular, V(0,0) + V(1,1) ≤ V(0,1) + V(1,0) (Kolmogorov & Zabih, 2004). Many independent
  problems (*components*) are solved in one graph, with one call of SciPy's
  ``scipy.sparse.csgraph.maximum_flow`` (Dinic).
* :func:`alpha_beta_swap` and :func:`alpha_expansion` (Boykov, Veksler & Zabih, 2001) minimise
  multi-label energies by a sequence of binary moves, each one :func:`min_cut` over every problem of
  the batch at once. Swap needs a semi-metric V (V(a,a) = 0 ≤ V(a,b) = V(b,a)); expansion a metric.
  Moves never increase the energy: a move whose exact energy is not lower is rejected per problem.
* :func:`transport_plan` and :func:`permute_blocks`: PuzzleMix's transport of salient blocks.
* :func:`comixup_assign` / :func:`comixup_objective`: Co-Mixup's joint assignment.

**Integer capacities.** ``maximum_flow`` takes int32 capacities. Costs are decomposed into
non-negative capacities (unary differences on the terminal edges, B + C − A − D on the pair edges)
and each component c is scaled by its own factor σ_c = ⌊(2³¹ − 1 − #capacities) / #components⌋ /
(Σ of its capacities), then rounded to the nearest integer. So the total capacity (hence every flow)
fits in int32, and each component uses the same share of the int32 range whatever its scale. The cut
is the exact minimiser of the rounded energy, and its true energy exceeds the true minimum by at most
(#nodes + #edges of the component) / σ_c — a relative error below 1e-4 of the component's total
capacity for a batch of 64 problems of 16×16 blocks. A non-submodular pair (B + C < A + D) is
*truncated*: its term is replaced by the modular A + (C − A) z_u + (D − C) z_v, which under-estimates
the (0, 1) entry; the multi-label moves reject any move that this makes worse.

The cut runs on the CPU (NumPy/SciPy): the ops move one batch's costs to the host once and the
labels back once. SciPy is an optional dependency (``pip install 'keepmix[optmix]'``).
"""

from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch

INT32_MAX = 2 ** 31 - 1

_SCIPY_MESSAGE = ("PuzzleMix and CoMixup solve graph cuts with SciPy (scipy.sparse.csgraph.maximum_flow), "
                  "which is not installed: pip install 'keepmix[optmix]' (or scipy>=1.7)")


def _csgraph():
    try:
        from scipy import sparse
        from scipy.sparse import csgraph
    except ImportError as error:  # pragma: no cover - exercised with a patched import in the tests
        raise ImportError(_SCIPY_MESSAGE) from error
    return sparse, csgraph


def require_scipy() -> None:
    """Raise ImportError naming the ``keepmix[optmix]`` extra when SciPy is missing."""
    _csgraph()


# --------------------------------------------------------------------------- grids


def grid_edges(height: int, width: int) -> np.ndarray:
    """The 4-neighbourhood of a height×width grid: int64 (E, 2) node pairs (u, v), node = row·width + col.

    Horizontal pairs ((r, c), (r, c + 1)) first, row-major, then vertical pairs ((r, c), (r + 1, c)),
    row-major: E = height·(width − 1) + (height − 1)·width.
    """
    ids = np.arange(height * width, dtype=np.int64).reshape(height, width)
    horizontal = np.stack([ids[:, :-1].ravel(), ids[:, 1:].ravel()], axis=1)
    vertical = np.stack([ids[:-1, :].ravel(), ids[1:, :].ravel()], axis=1)
    return np.concatenate([horizontal, vertical]).reshape(-1, 2)


# --------------------------------------------------------------------------- binary min cut


def min_cut(unary, edges, pairwise, component=None, num_components: Optional[int] = None) -> np.ndarray:
    """Exact minimiser of a binary pairwise energy by an s–t minimum cut (one ``maximum_flow`` call).

    .. math:: E(z) = \\sum_i U_i(z_i) + \\sum_{(u,v)} V_{uv}(z_u, z_v), \\quad z ∈ \\{0, 1\\}^N

    Construction: with A, B, C, D = V(0,0), V(0,1), V(1,0), V(1,1),
    V(z_u, z_v) = A + (C − A) z_u + (D − C) z_v + (B + C − A − D)(1 − z_u) z_v, so each pair becomes an
    edge u → v of capacity B + C − A − D ≥ 0 (cut when z_u = 0, z_v = 1) plus unary terms; a net unary
    θ_i z_i is an edge source → i of capacity θ_i when θ_i > 0 and i → sink of capacity −θ_i otherwise.
    Nodes still reachable from the source in the residual graph take label 0. Capacities are scaled
    per component and rounded to int32 (see the module docstring).

    Args:
        unary: float (N, 2) costs U_i(0), U_i(1).
        edges: int (E, 2) node pairs (u, v), u ≠ v.
        pairwise: float (E, 2, 2) tables V_uv[z_u, z_v].
        component: int (N,) independent problem of each node (edges never join two); default all 0.
        num_components: number of components (default ``component.max() + 1``).

    Returns:
        int64 (N,) labels in {0, 1}. Ties between optimal labellings go to label 1 for nodes the
        source cannot reach.
    """
    sparse, csgraph = _csgraph()
    unary = np.asarray(unary, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    pairwise = np.asarray(pairwise, dtype=np.float64).reshape(-1, 2, 2)
    n_nodes = unary.shape[0]
    if n_nodes == 0:
        return np.zeros(0, dtype=np.int64)
    comp = np.zeros(n_nodes, dtype=np.int64) if component is None else np.asarray(component, dtype=np.int64)
    n_comp = int(num_components) if num_components is not None else int(comp.max()) + 1
    u, v = edges[:, 0], edges[:, 1]
    a, b, c, d = pairwise[:, 0, 0], pairwise[:, 0, 1], pairwise[:, 1, 0], pairwise[:, 1, 1]
    weight = np.maximum(b + c - a - d, 0.0)  # truncation of non-submodular pairs
    theta = unary[:, 1] - unary[:, 0]
    if len(edges):
        theta = theta + np.bincount(u, c - a, n_nodes) + np.bincount(v, d - c, n_nodes)
    total = np.bincount(comp, np.abs(theta), n_comp)
    if len(edges):
        total = total + np.bincount(comp[u], weight, n_comp)
    n_caps = n_nodes + len(edges)
    budget = (INT32_MAX - n_caps - 1) / max(n_comp, 1)
    scale = np.where(total > 0, budget / np.where(total > 0, total, 1.0), 0.0)
    cap_terminal = np.floor(np.abs(theta) * scale[comp] + 0.5)
    cap_pair = np.floor(weight * scale[comp[u]] + 0.5) if len(edges) else np.zeros(0)
    source, sink = n_nodes, n_nodes + 1
    nodes = np.arange(n_nodes, dtype=np.int64)
    up = theta > 0
    rows = np.concatenate([u, np.full(int(up.sum()), source), nodes[~up]])
    cols = np.concatenate([v, nodes[up], np.full(int((~up).sum()), sink)])
    data = np.concatenate([cap_pair, cap_terminal[up], cap_terminal[~up]])
    keep = data > 0
    graph = sparse.csr_matrix((data[keep].astype(np.int32), (rows[keep], cols[keep])),
                              shape=(n_nodes + 2, n_nodes + 2))
    flow = csgraph.maximum_flow(graph, source, sink).flow
    residual = (graph - flow).tocsr()
    residual.data[residual.data < 0] = 0
    residual.eliminate_zeros()
    reached = csgraph.breadth_first_order(residual, source, directed=True, return_predecessors=False)
    labels = np.ones(n_nodes, dtype=np.int64)
    labels[reached[reached < n_nodes]] = 0
    return labels


def labelling_energy(labels, unary, edges, pairwise, component=None, num_components: Optional[int] = None
                     ) -> np.ndarray:
    """E(z) per component for a labelling of a general graph: float64 (num_components,).

    ``unary`` (N, L), ``edges`` (E, 2), ``pairwise`` (E, L, L), ``labels`` (N,) in [0, L).
    """
    labels = np.asarray(labels, dtype=np.int64)
    unary = np.asarray(unary, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    pairwise = np.asarray(pairwise, dtype=np.float64)
    n_nodes = unary.shape[0]
    comp = np.zeros(n_nodes, dtype=np.int64) if component is None else np.asarray(component, dtype=np.int64)
    n_comp = int(num_components) if num_components is not None else int(comp.max()) + 1 if n_nodes else 1
    energy = np.bincount(comp, unary[np.arange(n_nodes), labels], n_comp)
    if len(edges):
        pair = pairwise[np.arange(len(edges)), labels[edges[:, 0]], labels[edges[:, 1]]]
        energy = energy + np.bincount(comp[edges[:, 0]], pair, n_comp)
    return energy


# --------------------------------------------------------------------------- multi-label moves on grids


class MoveResult(NamedTuple):
    """Result of :func:`alpha_beta_swap` / :func:`alpha_expansion`.

    ``labels`` int64 (K, n); ``energy`` float64 (K,); ``trace``: the energies (K,) before the first move
    and after every move (non-increasing per problem); ``cuts``: the number of ``maximum_flow`` calls.
    """

    labels: np.ndarray
    energy: np.ndarray
    trace: List[np.ndarray]
    cuts: int


def _check_grid_problem(unary, edges, pairwise) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    unary = np.asarray(unary, dtype=np.float64)
    if unary.ndim != 3:
        raise ValueError(f"unary must be (K, n, L), got shape {unary.shape}")
    k, _, n_labels = unary.shape
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    pairwise = np.asarray(pairwise, dtype=np.float64)
    if pairwise.ndim == 3:
        pairwise = pairwise[None]
    if pairwise.shape[1:] != (len(edges), n_labels, n_labels) or pairwise.shape[0] not in (1, k):
        raise ValueError(f"pairwise must be (K, E, L, L) or (E, L, L) with E = {len(edges)}, L = {n_labels}, "
                         f"got shape {pairwise.shape}")
    return unary, edges, np.broadcast_to(pairwise, (k, len(edges), n_labels, n_labels))


def grid_energy(labels, unary, edges, pairwise) -> np.ndarray:
    """E(z) of K problems sharing one edge list: labels (K, n), unary (K, n, L), pairwise (K|1, E, L, L) → (K,)."""
    unary, edges, pairwise = _check_grid_problem(unary, edges, pairwise)
    labels = np.asarray(labels, dtype=np.int64)
    k = unary.shape[0]
    energy = np.take_along_axis(unary, labels[..., None], 2)[..., 0].sum(axis=1)
    if len(edges):
        rows = np.arange(k)[:, None]
        cols = np.arange(len(edges))[None, :]
        energy = energy + pairwise[rows, cols, labels[:, edges[:, 0]], labels[:, edges[:, 1]]].sum(axis=1)
    return energy


def _binary_move(unary, edges, pairwise, labels, active, label0, label1):
    """One batched binary move: active nodes choose between ``label0`` (K, n) and ``label1`` (K, n);
    inactive nodes keep ``labels``. Returns the proposed labelling (K, n)."""
    k, n, _ = unary.shape
    rows = np.arange(k)[:, None]
    nodes = np.arange(n)[None, :]
    u0 = unary[rows, nodes, label0] if np.ndim(label0) else unary[:, :, label0]
    u1 = unary[rows, nodes, label1] if np.ndim(label1) else unary[:, :, label1]
    u0 = np.where(active, u0, 0.0)
    u1 = np.where(active, u1, 0.0)
    l0 = np.broadcast_to(label0, (k, n))
    l1 = np.broadcast_to(label1, (k, n))
    eu, ev = edges[:, 0], edges[:, 1]
    erows = np.arange(k)[:, None]
    ecols = np.arange(len(edges))[None, :]
    au, av = active[:, eu], active[:, ev]
    lu, lv = labels[:, eu], labels[:, ev]
    flat_u = (erows * n + eu[None, :])
    flat_v = (erows * n + ev[None, :])
    # pairs with one fixed end become unary terms of the active end
    one_u = au & ~av
    one_v = av & ~au
    add0 = np.bincount(flat_u[one_u], pairwise[erows, ecols, l0[:, eu], lv][one_u], k * n) \
        + np.bincount(flat_v[one_v], pairwise[erows, ecols, lu, l0[:, ev]][one_v], k * n)
    add1 = np.bincount(flat_u[one_u], pairwise[erows, ecols, l1[:, eu], lv][one_u], k * n) \
        + np.bincount(flat_v[one_v], pairwise[erows, ecols, lu, l1[:, ev]][one_v], k * n)
    flat_active = np.flatnonzero(active)
    index = np.full(k * n, -1, dtype=np.int64)
    index[flat_active] = np.arange(len(flat_active))
    bin_unary = np.stack([(u0.ravel() + add0)[flat_active], (u1.ravel() + add1)[flat_active]], axis=1)
    both = au & av
    bu, bv = l0[:, eu][both], l0[:, ev][both]
    cu, cv = l1[:, eu][both], l1[:, ev][both]
    er, ec = np.broadcast_to(erows, both.shape)[both], np.broadcast_to(ecols, both.shape)[both]
    table = np.stack([np.stack([pairwise[er, ec, bu, bv], pairwise[er, ec, bu, cv]], 1),
                      np.stack([pairwise[er, ec, cu, bv], pairwise[er, ec, cu, cv]], 1)], 1)
    bin_edges = np.stack([index[flat_u[both]], index[flat_v[both]]], axis=1)
    choice = min_cut(bin_unary, bin_edges, table, flat_active // n, k)
    proposal = labels.copy().ravel()
    proposal[flat_active] = np.where(choice == 0, l0.ravel()[flat_active], l1.ravel()[flat_active])
    return proposal.reshape(k, n)


def _accept(labels, energy, proposal, unary, edges, pairwise):
    new_energy = grid_energy(proposal, unary, edges, pairwise)
    better = new_energy < energy
    labels = np.where(better[:, None], proposal, labels)
    return labels, np.where(better, new_energy, energy), bool(better.any())


def alpha_beta_swap(unary, edges, pairwise, init=None, max_sweeps: int = 2) -> MoveResult:
    """α-β swap (Boykov, Veksler & Zabih 2001) for K problems on one grid, every move batched.

    For each pair of labels α < β, the nodes labelled α or β choose between α and β by one binary
    :func:`min_cut` (nodes with other labels are fixed and enter as unary terms); a sweep visits every
    pair. The moves are exact for a semi-metric V (then every binary pair is submodular). A problem
    whose proposal is not strictly lower in energy keeps its labelling, so the energy never
    increases. Stops after a sweep that changes nothing or after ``max_sweeps`` sweeps.

    With L = 2 the single move (0, 1) is the exact global minimum.

    Args:
        unary: float (K, n, L).
        edges: int (E, 2) shared by the K problems (e.g. :func:`grid_edges`).
        pairwise: float (K, E, L, L) or (E, L, L).
        init: int (K, n) starting labels (default: the unary argmin).
        max_sweeps: at most this many sweeps over the label pairs.
    """
    unary, edges, pairwise = _check_grid_problem(unary, edges, pairwise)
    n_labels = unary.shape[2]
    labels = unary.argmin(axis=2) if init is None else np.array(init, dtype=np.int64)
    # every pair (α, β): nodes labelled α or β may swap between them
    moves = [lambda current, a=alpha, b=beta: ((current == a) | (current == b), a, b)
             for alpha in range(n_labels) for beta in range(alpha + 1, n_labels)]
    return _sweeps(unary, edges, pairwise, labels, moves, max_sweeps, single_sweep=n_labels == 2)


def _sweeps(unary, edges, pairwise, labels, moves, max_sweeps: int, single_sweep: bool = False) -> MoveResult:
    """The move-making loop shared by the swap and the expansion: each move maps the current labels to
    ``(active, keep, alpha)``; one batched binary cut per move, kept per problem only where it lowers the
    energy; stop after a sweep without change (or after one sweep when ``single_sweep``)."""
    energy = grid_energy(labels, unary, edges, pairwise)
    trace = [energy.copy()]
    cuts = 0
    for _ in range(max(int(max_sweeps), 1)):
        changed = False
        for move in moves:
            active, keep, alpha = move(labels)  # from the labels as the previous move left them
            if not active.any():
                continue
            proposal = _binary_move(unary, edges, pairwise, labels, active, keep, alpha)
            cuts += 1
            labels, energy, moved = _accept(labels, energy, proposal, unary, edges, pairwise)
            changed = changed or moved
            trace.append(energy.copy())
        if not changed or single_sweep:
            break
    return MoveResult(labels, energy, trace, cuts)


def alpha_expansion(unary, edges, pairwise, init=None, max_sweeps: int = 2,
                    candidates=None) -> MoveResult:
    """α-expansion (Boykov, Veksler & Zabih 2001) for K problems on one grid, every move batched.

    For each label α, every node either keeps its label or switches to α, by one binary
    :func:`min_cut`; exact moves for a metric V (Potts, truncated L1…). Energy never increases
    (proposals that are not strictly better are rejected per problem). ``candidates`` (K, L) bool
    restricts the labels tried per problem (labels outside it are never introduced); a label a problem
    does not try costs nothing. Stops after a sweep without change or after ``max_sweeps``.
    """
    unary, edges, pairwise = _check_grid_problem(unary, edges, pairwise)
    k, n, n_labels = unary.shape
    labels = unary.argmin(axis=2) if init is None else np.array(init, dtype=np.int64)
    cand = np.ones((k, n_labels), dtype=bool) if candidates is None else np.asarray(candidates, dtype=bool)
    # every label α: any node may switch to α (where the problem tries α)
    moves = [lambda current, a=alpha: (cand[:, a][:, None] & (current != a), current, a)
             for alpha in range(n_labels)]
    return _sweeps(unary, edges, pairwise, labels, moves, max_sweeps)


# --------------------------------------------------------------------------- block grids


class BlockGrid(NamedTuple):
    """A grid of ``rows``×``cols`` blocks over an H×W image.

    Block (r, c) covers rows [r·bh, (r + 1)·bh) and columns [c·bw, (c + 1)·bw) with bh = ⌊H/rows⌋,
    bw = ⌊W/cols⌋; the last block row and column also take the remainder (H − rows·bh rows, W − cols·bw
    columns). The top-left bh×bw of every block is its *core* — the part that transport moves.
    ``row_block`` (H,) and ``col_block`` (W,) give each pixel row's / column's block index.
    """

    rows: int
    cols: int
    block_h: int
    block_w: int
    size: Tuple[int, int]

    @property
    def n(self) -> int:
        return self.rows * self.cols

    def row_block(self, device=None) -> torch.Tensor:
        return (torch.arange(self.size[0], device=device) // self.block_h).clamp_max(self.rows - 1)

    def col_block(self, device=None) -> torch.Tensor:
        return (torch.arange(self.size[1], device=device) // self.block_w).clamp_max(self.cols - 1)

    def block_index(self, device=None) -> torch.Tensor:
        """Block id (row·cols + col) of every pixel: int64 H×W."""
        return self.row_block(device).view(-1, 1) * self.cols + self.col_block(device).view(1, -1)

    def areas(self, device=None) -> torch.Tensor:
        """Pixel count of every block: int64 (n,)."""
        heights = torch.bincount(self.row_block(device), minlength=self.rows)
        widths = torch.bincount(self.col_block(device), minlength=self.cols)
        return (heights.view(-1, 1) * widths.view(1, -1)).flatten()

    def centres(self) -> np.ndarray:
        """Block coordinates (row, col) in block units: float64 (n, 2)."""
        r, c = np.meshgrid(np.arange(self.rows), np.arange(self.cols), indexing="ij")
        return np.stack([r.ravel(), c.ravel()], axis=1).astype(np.float64)


def block_grid(size: Tuple[int, int], blocks: Union[int, Tuple[int, int]]) -> BlockGrid:
    """The :class:`BlockGrid` of ``blocks`` per side (int or (rows, cols)) over an image of ``size`` = (H, W).

    A grid finer than the image is clamped to one pixel per block (rows ≤ H, cols ≤ W).
    """
    height, width = int(size[0]), int(size[1])
    rows, cols = (blocks, blocks) if isinstance(blocks, int) else blocks
    rows, cols = max(1, min(int(rows), height)), max(1, min(int(cols), width))
    return BlockGrid(rows, cols, height // rows, width // cols, (height, width))


def pool_blocks(maps: torch.Tensor, grid: BlockGrid) -> torch.Tensor:
    """Sum of B×H×W maps over each block: (B, rows, cols) in the maps' dtype."""
    batch = maps.shape[0]
    by_rows = maps.new_zeros(batch, grid.rows, maps.shape[2]).index_add_(1, grid.row_block(maps.device), maps)
    return maps.new_zeros(batch, grid.rows, grid.cols).index_add_(2, grid.col_block(maps.device), by_rows)


def expand_blocks(values: torch.Tensor, grid: BlockGrid) -> torch.Tensor:
    """Per-block values (B, rows, cols) or (B, n) painted onto their pixels: (B, H, W)."""
    values = values.reshape(values.shape[0], grid.rows, grid.cols)
    return values[:, grid.row_block(values.device)][:, :, grid.col_block(values.device)]


def seam_costs(first: torch.Tensor, second: torch.Tensor, grid: BlockGrid) -> torch.Tensor:
    """How different two images are along each block boundary of the grid: float32 (B, E).

    For neighbouring blocks u, v (edges in :func:`grid_edges` order) and the pixel pairs (p, q) that
    face each other across their boundary (p in u, q in v),

    .. math:: δ_{uv} = \\operatorname{mean}_{(p, q)} \\tfrac12 \\big(\\bar d(p) + \\bar d(q)\\big), \\qquad
              \\bar d = \\tfrac1C \\sum_c |x^{(1)}_c − x^{(2)}_c|

    — the visible step a seam between the two images leaves there (Kwatra et al.'s graph-cut
    texture seam cost, mean absolute difference). Images B×C×H×W float.
    """
    diff = (first.float() - second.float()).abs().mean(dim=1)  # B×H×W
    batch, height, width = diff.shape
    device = diff.device
    parts = []
    if grid.cols > 1:
        starts = torch.arange(1, grid.cols, device=device) * grid.block_w
        across = 0.5 * (diff[:, :, starts - 1] + diff[:, :, starts])  # B×H×(cols−1)
        rows = grid.row_block(device)
        sums = diff.new_zeros(batch, grid.rows, grid.cols - 1).index_add_(1, rows, across)
        counts = torch.bincount(rows, minlength=grid.rows).to(diff.dtype).view(1, -1, 1)
        parts.append((sums / counts).flatten(1))
    if grid.rows > 1:
        starts = torch.arange(1, grid.rows, device=device) * grid.block_h
        across = 0.5 * (diff[:, starts - 1, :] + diff[:, starts, :])  # B×(rows−1)×W
        cols = grid.col_block(device)
        sums = diff.new_zeros(batch, grid.rows - 1, grid.cols).index_add_(2, cols, across)
        counts = torch.bincount(cols, minlength=grid.cols).to(diff.dtype).view(1, 1, -1)
        parts.append((sums / counts).flatten(1))
    if not parts:
        return diff.new_zeros(batch, 0)
    return torch.cat(parts, dim=1)


def mean_one(saliency: np.ndarray) -> np.ndarray:
    """Block saliency rescaled to mean 1 over the last axis (sum = n): ŝ = n·s / Σ s; a zero or
    negative-only row becomes uniform (all 1). Negative entries are clipped to 0 first."""
    s = np.clip(np.asarray(saliency, dtype=np.float64), 0.0, None)
    n = s.shape[-1]
    total = s.sum(axis=-1, keepdims=True)
    return np.where(total > 0, s * n / np.where(total > 0, total, 1.0), 1.0)


# --------------------------------------------------------------------------- PuzzleMix terms


def label_values(n_labels: int) -> np.ndarray:
    """The mask values of the labels: ℓ/(L − 1), ℓ = 0…L − 1 (the own image's share of a block)."""
    return np.arange(n_labels, dtype=np.float64) / (n_labels - 1)


def puzzle_unary(own, partner, lam, n_labels: int = 3, eta: float = 0.2) -> np.ndarray:
    """PuzzleMix's unary costs for K pairs: float64 (K, n, L).

    .. math:: U_i(ℓ) = −\\big(m_ℓ\\, ŝ^{own}_i + (1 − m_ℓ)\\, ŝ^{partner}_i\\big)
              − η \\log \\binom{L-1}{ℓ} λ^{ℓ} (1 − λ)^{L-1-ℓ}

    with m_ℓ = ℓ/(L − 1) the own image's share of block i, ŝ the block saliency of each image rescaled
    to mean 1 (:func:`mean_one`) and the label prior a Binomial(L − 1, λ) — mean share λ. λ is clipped
    to [1e-6, 1 − 1e-6] so that the prior stays finite.
    """
    own, partner = mean_one(own), mean_one(partner)
    m = label_values(n_labels)
    lam = np.clip(np.asarray(lam, dtype=np.float64), 1e-6, 1 - 1e-6).reshape(-1, 1)
    ell = np.arange(n_labels)
    log_binom = np.array([math.lgamma(n_labels) - math.lgamma(i + 1) - math.lgamma(n_labels - i) for i in ell])
    log_prior = log_binom[None, :] + ell[None, :] * np.log(lam) + (n_labels - 1 - ell)[None, :] * np.log1p(-lam)
    gain = m[None, None, :] * own[..., None] + (1 - m)[None, None, :] * partner[..., None]
    return -gain - eta * log_prior[:, None, :]


def puzzle_pairwise(seams, n_labels: int = 3, beta: float = 1.2, gamma: float = 0.5) -> np.ndarray:
    """PuzzleMix's pairwise costs for K pairs: float64 (K, E, L, L).

    .. math:: V_{uv}(a, b) = β\\,(m_a − m_b)^2 + γ\\,δ_{uv}\\,|m_a − m_b|

    β: smoothness of the mask; γ: local statistics — a label change between blocks u and v costs the
    seam δ_uv (:func:`seam_costs`) it leaves. A semi-metric in the labels, so every swap move is
    submodular.
    """
    m = label_values(n_labels)
    step = m[:, None] - m[None, :]
    seams = np.asarray(seams, dtype=np.float64)
    return beta * step[None, None] ** 2 + gamma * seams[..., None, None] * np.abs(step)[None, None]


# --------------------------------------------------------------------------- transport


def transport_cost(saliency: torch.Tensor, share: torch.Tensor, grid: BlockGrid) -> torch.Tensor:
    """PuzzleMix's saliency-discounted transport cost: (K, n, n), row a = source block, column b = destination.

    .. math:: C_{ab} = \\lVert p_a − p_b \\rVert_1 − ŝ_a\\, w_b

    p: block coordinates in block units (one step between neighbours costs 1); ŝ: the image's block
    saliency with mean 1; w_b ∈ [0, 1]: how much of this image the mask shows at b (M for the image
    itself, 1 − M for its partner). Moving a salient block to where it will be seen pays off when its
    saliency exceeds the distance travelled.
    """
    coords = torch.as_tensor(grid.centres(), device=saliency.device, dtype=saliency.dtype)
    distance = (coords[:, None, :] - coords[None, :, :]).abs().sum(-1)
    return distance.unsqueeze(0) - saliency.unsqueeze(2) * share.unsqueeze(1)


def transport_plan(cost: torch.Tensor, eps: float = 0.8, max_iter: int = 50) -> torch.Tensor:
    """Approximate minimum-cost assignment of n source blocks to n destinations, batched: (K, n, n) → (K, n).

    PuzzleMix's transport as an iterative ε-auction (Bertsekas 1988, Jacobi form): every source
    without a destination bids for the destination b of lowest cost + price, raising its price by the
    gap to its second choice plus ``eps``; each destination goes to its highest bid (ties: lowest
    source index) and its previous holder bids again in the next round. When every source is placed the
    assignment costs at most n·``eps`` more than the optimal one (ε-complementary slackness); a larger
    ``eps`` takes fewer rounds. After ``max_iter`` rounds the sources still unplaced take the free
    destinations in index order. The result is always a permutation (``dest[k, a]`` is source a's
    destination), so moving blocks by it preserves every block's content. Runs on the cost's device
    (float32); each round reads one flag back (a sync).
    """
    k, n, _ = cost.shape
    device = cost.device
    value = -cost.float()
    price = torch.zeros(k, n, dtype=value.dtype, device=device)
    dest = torch.full((k, n), -1, dtype=torch.long, device=device)  # source → destination
    holder = torch.full((k, n), -1, dtype=torch.long, device=device)  # destination → source
    if n == 1:
        return torch.zeros(k, 1, dtype=torch.long, device=device)
    for _ in range(max_iter):
        open_ = dest < 0
        kk, rr = open_.nonzero(as_tuple=True)
        if kk.numel() == 0:
            break
        if 2 * kk.numel() > k * n:  # most sources bid: one dense pass beats gathering their rows
            top = (value - price.unsqueeze(1)).topk(2, dim=2)
            values, indices = top.values[open_], top.indices[open_]
        else:
            top = (value[kk, rr] - price[kk]).topk(2, dim=1)
            values, indices = top.values, top.indices
        target = indices[:, 0]
        bid = price[kk, target] + (values[:, 0] - values[:, 1]) + eps
        slot = kk * n + target
        best = torch.full((k * n,), float("-inf"), dtype=value.dtype, device=device).scatter_reduce(
            0, slot, bid, "amax")
        top_bid = bid >= best[slot]
        first = torch.full((k * n,), n, dtype=torch.long, device=device).scatter_reduce(
            0, slot, torch.where(top_bid, rr, torch.full_like(rr, n)), "amin")
        won = top_bid & (first[slot] == rr)
        wk, wr, wt = kk[won], rr[won], target[won]
        previous = holder[wk, wt]
        had = previous >= 0
        dest[wk[had], previous[had]] = -1
        dest[wk, wr] = wt
        holder[wk, wt] = wr
        price[wk, wt] = bid[won]
    lost = dest < 0
    taken = holder >= 0
    free_first = torch.argsort(taken.to(torch.int8), dim=1, stable=True)
    rank = (lost.long().cumsum(dim=1) - 1).clamp_min(0)
    return torch.where(lost, free_first.gather(1, rank), dest)


def permute_blocks(images: torch.Tensor, dest: torch.Tensor, grid: BlockGrid) -> torch.Tensor:
    """Move the core of block a of each image to block ``dest[b, a]``: B×C×H×W, same dtype.

    Pixels outside the cores (the remainder rows/columns of a grid that does not divide the image)
    stay where they are. ``dest`` (B, n) must hold a permutation per image.
    """
    batch, channels, height, width = images.shape
    device = images.device
    n = grid.n
    src = torch.empty_like(dest).scatter_(1, dest, torch.arange(n, device=device).expand(batch, n))
    ys = torch.arange(height, device=device).view(-1, 1)
    xs = torch.arange(width, device=device).view(1, -1)
    inside = (ys < grid.rows * grid.block_h) & (xs < grid.cols * grid.block_w)
    block = ((ys // grid.block_h).clamp_max(grid.rows - 1) * grid.cols
             + (xs // grid.block_w).clamp_max(grid.cols - 1)).flatten()
    pixel = (ys * width + xs).flatten()
    corner = (torch.arange(grid.rows, device=device).view(-1, 1) * grid.block_h * width
              + torch.arange(grid.cols, device=device).view(1, -1) * grid.block_w).flatten()  # (n,)
    offset = pixel - corner[block]  # position of each pixel inside its block
    flat = torch.where(inside.flatten(), corner[src[:, block]] + offset, pixel)  # B×HW source pixel
    gathered = images.flatten(2).gather(2, flat.unsqueeze(1).expand(batch, channels, -1))
    return gathered.view_as(images)


# --------------------------------------------------------------------------- Co-Mixup


class CoMixupResult(NamedTuple):
    """Result of :func:`comixup_assign`.

    ``assign`` int64 (G, m, n): the input (0…m − 1 within the group) that fills location k of output j;
    ``objective`` float64 (G,) at the end; ``trace``: the objective (G,) before the first update and
    after every output update (non-increasing); ``sweeps``: sweeps over the outputs run; ``cuts``.
    """

    assign: np.ndarray
    objective: np.ndarray
    trace: List[np.ndarray]
    sweeps: int
    cuts: int


def compatibility(saliency: np.ndarray, omega: float) -> np.ndarray:
    """Co-Mixup's compatibility matrix A_c = (1 − ω) I + ω A per group: float64 (G, m, m).

    A_{ii'} = cosine similarity of the block saliency of inputs i and i' (≥ 0, A_ii = 1): inputs
    whose salient regions overlap are less compatible. A_c ≥ 0 entrywise, so the diversity term
    built on it is supermodular.
    """
    s = np.asarray(saliency, dtype=np.float64)
    norm = np.linalg.norm(s, axis=-1, keepdims=True)
    unit = s / np.where(norm > 0, norm, 1.0)
    cos = np.einsum("gik,gjk->gij", unit, unit)
    m = s.shape[1]
    eye = np.eye(m)[None]
    cos = np.where(eye > 0, 1.0, np.clip(cos, 0.0, 1.0))
    return (1 - omega) * eye + omega * cos


def _counts(assign: np.ndarray, m: int) -> np.ndarray:
    """c[g, j, i] = number of locations of output j filled by input i: (G, m, m)."""
    g, outs, n = assign.shape
    flat = (np.arange(g)[:, None, None] * outs + np.arange(outs)[None, :, None]) * m + assign
    return np.bincount(flat.ravel(), minlength=g * outs * m).reshape(g, outs, m).astype(np.float64)


def _collected(assign: np.ndarray, s: np.ndarray) -> np.ndarray:
    """w[g, j, i] = Σ_k ŝ_i(k) [assign[g, j, k] = i]: (G, m, m)."""
    g, outs, n = assign.shape
    m = s.shape[1]
    values = np.take_along_axis(s, assign, axis=1) if outs == m else \
        s[np.arange(g)[:, None, None], assign, np.arange(n)[None, None, :]]
    flat = (np.arange(g)[:, None, None] * outs + np.arange(outs)[None, :, None]) * m + assign
    return np.bincount(flat.ravel(), values.ravel(), g * outs * m).reshape(g, outs, m)


def comixup_objective(assign, saliency, grid_shape: Tuple[int, int], valid=None, *, beta: float = 0.32,
                      gamma: float = 1.0, eta: float = 0.05, tau: float = 0.83, omega: float = 0.001) -> np.ndarray:
    """Co-Mixup's objective (to minimise) for G groups of m inputs and m outputs on an n-block grid: (G,).

    .. math::
        f(Z) = \\sum_j \\Big[ −\\sum_i \\min\\big(τ n,\\; w_{ji}\\big)
               + β \\sum_{(k,k') ∈ \\mathcal N} [z_{jk} ≠ z_{jk'}]
               − η \\sum_k [z_{jk} = j] \\Big]
             + γ \\sum_{j ≠ j'} o_j^⊤ A_c\\, o_{j'}, \\qquad o_j = c_j / n

    z_{jk}: the input filling location k of output j; ŝ_i: input i's block saliency with mean 1
    (:func:`mean_one`); w_{ji} = Σ_k ŝ_i(k)[z_{jk} = i] the saliency output j collects from input i,
    capped at τ n — a share τ of the input's saliency: collecting more of one input earns nothing, so
    an output has no reason to be (nearly) one input; 𝒩: the 4-neighbourhood of the grid (smoothness
    β); η: the label prior, which favours each output's own input j (so output j is "image j mixed
    with others"); c_j ∈ ℕ^m: how many locations of output j each input fills, o_j = c_j/n its source
    shares (Co-Mixup's input-source vector, a distribution over the inputs); A_c:
    :func:`compatibility`. The last term — diversity — penalises two outputs made of the same inputs;
    it is supermodular, the rest is submodular (graph-representable).

    Scale of the diversity term (keepmix's reading; the paper's text was not at hand): over source
    *shares* o_j, so that moving one block to another input costs about 2γ/n — commensurate with the
    mean-1 saliency of one block at the paper's γ = 1. Over raw counts c_j (the reading keepmix used
    before) one moved block cost about 2γ, more than any but the peakiest block saliency could repay:
    with the paper's defaults every output stayed its own input, and a training run was bit-identical
    to one without mixing (found on the CIFAR-10 subset; ``tests/test_optmix.py`` keeps the case).

    Args:
        assign: int (G, m, n) input index per output location.
        saliency: float (G, m, n) block saliency of the inputs (any scale; rescaled to mean 1).
        grid_shape: (rows, cols) with rows·cols = n.
        valid: bool (G, m): which inputs/outputs exist (groups of unequal size are padded); invalid
            outputs count nothing and must not use invalid inputs.
    """
    assign = np.asarray(assign, dtype=np.int64)
    s = mean_one(saliency)
    g, m, n = s.shape
    valid = np.ones((g, m), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    out_ok = valid.astype(np.float64)
    w = _collected(assign, s)
    cap = tau * s.sum(axis=2)[:, None, :]  # τ W_i, W_i = Σ_k ŝ_i(k) = n
    sal = -(np.minimum(cap, w).sum(axis=2) * out_ok).sum(axis=1)
    edges = grid_edges(*grid_shape)
    cut = (assign[:, :, edges[:, 0]] != assign[:, :, edges[:, 1]]).sum(axis=2)
    smooth = beta * (cut * out_ok).sum(axis=1)
    own = (assign == np.arange(m)[None, :, None]).sum(axis=2)
    prior = -eta * (own * out_ok).sum(axis=1)
    counts = _counts(assign, m) * out_ok[..., None]
    a_c = compatibility(s, omega)
    total = counts.sum(axis=1)
    div = (np.einsum("gi,gij,gj->g", total, a_c, total) - np.einsum("gki,gij,gkj->g", counts, a_c, counts))
    return sal + smooth + prior + gamma / (n * n) * div


def comixup_assign(saliency, grid_shape: Tuple[int, int], valid=None, update=None, *, beta: float = 0.32,
                   gamma: float = 1.0, eta: float = 0.05, tau: float = 0.83, omega: float = 0.001,
                   max_sweeps: int = 2, candidates: Optional[int] = 3) -> CoMixupResult:
    """Minimise :func:`comixup_objective` by Co-Mixup's iterative modular approximation with graph cuts.

    Start: output j = input j. One *sweep* visits the outputs j = 0…m − 1 in turn (all groups at
    once); for output j, with the others fixed:

    * the diversity term is exactly modular in output j's labels: location k choosing input i adds
      (2γ/n²) (A_c Σ_{j'≠j} c_{j'})_i;
    * the capped saliency −min(τ n, w_{ji}) — supermodular — is replaced by its modular upper bound
      tight at the current labels (secants of the convex g(w) = −min(τ n, w)): a location already
      filled by input i counts ŝ_i(k)·g(w̄)/w̄, a new one ŝ_i(k)·(g(W) − g(w̄))/(W − w̄), W = Σ_k ŝ_i(k);
    * the remaining energy (those unaries, the prior, Potts smoothness β) is submodular and minimised
      by :func:`alpha_expansion` from the current labels.

    Each step minimises an upper bound of the objective that is tight at the current point, so the
    objective never increases (majorisation–minimisation); ``trace`` records it after every update.
    Sweeps stop when one changes nothing, or after ``max_sweeps``. ``candidates``: per output, the
    expansion tries the labels it already uses plus the ``candidates`` inputs with the largest
    unary gain somewhere (None: every input) — skipping moves never increases the objective.

    Args:
        saliency: float (G, m, n) block saliency of each group's inputs.
        grid_shape: (rows, cols), rows·cols = n.
        valid: bool (G, m) existing inputs/outputs (default all).
        update: bool (G, m) outputs to optimise (default ``valid``); the others stay copies of their
            input (an image not selected for mixing).
    """
    s = mean_one(saliency)
    g, m, n = s.shape
    valid = np.ones((g, m), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    update = valid.copy() if update is None else (np.asarray(update, dtype=bool) & valid)
    kwargs = dict(beta=beta, gamma=gamma, eta=eta, tau=tau, omega=omega)
    assign = np.broadcast_to(np.arange(m)[None, :, None], (g, m, n)).copy()
    objective = comixup_objective(assign, s, grid_shape, valid, **kwargs)
    trace = [objective.copy()]
    edges = grid_edges(*grid_shape)
    potts = beta * (1.0 - np.eye(m))[None].repeat(len(edges), axis=0)
    a_c = compatibility(s, omega)
    total_sal = s.sum(axis=2)  # W_i (= n)
    big = 1e6
    cuts = 0
    sweeps = 0
    for _ in range(max(int(max_sweeps), 1)):
        sweeps += 1
        changed = False
        for j in range(m):
            rows = np.flatnonzero(update[:, j])
            if rows.size == 0:
                continue
            cur = assign[rows, j]  # (R, n)
            ss = s[rows]  # (R, m, n)
            others = _counts(assign[rows], m) * valid[rows][..., None]
            others = others.sum(axis=1) - others[:, j]  # (R, m)
            diversity = 2.0 * gamma / (n * n) * np.einsum("rij,rj->ri", a_c[rows], others)  # (R, m)
            w_bar = _collected(cur[:, None, :], ss)[:, 0]  # (R, m)
            cap = tau * total_sal[rows]
            capped = np.minimum(cap, w_bar)
            keep_slope = np.where(w_bar > 0, -capped / np.where(w_bar > 0, w_bar, 1.0), 0.0)
            room = total_sal[rows] - w_bar
            add_slope = np.where(room > 1e-12, (capped - cap) / np.where(room > 1e-12, room, 1.0), 0.0)
            in_x = cur[:, :, None] == np.arange(m)[None, None, :]  # (R, n, m)
            slope = np.where(in_x, keep_slope[:, None, :], add_slope[:, None, :])
            unary = slope * ss.transpose(0, 2, 1) + diversity[:, None, :]
            unary[:, :, j] -= eta
            unary = np.where(valid[rows][:, None, :], unary, big)
            cand = valid[rows].copy()
            if candidates is not None:
                current = np.take_along_axis(unary, cur[..., None], 2)  # (R, n, 1)
                gain = (current - unary).max(axis=1)  # (R, m)
                used = np.zeros((rows.size, m), dtype=bool)
                np.put_along_axis(used, cur, True, axis=1)
                order = np.argsort(-gain, axis=1, kind="stable")[:, :int(candidates)]
                best = np.zeros((rows.size, m), dtype=bool)
                np.put_along_axis(best, order, True, axis=1)
                cand &= used | (best & (gain > 0))
            result = alpha_expansion(unary, edges, potts, init=cur, max_sweeps=1, candidates=cand)
            cuts += result.cuts
            moved = (result.labels != cur).any(axis=1)
            if moved.any():
                changed = True
                assign[rows[moved], j] = result.labels[moved]
                trace.append(comixup_objective(assign, s, grid_shape, valid, **kwargs))
        if not changed:
            break
    objective = comixup_objective(assign, s, grid_shape, valid, **kwargs)
    return CoMixupResult(assign, objective, trace, sweeps, cuts)


__all__ = [
    "BlockGrid", "CoMixupResult", "MoveResult", "alpha_beta_swap", "alpha_expansion", "block_grid",
    "comixup_assign", "comixup_objective", "compatibility", "expand_blocks", "grid_edges", "grid_energy",
    "label_values", "labelling_energy", "mean_one", "min_cut", "permute_blocks", "pool_blocks",
    "puzzle_pairwise", "puzzle_unary", "require_scipy", "seam_costs", "transport_cost", "transport_plan",
]
