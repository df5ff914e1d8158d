"""Stratified subsets and train/validation splits."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from keepmix.data import stratified_subset, train_val_split


def _labels(counts):
    """Labels with ``counts[c]`` samples of class c, interleaved (not grouped)."""
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(123))]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _round_half_up(x):
    return math.floor(x + 0.5)


def test_per_class_subset_counts_and_membership():
    labels = _labels([10, 5, 7])
    indices = stratified_subset(labels, per_class=3, generator=_gen(0))
    assert indices.dtype == torch.int64
    assert torch.equal(indices, indices.sort().values) and len(set(indices.tolist())) == 9
    assert torch.bincount(labels[indices], minlength=3).tolist() == [3, 3, 3]
    assert torch.equal(indices, stratified_subset(labels, per_class=3, generator=_gen(0)))
    assert not torch.equal(indices, stratified_subset(labels, per_class=3, generator=_gen(1)))


def test_fraction_subset_rounds_half_up_per_class():
    labels = _labels([10, 5, 7])
    indices = stratified_subset(labels, fraction=0.3, generator=_gen(0))
    # 0.3·10 = 3, 0.3·5 = 1.5 → 2, 0.3·7 = 2.1 → 2
    assert torch.bincount(labels[indices], minlength=3).tolist() == [3, 2, 2]
    assert stratified_subset(labels, fraction=1.0, generator=_gen(0)).tolist() == list(range(22))


def test_subset_errors():
    labels = _labels([10, 5, 7])
    with pytest.raises(ValueError, match="class 1 has 5"):
        stratified_subset(labels, per_class=6)
    with pytest.raises(ValueError, match="class 1 has 5"):
        stratified_subset(labels, fraction=0.05)  # 0.25 of a sample rounds to none
    with pytest.raises(ValueError, match="exactly one"):
        stratified_subset(labels, per_class=2, fraction=0.5)
    with pytest.raises(ValueError, match="exactly one"):
        stratified_subset(labels)
    with pytest.raises(ValueError, match="class 3 has 0"):
        stratified_subset(labels, per_class=1, num_classes=4)
    with pytest.raises(ValueError, match="per_class"):
        stratified_subset(labels, per_class=0)
    with pytest.raises(ValueError, match="fraction"):
        stratified_subset(labels, fraction=1.5)
    with pytest.raises(TypeError, match="integer"):
        stratified_subset(labels.float(), per_class=1)
    with pytest.raises(ValueError, match="1-d"):
        stratified_subset(labels.view(2, 11), per_class=1)
    with pytest.raises(ValueError, match="non-negative"):
        stratified_subset(torch.tensor([0, -1]), per_class=1)
    with pytest.raises(TypeError, match="generator"):
        stratified_subset(labels, per_class=1, generator=0)


def test_absent_classes_are_skipped_unless_required():
    labels = torch.tensor([0, 0, 2, 2, 2])
    assert torch.bincount(labels[stratified_subset(labels, per_class=2)], minlength=3).tolist() == [2, 0, 2]


def test_subset_picks_uniformly_within_a_class():
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    hits = torch.zeros(6)
    trials = 400
    for seed in range(trials):
        hits[stratified_subset(labels, per_class=1, generator=_gen(seed))] += 1
    share = hits / trials
    assert torch.allclose(share[:4], torch.full((4,), 0.25), atol=0.07)
    assert torch.allclose(share[4:], torch.full((2,), 0.5), atol=0.08)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=6), st.integers(1, 12), st.integers(0, 2 ** 31))
def test_subset_property(counts, per_class, seed):
    labels = _labels(counts)
    if per_class > min(counts):
        with pytest.raises(ValueError):
            stratified_subset(labels, per_class=per_class, generator=_gen(seed))
        return
    indices = stratified_subset(labels, per_class=per_class, generator=_gen(seed))
    assert torch.bincount(labels[indices], minlength=len(counts)).tolist() == [per_class] * len(counts)
    assert len(set(indices.tolist())) == len(indices)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 15), min_size=1, max_size=6), st.floats(0.01, 0.99), st.integers(0, 2 ** 31))
def test_train_val_split_property(counts, fraction, seed):
    labels = _labels(counts)
    train, val = train_val_split(labels, fraction, _gen(seed))
    assert sorted(train.tolist() + val.tolist()) == list(range(len(labels)))  # a partition
    assert torch.equal(train, train.sort().values) and torch.equal(val, val.sort().values)
    expected = [min(_round_half_up(fraction * n), n - 1) for n in counts]
    assert torch.bincount(labels[val], minlength=len(counts)).tolist() == expected
    assert bool((torch.bincount(labels[train], minlength=len(counts)) >= 1).all())  # every class trains


def test_train_val_split_seeded_and_validated():
    labels = _labels([10, 5, 7])
    a = train_val_split(labels, 0.2, _gen(5))
    b = train_val_split(labels, 0.2, _gen(5))
    c = train_val_split(labels, 0.2, _gen(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert torch.bincount(labels[a[1]], minlength=3).tolist() == [2, 1, 1]
    for bad in (0.0, 1.0, -0.1, "0.2"):
        with pytest.raises(ValueError, match="val_fraction"):
            train_val_split(labels, bad)
    train, val = train_val_split([0, 1, 1], 0.5)  # plain sequences work; a single sample stays in train
    assert train.tolist() == [0] + [i for i in (1, 2) if i not in val.tolist()] and len(val) == 1
