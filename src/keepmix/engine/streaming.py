"""The recipe's side of the streaming input path (:mod:`keepmix.data.stream`): which loader a run gets,
and the stream's training and evaluation sets built from ``data.*``.

``data.loader`` — ``memory`` (:class:`~keepmix.data.DeviceLoader`: the whole set on the device),
``stream`` (:class:`~keepmix.data.StreamLoader`: ``DataLoader`` workers decode and crop), or ``auto``
(:func:`resolve_loader`): sets held in memory (SalientShapes, CIFAR) stay there; a file-backed set
goes to the device when its decoded size ``N · 3 · S²`` is at most ``data.memory_limit_gb`` and it
needs no random-resized crop, else it streams.

``data.crop`` — ``pad`` (pad by ``crop_padding`` and crop back, flip: the CIFAR augmentation, on the
device) or ``resized`` (random-resized crop with ``crop_scale``/``crop_ratio`` and flip, in the
workers; evaluation resizes the shorter side to ``eval_resize`` — default S/0.875 — and keeps the
central S×S); ``auto`` = ``pad`` in memory, ``resized`` when streaming. The crop size S is
``data.image_size``. ``data.workers`` worker processes per rank (default: the CPUs this process may
use, split over the local ranks, at most 8) — a runtime field: batches do not depend on it.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional

import torch

from .distributed import Distributed

__all__ = ["IN_MEMORY_SETS", "resolve_loader", "resolve_crop", "default_workers", "stream_sets", "build_stream"]

#: registered data sets that load into memory whole (the rest are read from files)
IN_MEMORY_SETS = ("salient_shapes", "cifar10", "cifar100")


def _listing(spec, split: str):
    """One split of the recipe's set as :func:`keepmix.data.load_dataset` lists it (files not decoded)."""
    from ..data import canonical_name, load_dataset
    options = dict(spec.kwargs)
    try:
        return load_dataset(spec.name, spec.root, split, download=spec.download, **options)
    except FileNotFoundError as error:
        if canonical_name(spec.name) == "imagefolder" and split == spec.eval_split and spec.val_fraction is None:
            raise FileNotFoundError(f"{error}. Without a {split!r} folder, hold out part of the training images for "
                                    "evaluation: --set data.val_fraction=0.1") from None
        raise


def resolve_loader(spec, cache: Optional[Dict[str, Any]] = None) -> str:
    """``"memory"`` or ``"stream"`` for the recipe's ``data`` section (see the module docstring).

    Decides without reading a file for in-memory sets and explicit choices; for a file-backed set
    under ``auto`` it lists the training split (kept in ``cache`` for the stream to reuse).
    """
    from ..data import canonical_name, choose_loader
    name = canonical_name(spec.name)
    in_memory = name in IN_MEMORY_SETS
    if spec.loader != "auto" or in_memory:
        return choose_loader(spec.loader, in_memory=in_memory, num_images=0, image_size=spec.image_size,
                             crop=spec.crop, limit_bytes=spec.memory_limit_gb * 2 ** 30)
    if spec.crop == "resized" or spec.image_size is None:
        return "stream"
    loaded = _cached(spec, spec.train_split, cache)
    return choose_loader("auto", in_memory=False, num_images=len(loaded), image_size=spec.image_size,
                         crop=spec.crop, limit_bytes=spec.memory_limit_gb * 2 ** 30)


def resolve_crop(spec, loader: str) -> str:
    """``data.crop: auto`` → ``pad`` on the in-memory path, ``resized`` when streaming."""
    if spec.crop != "auto":
        return spec.crop
    return "resized" if loader == "stream" else "pad"


def default_workers(job: Optional[Distributed] = None) -> int:
    """Worker processes per rank when ``data.workers`` is null: the usable CPUs over the local ranks, 1…8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, cpus // max(1, local)))


def _cached(spec, split: str, cache: Optional[Dict[str, Any]]):
    if cache is None:
        return _listing(spec, split)
    key = repr(("listing", spec.name, spec.root, spec.download, spec.kwargs, split))
    if key not in cache:
        cache[key] = _listing(spec, split)
    return cache[key]


def stream_sets(spec, subset: Callable[..., Optional[torch.Tensor]], cache: Optional[Dict[str, Any]] = None,
                *, eval_only: bool = False, eval_split: Optional[str] = None):
    """``(train listing, train indices, eval listing, eval indices, description)`` for the stream.

    The same selection as the in-memory path's ``load_sets``: the ``eval_split`` or a stratified
    ``val_fraction`` held out of the training split, then the ``fraction``/``train_size`` and
    ``eval_size`` subsets (``subset`` is the engine's subset rule, seeded by ``subset_seed``).
    ``eval_split`` overrides the recipe's (the whole split, no ``eval_size`` subset: ``keepmix eval
    --split``). Indices are int64 positions in the listings; nothing is decoded.
    """
    train = train_idx = None
    if eval_split is not None:
        evaluation = _cached(spec, eval_split, cache)
        return None, None, evaluation, torch.arange(len(evaluation)), evaluation
    if spec.val_fraction is not None:
        from ..data import train_val_split
        train = _cached(spec, spec.train_split, cache)
        train_idx, eval_idx = train_val_split(train.labels, spec.val_fraction,
                                              torch.Generator().manual_seed(spec.subset_seed),
                                              num_classes=train.num_classes)
        evaluation = train
    else:
        evaluation = _cached(spec, spec.eval_split, cache)
        eval_idx = torch.arange(len(evaluation))
        if not eval_only:
            train = _cached(spec, spec.train_split, cache)
            train_idx = torch.arange(len(train))
    described = train if train is not None else evaluation
    if not eval_only:
        picked = subset(train.labels[train_idx], described.num_classes, spec.train_size, spec.fraction,
                        spec.subset_seed, "data.train_size")
        if picked is not None:
            train_idx = train_idx[picked]
    picked = subset(evaluation.labels[eval_idx], described.num_classes, spec.eval_size, None,
                    spec.subset_seed + 17, "data.eval_size")
    if picked is not None:
        eval_idx = eval_idx[picked]
    return train, train_idx, evaluation, eval_idx, described


def _size(spec, loaded) -> int:
    if spec.image_size is not None:
        return int(spec.image_size)
    if loaded.image_size is not None and loaded.image_size[0] == loaded.image_size[1]:
        return int(loaded.image_size[0])
    raise ValueError(f"data.image_size is needed to stream {spec.name!r}: the crop size the workers produce")


def build_stream(config, device: torch.device, job: Distributed, *, raw: bool,
                 subset: Callable[..., Optional[torch.Tensor]], cache: Optional[Dict[str, Any]] = None
                 ) -> Dict[str, Any]:
    """The training :class:`~keepmix.data.StreamLoader` and evaluation :class:`~keepmix.data.EvalStream` of a
    recipe, with what the engine's ``RunData`` needs (a dict of its fields).

    ``optim.batch_size`` is the global batch, split evenly over ranks; the stream's seed is the
    in-memory loader's (``derive_seed(seed, 1)``), so a ``crop: pad`` stream of a set that also fits
    in memory gives the in-memory path's batches.
    """
    from ..data import EvalStream, SampleTransform, StreamDataset, StreamLoader, derive_seed, normalize
    spec = config.data
    train, train_idx, evaluation, eval_idx, loaded = stream_sets(spec, subset, cache)
    size = _size(spec, loaded)
    crop = resolve_crop(spec, "stream")
    batch = config.optim.batch_size
    if batch % job.world_size:
        raise ValueError(f"optim.batch_size {batch} must be divisible by the number of processes {job.world_size}")
    workers = spec.workers if spec.workers is not None else default_workers(job)
    mean, std = tuple(loaded.mean), tuple(loaded.std)
    seed = derive_seed(config.seed, 1)
    if crop == "resized":
        train_transform = SampleTransform("resized", size, scale=spec.crop_scale, ratio=spec.crop_ratio, flip=spec.flip,
                                          seed=seed)
        eval_transform = SampleTransform("center", size, resize=spec.eval_resize)
        padding, device_flip = 0, False
    else:
        train_transform = SampleTransform("whole", size, seed=seed)
        eval_transform = SampleTransform("whole", size)
        padding, device_flip = spec.crop_padding, spec.flip
    train_set = StreamDataset(train.dataset, train_transform, train_idx, labels=train.labels)
    loader = StreamLoader(train_set, batch // job.world_size, device=device, seed=seed, num_workers=workers,
                          rank=job.rank, world_size=job.world_size, mean=None if raw else mean,
                          std=None if raw else std, crop_padding=padding, flip=device_flip)
    eval_set = StreamDataset(evaluation.dataset, eval_transform, eval_idx, labels=evaluation.labels)
    eval_stream = EvalStream(eval_set, spec.eval_batch_size or batch, device=device, num_workers=workers,
                             rank=job.rank, world_size=job.world_size, mean=mean, std=std)

    def to_model_input(x: torch.Tensor) -> torch.Tensor:
        return normalize(x, mean, std)

    return {"train": loader, "eval_batches": eval_stream, "normalize": to_model_input if raw else None,
            "num_classes": loaded.num_classes, "mean": mean, "std": std, "train_size": len(train_set),
            "eval_size": len(eval_set), "class_names": list(loaded.class_names), "image_size": (size, size)}


def eval_stream(config, split: Optional[str], device: torch.device, batch_size: int,
                subset: Callable[..., Optional[torch.Tensor]], job: Optional[Distributed] = None):
    """``keepmix eval`` of a streamed run: ``(batches, count, split size, listing)`` — the run's own
    evaluation set (``split`` None) or a whole split, resized and centre-cropped (or resized whole
    for ``crop: pad``) by the workers as during training."""
    from ..data import EvalStream, SampleTransform, StreamDataset
    spec = config.data
    job = job or Distributed()
    _, _, evaluation, eval_idx, loaded = stream_sets(spec, subset, None, eval_only=True, eval_split=split)
    size = _size(spec, loaded)
    if resolve_crop(spec, "stream") == "resized":
        transform = SampleTransform("center", size, resize=spec.eval_resize)
    else:
        transform = SampleTransform("whole", size)
    workers = spec.workers if spec.workers is not None else default_workers(job)
    eval_set = StreamDataset(evaluation.dataset, transform, eval_idx, labels=evaluation.labels)
    batches = EvalStream(eval_set, batch_size, device=device, num_workers=workers, rank=job.rank,
                         world_size=job.world_size, mean=tuple(loaded.mean), std=tuple(loaded.std))
    return batches, len(eval_set), len(evaluation), loaded
