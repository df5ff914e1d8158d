"""The streaming input path (keepmix.data.stream, transforms, shards): worker-side crops reported as the batch
geometry (checked against the pixels and through the saliency memory), the sampler's rank shares, same
batches for any number of workers and after a mid-epoch resume, the in-memory path's batches for a
pad-and-crop stream, tar shards, and the loader choice."""

from __future__ import annotations

import math
import tarfile

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from keepmix.data import (DeviceLoader, EvalStream, SampleTransform, StreamDataset, StreamLoader, StreamSampler,
                          TarShardDataset, center_box, choose_loader, image_folder, load_dataset, output_to_source,
                          random_resized_box, write_shards)
from keepmix.data.transforms import TRIES
from keepmix.memory import SaliencyMemory

PIL = pytest.importorskip("PIL.Image")


def write_folder(root, sizes, classes=("a", "b", "c"), split="train", seed=0, fmt="png"):
    """An ImageFolder of random images of the given (h, w) sizes, cycling through the classes."""
    rng = np.random.default_rng(seed)
    for k, (h, w) in enumerate(sizes):
        folder = root / split / classes[k % len(classes)]
        folder.mkdir(parents=True, exist_ok=True)
        PIL.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{k:03d}.{fmt}")
    return root


class ArrayImages(torch.utils.data.Dataset):
    """uint8 images of any sizes, opened as PIL images (what files give the workers)."""

    def __init__(self, arrays, labels):
        self.arrays, self.targets = arrays, torch.as_tensor(labels)

    def __len__(self):
        return len(self.arrays)

    def open_image(self, index):
        return PIL.fromarray(self.arrays[index], "RGB")

    def __getitem__(self, index):
        return torch.from_numpy(self.arrays[index]).permute(2, 0, 1), int(self.targets[index])


# --------------------------------------------------------------------------- boxes


def test_random_resized_box_follows_the_definition_on_chosen_uniforms():
    # try 0 fits: area share 0.08 + 0.92·0.5 = 0.54 of 150×200, log-ratio midpoint → ratio 1
    u = [0.5, 0.5, 0.25, 1.0 - 1e-9] + [0.0] * (4 * TRIES - 4)
    side = round(math.sqrt(0.54 * 150 * 200))
    top, left, h, w = random_resized_box(150, 200, u)
    assert (h, w) == (side, side) == (127, 127)
    assert top == int(0.25 * (150 - side + 1)) and left == 200 - side   # the last position, u → 1
    # on a 100×200 image that square (127 px) does not fit: try 1 (all zeros) gives area share 0.08 at ratio 3/4
    assert random_resized_box(100, 200, u) == (0, 0, round(math.sqrt(1600 / 0.75)), round(math.sqrt(1600 * 0.75)))
    # no try fits (an area share of 1 at ratio 4/3 on a tall image): the centre crop, ratio clamped
    u = [1.0 - 1e-12, 1.0 - 1e-12, 0.0, 0.0] * TRIES
    assert random_resized_box(200, 50, u) == ((200 - 67) // 2, 0, 67, 50)   # h = round(50 / (3/4))


def test_random_resized_boxes_lie_inside_with_area_and_ratio_in_range():
    transform = SampleTransform("resized", 8, scale=(0.2, 0.6), ratio=(0.5, 2.0))
    for index in range(300):
        u = transform.uniforms(index, epoch=3).tolist()
        top, left, h, w = random_resized_box(37, 61, u, (0.2, 0.6), (0.5, 2.0))
        assert 0 <= top and top + h <= 37 and 0 <= left and left + w <= 61
        assert 0.2 * 37 * 61 * 0.85 <= h * w <= 0.6 * 37 * 61 * 1.15                # rounding of the sides
        assert 0.5 * 0.8 <= w / h <= 2.0 * 1.25


def test_center_box_by_hand():
    # shorter side 100 → 256: factor 100/256; 224 px of it are 87.5 source px, centred
    assert center_box(100, 200, 224, 256) == (6.25, 56.25, 87.5, 87.5)
    assert center_box(256, 256, 224, 256) == (16.0, 16.0, 224.0, 224.0)


def test_sample_draws_depend_only_on_seed_epoch_and_index():
    a, b = SampleTransform("resized", 8, seed=5), SampleTransform("resized", 8, seed=5)
    assert torch.equal(a.uniforms(17, 2), b.uniforms(17, 2))
    assert not torch.equal(a.uniforms(17, 2), a.uniforms(17, 3))
    assert not torch.equal(a.uniforms(17, 2), a.uniforms(18, 2))
    assert not torch.equal(a.uniforms(17, 2), SampleTransform("resized", 8, seed=6).uniforms(17, 2))


# --------------------------------------------------------------------------- the geometry of worker-side crops


def ramp_images(count, height, width):
    """Images whose red channel is 4·row and green channel 4·column (a linear ramp: resampling keeps it exact)."""
    rows = np.arange(height).reshape(-1, 1).repeat(width, 1) * 4
    cols = np.arange(width).reshape(1, -1).repeat(height, 0) * 4
    image = np.stack([rows, cols, np.zeros_like(rows)], axis=2).astype(np.uint8)
    return [image.copy() for _ in range(count)]


def test_worker_crops_are_the_reported_geometry_pixel_for_pixel():
    """Through 2 worker processes: every output pixel's ramp value is the source position BatchGeometry says it shows
    (flips included), away from the image border where the resampling filter is clipped."""
    height, width, size = 60, 50, 16
    source = ArrayImages(ramp_images(12, height, width), [0] * 12)
    stream = StreamDataset(source, SampleTransform("resized", size, scale=(0.1, 1.0)))
    loader = StreamLoader(stream, 4, seed=11, num_workers=2)
    flips = 0
    for batch in loader:
        pixels = batch.images * 255.0                         # no mean/std: [0, 1] pixels
        y, x = output_to_source(batch.geometry)               # (B, S), (B, S) source pixel centres
        geometry = batch.geometry
        support_y = torch.clamp(geometry.height / size, min=1.0).view(-1, 1)
        support_x = torch.clamp(geometry.width / size, min=1.0).view(-1, 1)
        ok_y = (y + 0.5 - support_y >= 0) & (y + 0.5 + support_y <= height)
        ok_x = (x + 0.5 - support_x >= 0) & (x + 0.5 + support_x <= width)
        shown_y = pixels[:, 0] / 4.0                          # B×S×S: the row each output pixel shows
        shown_x = pixels[:, 1] / 4.0
        err_y = (shown_y - y.unsqueeze(2)).abs()[ok_y.unsqueeze(2).expand_as(shown_y)]
        err_x = (shown_x - x.unsqueeze(1)).abs()[ok_x.unsqueeze(1).expand_as(shown_x)]
        assert err_y.numel() > 0 and err_x.numel() > 0
        assert float(err_y.max()) < 0.3 and float(err_x.max()) < 0.3
        flips += int(geometry.flip.sum())
    assert 0 < flips < 12


def test_memory_writes_land_in_the_right_source_pixels_under_random_resized_crops():
    """A white square on black in each source image; maps = the cropped, resized, flipped output. Written through the
    batch geometry, the memory holds the square where it is in the source, in the source's own pixels."""
    side, count, size = 40, 16, 24
    rng = np.random.default_rng(3)
    arrays, squares = [], []
    for _ in range(count):
        top, left = (int(v) for v in rng.integers(6, side - 18, 2))
        image = np.zeros((side, side, 3), np.uint8)
        image[top:top + 12, left:left + 12] = 255
        arrays.append(image)
        squares.append((top, left))
    stream = StreamDataset(ArrayImages(arrays, [0] * count), SampleTransform("resized", size, scale=(0.5, 1.0)))
    memory = SaliencyMemory(count, (side, side), dtype="float32")
    checked = 0
    for batch in StreamLoader(stream, 4, seed=2, num_workers=2):
        memory.write(batch.geometry, batch.images.mean(dim=1))
        for b in range(4):
            n = int(batch.geometry.index[b])
            top, left = squares[n]
            g = batch.geometry
            crop_top, crop_left = float(g.top[b]), float(g.left[b])
            crop_bottom, crop_right = crop_top + float(g.height[b]), crop_left + float(g.width[b])
            core_in_crop = crop_top <= top + 3 and top + 9 <= crop_bottom and crop_left <= left + 3 \
                and left + 9 <= crop_right
            if not core_in_crop:
                continue
            stored = memory.read_source(torch.tensor([n]))[0]
            r = torch.arange(side, dtype=torch.float32).view(-1, 1) + 0.5
            c = torch.arange(side, dtype=torch.float32).view(1, -1) + 0.5
            in_crop = (r > crop_top + 2) & (r < crop_bottom - 2) & (c > crop_left + 2) & (c < crop_right - 2)
            inside = (r > top + 2) & (r < top + 10) & (c > left + 2) & (c < left + 10)
            outside = (r < top - 2) | (r > top + 14) | (c < left - 2) | (c > left + 14)
            assert bool(memory.written[n])
            assert float(stored[inside & in_crop].min()) > 0.9, n
            assert float(stored[outside & in_crop].max()) < 0.1, n
            checked += 1
    assert checked >= 6


# --------------------------------------------------------------------------- sampler, determinism, resume


def test_sampler_rank_shares_partition_each_global_batch():
    single = StreamSampler(50, 12, seed=4)
    shares = [StreamSampler(50, 6, num_replicas=2, rank=r, seed=4) for r in range(2)]
    assert isinstance(shares[0], torch.utils.data.DistributedSampler)
    for epoch in (0, 1):
        for sampler in (single, *shares):
            sampler.set_epoch(epoch)
        whole = [i for i, e in single]
        parts = [[i for i, e in s] for s in shares]
        assert len(whole) == 48 and all(len(p) == 24 for p in parts)          # 4 global batches of 12, 2 dropped
        assert not set(parts[0]) & set(parts[1])
        for b in range(4):      # global batch b: the same samples whatever the number of ranks
            assert set(whole[12 * b:12 * b + 12]) == set(parts[0][6 * b:6 * b + 6]) | set(parts[1][6 * b:6 * b + 6])
        assert all(e == epoch for _, e in single)
    shares[1].start_batch = 3
    assert [i for i, _ in shares[1]] == parts[1][18:]


def batches_of(loader, count=None):
    out = []
    for batch in loader:
        g = batch.geometry
        out.append((batch.images.clone(), batch.labels.clone(), g.index.clone(), g.top.clone(), g.left.clone(),
                    g.height.clone(), g.width.clone(), g.flip.clone()))
        if count is not None and len(out) == count:
            break
    return out


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for s, t in zip(x, y):
            assert torch.equal(s, t)


def test_same_batches_for_any_number_of_workers_and_after_a_mid_epoch_resume(tmp_path):
    root = write_folder(tmp_path, [(20 + 3 * k % 17, 24 + 5 * k % 13) for k in range(22)])
    files = image_folder(root, "train")

    def loader(workers):
        return StreamLoader(StreamDataset(files, SampleTransform("resized", 12)), 4, seed=9, num_workers=workers,
                            mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))

    whole = loader(2)
    straight = batches_of(whole) + batches_of(whole)           # two epochs of 5 batches
    first = loader(0)
    part = batches_of(first, 2)                                # stop after batch 2 of epoch 0 …
    state = first.state_dict()
    assert (state["epoch"], state["batch_index"]) == (0, 2)
    resumed = loader(1)
    resumed.load_state_dict(state)                             # … and continue in a new loader
    rest = batches_of(resumed) + batches_of(resumed)
    assert_same(straight, part + rest)
    assert not torch.equal(straight[0][2], straight[5][2])     # a new order each epoch


def test_a_loaded_seed_reaches_workers_that_are_already_running(tmp_path):
    root = write_folder(tmp_path, [(20, 26)] * 8)
    files = image_folder(root, "train")
    reference = StreamLoader(StreamDataset(files, SampleTransform("resized", 8)), 2, seed=1, num_workers=0)
    state = reference.state_dict()
    expected = batches_of(reference)
    other = StreamLoader(StreamDataset(files, SampleTransform("resized", 8)), 2, seed=2, num_workers=1)
    batches_of(other, 1)                                        # its persistent worker now holds seed 2
    other.load_state_dict(state)
    assert_same(expected, batches_of(other))


def test_a_pad_and_crop_stream_gives_the_in_memory_batches():
    images = torch.randint(0, 256, (26, 3, 16, 16), dtype=torch.uint8)
    labels = torch.randint(0, 4, (26,))
    memory = DeviceLoader(images, labels, batch_size=6, drop_last=True, generator=torch.Generator().manual_seed(7),
                          mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25), crop_padding=2, flip=True)
    stream = StreamLoader(StreamDataset(TensorDataset(images, labels), SampleTransform("whole", 16)), 6, seed=7,
                          num_workers=0, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25), crop_padding=2, flip=True)
    for _ in range(2):
        assert_same(batches_of(memory), batches_of(stream))


def test_state_of_another_layout_is_refused():
    data = StreamDataset(TensorDataset(torch.zeros(8, 3, 4, 4, dtype=torch.uint8), torch.zeros(8, dtype=torch.long)),
                         SampleTransform("whole", 4))
    state = StreamLoader(data, 2, num_workers=0).state_dict()
    with pytest.raises(ValueError, match="batch_size"):
        StreamLoader(data, 4, num_workers=0).load_state_dict(state)
    with pytest.raises(ValueError, match="world_size|rank"):
        StreamLoader(data, 2, num_workers=0, rank=1, world_size=2).load_state_dict(state)


def test_eval_stream_shares_cover_the_set_once_with_centre_crops():
    images = torch.randint(0, 256, (11, 3, 20, 30), dtype=torch.uint8)
    data = StreamDataset(TensorDataset(images, torch.arange(11)), SampleTransform("center", 8, resize=10))
    seen = []
    for rank in range(3):
        for x, y in EvalStream(data, 2, num_workers=0, rank=rank, world_size=3)():
            assert x.shape[1:] == (3, 8, 8) and x.dtype == torch.float32
            seen.extend(y.tolist())
    assert sorted(seen) == list(range(11))


# --------------------------------------------------------------------------- shards


def test_shards_hold_the_folder_bytes_and_read_back_as_the_same_samples(tmp_path):
    root = write_folder(tmp_path / "folder", [(9 + k, 11) for k in range(7)], fmt="jpg")
    files = image_folder(root, "train")
    paths = write_shards(root, tmp_path / "shards", "train", per_shard=3)
    assert [p.name for p in paths] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    with tarfile.open(paths[0]) as tar:                   # WebDataset's layout: <key>.<ext>, <key>.cls
        assert tar.getnames() == ["000000000.jpg", "000000000.cls", "000000001.jpg", "000000001.cls",
                                  "000000002.jpg", "000000002.cls"]
        assert tar.extractfile("000000001.jpg").read() == files.paths[1].read_bytes()
    loaded = load_dataset("shards", tmp_path / "shards", "train")
    shards = loaded.dataset
    assert isinstance(shards, TarShardDataset) and len(shards) == 7
    assert loaded.class_names == files.class_names and torch.equal(shards.targets, files.targets)
    for k in range(7):
        assert shards.read_bytes(k) == files.paths[k].read_bytes()
        assert torch.equal(shards[k][0], files[k][0])
    # the stream reads shards exactly as files
    a = batches_of(StreamLoader(StreamDataset(files, SampleTransform("resized", 8)), 3, seed=1, num_workers=0))
    b = batches_of(StreamLoader(StreamDataset(shards, SampleTransform("resized", 8)), 3, seed=1, num_workers=2))
    assert_same(a, b)


def test_shards_written_in_a_shuffled_order_keep_labels_with_images(tmp_path):
    root = write_folder(tmp_path / "folder", [(8, 8)] * 9, fmt="png")
    files = image_folder(root, "train")
    write_shards(root, tmp_path / "shards", "train", per_shard=4, shuffle=3)
    shards = load_dataset("shards", tmp_path / "shards", "train").dataset
    assert sorted(shards.keys) == [f"{k:09d}" for k in range(9)] and shards.keys != sorted(shards.keys)
    for k, key in enumerate(shards.keys):
        assert int(shards.targets[k]) == int(files.targets[int(key)])
        assert shards.read_bytes(k) == files.paths[int(key)].read_bytes()


def test_webdataset_reads_the_shards(tmp_path):
    wds = pytest.importorskip("webdataset")
    root = write_folder(tmp_path / "folder", [(8, 8)] * 5, fmt="png")
    paths = write_shards(root, tmp_path / "shards", "train", per_shard=2)
    samples = list(wds.WebDataset([str(p) for p in paths], shardshuffle=False).to_tuple("__key__", "cls"))
    assert [(k, int(c)) for k, c in samples] == [(f"{i:09d}", int(t)) for i, t in
                                                  enumerate(image_folder(root, "train").targets)]


# --------------------------------------------------------------------------- the loader choice


def test_loader_choice_rules():
    limit = 3 * 32 * 32 * 100
    assert choose_loader("auto", in_memory=True, num_images=10 ** 6, image_size=None, crop="auto",
                         limit_bytes=1) == "memory"
    assert choose_loader("auto", in_memory=True, num_images=10, image_size=None, crop="resized",
                         limit_bytes=limit) == "stream"
    assert choose_loader("auto", in_memory=False, num_images=100, image_size=32, crop="auto",
                         limit_bytes=limit) == "memory"
    assert choose_loader("auto", in_memory=False, num_images=101, image_size=32, crop="auto",
                         limit_bytes=limit) == "stream"
    assert choose_loader("auto", in_memory=False, num_images=1, image_size=None, crop="pad",
                         limit_bytes=limit) == "stream"
    assert choose_loader("stream", in_memory=True, num_images=1, image_size=None, crop="pad",
                         limit_bytes=limit) == "stream"
    with pytest.raises(ValueError, match="resized"):
        choose_loader("memory", in_memory=False, num_images=1, image_size=8, crop="resized", limit_bytes=limit)


def test_workers_of_a_distributed_rank_start_from_a_fork_server():
    """A rank runs store, gloo and heartbeat threads; a worker forked from it can deadlock inside fork (a hang
    seen in CI: CPython's after-fork thread-state lock held by another thread), so its loaders use a fork
    server; outside a distributed job the default start method stays."""
    import multiprocessing
    import torch.distributed as dist
    from keepmix.data import stream
    assert not stream._threaded_fork_hazard()
    plain = stream._data_loader(list(range(4)), 2, None, 1, False, None, False)
    assert plain.multiprocessing_context is None
    if not dist.is_available() or multiprocessing.get_start_method() != "fork":
        pytest.skip("needs torch.distributed and the fork start method")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        loader = stream._data_loader(list(range(4)), 2, None, 1, False, None, False)
        assert loader.multiprocessing_context.get_start_method() == "forkserver"
    finally:
        dist.destroy_process_group()
