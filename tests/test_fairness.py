"""Fair controls: a Keep op fed an information-free map erases exactly what its baseline erases.

KeepAugment's gain must come from *where* a box goes, not from how big it is. With a constant map
(every candidate ties) and with an i.i.d. noise map (no spatial information), each Keep op's erased
area must follow its baseline's distribution (two-sample tests on fixed seeds), for both box families:
full windows (baseline ``inside=True``) and Cutout-style clipped boxes (baseline: the op as published).
The reported failure: with clipped boxes scored by their sum, a flat map gave KeepCutout 22.1 % erased
against Cutout's 27.7 % (32×32, length 20) — a smaller box preferred because it is small.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from keepmix import CutMix, Cutout, KeepCutMix, KeepCutout, KeepRandomErasing, RandomErasing
from keepmix.regions import clipped_box_scores, same_clipped_shape, select_boxes

N = 3000          # images per arm
SIDE = 32


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _maps(kind, n=N, seed=11):
    if kind == "constant":
        return torch.ones(n, SIDE, SIDE)
    return torch.rand(n, SIDE, SIDE, generator=_gen(seed))


def _images(n=N):
    return torch.full((n, 1, SIDE, SIDE), 0.5)


def _erased_fraction(out, x):
    return (out != x).any(dim=1).float().mean(dim=(1, 2)).numpy()


def _same_distribution(a, b):
    """Two-sample test on discrete values (χ² on the pooled support); True when not rejected at 1e-3."""
    values = np.union1d(a, b)
    table = np.array([[np.sum(a == v) for v in values], [np.sum(b == v) for v in values]])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] == 1:
        return True
    return stats.chi2_contingency(table)[1] > 1e-3


def test_the_two_sample_test_has_power():
    """Clipped Cutout and whole-box Cutout erase different amounts: the test must tell them apart."""
    x = _images()
    a = _erased_fraction(Cutout(20, generator=_gen(0))(x)[0], x)
    b = _erased_fraction(Cutout(20, inside=True, generator=_gen(1))(x)[0], x)
    assert abs(a.mean() - 400 / 1024) > 0.05 and np.allclose(b, 400 / 1024)
    assert not _same_distribution(a, b)
    c = _erased_fraction(Cutout(20, generator=_gen(2))(x)[0], x)
    assert _same_distribution(a, c)                                   # and accepts the same op, other seed


@pytest.mark.parametrize("kind", ["constant", "noise"])
def test_keep_cutout_clipped_erases_what_cutout_erases(kind):
    x, maps = _images(), _maps(kind)
    cut = _erased_fraction(Cutout(20, generator=_gen(0))(x)[0], x)
    op = KeepCutout(20, tau=0.6, clip=True, generator=_gen(1))
    keep = _erased_fraction(op(x, None, saliency_maps=maps)[0], x)
    assert _same_distribution(cut, keep), (cut.mean(), keep.mean())
    assert abs(cut.mean() - keep.mean()) < 0.01                      # 27.7 % vs 22.1 % before the fix
    if kind == "constant":
        assert bool(op.last_stats["fallback"].all())                  # every candidate ties


def test_keep_cutout_clipped_on_a_constant_map_is_cutout():
    """Not only the area: with a constant map the box position follows Cutout's (uniform centre)."""
    x, maps = _images(), _maps("constant")
    cut = (Cutout(20, generator=_gen(0))(x)[0] != x).any(dim=1).float().mean(dim=0)
    keep = (KeepCutout(20, clip=True, generator=_gen(1))(x, None, saliency_maps=maps)[0] != x).any(dim=1)
    keep = keep.float().mean(dim=0)
    # per-pixel erase rates agree within sampling error (binomial sd ≤ 0.5/√N ≈ 0.009)
    assert float((cut - keep).abs().max()) < 0.05
    assert float((cut - keep).abs().mean()) < 0.012


@pytest.mark.parametrize("kind", ["constant", "noise"])
def test_keep_cutout_full_windows_erases_what_whole_box_cutout_erases(kind):
    x, maps = _images(), _maps(kind)
    cut_out = Cutout(16, inside=True, generator=_gen(0))(x)[0]
    keep_out = KeepCutout(16, tau=0.6, generator=_gen(1))(x, None, saliency_maps=maps)[0]
    assert np.allclose(_erased_fraction(cut_out, x), 256 / 1024)
    assert np.allclose(_erased_fraction(keep_out, x), 256 / 1024)
    if kind == "constant":  # the position too: top row of the box uniform on [0, 16] for both
        top_cut = (cut_out != x).any(dim=1).any(dim=2).float().argmax(dim=1).numpy()
        top_keep = (keep_out != x).any(dim=1).any(dim=2).float().argmax(dim=1).numpy()
        assert _same_distribution(top_cut, top_keep)


@pytest.mark.parametrize("kind", ["constant", "noise"])
def test_keep_random_erasing_erases_what_random_erasing_erases(kind):
    x, maps = _images(), _maps(kind)
    base = _erased_fraction(RandomErasing(p=1.0, value=0.0, generator=_gen(0))(x)[0], x)
    keep = _erased_fraction(KeepRandomErasing(p=1.0, value=0.0, generator=_gen(1))(x, None, saliency_maps=maps)[0], x)
    # continuous areas: Kolmogorov–Smirnov
    assert stats.ks_2samp(base, keep).pvalue > 1e-3


@pytest.mark.parametrize("kind", ["constant", "noise"])
@pytest.mark.parametrize("clip", [False, True])
def test_keep_cutmix_takes_cutmix_shares_in_its_family(kind, clip):
    """λ (the share kept) of KeepCutMix follows CutMix's: CutMix() for clip=True, CutMix(inside=True) else."""
    n = 2000
    x, y, maps = _images(n), torch.arange(n) % 10, _maps(kind, n)
    base = CutMix(10, inside=not clip, generator=_gen(0))
    base(x, y)
    keep = KeepCutMix(10, clip=clip, generator=_gen(1))
    keep(x, y, saliency_maps=maps)
    a, b = base.last_stats["lam"].numpy(), keep.last_stats["lam"].numpy()
    assert stats.ks_2samp(a, b).pvalue > 1e-3, (a.mean(), b.mean())
    other = CutMix(10, inside=clip, generator=_gen(2))                # the other family is detectably different
    other(x, y)
    assert stats.ks_2samp(a, other.last_stats["lam"].numpy()).pvalue < 1e-3


def test_null_control_source_is_information_free_and_seeded():
    x = _images(64)
    a = KeepCutout(12, clip=True, saliency="random", generator=_gen(3))(x)[0]
    b = KeepCutout(12, clip=True, saliency="random", generator=_gen(3))(x)[0]
    assert torch.equal(a, b)
    maps = KeepCutout(12, saliency="random").saliency(x)
    assert maps.shape == (64, SIDE, SIDE) and float(maps.min()) >= 0 and float(maps.max()) < 1


# --------------------------------------------------------------------------- the functions behind it


def _extent(c, length, side):
    return min(c - length // 2 + length, side) - max(c - length // 2, 0)


@pytest.mark.parametrize("shape,sizes", [((7, 9), [(3, 4), (7, 9), (10, 2)]), ((5, 5), [(1, 1), (4, 6), (5, 5)])])
def test_clipped_box_scores_and_same_shape_brute_force(shape, sizes):
    rows, cols = shape
    batch = len(sizes)
    maps = torch.rand(batch, rows, cols, generator=_gen(4)).double()
    heights = torch.tensor([s[0] for s in sizes])
    widths = torch.tensor([s[1] for s in sizes])
    scores = clipped_box_scores(maps, heights, widths)
    ref_y = torch.tensor([r % rows for r in range(batch)])
    ref_x = torch.tensor([(3 * r) % cols for r in range(batch)])
    same = same_clipped_shape(ref_y, ref_x, heights, widths, shape)
    for b, (h, w) in enumerate(sizes):
        for cy in range(rows):
            for cx in range(cols):
                t, l = max(cy - h // 2, 0), max(cx - w // 2, 0)
                bh, bw = _extent(cy, h, rows), _extent(cx, w, cols)
                expected = float(maps[b, t:t + bh, l:l + bw].sum())
                assert abs(float(scores[b, cy, cx]) - expected) < 1e-4
                ref = (_extent(int(ref_y[b]), h, rows), _extent(int(ref_x[b]), w, cols))
                assert bool(same[b, cy, cx]) == ((bh, bw) == ref)


def test_select_boxes_clip_keeps_the_reference_shape():
    maps = torch.rand(500, 12, 12, generator=_gen(5))
    picked = select_boxes(maps, 8, 6, 0.6, clip=True, generator=_gen(6))
    assert picked.height.min() >= 4 and picked.height.max() <= 8
    assert picked.width.min() >= 3 and picked.width.max() <= 6
    assert bool((picked.top >= 0).all() and (picked.top + picked.height <= 12).all())


@pytest.mark.parametrize("size", [(8, 6), (20, 20), (5, 13), (40, 3)])
def test_select_boxes_clip_one_size_equals_the_per_image_path(size):
    """The fixed-size fast path (padded window sums, host-computed extents) draws the same boxes as the
    general per-image path given the same generator."""
    h, w = size
    maps = torch.rand(64, 17, 23, generator=_gen(7)) ** 3
    fast = select_boxes(maps, h, w, 0.6, clip=True, generator=_gen(8))
    general = select_boxes(maps, torch.full((64,), h), torch.full((64,), w), 0.6, clip=True, generator=_gen(8))
    for a, b in zip(fast, general):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- the shipped comparisons


#: a Keep op and the baseline it is compared with (flags: the Keep op's clip, the baseline's inside)
_PAIRS = {"KeepCutout": "Cutout", "KeepCutMix": "CutMix"}


def _box_family(spec):
    """(Keep op or baseline class name, "clipped" | "whole") of a recipe op, defaults and presets applied."""
    import inspect
    from keepmix.recipes import resolve_op
    cls, preset = resolve_op(spec["name"])
    kwargs = {**preset, **{k: v for k, v in spec.items() if k != "name"}}
    params = inspect.signature(cls).parameters
    if cls.__name__ in _PAIRS:
        return cls.__name__, "clipped" if kwargs.get("clip", params["clip"].default) else "whole"
    if cls.__name__ in _PAIRS.values():
        return cls.__name__, "whole" if kwargs.get("inside", params["inside"].default) else "clipped"
    return None


def _grids():
    """Every shipped recipe's arms, and every experiment table's arms (its extra arms included)."""
    from keepmix.experiment import load_tables, plan
    from keepmix.recipes import expand_arms, list_recipes, load_recipe
    for name in list_recipes():
        yield name, [(arm, config.ops) for arm, config in expand_arms(load_recipe(name))]
    for name, table in load_tables().items():
        yield f"experiment {name}", [(arm, config.ops) for arm, _, config in plan(table, [0])]


def test_every_shipped_keep_vs_baseline_comparison_uses_one_box_family():
    """Issue 9: every KeepX-vs-X comparison in the recipes differs only in *where* the box goes — a Keep op
    with clipped boxes (clip=True) is compared with the baseline as published (clipped), one with full
    windows with the baseline's whole-box variant (inside=True)."""
    checked = 0
    for grid, arms in _grids():
        families = {}
        for arm, ops in arms:
            for spec in ops:
                found = _box_family(spec)
                if found:
                    families.setdefault(found[0], {})[arm] = found[1]
        for keep, base in _PAIRS.items():
            if keep in families and base in families:
                assert set(families[keep].values()) == set(families[base].values()), (grid, families)
                checked += 1
    assert checked >= 5, checked
