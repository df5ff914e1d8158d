"""SalientShapes: determinism, layout, object placement, template separation, the Cutout design goal."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from keepmix.data import SalientShapes, load_dataset, make_templates


@pytest.fixture(scope="module")
def shapes():
    return SalientShapes(20, seed=3)


def _brute_force_distance(first: torch.Tensor, second: torch.Tensor) -> int:
    """min over (dy, dx) ∈ {-1,0,1}² of #pixels where first[y, x] != second[y - dy, x - dx] (zeros outside)."""
    s = first.shape[0]
    padded = F.pad(second.float(), (1, 1, 1, 1))
    best = s * s
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            moved = padded[1 - dy:1 - dy + s, 1 - dx:1 - dx + s].bool()
            best = min(best, int((first != moved).sum()))
    return best


def test_shapes_dtypes_and_balance(shapes):
    n = 20 * 10
    assert shapes.images.shape == (n, 3, 32, 32) and shapes.images.dtype == torch.uint8
    assert shapes.labels.shape == (n,) and shapes.labels.dtype == torch.int64
    assert shapes.boxes.shape == (n, 4) and shapes.boxes.dtype == torch.int64
    assert shapes.masks.shape == (n, 32, 32) and shapes.masks.dtype == torch.bool
    assert torch.bincount(shapes.labels, minlength=10).tolist() == [20] * 10
    assert shapes.class_names == [f"shape_{k}" for k in range(10)] and len(shapes) == n
    assert not torch.equal(shapes.labels[:10], shapes.labels[:10].sort().values)  # shuffled, not grouped
    image, label = shapes[5]
    assert torch.equal(image, shapes.images[5]) and label == int(shapes.labels[5])


def test_same_seed_same_data_different_seed_different_data(shapes):
    again = SalientShapes(20, seed=3)
    for name in ("images", "labels", "boxes", "masks", "templates"):
        assert torch.equal(getattr(again, name), getattr(shapes, name))
    other = SalientShapes(20, seed=4)
    assert torch.equal(other.templates, shapes.templates)  # classes are shared across seeds
    assert not torch.equal(other.images, shapes.images)
    assert not torch.equal(other.boxes, shapes.boxes)
    assert not torch.equal(make_templates(10, 8, seed=1), shapes.templates)


def test_object_is_its_class_glyph_inside_a_tight_box(shapes):
    s = shapes.object_size
    top, left, bottom, right = shapes.boxes.unbind(1)
    assert bool(((bottom - top) == s).all() and ((right - left) == s).all())
    assert bool((top >= 0).all() and (left >= 0).all() and (bottom <= 32).all() and (right <= 32).all())
    for i in range(0, len(shapes), 7):
        t, l, b, r = shapes.boxes[i].tolist()
        mask = shapes.masks[i]
        assert not mask[:t].any() and not mask[b:].any() and not mask[:, :l].any() and not mask[:, r:].any()
        assert torch.equal(mask[t:b, l:r], shapes.templates[shapes.labels[i]])
        rows, cols = torch.nonzero(mask, as_tuple=True)  # tight: the glyph touches every side of its box
        assert (int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1) == (t, b, l, r)


def test_object_colour_is_uniform_and_extreme(shapes):
    masks = shapes.masks.unsqueeze(1).expand_as(shapes.images)
    colours = shapes.images.float().masked_fill(~masks, float("nan"))
    low = colours.nan_to_num(1e9).amin((2, 3))
    high = colours.nan_to_num(-1e9).amax((2, 3))
    assert torch.equal(low, high)  # one colour per glyph
    dark = (high <= 0.2 * 255 + 0.5).all(1)
    bright = (low >= 0.8 * 255 - 0.5).all(1)
    assert bool((dark | bright).all())
    assert 0.2 < float(dark.float().mean()) < 0.8  # both polarities occur


def test_colour_statistics_do_not_reveal_the_class(shapes):
    per_class = torch.stack([shapes.images[shapes.labels == k].float().mean() for k in range(10)])
    assert float(per_class.max() - per_class.min()) < 4.0  # on the 0–255 scale


@pytest.mark.parametrize("size", [6, 8, 9])
def test_templates_are_far_apart_even_shifted_or_mirrored(size):
    templates = make_templates(10, size, seed=0)
    assert templates.shape == (10, size, size) and templates.dtype == torch.bool
    need = math.ceil(size * size / 4)
    for i in range(10):
        fill = float(templates[i].float().mean())
        assert 0.35 <= fill <= 0.65
        for j in range(10):
            if i != j:
                assert _brute_force_distance(templates[i], templates[j]) >= need
                assert _brute_force_distance(templates[i], templates[j].flip(-1)) >= need


def test_too_many_classes_for_a_small_glyph_fails_cleanly():
    with pytest.raises(ValueError, match="distinct glyphs"):
        make_templates(40, 4)


def test_a_random_cutout_often_erases_the_glyph_but_a_guided_one_can_avoid_it():
    data = SalientShapes(60, seed=11)
    n, side = len(data), 16
    generator = torch.Generator().manual_seed(0)
    centre = torch.randint(0, 32, (n, 2), generator=generator)
    grid = torch.arange(32)

    def cut_at(cy, cx):
        rows = (grid.view(1, -1) >= cy.view(-1, 1) - side // 2) & (grid.view(1, -1) < cy.view(-1, 1) + side // 2)
        cols = (grid.view(1, -1) >= cx.view(-1, 1) - side // 2) & (grid.view(1, -1) < cx.view(-1, 1) + side // 2)
        return rows.unsqueeze(2) & cols.unsqueeze(1)

    kept = data.object_fraction_kept(~cut_at(centre[:, 0], centre[:, 1]))
    assert float((kept < 0.5).float().mean()) > 0.1   # random Cutout: label often becomes noise
    assert float((kept == 0).float().mean()) > 0.03
    # an oracle "saliency-guided" cut, the best of the four corner-centred cuts, always spares the glyph
    best = torch.zeros(n)
    for cy, cx in ((0, 0), (0, 31), (31, 0), (31, 31)):
        best = torch.maximum(best, data.object_fraction_kept(~cut_at(torch.full((n,), cy), torch.full((n,), cx))))
    assert bool((best == 1).all())


def test_object_fraction_kept_definition(shapes):
    keep = torch.ones(3, 32, 32)
    assert torch.equal(shapes.object_fraction_kept(keep, torch.tensor([0, 1, 2])), torch.ones(3))
    keep[0] = 0
    t, l, b, r = shapes.boxes[1].tolist()
    keep[1, t:t + 4] = 0  # remove the top half of glyph 1
    glyph = shapes.templates[shapes.labels[1]].float()
    expected = glyph[4:].sum() / glyph.sum()
    got = shapes.object_fraction_kept(keep, torch.tensor([0, 1, 2]))
    assert got[0] == 0 and torch.isclose(got[1], expected) and got[2] == 1
    with pytest.raises(ValueError, match="shape"):
        shapes.object_fraction_kept(torch.ones(2, 32, 32), torch.tensor([0, 1, 2]))


def test_clutter_only_adds_extreme_distractors_outside_the_glyph():
    # clutter 0: outside the glyph only the bilinear colour field, whose values stay in [0.3, 0.7]
    plain = SalientShapes(5, clutter=0.0, seed=1)
    outside = ~plain.masks.unsqueeze(1).expand_as(plain.images)
    values = plain.images[outside].float()
    assert float(values.min()) >= 0.3 * 255 - 0.5 and float(values.max()) <= 0.7 * 255 + 0.5
    # full clutter: distractors bring dark/bright pixels outside the glyph, never inside its box
    busy = SalientShapes(5, clutter=1.0, seed=1)
    outside = ~busy.masks.unsqueeze(1).expand_as(busy.images)
    extreme = (busy.images.float() < 0.25 * 255) | (busy.images.float() > 0.75 * 255)
    assert bool((extreme & outside).any())
    for i in range(len(busy)):
        t, l, b, r = busy.boxes[i].tolist()
        box_pixels = busy.images[i, :, t:b, l:r].float()
        off_glyph = ~busy.masks[i, t:b, l:r]
        assert float(box_pixels[:, off_glyph].min()) > 0.3 * 255 - 40  # texture only (≤ ~6σ), no distractor


def test_parameters_and_validation():
    small = SalientShapes(3, num_classes=4, image_size=(20, 24), object_size=7, clutter=1.0, seed=2)
    assert small.images.shape == (12, 3, 20, 24) and small.templates.shape == (4, 7, 7)
    assert bool((small.boxes[:, 2] <= 20).all() and (small.boxes[:, 3] <= 24).all())
    with pytest.raises(ValueError, match="exceed"):
        SalientShapes(2, image_size=8, object_size=8)
    with pytest.raises(ValueError, match="clutter"):
        SalientShapes(2, clutter=1.5)
    with pytest.raises(ValueError, match="n_per_class"):
        SalientShapes(0)
    with pytest.raises(TypeError, match="seed"):
        SalientShapes(2, seed=1.5)


def test_load_dataset_salient_shapes_splits():
    train = load_dataset("salient-shapes", split="train", n_per_class=6)
    test = load_dataset("salient_shapes", split="test", n_per_class=4)
    assert train.in_memory and len(train) == 60 and len(test) == 40
    assert torch.equal(train.dataset.templates, test.dataset.templates)
    assert not torch.equal(train.images[:40], test.images)
    assert train.boxes.shape == (60, 4) and train.masks.shape == (60, 32, 32)
    assert train.mean == (0.5, 0.5, 0.5) and train.image_size == (32, 32) and train.num_classes == 10
    with pytest.raises(ValueError, match="split"):
        load_dataset("salient-shapes", split="val")
