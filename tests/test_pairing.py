"""Pairing: saliency distances, greedy farthest-first cycle and random derangement against references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from keepmix import input_checks
from keepmix.pairing import check_pairing, greedy_pairing, pair, random_pairing, saliency_distance

FAST = settings(max_examples=40, deadline=None)


def greedy_reference(distance):
    """Plain-Python greedy pairing written from the spec (GuidedMixup Algorithm 1 as the facts describe it)."""
    d = [[float(v) for v in row] for row in distance]
    batch = len(d)
    if batch == 1:
        return [0]
    start = None
    for r in range(batch):          # row-major first maximum off the diagonal
        for c in range(batch):
            if r != c and (start is None or d[r][c] > d[start[0]][start[1]]):
                start = (r, c)
    order = [start[0], start[1]]
    current = start[1]
    while len(order) < batch:
        nearest_far = None
        for j in range(batch):      # farthest unvisited, ties → lowest index
            if j not in order and (nearest_far is None or d[current][j] > d[current][nearest_far]):
                nearest_far = j
        order.append(nearest_far)
        current = nearest_far
    partner = [0] * batch
    for k in range(batch):
        partner[order[k]] = order[(k + 1) % batch]
    return partner


def is_single_cycle(partner):
    partner = [int(v) for v in partner]
    batch = len(partner)
    if sorted(partner) != list(range(batch)):
        return False
    seen, i = set(), 0
    for _ in range(batch):
        seen.add(i)
        i = partner[i]
    return i == 0 and len(seen) == batch


def all_cycles(batch):
    """Every single-cycle permutation of range(batch), as partner lists ((batch − 1)! of them)."""
    cycles = []
    for rest in itertools.permutations(range(1, batch)):
        order = (0,) + rest
        partner = [0] * batch
        for k in range(batch):
            partner[order[k]] = order[(k + 1) % batch]
        cycles.append(partner)
    return cycles


# --------------------------------------------------------------------------- distances


def test_saliency_distance_matches_numpy_brute_force():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(7, 9, 11, generator=g)
    maps[3] = maps[1] + 1e-3 * torch.rand(9, 11, generator=g)  # near-duplicate: no cancellation allowed
    maps[5] = maps[2]                                           # exact duplicate
    d = saliency_distance(maps)
    flat = maps.flatten(1).double().numpy()
    reference = np.sqrt(((flat[:, None, :] - flat[None, :, :]) ** 2).sum(axis=2))
    assert d.shape == (7, 7) and d.dtype == torch.float32
    np.testing.assert_allclose(d.numpy(), reference, rtol=1e-5, atol=0)
    assert torch.all(torch.diagonal(d) == 0)
    assert d[2, 5] == 0 and d[5, 2] == 0
    assert torch.equal(d, d.T)


def test_saliency_distance_errors():
    with pytest.raises(ValueError, match="maps"):
        saliency_distance(torch.rand(3, 4))
    with pytest.raises(TypeError, match="maps"):
        saliency_distance(torch.ones(2, 3, 3, dtype=torch.long))


# --------------------------------------------------------------------------- greedy pairing


@pytest.mark.parametrize("batch", [2, 3, 5, 8, 16, 33])
@pytest.mark.parametrize("symmetric", [True, False])
def test_greedy_matches_reference_on_random_matrices(batch, symmetric):
    g = torch.Generator().manual_seed(batch)
    for _ in range(5):
        d = torch.rand(batch, batch, generator=g)
        if symmetric:
            d = (d + d.T) / 2
        partner = greedy_pairing(d)
        assert partner.dtype == torch.long and partner.shape == (batch,)
        assert partner.tolist() == greedy_reference(d.tolist())
        assert is_single_cycle(partner.tolist())


@pytest.mark.parametrize("batch", [2, 4, 6, 9, 12])
def test_greedy_matches_reference_with_ties(batch):
    g = torch.Generator().manual_seed(100 + batch)
    for _ in range(10):
        d = torch.randint(0, 3, (batch, batch), generator=g).float()  # integer distances: many ties
        d = torch.maximum(d, d.T)
        partner = greedy_pairing(d)
        assert partner.tolist() == greedy_reference(d.tolist())
        assert is_single_cycle(partner.tolist())


def test_greedy_hand_computed():
    # the farthest pair is (1, 2) [first maximum in row-major order]; from 2 the farthest unvisited is 0
    # (d[2,0] = 4 > d[2,3] = 1), then 3; the cycle 1 → 2 → 0 → 3 → 1
    d = torch.tensor([[0., 3., 4., 2.],
                      [3., 0., 9., 1.],
                      [4., 9., 0., 1.],
                      [2., 1., 1., 0.]])
    assert greedy_pairing(d).tolist() == [3, 2, 0, 1]


def test_greedy_duplicate_and_flat_maps_give_a_valid_cycle():
    # all-equal maps: every distance is 0 — still one cycle, visiting 0, 1, 2, … (lowest index on ties)
    d = saliency_distance(torch.zeros(5, 4, 4))
    assert greedy_pairing(d).tolist() == [1, 2, 3, 4, 0]
    maps = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(0)).repeat(3, 1, 1)
    partner = greedy_pairing(saliency_distance(maps))
    assert is_single_cycle(partner.tolist())


def test_greedy_small_batches():
    assert greedy_pairing(torch.zeros(1, 1)).tolist() == [0]
    assert greedy_pairing(torch.rand(2, 2)).tolist() == [1, 0]


def test_greedy_on_all_cycles_b6():
    """B = 6: greedy returns one of the 120 single cycles, it contains the globally farthest pair, and
    (for these fixed seeds) its total distance is at least the mean over all cycles."""
    cycles = all_cycles(6)
    assert len(cycles) == 120 and len({tuple(c) for c in cycles}) == 120
    g = torch.Generator().manual_seed(2024)
    for _ in range(20):
        d = torch.rand(6, 6, generator=g)
        d = (d + d.T) / 2
        d.fill_diagonal_(0)
        partner = greedy_pairing(d).tolist()
        assert partner in cycles
        totals = [sum(float(d[i, c[i]]) for i in range(6)) for c in cycles]
        greedy_total = sum(float(d[i, partner[i]]) for i in range(6))
        assert min(totals) <= greedy_total <= max(totals)
        assert greedy_total >= np.mean(totals)
        # the first edge is the farthest pair of the whole batch — no other cycle has a longer edge
        assert max(float(d[i, partner[i]]) for i in range(6)) == float(d.max())


@given(st.integers(1, 24), st.integers(0, 10_000), st.booleans())
@FAST
def test_greedy_always_single_cycle(batch, seed, integer_valued):
    g = torch.Generator().manual_seed(seed)
    d = torch.rand(batch, batch, generator=g)
    if integer_valued:
        d = (d * 3).floor()
    partner = greedy_pairing(d)
    assert is_single_cycle(partner.tolist())
    if batch > 1:
        assert torch.all(partner != torch.arange(batch))
    assert partner.tolist() == greedy_reference(d.tolist())


def test_greedy_errors_and_input_checks():
    with pytest.raises(ValueError, match="distance"):
        greedy_pairing(torch.rand(3, 4))
    with pytest.raises(ValueError, match="distance"):
        greedy_pairing(torch.rand(3))
    with pytest.raises(TypeError, match="distance"):
        greedy_pairing(torch.ones(3, 3, dtype=torch.long))
    d = torch.rand(4, 4)
    d[1, 2] = float("nan")
    with input_checks(True):
        with pytest.raises(ValueError, match="distance"):
            greedy_pairing(d)
    with input_checks(False):
        assert greedy_pairing(d).shape == (4,)  # no check, no hang


# --------------------------------------------------------------------------- random pairing


@pytest.mark.parametrize("batch", [1, 2, 3, 7, 64])
def test_random_pairing_is_a_single_cycle_derangement(batch):
    g = torch.Generator().manual_seed(batch)
    for _ in range(20):
        partner = random_pairing(batch, g)
        assert partner.dtype == torch.long and partner.shape == (batch,)
        assert is_single_cycle(partner.tolist())
        if batch > 1:
            assert torch.all(partner != torch.arange(batch))


def test_random_pairing_uniform_over_cycles_b4(chi2_pvalue):
    cycles = {tuple(c): i for i, c in enumerate(all_cycles(4))}
    assert len(cycles) == 6
    g = torch.Generator().manual_seed(7)
    counts = np.zeros(6)
    for _ in range(3000):
        counts[cycles[tuple(random_pairing(4, g).tolist())]] += 1
    assert chi2_pvalue(counts) > 1e-3


def test_random_pairing_seeded():
    a = random_pairing(32, torch.Generator().manual_seed(3))
    b = random_pairing(32, torch.Generator().manual_seed(3))
    c = random_pairing(32, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("bad", [0, -2, 2.0, True, "4"])
def test_random_pairing_errors(bad):
    with pytest.raises(ValueError, match="batch_size"):
        random_pairing(bad)


def test_random_pairing_generator_type():
    with pytest.raises(TypeError, match="generator"):
        random_pairing(4, generator=np.random.default_rng(0))


# --------------------------------------------------------------------------- pair / check_pairing


def test_pair_dispatch():
    maps = torch.rand(6, 5, 5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(pair("greedy", 6, "cpu", maps), greedy_pairing(saliency_distance(maps)))
    assert torch.equal(pair("random", 6, "cpu", maps, torch.Generator().manual_seed(2)),
                       random_pairing(6, torch.Generator().manual_seed(2)))
    flip = pair(lambda m: torch.arange(m.shape[0] - 1, -1, -1), 6, "cpu", maps)
    assert flip.tolist() == [5, 4, 3, 2, 1, 0]
    with pytest.raises(ValueError, match="maps"):
        pair("greedy", 6, "cpu", None)
    with pytest.raises(ValueError, match="pairing"):
        pair(lambda m: torch.zeros(3, dtype=torch.long), 6, "cpu", maps)


def test_check_pairing():
    assert check_pairing("greedy") == "greedy"
    assert check_pairing("random") == "random"
    with pytest.raises(ValueError, match="pairing"):
        check_pairing("flip")
    with pytest.raises(TypeError, match="pairing"):
        check_pairing(3)
