"""The streaming input path: files decoded and cropped in ``DataLoader`` workers, finished on the device.

For sets that do not fit on the device (ImageNet: 1.28 M JPEGs, ~190 GB decoded at 224 px) or that
want per-sample random-resized crops (the fine-grained sets), beside :class:`~keepmix.data.DeviceLoader`:

.. code-block:: text

    StreamSampler (a DistributedSampler)   each rank's share of every global batch, from (seed, epoch)
      → worker processes (num_workers)      Pillow decode, SampleTransform: random-resized crop + flip
                                            (or resize + centre crop for evaluation) → uint8 3×S×S
      → collate_with_geometry               LoaderBatch with the worker-side crops as its BatchGeometry
      → pinned memory → device              uint8 copied (non_blocking), then on the device: optional
                                            pad-and-crop (random_crop_flip), normalisation to float32

keepmix's ops (and the saliency memory, through ``batch.geometry``) then run batched on the device,
exactly as after a :class:`~keepmix.data.DeviceLoader`.

**Same seeds → same batches, with any number of workers.** Epoch ``e``'s order is
``randperm(N)`` drawn from ``derive_seed(seed, e, 0)`` (the :class:`DeviceLoader`'s order); global
batch ``b`` is ``order[b·G:(b+1)·G]`` and rank r takes its r-th slice of ``G/world`` samples
(incomplete global batches are dropped). A sample's crop and flip are drawn in the worker from
``derive_seed(seed, e, index)``; a device-side pad-and-crop of batch ``b`` from
``derive_seed(seed, e, b·world + r + 1)`` (the :class:`DeviceLoader`'s stream). Nothing depends on
which worker decodes a sample, how many workers there are, the prefetch depth or worker start-up
order, so batches are identical for ``num_workers`` = 0, 1, 2, … and across resumes, and the samples
and crops of global batch ``b`` do not depend on the number of ranks. What does not carry over:
pixels decoded by another Pillow/libjpeg build may differ in the last bit; the rank's *model-side*
randomness (the ops' generators) depends on the rank as it does on the in-memory path.

**Exact resume mid-epoch.** :meth:`StreamLoader.state_dict` is ``(seed, epoch, next batch)`` plus
the layout it assumes; after :meth:`StreamLoader.load_state_dict` the sampler starts at that batch
(no sample before it is decoded) and the remaining batches are those the uninterrupted loader would
have given, bit for bit. Batches are counted when handed out, so batches prefetched by the workers
but not consumed are not lost: they are decoded again on the next iteration.

**Distributed.** :class:`StreamSampler` is a ``torch.utils.data.DistributedSampler`` (``set_epoch``,
``num_replicas``, ``rank``); every rank reads only its own share of each global batch, so over an
epoch each of the ``⌊N/G⌋·G`` samples kept is read by exactly one rank, once.
"""

from __future__ import annotations

import numbers
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .loader import (LoaderBatch, _affine, _check_stats, collate_with_geometry, derive_seed, random_crop_flip,
                     roll_over_finished_epoch)
from .transforms import SampleTransform, tensor_to_pil

__all__ = ["StreamDataset", "StreamSampler", "StreamLoader", "EvalStream", "open_image", "choose_loader",
           "LOADERS", "CROPS"]

LOADERS = ("auto", "memory", "stream")
CROPS = ("auto", "pad", "resized")


def open_image(source: Dataset, index: int):
    """Sample ``index`` of ``source`` as an RGB PIL image: ``source.open_image(index)`` when it has one (files,
    tar shards: decoded without resizing), else its item's uint8 C×H×W image converted."""
    opener = getattr(source, "open_image", None)
    if callable(opener):
        return opener(index)
    image = source[index][0]
    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.ndim != 3:
        raise TypeError(f"the data set's items must be uint8 C×H×W images (or the set must have open_image), "
                        f"got {type(image).__name__}")
    return tensor_to_pil(image)


def _labels_of(source: Dataset) -> torch.Tensor:
    for name in ("targets", "labels"):
        value = getattr(source, name, None)
        if isinstance(value, torch.Tensor):
            return value.to(torch.int64)
    return torch.tensor([int(source[i][1]) for i in range(len(source))], dtype=torch.int64)


class StreamDataset(Dataset):
    """The worker-side half of the stream: key ``(index, epoch)`` → ``(uint8 3×S×S, label, index, crop)``.

    Args:
        source: a data set whose samples :func:`open_image` can open (an
            :class:`~keepmix.data.ImageFileDataset`, a :class:`~keepmix.data.shards.TarShardDataset`,
            or any set of uint8 C×H×W images).
        transform: the :class:`~keepmix.data.transforms.SampleTransform` run on each decoded image.
        indices: the source samples this set is made of (a subset), in order; position k of this set is
            source sample ``indices[k]``. Reported indices (``batch.geometry.index``) are positions.
        labels: the source's labels (read from ``source.targets`` when omitted).

    Items are :func:`~keepmix.data.collate_with_geometry`'s ``(image, label, index, crop)``.
    """

    def __init__(self, source: Dataset, transform: SampleTransform, indices: Optional[Sequence[int]] = None,
                 labels: Optional[torch.Tensor] = None):
        if not isinstance(transform, SampleTransform):
            raise TypeError(f"transform must be a SampleTransform, got {type(transform).__name__}")
        self.source = source
        self.transform = transform
        labels = _labels_of(source) if labels is None else torch.as_tensor(labels, dtype=torch.int64)
        if indices is None:
            indices = torch.arange(len(labels))
        self.indices = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        if self.indices.numel() == 0:
            raise ValueError("a stream needs at least one sample")
        self.labels = labels.index_select(0, self.indices)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (int(key), 0)
        image = open_image(self.source, int(self.indices[index]))
        out, crop = self.transform(image, int(index), int(epoch))
        return out, int(self.labels[index]), int(index), crop


class StreamSampler(DistributedSampler):
    """Rank ``rank``'s share of every global batch of an epoch, as keys ``(index, epoch)``.

    A ``DistributedSampler`` (``set_epoch``, ``num_replicas``, ``rank``, ``seed``, ``shuffle``) with
    the batch layout of the module docstring: global batch b = ``order[b·G:(b+1)·G]``, ``G =
    batch_size · num_replicas``, rank r its r-th slice; incomplete global batches dropped. Iteration
    starts at global batch :attr:`start_batch` of :attr:`epoch` (the resume point).
    """

    def __init__(self, num_samples: int, batch_size: int, *, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True):
        for value, name in ((num_samples, "num_samples"), (batch_size, "batch_size"), (num_replicas, "num_replicas")):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank!r}")
        super().__init__(range(int(num_samples)), num_replicas=int(num_replicas), rank=int(rank), shuffle=shuffle,
                         seed=int(seed), drop_last=True)
        self.total = int(num_samples)
        self.batch_size = int(batch_size)
        self.start_batch = 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.num_replicas

    @property
    def batches(self) -> int:
        """Global batches per epoch (= this rank's batches per epoch)."""
        return self.total // self.global_batch

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The sample order of ``epoch`` (int64 N, CPU): the :class:`DeviceLoader`'s order for the same seed."""
        if not self.shuffle:
            return torch.arange(self.total)
        return torch.randperm(self.total, generator=torch.Generator().manual_seed(derive_seed(self.seed, epoch, 0)))

    def rank_indices(self, epoch: int, start_batch: int = 0) -> torch.Tensor:
        """This rank's indices of ``epoch`` from global batch ``start_batch`` on, in order."""
        order = self.epoch_order(epoch)[:self.batches * self.global_batch]
        mine = order.view(self.batches, self.num_replicas, self.batch_size)[start_batch:, self.rank]
        return mine.reshape(-1)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        epoch = self.epoch
        for index in self.rank_indices(epoch, self.start_batch).tolist():
            yield index, epoch

    def __len__(self) -> int:
        return max(0, self.batches - self.start_batch) * self.batch_size


def _check_workers(num_workers) -> int:
    if isinstance(num_workers, bool) or not isinstance(num_workers, numbers.Integral) or num_workers < 0:
        raise ValueError(f"num_workers must be a non-negative int, got {num_workers!r}")
    return int(num_workers)


def _threaded_fork_hazard() -> bool:
    """True where workers would be forked from a distributed rank (Linux's default start method is fork)."""
    import multiprocessing
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized() and multiprocessing.get_start_method() == "fork"


def _data_loader(dataset: Dataset, batch_size: int, sampler, num_workers: int, pin_memory: bool,
                 prefetch_factor: Optional[int], persistent: bool) -> DataLoader:
    extra: Dict[str, Any] = {}
    if num_workers > 0:
        extra["persistent_workers"] = persistent
        if prefetch_factor is not None:
            extra["prefetch_factor"] = int(prefetch_factor)
        if _threaded_fork_hazard():
            # a distributed rank runs store, gloo and heartbeat threads: forking it can deadlock the child
            # (CPython takes the interpreter's thread-state lock after fork, which another thread may hold);
            # a fork server forks from its own single-threaded process instead
            extra["multiprocessing_context"] = "forkserver"
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_with_geometry, pin_memory=pin_memory, drop_last=False, **extra)


class StreamLoader:
    """Training batches of a :class:`StreamDataset`: decoded and cropped in workers, finished on the device.

    Each batch is a :class:`~keepmix.data.LoaderBatch` ``(images, labels)`` on ``device``: float32
    B×C×S×S ``(x/255 − mean)/std`` (``[0, 1]`` pixels when mean/std are None), int64 labels, and the
    geometry of every sample (data-set position, the worker's crop box in source pixels, flip, composed
    with the device-side pad-and-crop when ``crop_padding``/``flip`` are set).

    Args:
        dataset: the :class:`StreamDataset` (its transform's seed is set to ``seed``).
        batch_size: samples per batch on this rank (the global batch is ``batch_size · world_size``).
        device: where batches go.
        seed: the stream's seed (order, crops, device-side draws; see the module docstring).
        num_workers: ``DataLoader`` worker processes (0 decodes in this process).
        rank, world_size: this process's place in the job (a :class:`StreamSampler` share each).
        mean, std: normalisation on the 0–1 scale (None: 0 and 1).
        crop_padding, flip, padding_mode: a device-side :func:`~keepmix.data.random_crop_flip` after the
            workers (``data.crop: pad``); 0/False for none (the random-resized crop flips in the worker).
        shuffle: a new order every epoch.
        pin_memory: page-locked host batches (default: when ``device`` is CUDA).
        prefetch_factor: batches each worker prepares ahead (DataLoader's default 2).
        persistent_workers: keep the workers between epochs (default True).
    """

    def __init__(self, dataset: StreamDataset, batch_size: int, *, device="cpu", seed: int = 0, num_workers: int = 2,
                 rank: int = 0, world_size: int = 1, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, crop_padding: int = 0, flip: bool = False,
                 padding_mode: str = "zeros", shuffle: bool = True, pin_memory: Optional[bool] = None,
                 prefetch_factor: Optional[int] = None, persistent_workers: bool = True):
        if not isinstance(dataset, StreamDataset):
            raise TypeError(f"dataset must be a StreamDataset, got {type(dataset).__name__}")
        self.device = torch.device(device)
        self.seed = int(seed)
        dataset.transform.seed = self.seed
        self.dataset = dataset
        self.num_workers = _check_workers(num_workers)
        self.sampler = StreamSampler(len(dataset), batch_size, num_replicas=world_size, rank=rank, seed=self.seed,
                                     shuffle=shuffle)
        self.batch_size = self.sampler.batch_size
        self.rank, self.world_size = int(rank), int(world_size)
        self.crop_padding, self.flip, self.padding_mode = int(crop_padding), bool(flip), padding_mode
        channels = 3
        self.mean = _check_stats(mean, "mean", channels)
        self.std = _check_stats(std, "std", channels)
        self._scale, self._shift = _affine(self.mean, self.std, channels, self.device)
        if pin_memory is None:
            pin_memory = self.device.type == "cuda"
        self._loader_args = (bool(pin_memory), prefetch_factor, persistent_workers)
        self.loader = self._make_loader()
        self.epoch = 0
        self.batch_index = 0

    def _make_loader(self) -> DataLoader:
        return _data_loader(self.dataset, self.batch_size, self.sampler, self.num_workers, *self._loader_args)

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def __len__(self) -> int:
        return self.sampler.batches

    def finish(self, batch: LoaderBatch, epoch: int, batch_index: int) -> LoaderBatch:
        """A collated host batch on the device: pad-and-crop (if set), then normalised float32."""
        batch = batch.to(self.device, non_blocking=True)
        images, geometry = batch.images, batch.geometry
        if self.crop_padding > 0 or self.flip:
            seed = derive_seed(self.seed, epoch, batch_index * self.world_size + self.rank + 1)
            images, geometry = random_crop_flip(images, self.crop_padding, torch.Generator().manual_seed(seed),
                                                flip=self.flip, padding_mode=self.padding_mode, geometry=geometry)
        images = torch.addcmul(self._shift, images.to(torch.float32), self._scale)
        return LoaderBatch(images, batch.labels, geometry)

    def __iter__(self) -> Iterator[LoaderBatch]:
        batches = roll_over_finished_epoch(self)
        if batches == 0:
            return
        epoch = self.epoch
        self.sampler.set_epoch(epoch)
        self.sampler.start_batch = self.batch_index
        for host_batch in self.loader:
            batch = self.batch_index
            self.batch_index = batch + 1  # counted when handed out: a checkpoint taken now resumes after it
            yield self.finish(host_batch, epoch, batch)
        self.epoch += 1
        self.batch_index = 0

    def state_dict(self) -> Dict[str, int]:
        """Everything needed to resume: seed, epoch, next batch, and the layout it assumes."""
        return {"seed": self.seed, "epoch": self.epoch, "batch_index": self.batch_index,
                "num_samples": self.num_samples, "batch_size": self.batch_size, "rank": self.rank,
                "world_size": self.world_size}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Resume from :meth:`state_dict`; the set size, batch size and rank layout must match."""
        missing = {"seed", "epoch", "batch_index"} - set(state)
        if missing:
            raise ValueError(f"state is missing {sorted(missing)}")
        for key, mine in (("num_samples", self.num_samples), ("batch_size", self.batch_size), ("rank", self.rank),
                          ("world_size", self.world_size)):
            if key in state and int(state[key]) != mine:
                raise ValueError(f"state was saved with {key}={state[key]}, this loader has {mine}")
        epoch, batch_index = int(state["epoch"]), int(state["batch_index"])
        if epoch < 0 or not 0 <= batch_index <= len(self):
            raise ValueError(f"state has an invalid position: epoch {epoch}, batch {batch_index} of {len(self)}")
        if int(state["seed"]) != self.seed:  # workers hold a copy of the transform: start new ones with the seed
            self.seed = int(state["seed"])
            self.dataset.transform.seed = self.seed
            self.sampler.seed = self.seed
            self.loader = self._make_loader()
        self.epoch, self.batch_index = epoch, batch_index

    def set_epoch(self, epoch: int) -> None:
        """Jump to the start of ``epoch``."""
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch, self.batch_index = int(epoch), 0


class EvalStream:
    """Evaluation batches of a :class:`StreamDataset` (resize + centre crop in workers), normalised on the device.

    Rank r evaluates the contiguous share ``[N·r/world, N·(r+1)/world)`` in order (the last batch
    may be smaller), so sums reduced over ranks cover every sample once. Calling the object returns
    a fresh iterator of ``(images, labels)`` on ``device``. Its workers live for one pass unless
    ``persistent_workers`` (they would sit idle, holding memory, between evaluations).
    """

    def __init__(self, dataset: StreamDataset, batch_size: int, *, device="cpu", num_workers: int = 2, rank: int = 0,
                 world_size: int = 1, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 pin_memory: Optional[bool] = None, persistent_workers: bool = False):
        if not isinstance(dataset, StreamDataset):
            raise TypeError(f"dataset must be a StreamDataset, got {type(dataset).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.device = torch.device(device)
        n = len(dataset)
        lo, hi = n * rank // world_size, n * (rank + 1) // world_size
        self.keys: List[Tuple[int, int]] = [(i, 0) for i in range(lo, hi)]
        self._scale, self._shift = _affine(_check_stats(mean, "mean", 3), _check_stats(std, "std", 3), 3, self.device)
        if pin_memory is None:
            pin_memory = self.device.type == "cuda"
        self.loader = _data_loader(dataset, int(batch_size), self.keys, _check_workers(num_workers), bool(pin_memory),
                                   None, persistent_workers) if self.keys else None

    def __len__(self) -> int:
        return len(self.keys)

    def __call__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        if self.loader is None:
            return
        for batch in self.loader:
            batch = batch.to(self.device, non_blocking=True)
            yield torch.addcmul(self._shift, batch.images.to(torch.float32), self._scale), batch.labels


def choose_loader(requested: str, *, in_memory: bool, num_images: int, image_size: Optional[int], crop: str,
                  limit_bytes: float) -> str:
    """``data.loader: auto`` resolved: ``"memory"`` or ``"stream"``.

    An explicit ``memory``/``stream`` is kept (``memory`` with ``crop: resized`` is refused: the
    in-memory path has fixed-size images). ``auto``: sets loaded in memory (SalientShapes, CIFAR)
    stay there; a file-backed set goes to the device when ``crop`` is not ``resized``,
    ``image_size`` is set and its decoded size ``N · 3 · S²`` bytes is at most ``limit_bytes``;
    otherwise it streams.
    """
    if requested not in LOADERS:
        raise ValueError(f"data.loader must be one of {LOADERS}, got {requested!r}")
    if crop not in CROPS:
        raise ValueError(f"data.crop must be one of {CROPS}, got {crop!r}")
    if requested == "memory":
        if crop == "resized":
            raise ValueError("data.crop 'resized' (random-resized crops) needs data.loader 'stream' (or 'auto'): "
                             "the in-memory path holds images of one fixed size")
        return "memory"
    if requested == "stream":
        return "stream"
    if in_memory:
        return "stream" if crop == "resized" else "memory"
    if crop == "resized" or image_size is None:
        return "stream"
    return "memory" if num_images * 3 * image_size * image_size <= limit_bytes else "stream"
