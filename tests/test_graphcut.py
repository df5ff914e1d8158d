"""The graph-cut core against brute force: min cut, α-β swap, α-expansion, transport, Co-Mixup."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

pytest.importorskip("scipy")

from keepmix import graphcut as gc  # noqa: E402


def all_labellings(n: int, labels: int) -> np.ndarray:
    return np.array(list(itertools.product(range(labels), repeat=n)), dtype=np.int64)


def brute_energies(labellings, unary, edges, pairwise) -> np.ndarray:
    """E(z) of every labelling (M, n) of one problem: unary (n, L), pairwise (E, L, L)."""
    n = unary.shape[0]
    energy = unary[np.arange(n)[None, :], labellings].sum(axis=1)
    for e, (u, v) in enumerate(edges):
        energy = energy + pairwise[e][labellings[:, u], labellings[:, v]]
    return energy


def random_submodular(rng, n_edges: int, scale: float = 1.0) -> np.ndarray:
    table = rng.uniform(0, 1, (n_edges, 2, 2)) * scale
    deficit = table[:, 0, 0] + table[:, 1, 1] - table[:, 0, 1] - table[:, 1, 0]
    table[:, 0, 1] += np.maximum(deficit, 0) + rng.uniform(0, 0.5, n_edges) * scale
    return table


EDGES_3X3 = gc.grid_edges(3, 3)


def test_grid_edges_is_the_4_neighbourhood():
    edges = gc.grid_edges(3, 4)
    assert len(edges) == 3 * 3 + 2 * 4
    coords = np.stack(np.divmod(edges, 4), axis=-1)  # (E, 2 ends, (row, col))
    assert (np.abs(coords[:, 0] - coords[:, 1]).sum(-1) == 1).all()
    assert len({tuple(sorted(e)) for e in edges.tolist()}) == len(edges)


@pytest.mark.parametrize("seed", range(12))
def test_min_cut_is_the_brute_force_minimum_on_3x3(seed):
    rng = np.random.default_rng(seed)
    every = all_labellings(9, 2)
    # several independent 3×3 problems of very different scales solved in one graph
    scales = [1.0, 1e-6, 1e5, 3.0]
    unary = np.concatenate([rng.normal(0, 1, (9, 2)) * s for s in scales])
    pairwise = np.concatenate([random_submodular(rng, len(EDGES_3X3), s) for s in scales])
    edges = np.concatenate([EDGES_3X3 + 9 * k for k in range(len(scales))])
    component = np.repeat(np.arange(len(scales)), 9)
    labels = gc.min_cut(unary, edges, pairwise, component)
    energies = gc.labelling_energy(labels, unary, edges, pairwise, component, len(scales))
    for k, s in enumerate(scales):
        e = len(EDGES_3X3)
        best = brute_energies(every, unary[9 * k:9 * k + 9], EDGES_3X3, pairwise[e * k:e * k + e]).min()
        # optimal up to the int32 rounding: (nodes + edges) / scale relative to the total capacity
        assert energies[k] == pytest.approx(best, abs=1e-6 * s)


def test_min_cut_handles_empty_and_isolated_problems():
    assert gc.min_cut(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros((0, 2, 2))).shape == (0,)
    labels = gc.min_cut(np.array([[0.0, 1.0], [2.0, -1.0], [0.0, 0.0]]), np.zeros((0, 2)), np.zeros((0, 2, 2)))
    assert labels[:2].tolist() == [0, 1]


def test_non_submodular_pairs_are_truncated_and_moves_never_increase():
    rng = np.random.default_rng(3)
    for _ in range(5):
        unary = rng.normal(0, 1, (6, 9, 3))
        pairwise = rng.normal(0, 1, (6, len(EDGES_3X3), 3, 3))  # arbitrary, often non-submodular
        for solver in (gc.alpha_beta_swap, gc.alpha_expansion):
            result = solver(unary, EDGES_3X3, pairwise, max_sweeps=4)
            trace = np.stack(result.trace)
            assert (np.diff(trace, axis=0) <= 1e-12).all()
            assert np.allclose(result.energy, gc.grid_energy(result.labels, unary, EDGES_3X3, pairwise))


@pytest.mark.parametrize("seed", range(6))
def test_swap_with_two_labels_is_exact(seed):
    rng = np.random.default_rng(seed)
    unary = rng.normal(0, 1, (4, 9, 2))
    pairwise = np.stack([random_submodular(rng, len(EDGES_3X3)) for _ in range(4)])
    result = gc.alpha_beta_swap(unary, EDGES_3X3, pairwise)
    every = all_labellings(9, 2)
    for k in range(4):
        assert result.energy[k] == pytest.approx(brute_energies(every, unary[k], EDGES_3X3, pairwise[k]).min(),
                                                 abs=1e-6)


def swap_neighbours(z: np.ndarray, every: np.ndarray, a: int, b: int) -> np.ndarray:
    """Labellings one α-β swap away from z: only nodes labelled a or b change, and only to a or b."""
    movable = (z == a) | (z == b)
    same = (every[:, ~movable] == z[~movable]).all(axis=1)
    inside = ((every[:, movable] == a) | (every[:, movable] == b)).all(axis=1)
    return same & inside


@pytest.mark.parametrize("seed", range(8))
def test_swap_three_labels_is_a_swap_local_minimum_by_brute_force(seed):
    """Every labelling of the 3×3 grid with 3 labels: no single swap move improves the result."""
    rng = np.random.default_rng(seed)
    every = all_labellings(9, 3)
    own, partner = rng.gamma(1.0, 1.0, (2, 9))
    unary = gc.puzzle_unary(own[None], partner[None], [rng.uniform(0.05, 0.95)], 3, eta=0.2)
    pairwise = gc.puzzle_pairwise(rng.uniform(0, 2, (1, len(EDGES_3X3))), 3, beta=rng.uniform(0, 1.5), gamma=0.5)
    result = gc.alpha_beta_swap(unary, EDGES_3X3, pairwise, max_sweeps=10)
    energies = brute_energies(every, unary[0], EDGES_3X3, pairwise[0])
    z, e = result.labels[0], result.energy[0]
    assert e == pytest.approx(brute_energies(z[None], unary[0], EDGES_3X3, pairwise[0])[0])
    assert e >= energies.min() - 1e-9
    for a, b in itertools.combinations(range(3), 2):
        assert energies[swap_neighbours(z, every, a, b)].min() >= e - 1e-6
    # better than (or equal to) where it started
    assert e <= gc.grid_energy(unary.argmin(2), unary, EDGES_3X3, pairwise)[0] + 1e-12


@pytest.mark.parametrize("seed", range(6))
def test_expansion_is_an_expansion_local_minimum_within_twice_the_optimum(seed):
    """Potts model, 3 labels, non-negative unaries: no expansion move improves, and E ≤ 2 E* (BVZ 2001)."""
    rng = np.random.default_rng(seed)
    every = all_labellings(9, 3)
    unary = rng.uniform(0, 1, (1, 9, 3))
    potts = rng.uniform(0.1, 0.8) * (1 - np.eye(3))[None].repeat(len(EDGES_3X3), 0)
    result = gc.alpha_expansion(unary, EDGES_3X3, potts, max_sweeps=10)
    energies = brute_energies(every, unary[0], EDGES_3X3, potts)
    z, e = result.labels[0], result.energy[0]
    for alpha in range(3):
        reachable = ((every == z) | (every == alpha)).all(axis=1)
        assert energies[reachable].min() >= e - 1e-6
    assert e <= 2 * energies.min() + 1e-9


def test_expansion_candidates_restrict_the_labels():
    unary = np.array([[[1.0, 0.0, -5.0]] * 4])  # label 2 is best everywhere
    edges = gc.grid_edges(2, 2)
    potts = 0.1 * (1 - np.eye(3))[None].repeat(len(edges), 0)
    result = gc.alpha_expansion(unary, edges, potts, init=np.zeros((1, 4), dtype=np.int64),
                                candidates=np.array([[True, True, False]]))
    assert set(result.labels.ravel().tolist()) == {1}


def test_puzzle_terms_follow_their_definition():
    own = np.array([[1.0, 3.0]])
    partner = np.array([[2.0, 2.0]])
    lam = 0.3
    unary = gc.puzzle_unary(own, partner, [lam], n_labels=3, eta=0.5)
    s_own, s_par = own * 2 / own.sum(), partner * 2 / partner.sum()
    for block in range(2):
        for label, (m, prior) in enumerate(zip([0.0, 0.5, 1.0], [(1 - lam) ** 2, 2 * lam * (1 - lam), lam ** 2])):
            expected = -(m * s_own[0, block] + (1 - m) * s_par[0, block]) - 0.5 * np.log(prior)
            assert unary[0, block, label] == pytest.approx(expected)
    pairwise = gc.puzzle_pairwise(np.array([[0.4]]), n_labels=3, beta=1.2, gamma=0.5)
    for a, b in itertools.product(range(3), repeat=2):
        d = (a - b) / 2
        assert pairwise[0, 0, a, b] == pytest.approx(1.2 * d * d + 0.5 * 0.4 * abs(d))
    # a semi-metric: zero on the diagonal, symmetric, non-negative → every swap move is submodular
    assert np.allclose(np.diagonal(pairwise[0, 0]), 0) and np.allclose(pairwise, pairwise.transpose(0, 1, 3, 2))


def test_flat_saliency_gives_a_uniform_mean_one_map():
    assert np.allclose(gc.mean_one(np.zeros((2, 5))), 1.0)
    assert np.allclose(gc.mean_one(np.array([[0.0, 2.0, 2.0]])), [[0.0, 1.5, 1.5]])


@pytest.mark.parametrize("size,blocks", [((8, 8), 4), ((7, 9), 2), ((5, 6), 16), ((33, 35), 8)])
def test_block_grid_pooling_and_seams_by_loops(size, blocks):
    torch.manual_seed(0)
    grid = gc.block_grid(size, blocks)
    height, width = size
    assert grid.rows == min(blocks, height) and grid.cols == min(blocks, width)
    maps = torch.rand(2, height, width, dtype=torch.float64)
    pooled = gc.pool_blocks(maps, grid)
    index = grid.block_index()
    for b in range(2):
        for k in range(grid.n):
            assert pooled[b].flatten()[k] == pytest.approx(float(maps[b][index == k].sum()))
    assert float(grid.areas().sum()) == height * width
    assert torch.equal(gc.expand_blocks(pooled, grid)[0], pooled[0].flatten()[index])
    a, b = torch.rand(2, 3, height, width), torch.rand(2, 3, height, width)
    seams = gc.seam_costs(a, b, grid)
    diff = (a - b).abs().mean(1)
    edges = gc.grid_edges(grid.rows, grid.cols)
    assert seams.shape == (2, len(edges))
    rb, cb = grid.row_block(), grid.col_block()
    for e, (u, v) in enumerate(edges.tolist()):
        (ru, cu), (rv, cv) = divmod(u, grid.cols), divmod(v, grid.cols)
        if ru == rv:  # horizontal neighbours: last column of u, first column of v, rows of the block row
            x1 = int((cb == cv).nonzero()[0])
            rows = (rb == ru).nonzero().flatten()
            expected = 0.5 * (diff[:, rows, x1 - 1] + diff[:, rows, x1]).mean(1)
        else:
            y1 = int((rb == rv).nonzero()[0])
            cols = (cb == cu).nonzero().flatten()
            expected = 0.5 * (diff[:, y1 - 1, cols] + diff[:, y1, cols]).mean(1)
        assert torch.allclose(seams[:, e], expected, atol=1e-6)


@pytest.mark.parametrize("size,blocks", [((8, 8), 4), ((9, 7), 2), ((33, 35), 8)])
def test_transport_is_a_permutation_that_preserves_block_mass(size, blocks):
    torch.manual_seed(1)
    grid = gc.block_grid(size, blocks)
    sal = torch.rand(5, grid.n) * 4
    share = (torch.rand(5, grid.n) > 0.5).float()
    dest = gc.transport_plan(gc.transport_cost(sal, share, grid), eps=0.8)
    assert torch.equal(dest.sort(dim=1).values, torch.arange(grid.n).expand(5, -1))
    images = torch.randn(5, 3, *size, dtype=torch.float64)
    moved = gc.permute_blocks(images, dest, grid)
    # every block core arrives whole at its destination; remainder pixels stay; total mass is kept
    bh, bw = grid.block_h, grid.block_w
    for b in range(5):
        for a in range(grid.n):
            (ra, ca), (rd, cd) = divmod(a, grid.cols), divmod(int(dest[b, a]), grid.cols)
            assert torch.equal(moved[b, :, rd * bh:(rd + 1) * bh, cd * bw:(cd + 1) * bw],
                               images[b, :, ra * bh:(ra + 1) * bh, ca * bw:(ca + 1) * bw])
    assert torch.equal(moved[:, :, grid.rows * bh:], images[:, :, grid.rows * bh:])
    assert torch.equal(moved[:, :, :, grid.cols * bw:], images[:, :, :, grid.cols * bw:])
    assert torch.allclose(moved.sum(dim=(1, 2, 3)), images.sum(dim=(1, 2, 3)))
    assert torch.equal(moved.flatten(1).sort(1).values, images.flatten(1).sort(1).values)


def test_transport_keeps_blocks_in_place_without_saliency_and_moves_a_salient_one():
    grid = gc.block_grid((8, 8), 4)
    dest = gc.transport_plan(gc.transport_cost(torch.zeros(2, 16), torch.rand(2, 16), grid))
    assert torch.equal(dest, torch.arange(16).expand(2, -1))
    sal = torch.zeros(1, 16)
    sal[0, 0] = 10.0  # a salient block in a corner where the mask hides it
    share = torch.zeros(1, 16)
    share[0, 5] = 1.0  # the image is shown at block (1, 1) only
    dest = gc.transport_plan(gc.transport_cost(sal, share, grid))
    assert int(dest[0, 0]) == 5


def test_transport_approaches_the_optimal_assignment_for_small_eps():
    from scipy.optimize import linear_sum_assignment

    torch.manual_seed(2)
    grid = gc.block_grid((9, 9), 3)
    cost = gc.transport_cost(torch.rand(20, 9) * 6, (torch.rand(20, 9) > 0.5).float(), grid).double()
    dest = gc.transport_plan(cost, eps=1e-3, max_iter=20000)
    for k in range(20):
        rows, cols = linear_sum_assignment(cost[k].numpy())
        best = float(cost[k].numpy()[rows, cols].sum())
        assert float(cost[k].gather(1, dest[k].view(-1, 1)).sum()) <= best + 9 * 1e-3 + 1e-9


def comixup_objective_by_loops(assign, saliency, grid_shape, valid, beta, gamma, eta, tau, omega):
    g, m, n = saliency.shape
    s = gc.mean_one(saliency)
    edges = gc.grid_edges(*grid_shape).tolist()
    result = []
    for grp in range(g):
        total = 0.0
        counts = np.zeros((m, m))
        norms = np.linalg.norm(s[grp], axis=1)
        a_c = np.zeros((m, m))
        for i in range(m):
            for i2 in range(m):
                cos = 1.0 if i == i2 else max(0.0, float(s[grp, i] @ s[grp, i2]) / (norms[i] * norms[i2]))
                a_c[i, i2] = (1 - omega) * (i == i2) + omega * cos
        for j in range(m):
            if not valid[grp, j]:
                continue
            for i in range(m):
                w = sum(s[grp, i, k] for k in range(n) if assign[grp, j, k] == i)
                total -= min(tau * s[grp, i].sum(), w)
            total += beta * sum(assign[grp, j, u] != assign[grp, j, v] for u, v in edges)
            total -= eta * sum(assign[grp, j, k] == j for k in range(n))
            for k in range(n):
                counts[j, assign[grp, j, k]] += 1
        for j in range(m):
            for j2 in range(m):
                if j != j2:
                    shares, shares2 = counts[j] / n, counts[j2] / n   # o_j: output j's source shares
                    total += gamma * shares @ a_c @ shares2
        result.append(total)
    return np.array(result)


def test_comixup_objective_matches_its_definition():
    rng = np.random.default_rng(0)
    sal = rng.gamma(0.5, 1.0, (2, 5, 9))
    valid = np.array([[True] * 5, [True, True, True, False, False]])
    assign = rng.integers(0, 5, (2, 5, 9))
    assign[1] = rng.integers(0, 3, (5, 9))
    kwargs = dict(beta=0.32, gamma=1.0, eta=0.05, tau=0.83, omega=0.3)
    assert np.allclose(gc.comixup_objective(assign, sal, (3, 3), valid, **kwargs),
                       comixup_objective_by_loops(assign, sal, (3, 3), valid, **kwargs))


@pytest.mark.parametrize("seed", range(4))
def test_comixup_objective_never_increases_across_the_modular_approximation(seed):
    rng = np.random.default_rng(seed)
    # peaked saliency so that outputs do take blocks from other inputs
    sal = rng.gamma(0.3, 1.0, (3, 7, 16))
    valid = np.ones((3, 7), dtype=bool)
    valid[2, 5:] = False
    update = valid & (rng.random((3, 7)) < 0.8)
    result = gc.comixup_assign(sal, (4, 4), valid, update, max_sweeps=6, candidates=None)
    trace = np.stack(result.trace)
    assert len(trace) > 2  # it moved
    assert (np.diff(trace, axis=0) <= 1e-9).all()
    assert np.allclose(result.objective, gc.comixup_objective(result.assign, sal, (4, 4), valid))
    # outputs not updated are copies of their input; valid outputs use valid inputs only
    for grp in range(3):
        for j in range(7):
            if valid[grp, j] and not update[grp, j]:
                assert (result.assign[grp, j] == j).all()
            if valid[grp, j]:
                assert valid[grp][result.assign[grp, j]].all()


def test_comixup_keeps_the_inputs_when_saliency_is_flat():
    result = gc.comixup_assign(np.ones((1, 4, 16)), (4, 4))
    assert (result.assign == np.arange(4)[None, :, None]).all()
    assert np.isfinite(result.objective).all()
