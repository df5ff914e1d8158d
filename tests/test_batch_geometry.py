"""Batch geometry: every loader batch carries its samples' indices, crop boxes and flips, checked against
brute-force per-image references (index, crop and flip round trips, composition, both loaders)."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch.utils.data import Dataset

from keepmix.data import (BatchGeometry, DeviceLoader, LoaderBatch, compose_geometry, identity_geometry,
                          make_dataloader, output_to_source, random_crop_flip, source_to_output)


def _images(n=12, c=3, h=6, w=7, seed=0):
    return torch.randint(1, 256, (n, c, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _check_against_sources(out, sources, geometry):
    """Brute force, pixel by pixel: each output pixel shows the source pixel its geometry names (0 off the image)."""
    y, x = output_to_source(geometry)
    batch, _, height, width = out.shape
    for b in range(batch):
        source = sources[int(geometry.index[b])]
        for i in range(height):
            for j in range(width):
                yy, xx = float(y[b, i]), float(x[b, j])
                assert yy == int(yy) and xx == int(xx)  # whole-pixel crops map to whole pixels
                if 0 <= yy < source.shape[1] and 0 <= xx < source.shape[2]:
                    assert torch.equal(out[b, :, i, j], source[:, int(yy), int(xx)]), (b, i, j)
                else:
                    assert not out[b, :, i, j].any(), (b, i, j)  # zero padding


def test_random_crop_flip_geometry_names_the_source_pixel_of_every_output_pixel():
    images = _images(16)
    geometry = identity_geometry(torch.arange(16), (6, 7))
    plain = random_crop_flip(images, 2, torch.Generator().manual_seed(1))
    out, composed = random_crop_flip(images, 2, torch.Generator().manual_seed(1), geometry=geometry)
    assert torch.equal(out, plain)  # the same draws with or without the geometry
    assert composed.flip.any() and not composed.flip.all()
    assert set(composed.top.tolist()) <= {-2.0, -1.0, 0.0, 1.0, 2.0}
    assert torch.equal(composed.height, torch.full((16,), 6.0)) and composed.size == (6, 7)
    _check_against_sources(out, images, composed)


def test_two_crop_flips_compose_into_one_geometry():
    images = _images(10, h=5, w=5)
    geometry = identity_geometry(torch.arange(10), (5, 5))
    once, first = random_crop_flip(images, 1, torch.Generator().manual_seed(2), geometry=geometry)
    twice, second = random_crop_flip(once, 1, torch.Generator().manual_seed(3), geometry=first)
    # only pixels that are inside the image after both crops are comparable (zeros were shifted in)
    y, x = output_to_source(second)
    y1, x1 = output_to_source(first)
    for b in range(10):
        for i in range(5):
            for j in range(5):
                yy, xx = int(y[b, i]), int(x[b, j])
                if 0 <= yy < 5 and 0 <= xx < 5 and twice[b, :, i, j].any():
                    assert torch.equal(twice[b, :, i, j], images[b, :, yy, xx])


def _random_geometry(batch, size, source, seed):
    g = torch.Generator().manual_seed(seed)
    height = torch.rand(batch, generator=g) * source[0] + 1
    width = torch.rand(batch, generator=g) * source[1] + 1
    top = torch.rand(batch, generator=g) * (source[0] - height + 2) - 1
    left = torch.rand(batch, generator=g) * (source[1] - width + 2) - 1
    flip = torch.rand(batch, generator=g) < 0.5
    return BatchGeometry(torch.arange(batch), top, left, height, width, flip,
                         torch.full((batch,), source[0]), torch.full((batch,), source[1]), size)


def test_source_to_output_inverts_output_to_source_for_resized_crops():
    geometry = _random_geometry(32, (9, 11), (20, 17), seed=0)
    y, x = output_to_source(geometry)
    i, j = source_to_output(geometry, y, x)
    assert torch.allclose(i, torch.arange(9.0).expand(32, 9), atol=1e-4)
    assert torch.allclose(j, torch.arange(11.0).expand(32, 11), atol=1e-4)


def test_output_to_source_of_a_resized_crop_by_hand():
    # a 4-pixel-high box from row 2 shown on 2 rows: output row i covers source rows 2 + 2i … 2 + 2i + 2
    geometry = BatchGeometry(torch.tensor([0]), torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([4.0]),
                             torch.tensor([6.0]), torch.tensor([True]), torch.tensor([8]), torch.tensor([8]), (2, 3))
    y, x = output_to_source(geometry)
    assert y.tolist() == [[2.5, 4.5]]                  # centres of [2, 4) and [4, 6)
    assert x.tolist() == [[5.5, 3.5, 1.5]]             # mirrored: output column 0 shows the box's right end


def test_compose_geometry_is_the_composition_of_the_two_maps():
    inner = _random_geometry(24, (12, 10), (30, 25), seed=1)
    outer = _random_geometry(24, (5, 6), (12, 10), seed=2)
    y_mid, x_mid = output_to_source(outer)           # the outer grid's positions on the inner grid
    composed = compose_geometry(inner, outer)
    y, x = output_to_source(composed)
    # the inner map at fractional inner-grid positions, by its definition
    rows, cols = inner.size
    y_ref = inner.top.view(-1, 1) + (y_mid + 0.5) * (inner.height / rows).view(-1, 1) - 0.5
    x_unflipped = torch.where(inner.flip.view(-1, 1), cols - 1 - x_mid, x_mid)
    x_ref = inner.left.view(-1, 1) + (x_unflipped + 0.5) * (inner.width / cols).view(-1, 1) - 0.5
    assert torch.allclose(y, y_ref, atol=1e-4) and torch.allclose(x, x_ref, atol=1e-4)
    assert composed.size == (5, 6) and torch.equal(composed.index, inner.index)


def test_device_loader_batches_carry_their_indices_crops_and_flips():
    images = _images(10)
    labels = torch.arange(10) * 3
    loader = DeviceLoader(images, labels, 4, generator=torch.Generator().manual_seed(5), crop_padding=2)
    seen = []
    for epoch in range(2):
        for batch in loader:
            x, y = batch                                # still unpacks as a pair
            geometry = batch.geometry
            assert isinstance(batch, LoaderBatch) and batch.images is x and batch.labels is y
            assert torch.equal(y, labels[geometry.index]) and torch.equal(geometry.host_index, geometry.index)
            raw = (x * 255).round().to(torch.uint8)    # mean 0, std 1: x = pixel / 255
            _check_against_sources(raw, images, geometry)
            seen.append(geometry.index)
    assert sorted(torch.cat(seen[:3]).tolist()) == list(range(10))  # every sample once per epoch


def test_device_loader_without_augmentation_gives_the_identity_geometry():
    loader = DeviceLoader(_images(5), torch.arange(5), 5, shuffle=False, augment=False)
    geometry = next(iter(loader)).geometry
    assert geometry.index.tolist() == [0, 1, 2, 3, 4] and not geometry.flip.any()
    assert geometry.top.tolist() == [0.0] * 5 and geometry.width.tolist() == [7.0] * 5


class _Cropping(Dataset):
    """Items (image, label) — or (image, label, crop) reporting a worker-side crop — of stored images."""

    def __init__(self, images, report_crop=False):
        self.images, self.report_crop = images, report_crop

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, index):
        if not self.report_crop:
            return self.images[index], index % 3
        crop = self.images[index, :, 1:5, 2:6].flip(-1)  # rows 1–4, columns 2–5, mirrored
        return crop, index % 3, (1.0, 2.0, 4.0, 4.0, True, 6, 7)


def test_make_dataloader_batches_carry_indices_and_compose_with_the_device_crop():
    images = _images(9)
    loader = make_dataloader(_Cropping(images), batch_size=4, shuffle=True,
                             generator=torch.Generator().manual_seed(0), pin_memory=False)
    batches = list(loader)
    assert sorted(torch.cat([b.geometry.index for b in batches]).tolist()) == list(range(9))
    for batch in batches:
        x, y = batch
        assert torch.equal(y, batch.geometry.index % 3)
        _check_against_sources(x, images, batch.geometry)
        out, geometry = random_crop_flip(x, 1, torch.Generator().manual_seed(7), geometry=batch.geometry)
        _check_against_sources(out, images, geometry)


def test_make_dataloader_passes_a_worker_side_crop_through_with_two_workers():
    images = _images(6)
    loader = make_dataloader(_Cropping(images, report_crop=True), batch_size=3, shuffle=False, num_workers=2,
                             pin_memory=False)
    for batch in loader:
        x, _ = batch
        assert x.shape[-2:] == (4, 4) and batch.geometry.size == (4, 4)
        assert batch.geometry.flip.all() and batch.geometry.top.tolist() == [1.0] * 3
        _check_against_sources(x, images, batch.geometry)


def test_loader_batches_pickle_and_move_with_their_geometry():
    batch = next(iter(DeviceLoader(_images(4), torch.arange(4), 4, generator=torch.Generator().manual_seed(1))))
    again = pickle.loads(pickle.dumps(batch))
    assert isinstance(again, LoaderBatch) and torch.equal(again.geometry.index, batch.geometry.index)
    moved = batch.to("cpu")
    assert torch.equal(moved.geometry.left, batch.geometry.left) and moved.geometry.size == batch.geometry.size


def test_random_crop_flip_rejects_a_geometry_of_another_batch():
    with pytest.raises(ValueError, match="geometry describes"):
        random_crop_flip(_images(3), 1, geometry=identity_geometry(torch.arange(2), (6, 7)))
