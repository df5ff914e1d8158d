"""Batched crop/flip, normalisation, the DeviceLoader (epochs, seeding, exact resume), make_dataloader."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from keepmix.data import DeviceLoader, SalientShapes, make_dataloader, normalize, random_crop_flip

MEAN = (0.5, 0.4, 0.3)
STD = (0.25, 0.2, 0.1)


def _images(n=12, c=3, h=6, w=7, seed=0):
    return torch.randint(0, 256, (n, c, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _padded(image: torch.Tensor, padding: int, mode: str) -> torch.Tensor:
    """``image`` padded by ``padding`` on every side with torch's own padding."""
    torch_mode = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate"}[mode]
    return F.pad(image.double().unsqueeze(0), (padding,) * 4, mode=torch_mode).squeeze(0)


def _explanations(source, out, padding, mode):
    """All (dy, dx, mirrored) such that cropping the padded source at (dy, dx), then mirroring, gives ``out``."""
    h, w = source.shape[-2:]
    padded = _padded(source, padding, mode)
    out = out.double()
    found = []
    for dy, dx, mirrored in itertools.product(range(2 * padding + 1), range(2 * padding + 1), (False, True)):
        crop = padded[:, dy:dy + h, dx:dx + w]
        if torch.equal(crop.flip(-1) if mirrored else crop, out):
            found.append((dy, dx, mirrored))
    return found


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate"])
def test_crop_flip_is_a_whole_pixel_shift_within_padding_then_a_mirror(mode):
    images = _images(16)
    out = random_crop_flip(images, 2, torch.Generator().manual_seed(1), padding_mode=mode)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    for source, result in zip(images, out):
        assert len(_explanations(source, result, 2, mode)) == 1  # random pixels: the explanation is unique


def test_crop_flip_draws_cover_every_offset_and_both_mirrors():
    images = _images(300, c=1, h=5, w=5, seed=2).float()
    out = random_crop_flip(images, 1, torch.Generator().manual_seed(3))
    assert out.dtype == torch.float32
    seen = [(_explanations(s, o, 1, "zeros")[0]) for s, o in zip(images, out)]
    offsets = {(dy, dx) for dy, dx, _ in seen}
    assert offsets == set(itertools.product(range(3), range(3)))
    share_mirrored = sum(m for _, _, m in seen) / len(seen)
    assert 0.4 < share_mirrored < 0.6


def test_crop_flip_degenerate_settings_and_seeding():
    images = _images()
    assert torch.equal(random_crop_flip(images, 0, flip=False), images)
    mirrored_or_not = random_crop_flip(images, 0, torch.Generator().manual_seed(0))
    for source, result in zip(images, mirrored_or_not):
        assert torch.equal(result, source) or torch.equal(result, source.flip(-1))
    a = random_crop_flip(images, 3, torch.Generator().manual_seed(9))
    b = random_crop_flip(images, 3, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    big = random_crop_flip(images[:1], 50, torch.Generator().manual_seed(0), flip=False)
    assert big.shape == images[:1].shape  # a padding larger than the image is still a valid crop


def test_crop_flip_validation():
    images = _images()
    with pytest.raises(ValueError, match="padding"):
        random_crop_flip(images, -1)
    with pytest.raises(TypeError, match="padding"):
        random_crop_flip(images, 1.5)
    with pytest.raises(ValueError, match="reflect"):
        random_crop_flip(images, 6, padding_mode="reflect")
    with pytest.raises(ValueError, match="padding_mode"):
        random_crop_flip(images, 1, padding_mode="wrap")
    with pytest.raises(ValueError, match="4 dimensions"):
        random_crop_flip(images[0], 1)
    with pytest.raises(TypeError, match="generator"):
        random_crop_flip(images, 1, generator=3)


def test_normalize_hand_computed():
    images = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 1, 2).contiguous()
    out = normalize(images, MEAN, STD)
    expected = torch.tensor([(0 - 0.5) / 0.25, (1 - 0.4) / 0.2, (0.2 - 0.3) / 0.1]).view(1, 3, 1, 1).expand(1, 3, 1, 2)
    assert out.dtype == torch.float32 and torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(normalize(images.float() / 255, MEAN, STD), expected, atol=1e-6)
    assert torch.allclose(normalize(images), images.float() / 255)
    with pytest.raises(ValueError, match="one value per channel"):
        normalize(images, (0.5,), STD)
    with pytest.raises(ValueError, match="positive"):
        normalize(images, MEAN, (0.1, 0.0, 0.1))


# --------------------------------------------------------------------------- DeviceLoader

def _ids(n):
    return torch.arange(n)  # labels that identify the sample


def _collect(loader, limit=None):
    batches = []
    for index, batch in enumerate(loader):
        batches.append(batch)
        if limit is not None and index + 1 == limit:
            break
    return batches


def test_len_and_plain_order():
    images = _images(10)
    loader = DeviceLoader(images, _ids(10), 4, shuffle=False, augment=False, mean=MEAN, std=STD)
    assert len(loader) == 3 and len(DeviceLoader(images, _ids(10), 4, drop_last=True)) == 2
    batches = _collect(loader)
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([y for _, y in batches]), _ids(10))
    assert torch.allclose(torch.cat([x for x, _ in batches]), normalize(images, MEAN, STD))
    assert batches[0][1].dtype == torch.int64 and batches[0][0].dtype == torch.float32


def test_shuffled_epochs_are_permutations_that_differ_and_follow_the_seed():
    images = _images(10)
    first = DeviceLoader(images, _ids(10), 3, generator=torch.Generator().manual_seed(7), augment=False)
    epochs = [torch.cat([y for _, y in _collect(first)]) for _ in range(3)]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(10))
    assert not torch.equal(epochs[0], epochs[1]) and first.epoch == 3
    twin = DeviceLoader(images, _ids(10), 3, generator=torch.Generator().manual_seed(7), augment=False)
    assert torch.equal(torch.cat([y for _, y in _collect(twin)]), epochs[0])
    assert torch.equal(twin.epoch_order(2), epochs[2])
    # images travel with their labels
    for x, y in DeviceLoader(images, _ids(10), 4, generator=torch.Generator().manual_seed(1), augment=False):
        assert torch.allclose(x, normalize(images[y]))


def test_augmented_batches_are_crops_and_flips_of_their_own_images():
    images = _images(8)
    loader = DeviceLoader(images, _ids(8), 3, generator=torch.Generator().manual_seed(2), mean=MEAN, std=STD,
                          crop_padding=2)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    for x, y in loader:
        restored = ((x * std + mean) * 255).round().to(torch.uint8)
        for source, result in zip(images[y], restored):
            assert len(_explanations(source, result, 2, "zeros")) == 1


def test_exact_resume_mid_epoch_and_at_epoch_end():
    images = _images(11)
    reference = DeviceLoader(images, _ids(11), 3, generator=torch.Generator().manual_seed(4))
    full = [_collect(reference) for _ in range(3)]

    interrupted = DeviceLoader(images, _ids(11), 3, generator=torch.Generator().manual_seed(4))
    _collect(interrupted)
    _collect(interrupted, limit=2)  # two batches of epoch 1, then "crash"
    state = interrupted.state_dict()
    assert state["epoch"] == 1 and state["batch_index"] == 2

    resumed = DeviceLoader(images, _ids(11), 3)  # a different (random) seed until the state is loaded
    resumed.load_state_dict(state)
    rest_of_epoch1 = _collect(resumed)
    epoch2 = _collect(resumed)
    expected = full[1][2:] + full[2]
    for (x, y), (ex, ey) in zip(rest_of_epoch1 + epoch2, expected):
        assert torch.equal(x, ex) and torch.equal(y, ey)
    assert len(rest_of_epoch1 + epoch2) == len(expected)

    at_end = DeviceLoader(images, _ids(11), 3, generator=torch.Generator().manual_seed(4))
    for _ in at_end:  # a checkpoint taken while handling the last batch of epoch 0
        state = at_end.state_dict()
    again = DeviceLoader(images, _ids(11), 3)
    again.load_state_dict(state)
    for (x, y), (ex, ey) in zip(_collect(again), full[1]):
        assert torch.equal(x, ex) and torch.equal(y, ey)


def test_state_validation_set_epoch_and_empty_epochs():
    loader = DeviceLoader(_images(5), _ids(5), 2)
    with pytest.raises(ValueError, match="batch_size"):
        loader.load_state_dict({**loader.state_dict(), "batch_size": 3})
    with pytest.raises(ValueError, match="missing"):
        loader.load_state_dict({"epoch": 0})
    with pytest.raises(ValueError, match="invalid position"):
        loader.load_state_dict({**loader.state_dict(), "batch_index": 9})
    loader.set_epoch(4)
    assert torch.equal(torch.cat([y for _, y in loader]).sort().values, _ids(5)) and loader.epoch == 5
    empty = DeviceLoader(_images(3), _ids(3), 4, drop_last=True)
    assert len(empty) == 0 and list(empty) == [] and empty.epoch == 1


def test_soft_labels_and_validation():
    soft = torch.rand(6, 4)
    x, y = next(iter(DeviceLoader(_images(6), soft, 6, shuffle=False)))
    assert torch.equal(y, soft)
    with pytest.raises(TypeError, match="uint8"):
        DeviceLoader(_images(4).float(), _ids(4), 2)
    with pytest.raises(ValueError, match="one entry per image"):
        DeviceLoader(_images(4), _ids(3), 2)
    with pytest.raises(TypeError, match="integer class indices"):
        DeviceLoader(_images(4), _ids(4).float(), 2)
    with pytest.raises(ValueError, match="batch_size"):
        DeviceLoader(_images(4), _ids(4), 0)
    with pytest.raises(ValueError, match="one value per channel"):
        DeviceLoader(_images(4), _ids(4), 2, mean=(0.5,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_loader_on_cuda_matches_cpu():
    images = _images(9)
    cpu = DeviceLoader(images, _ids(9), 4, generator=torch.Generator().manual_seed(3), mean=MEAN, std=STD)
    gpu = DeviceLoader(images, _ids(9), 4, generator=torch.Generator().manual_seed(3), mean=MEAN, std=STD,
                       device="cuda")
    for (x, y), (gx, gy) in zip(cpu, gpu):
        assert gx.is_cuda and torch.equal(y, gy.cpu()) and torch.allclose(x, gx.cpu(), atol=1e-6)


# --------------------------------------------------------------------------- make_dataloader

def test_make_dataloader_batches_a_dataset_reproducibly():
    data = SalientShapes(2, seed=0)
    loader = make_dataloader(data, batch_size=8, generator=torch.Generator().manual_seed(0))
    images, labels = next(iter(loader))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    again, _ = next(iter(make_dataloader(data, batch_size=8, generator=torch.Generator().manual_seed(0))))
    assert torch.equal(images, again)
    augmented = normalize(random_crop_flip(images, 4, torch.Generator().manual_seed(0)), MEAN, STD)
    assert augmented.shape == images.shape and augmented.dtype == torch.float32
    with pytest.raises(ValueError, match="batch_size"):
        make_dataloader(data, batch_size=0)
    with pytest.raises(ValueError, match="num_workers"):
        make_dataloader(data, num_workers=-1)
