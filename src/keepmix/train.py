"""The training engine: one step reads top-down, batch → saliency → augmentation or mix → loss → step.

.. code-block:: text

    images, labels  ← the device-resident loader (crop, flip on the device), or the stream for sets on
                      disk (DataLoader workers decode and crop; keepmix.data.stream, data.loader)
    images, targets ← raw-space ops (image-level policies), normalise, then the other ops in order;
                      ops that need saliency compute it inside, on the unwrapped model
    logits          ← model(images)            (AMP autocast, channels_last, torch.compile if chosen)
    loss            ← soft-target cross-entropy(logits, targets) [+ early-head auxiliary loss]
    step            ← backward, SGD (momentum, Nesterov, weight decay), the schedule's lr for this step

Any :class:`~keepmix.protocol.Op` or composition works, because the engine only relies on the
protocol ``op(images, targets) -> (images, targets)``; class-index and soft targets both go to
:func:`keepmix.losses.soft_target_cross_entropy` (equal to cross-entropy on class indices).

**Saliency memory.** When an op reads ``saliency: memory`` (or ``pairing: memory``) the run keeps a
:class:`keepmix.memory.SaliencyMemory` of the training set. Each step binds the batch's geometry
(``batch.geometry``: indices, crops, flips) while the ops run, follows each pixel's ownership
through them (:attr:`Augmentation.track_own`), makes the model's input a leaf that requires grad,
and after the step's backward hands its gradient to the memory — no extra forward or backward, no
host sync, parameter gradients bit-identical to a step without it. Metrics gain ``memory.fallback``
(share of maps read that came from the fallback), ``memory.age`` and ``memory.written``; the
memory is all-gathered under DDP and saved in the checkpoint.

What one run writes under ``runs/<name>/``: ``config.yaml``; ``metrics.csv`` (one row per epoch:
epoch, step, lr, train loss/accuracy, eval loss/top-1/top-5, seconds, and every op's fidelity
statistics — fallback rate and count, λ mean, share of saliency kept); ``checkpoint.pt`` (written
atomically every epoch, with a SHA-256 of its payload) and ``checkpoint.prev.pt`` (the epoch
before); ``curves.png``; ``train.log`` (the epoch lines, as printed); TensorBoard events when
``tensorboard`` is installed. Checkpoint and
folder I/O lives in :mod:`keepmix.engine.checkpoint`: checkpoints hold only tensors and plain
data and are opened with ``weights_only=True``, so opening a shared run never runs its code.

**Before any work.** Ops of every arm are built once against a stand-in model
(:func:`validate_build`), the output folder is checked (:func:`~keepmix.engine.checkpoint.check_output_dir`),
a resume is checked against every checkpoint it would continue, and only then is anything
written: the folder is created and locked (one writer at a time), stale temporary files of a
killed run are removed, and a checkpoint-sized file is reserved to prove the disk can hold it.
A refused resume leaves the run folder byte-identical; a run refused before training leaves no folder.

**Exact resume.** The checkpoint holds the model, early head, optimiser, AMP scaler, epoch and
step, the metrics so far, and every random state: torch CPU and CUDA, Python, NumPy (as plain
data), each op's generator and the loader's state. A run stopped after epoch k and resumed ends
bit-identical (on CPU) to one that never stopped. The learning rate is a pure function of the
step, so the schedule needs no state of its own. Resuming a run folder whose ``checkpoint.pt``
is missing or damaged continues from ``checkpoint.prev.pt`` with a warning.

**Distributed.** Under ``torchrun`` every rank trains on its shard of each epoch (gloo on CPU,
NCCL on CUDA). Saliency uses the unwrapped model, pairing stays within each rank's batch, and the
metrics are summed across ranks before they are logged. ``optim.batch_size`` is the global batch.
Collectives time out after ``dist_timeout`` seconds with a message naming the rank that stopped,
and BatchNorm running statistics are averaged over ranks before every evaluation and checkpoint
(:mod:`keepmix.engine.distributed`), so the printed evaluation is that of the saved model.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn

from .engine.checkpoint import (CHECKPOINT_NAME, CHECKPOINT_VERSION, PREVIOUS_NAME, CheckpointError,
                                CheckpointFallbackWarning, RunLock, atomic_write,
                                check_output_dir, ensure_space, load_checkpoint, make_run_dir, read_checkpoint,
                                remove_if_empty, remove_stale_temps, save_checkpoint)
from .engine.distributed import (Distributed, DistributedError, all_reduce_sum, collective_errors, init_distributed,
                                 sync_buffers)
from .losses import soft_target_cross_entropy
from .recipes import (BuildContext, DataConfig, OptimConfig, TrainConfig, build_model_from_config, build_ops,
                      config_from_dict, config_to_dict, config_to_yaml, expand_arms, memory_reduce, op_space,
                      uses_early_head, uses_memory)


# --------------------------------------------------------------------------- devices


def resolve_device(name: str, job: Distributed) -> torch.device:
    """``auto`` → ``cuda:<local rank>`` when CUDA is available, else CPU; ``cuda`` gets the local rank too."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was requested but CUDA is not available")
        return torch.device("cuda", job.local_rank)
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was requested but CUDA is not available")
    return device


# --------------------------------------------------------------------------- schedule and optimiser


def learning_rate(step: int, steps_per_epoch: int, optim: OptimConfig) -> float:
    """The learning rate of optimiser step ``step`` (0-based).

    With ``W = round(warmup_epochs · steps_per_epoch)`` warm-up steps and ``T = epochs ·
    steps_per_epoch`` steps in all:

    * warm-up (``step < W``): ``lr · (step + 1) / W``;
    * cosine: ``min_lr + (lr − min_lr) · (1 + cos(π t)) / 2`` with ``t = (step − W) / (T − W)``;
    * multistep: ``lr · gamma^m``, m = number of milestones ≤ the epoch ``⌊step / steps_per_epoch⌋``;
    * constant: ``lr``.

    With ``optim.base_batch_size`` set, ``lr`` and ``min_lr`` are first multiplied by
    ``batch_size / base_batch_size`` (the linear scaling rule; :attr:`OptimConfig.lr_scale`).
    """
    total = optim.epochs * steps_per_epoch
    warmup = int(round(optim.warmup_epochs * steps_per_epoch))
    lr, min_lr = optim.lr * optim.lr_scale, optim.min_lr * optim.lr_scale
    if step < warmup:
        return lr * (step + 1) / warmup
    if optim.schedule == "cosine":
        t = (step - warmup) / max(1, total - warmup)
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
    if optim.schedule == "multistep":
        epoch = step // steps_per_epoch
        return lr * optim.gamma ** sum(1 for m in optim.milestones if epoch >= m)
    return lr


def build_optimizer(params: Iterable[nn.Parameter], optim: OptimConfig) -> torch.optim.SGD:
    """SGD with momentum, Nesterov and weight decay on every parameter (as the papers train)."""
    return torch.optim.SGD(list(params), lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov,
                           weight_decay=optim.weight_decay)


# --------------------------------------------------------------------------- op statistics


class OpStats:
    """Per-epoch means of the ops' ``last_stats``, accumulated on the device (read once per epoch).

    Floating-point and boolean statistics are averaged over samples (a boolean mean is a rate);
    boolean ones also get ``<stat>_count``. Integer statistics (box centres, op indices) are
    bookkeeping, not fidelity, and are skipped.
    """

    def __init__(self):
        self.sums: Dict[str, torch.Tensor] = {}
        self.counts: Dict[str, int] = {}
        self.bool_keys: set = set()

    def add(self, op_name: str, stats: Dict[str, torch.Tensor]) -> None:
        for key in stats:
            if key == "own":  # a per-pixel ownership map for the saliency memory, not a statistic
                continue
            value = stats[key]
            if not isinstance(value, torch.Tensor) or not (value.is_floating_point() or value.dtype == torch.bool):
                continue
            name = f"{op_name}.{key}"
            total = value.detach().float().sum()
            self.sums[name] = self.sums[name] + total.to(self.sums[name].device) if name in self.sums else total
            self.counts[name] = self.counts.get(name, 0) + value.numel()
            if value.dtype == torch.bool:
                self.bool_keys.add(name)

    def summary(self, job: Distributed, device: torch.device) -> Dict[str, float]:
        """Means (and boolean counts) over the epoch, summed over ranks; one device read."""
        names = sorted(self.sums)
        if job.enabled:  # every rank must reduce the same vector: agree on the union of names first
            gathered: List[Any] = [None] * job.world_size
            dist.all_gather_object(gathered, (names, sorted(self.bool_keys)))
            names = sorted({n for rank_names, _ in gathered for n in rank_names})
            self.bool_keys.update(k for _, keys in gathered for k in keys)
        if not names:
            return {}
        zero = torch.zeros((), device=device)
        sums = torch.stack([self.sums[n].to(device) if n in self.sums else zero for n in names])
        counts = torch.tensor([float(self.counts.get(n, 0)) for n in names], device=device)
        both = all_reduce_sum(torch.stack([sums, counts]), job).cpu()
        out = {}
        for i, name in enumerate(names):
            total, count = float(both[0, i]), float(both[1, i])
            out[name] = total / count if count else math.nan
            if name in self.bool_keys:
                out[name + "_count"] = total
        return out


# --------------------------------------------------------------------------- random state


def capture_rng(generators: Dict[str, torch.Generator]) -> Dict[str, Any]:
    """Every random state of this process: torch CPU/CUDA, Python, NumPy and the op generators.

    Tensors and plain Python data only (NumPy's state as a dict with an int64 tensor of keys),
    so a checkpoint holding it loads with ``torch.load(weights_only=True)``.
    """
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "generators": {path: g.get_state() for path, g in generators.items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {"bit_generator": str(name), "keys": torch.from_numpy(keys.astype("int64")),
                          "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    return state


def restore_rng(state: Dict[str, Any], generators: Dict[str, torch.Generator]) -> None:
    """Inverse of :func:`capture_rng` (the op generators must have the same paths)."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np
        saved_np = state["numpy"]
        if isinstance(saved_np, dict):  # plain data (checkpoint version 2)
            saved_np = (saved_np["bit_generator"], np.asarray(saved_np["keys"].numpy(), dtype=np.uint32),
                        saved_np["pos"], saved_np["has_gauss"], saved_np["cached_gaussian"])
        np.random.set_state(saved_np)
    saved = state.get("generators", {})
    if set(saved) != set(generators):
        raise ValueError(f"the checkpoint's op generators {sorted(saved)} do not match this run's "
                         f"{sorted(generators)}: the ops differ from the checkpointed run")
    for path, generator in generators.items():
        generator.set_state(saved[path])


# --------------------------------------------------------------------------- metrics


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> torch.Tensor:
    """Counts of samples whose label is among the top-k logits, one per k (float32 tensor, on device).

    k is capped at the number of classes (top-5 of a 3-class problem counts every sample).
    """
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top.eq(labels.view(-1, 1))
    return torch.stack([hit[:, :min(k, kmax)].any(dim=1).float().sum() for k in ks])


def _hard_labels(targets: torch.Tensor) -> torch.Tensor:
    return targets.argmax(dim=1) if targets.ndim == 2 else targets


@contextlib.contextmanager
def _no_context():
    yield


def autocast_context(device: torch.device, amp: str):
    """``torch.autocast`` for ``amp`` ∈ {bf16, fp16} on the device type; a no-op for ``none``."""
    if amp == "none":
        return _no_context()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]], *, device: torch.device,
             amp: str = "none", channels_last: bool = False, job: Optional[Distributed] = None) -> Dict[str, float]:
    """Top-1, top-5 (percent) and mean cross-entropy of ``model`` over ``batches`` (normalised images).

    The model runs in eval mode and is put back in the mode it was in. Sums are reduced over
    ranks, so every rank gets the metrics of the whole evaluation set.
    """
    job = job or Distributed()
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, device=device)  # loss sum, top-1, top-5, count
    try:
        for images, labels in batches:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast_context(device, amp):
                logits = model(images)
            logits = logits.float()
            loss = nn.functional.cross_entropy(logits, labels, reduction="sum")
            sums += torch.cat([loss.view(1), topk_correct(logits, labels), torch.ones(1, device=device)
                               * labels.shape[0]])
    finally:
        model.train(was_training)
    total = all_reduce_sum(sums, job).cpu()
    count = float(total[3])
    if count == 0:
        raise ValueError("evaluate got no samples")
    return {"loss": float(total[0]) / count, "top1": 100.0 * float(total[1]) / count,
            "top5": 100.0 * float(total[2]) / count, "count": count}


# --------------------------------------------------------------------------- the network being trained


class TrainNet(nn.Module):
    """The model plus the optional early head, so one DDP wrapper syncs both.

    ``forward(images, targets) -> (logits, auxiliary loss or None)``; the early head reads the
    first block's output that its hook kept during the model's forward.
    """

    def __init__(self, model: nn.Module, early_head: Optional[nn.Module] = None,
                 forward_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        super().__init__()
        self.model = model
        self.early_head = early_head
        object.__setattr__(self, "_forward_fn", forward_fn or model)  # a compiled view shares the parameters

    def forward(self, images: torch.Tensor, targets: torch.Tensor):
        logits = self._forward_fn(images)
        aux = self.early_head.loss(targets) if self.early_head is not None else None
        return logits, aux


# --------------------------------------------------------------------------- augmentation pipeline


class Augmentation:
    """The run's ops in order: raw-space ops (on pixels), normalisation, then the normalised-space ops.

    ``normalize`` maps the loader's raw batch to the model's input; ops are called as
    ``op(images, targets)`` and their ``last_stats`` go to :class:`OpStats` under their names.
    """

    def __init__(self, ops: Sequence[Any], names: Sequence[str], normalize: Callable[[torch.Tensor], torch.Tensor]):
        spaces = [op_space(op) for op in ops]
        first_normalized = next((i for i, s in enumerate(spaces) if s == "normalized"), len(ops))
        late_raw = [names[i] for i in range(first_normalized, len(ops)) if spaces[i] == "raw"]
        if late_raw:
            raise ValueError(f"ops {late_raw} work on un-normalised pixels (image-level policies) and must come "
                             "before every op that works on normalised images")
        self.raw = list(zip(names[:first_normalized], ops[:first_normalized]))
        self.normalized = list(zip(names[first_normalized:], ops[first_normalized:]))
        self.normalize = normalize
        self.stats = OpStats()
        #: follow each pixel's ownership through the ops (for the saliency memory): ``last_own`` after a call
        self.track_own = False
        self.last_own: Optional[torch.Tensor] = None

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        own = None
        for name, op in self.raw:
            before = images
            images, targets = op(images, targets)
            self.stats.add(name, getattr(op, "last_stats", {}) or {})
            own = self._owned(own, op, before, images)
        images = self.normalize(images)
        for name, op in self.normalized:
            before = images
            images, targets = op(images, targets)
            self.stats.add(name, getattr(op, "last_stats", {}) or {})
            own = self._owned(own, op, before, images)
        self.last_own = own
        return images, targets

    def _owned(self, own, op, before: torch.Tensor, after: torch.Tensor):
        if not self.track_own:
            return None
        from .memory import combine_ownership, ownership
        return combine_ownership(own, ownership(op, before, after))

    def views(self, images: torch.Tensor, targets: torch.Tensor, count: int = 2):
        """AugMix's consistency inputs: ``(clean, [view_1, …, view_count])``, all normalised.

        The clean batch is only normalised; each view is an independent pass of the ops. Only
        label-preserving ops make sense here (the views must share the clean image's label).
        """
        clean = self.normalize(images)
        outputs = []
        for _ in range(count):
            view, view_targets = self(images, targets)
            if view_targets is not targets:
                raise ValueError("jsd_weight needs label-preserving ops (AugMix, policies, erasing); "
                                 "an op changed the targets")
            outputs.append(view)
        return clean, outputs


def op_display_names(specs: Sequence[Dict[str, Any]]) -> List[str]:
    """Unique names for the ops of a recipe: their ``name`` (``_2``, ``_3``… for repeats)."""
    names: List[str] = []
    for spec in specs:
        base = str(spec["name"])
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


# --------------------------------------------------------------------------- data


@dataclass
class RunData:
    """The data of a run, ready on the device."""

    train: Any                    # iterable of (images, labels) batches with __len__, state_dict, load_state_dict
    eval_batches: Callable[[], Iterator[Tuple[torch.Tensor, torch.Tensor]]]
    normalize: Callable[[torch.Tensor], torch.Tensor]
    num_classes: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    train_size: int
    eval_size: int
    class_names: List[str] = field(default_factory=list)
    image_size: Optional[Tuple[int, int]] = None  # (H, W) of the stored training images


def _data_module():
    try:
        from . import data as data_module
        data_module.load_dataset, data_module.DeviceLoader, data_module.normalize  # noqa: B018
    except (ImportError, AttributeError) as error:  # pragma: no cover - the package ships keepmix.data
        raise RuntimeError(f"keepmix.data does not provide load_dataset, DeviceLoader and normalize ({error})") from None
    return data_module


def load_split(config: DataConfig, split: str):
    """One split of the recipe's data set as uint8 images N×C×H×W and int64 labels, plus its description.

    In-memory sets come back as they are; file-backed ones are decoded at ``data.image_size``
    (required for them, so every image has one size and the set can live on the device).
    """
    data = _data_module()
    options = dict(config.kwargs)
    if config.image_size is not None:
        options.setdefault("image_size", config.image_size)
    loaded = data.load_dataset(config.name, config.root, split, download=config.download, **options)
    if loaded.images is not None:
        images, labels = loaded.images, loaded.labels
    else:
        if not hasattr(loaded.dataset, "to_tensors") or getattr(loaded.dataset, "image_size", None) is None:
            raise ValueError(f"data set {config.name!r} is read from files: set data.image_size so its images "
                             "can be decoded to one size and kept on the device")
        images, labels = loaded.dataset.to_tensors()
    return images, labels.long(), loaded


def _subset(labels: torch.Tensor, num_classes: int, size: Optional[int], fraction: Optional[float],
            seed: int, what: str) -> Optional[torch.Tensor]:
    from .data import stratified_subset
    if fraction is not None:
        return stratified_subset(labels, fraction=fraction, generator=torch.Generator().manual_seed(seed),
                                 num_classes=None)
    if size is not None and size < labels.shape[0]:
        per_class = size // num_classes
        if per_class < 1:
            raise ValueError(f"{what} {size} is smaller than the number of classes ({num_classes})")
        return stratified_subset(labels, per_class=per_class, generator=torch.Generator().manual_seed(seed + 1))
    return None


class ShardedLoader:
    """Rank ``r``'s share of every global batch of a :class:`keepmix.data.DeviceLoader`.

    All ranks draw the same epoch order (same loader seed); global batch ``b`` holds
    ``order[b·G:(b+1)·G]`` and rank r takes its r-th slice of ``G / world`` samples, augmented
    with the loader's stream for batch ``b·world + r``. Incomplete global batches are dropped.
    ``state_dict`` (seed, epoch, next batch) resumes exactly, like the loader's own.
    """

    def __init__(self, loader, rank: int, world_size: int):
        self.loader = loader
        self.rank, self.world_size = rank, world_size
        self.global_batch = loader.batch_size * world_size
        self.epoch = 0
        self.batch_index = 0

    def __len__(self) -> int:
        return self.loader.num_samples // self.global_batch

    def __iter__(self):
        batches = len(self)
        if self.batch_index >= batches:
            self.epoch += 1
            self.batch_index = 0
        if batches == 0:
            return
        epoch = self.epoch
        host_order = self.loader.epoch_order_host(epoch)
        order = host_order.to(self.loader.device, non_blocking=True)
        share = self.loader.batch_size
        while self.batch_index < batches:
            b = self.batch_index
            start = b * self.global_batch + self.rank * share
            self.batch_index = b + 1
            yield self.loader.make_batch(order[start:start + share], epoch, b * self.world_size + self.rank,
                                         host_order[start:start + share])
        self.epoch += 1
        self.batch_index = 0

    def state_dict(self) -> Dict[str, int]:
        return {"seed": self.loader.seed, "epoch": self.epoch, "batch_index": self.batch_index,
                "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        if int(state["world_size"]) != self.world_size or int(state["rank"]) != self.rank:
            raise ValueError("the loader state belongs to another rank layout")
        self.loader.seed, self.epoch, self.batch_index = int(state["seed"]), int(state["epoch"]), int(state["batch_index"])


def _eval_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, normalize: Callable,
                  job: Distributed) -> Callable[[], Iterator[Tuple[torch.Tensor, torch.Tensor]]]:
    """Contiguous shard per rank, un-augmented batches, normalised on the device."""
    n = images.shape[0]
    lo, hi = n * job.rank // job.world_size, n * (job.rank + 1) // job.world_size

    def batches():
        for start in range(lo, hi, batch_size):
            stop = min(start + batch_size, hi)
            yield normalize(images[start:stop]), labels[start:stop]
    return batches


def load_sets(spec: DataConfig, cache: Optional[Dict[str, Any]] = None, *, eval_only: bool = False):
    """The training and evaluation sets of a recipe: ``(train images, labels, eval images, labels, description)``.

    The evaluation set is the ``eval_split`` or, with ``val_fraction``, a stratified part held out
    of the training split; then ``fraction``/``train_size`` and ``eval_size`` subsets are taken
    (seeded by ``subset_seed``). ``eval_only`` skips the training set when it is not needed
    (its entries are then ``None``).
    """
    def split_data(split: str):
        if cache is None:
            return load_split(spec, split)
        key = repr((spec.name, spec.root, spec.download, spec.kwargs, spec.image_size, split))
        if key not in cache:
            cache[key] = load_split(spec, split)
        return cache[key]

    images = labels = None
    if spec.val_fraction is not None:
        from .data import train_val_split
        images, labels, loaded = split_data(spec.train_split)
        train_idx, val_idx = train_val_split(labels, spec.val_fraction,
                                             torch.Generator().manual_seed(spec.subset_seed),
                                             num_classes=loaded.num_classes)
        eval_images, eval_labels = images[val_idx], labels[val_idx]
        images, labels = images[train_idx], labels[train_idx]
    else:
        eval_images, eval_labels, loaded = split_data(spec.eval_split)
        if not eval_only:
            images, labels, loaded = split_data(spec.train_split)
    num_classes = loaded.num_classes
    if not eval_only:
        picked = _subset(labels, num_classes, spec.train_size, spec.fraction, spec.subset_seed, "data.train_size")
        if picked is not None:
            images, labels = images[picked], labels[picked]
    picked = _subset(eval_labels, num_classes, spec.eval_size, None, spec.subset_seed + 17, "data.eval_size")
    if picked is not None:
        eval_images, eval_labels = eval_images[picked], eval_labels[picked]
    return images, labels, eval_images, eval_labels, loaded


def prepare_data(config: TrainConfig, device: torch.device, job: Distributed, *, raw: bool,
                 cache: Optional[Dict[str, Any]] = None) -> RunData:
    """Load the recipe's data, take its subsets and split, and put both sets on the device.

    The training loader crops, flips and (unless ``raw``) normalises on the device; with
    ``raw`` it delivers pixels in [0, 1] and :attr:`RunData.normalize` finishes the job after the
    image-level ops. ``optim.batch_size`` is split evenly across ranks; the last incomplete
    batch of an epoch is dropped (a batch of one would break BatchNorm and pairing). ``cache``
    (a dict shared by the arms of a comparison) keeps loaded splits so they are read once.
    When ``data.loader`` resolves to ``stream`` the sets stay on disk and DataLoader workers decode
    and crop them (:mod:`keepmix.engine.streaming`, :class:`keepmix.data.StreamLoader`).
    """
    data = _data_module()
    spec = config.data
    from .engine.streaming import build_stream, resolve_loader
    if resolve_loader(spec, cache) == "stream":  # DataLoader workers decode and crop (keepmix.data.stream)
        fields = build_stream(config, device, job, raw=raw, subset=_subset, cache=cache)
        fields["normalize"] = fields["normalize"] or _identity
        return RunData(**fields)
    images, labels, eval_images, eval_labels, loaded = load_sets(spec, cache)
    mean, std = tuple(loaded.mean), tuple(loaded.std)

    batch = config.optim.batch_size
    if batch % job.world_size:
        raise ValueError(f"optim.batch_size {batch} must be divisible by the number of processes {job.world_size}")
    loader = data.DeviceLoader(images, labels, batch_size=batch // job.world_size, shuffle=True, drop_last=True,
                               generator=torch.Generator().manual_seed(data.derive_seed(config.seed, 1)),
                               device=device, mean=None if raw else mean, std=None if raw else std,
                               augment=spec.crop_padding > 0 or spec.flip, crop_padding=spec.crop_padding,
                               flip=spec.flip)
    train = ShardedLoader(loader, job.rank, job.world_size) if job.enabled else loader
    return device_run_data(train, images, labels, eval_images, eval_labels, loaded, config, device, job, raw=raw)


def device_run_data(train, images: torch.Tensor, labels: torch.Tensor, eval_images: torch.Tensor,
                    eval_labels: torch.Tensor, loaded, config: TrainConfig, device: torch.device, job: Distributed,
                    *, raw: bool) -> RunData:
    """The :class:`RunData` of a device-resident run around its training loader ``train``: the normaliser
    (``raw``: applied after the image-level ops), the evaluation batches on ``device`` and the set's facts.
    Shared by :func:`prepare_data` and the semi-supervised :func:`keepmix.engine.semi.prepare_semi_data`."""
    data = _data_module()
    mean, std = tuple(loaded.mean), tuple(loaded.std)

    def to_model_input(x: torch.Tensor) -> torch.Tensor:
        return data.normalize(x, mean, std)

    eval_images, eval_labels = eval_images.to(device), eval_labels.to(device)
    batch = config.data.eval_batch_size or config.optim.batch_size
    return RunData(train=train, normalize=to_model_input if raw else _identity,
                   eval_batches=_eval_batches(eval_images, eval_labels, batch, to_model_input, job),
                   num_classes=loaded.num_classes, mean=mean, std=std, train_size=int(labels.shape[0]),
                   eval_size=int(eval_labels.shape[0]), class_names=list(loaded.class_names),
                   image_size=(int(images.shape[-2]), int(images.shape[-1])))


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


# --------------------------------------------------------------------------- the trainer


class Trainer:
    """One training run of a :class:`TrainConfig` (no arms; see :func:`run`).

    Args:
        config: the run's config (``arms`` must be empty: expand them with :func:`expand_arms`).
        run_dir: output folder (default ``output_dir/name``).
        resume: continue from the checkpoint in ``run_dir`` (or this path).
        quiet: no per-epoch lines on stdout (they still go to ``train.log``); tqdm bars follow
            ``config.progress`` and appear only when stderr is a terminal.
        data: a :class:`RunData` to use instead of loading the config's data set (tests, notebooks);
            with image-level policies among the ops it must deliver raw pixels (see :func:`prepare_data`).
        data_cache: a dict shared between runs so that loaded splits are reused (the arms of a recipe).

    A config with ``semi.labels`` set builds a :class:`keepmix.engine.semi.SemiTrainer` (UDA) instead.
    """

    def __new__(cls, config: Optional[TrainConfig] = None, *args, **kwargs):
        if cls is Trainer and config is not None and config.semi.enabled:  # UDA: keepmix.engine.semi
            from .engine.semi import SemiTrainer
            cls = SemiTrainer
        return super().__new__(cls)

    def __init__(self, config: TrainConfig, *, run_dir: Optional[os.PathLike] = None,
                 resume: Optional[os.PathLike] = None, quiet: bool = False, data: Optional[RunData] = None,
                 data_cache: Optional[Dict[str, Any]] = None):
        if config.arms:
            raise ValueError("Trainer runs one arm; expand a recipe's arms with keepmix.recipes.expand_arms")
        self.config = config.validate()
        self.quiet = quiet
        probe = "cuda" if (config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available())) \
            else "cpu"
        self.job = init_distributed(probe, config.dist_timeout)
        self.device = resolve_device(config.device, self.job)
        if config.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("amp 'fp16' needs a CUDA device (use 'bf16' on CPU)")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.run_dir = Path(run_dir) if run_dir is not None else Path(config.output_dir) / config.name

        # model first, from the run's seed (identical on every rank)
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        self._build(data, data_cache)
        self.epoch = 0
        self.step = 0
        self.history: List[Dict[str, Any]] = []
        self.elapsed = 0.0
        self.resumed_from: Optional[Path] = None
        if resume is not None:
            self.load(resume)

    # ------------------------------------------------------------------ setup
    def _build(self, data: Optional[RunData], cache: Optional[Dict[str, Any]]) -> None:
        config = self.config
        # image-level policies need pixels: then the loader leaves normalisation to the pipeline
        raw_needed = any(_spec_has_policy(spec) for spec in config.ops)
        if data is None:
            data = prepare_data(config, self.device, self.job, raw=raw_needed, cache=cache)
        self.data = data
        self.num_classes = data.num_classes
        model = build_model_from_config(config.model, data.num_classes).to(self.device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.early_head = None

        def early_head():
            if self.early_head is None:
                from .saliency import EarlyHead
                self.early_head = EarlyHead(model, data.num_classes, weight=config.early_head_weight).to(self.device)
            return self.early_head

        self.memory = self._make_memory(data) if uses_memory(config.ops) else None
        if config.early_head or uses_early_head(config.ops) or \
                (self.memory is not None and config.memory.fallback == "early_head"):
            early_head()
        self.context = BuildContext(model=model, num_classes=data.num_classes, early_head=early_head,
                                    seed=config.seed + 1_000_003 * self.job.rank, device=self.device,
                                    mean=data.mean, std=data.std, memory=lambda: self.memory,
                                    memory_fallback=config.memory.fallback)
        ops = build_ops(config.ops, self.context)
        self.op_names = op_display_names(config.ops)
        self.augment = Augmentation(ops, self.op_names, data.normalize)
        self.augment.track_own = self.memory is not None
        forward_fn = torch.compile(model) if config.compile else None
        self.net = TrainNet(model, self.early_head, forward_fn)
        self.train_net: nn.Module = self.net
        if self.job.enabled:
            from torch.nn.parallel import DistributedDataParallel
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_net = DistributedDataParallel(self.net, device_ids=ids)
        self.optimizer = build_optimizer(self.net.parameters(), config.optim)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        steps = len(data.train)
        if config.max_steps_per_epoch is not None:
            steps = min(steps, config.max_steps_per_epoch)
        if steps < 1:
            raise ValueError(f"the training set ({data.train_size} images) gives no batch of "
                             f"{config.optim.batch_size}: lower optim.batch_size")
        self.steps_per_epoch = steps
        # augmentation randomness differs between ranks; model init above did not
        torch.manual_seed(config.seed + 7919 * (self.job.rank + 1))

    def _make_memory(self, data: RunData):
        """The run's saliency memory (ops read it with ``saliency: memory``): one map per training sample."""
        from .memory import SaliencyMemory
        size = data.image_size
        if size is None:  # a RunData made by hand: the loader's stored images tell
            loader = getattr(data.train, "loader", data.train)
            stored = getattr(loader, "images", None)
            if stored is None:
                raise ValueError("saliency: memory needs RunData.image_size (the stored images' H×W)")
            size = tuple(stored.shape[-2:])
        spec = self.config.memory
        reduce = memory_reduce(self.config.ops) if spec.reduce == "auto" else spec.reduce
        memory = SaliencyMemory(data.train_size, size, scale=spec.scale, dtype=spec.dtype, device=self.device,
                                reduce=reduce, min_own=spec.min_own)
        memory.distributed = self.job.enabled
        return memory

    # ------------------------------------------------------------------ one step
    def train_step(self, images: torch.Tensor, labels: torch.Tensor, geometry=None) -> torch.Tensor:
        """One optimiser step; returns device sums ``[loss·B, correct, B]`` (no host sync).

        ``geometry`` (the batch's :class:`keepmix.data.BatchGeometry`): with a saliency memory, the
        ops read it for these samples and the step's backward writes it — the model's input is made
        a leaf that requires grad, and after the backward its gradient goes to
        :meth:`keepmix.memory.SaliencyMemory.record_gradient` with the ops' pixel ownership. The
        parameters' gradients are those of a step without the memory, bit for bit.
        """
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, self.steps_per_epoch, self.config.optim)
        memory = self.memory if geometry is not None else None
        if self.config.jsd_weight > 0:
            return self._train_step_jsd(images, labels, memory, geometry)
        with self._reading(memory, geometry):
            images, targets = self.augment(images, labels)      # saliency happens inside the ops
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if memory is not None:
            images = images.detach().requires_grad_(True)
        with autocast_context(self.device, self.config.amp):
            logits, aux = self.train_net(images, targets)
        loss = soft_target_cross_entropy(logits, targets, self.config.label_smoothing)
        total = loss if aux is None else loss + aux
        sums = self._step(total, loss, logits, targets, labels.shape[0])
        if memory is not None:
            memory.record_gradient(geometry, images.grad, self.augment.last_own)
        return sums

    @contextlib.contextmanager
    def _reading(self, memory, geometry):
        """The memory bound to this batch while the ops run (they read it for these samples)."""
        if memory is None:
            yield
            return
        with memory.batch(geometry):
            yield

    def _train_step_jsd(self, images: torch.Tensor, labels: torch.Tensor, memory=None, geometry=None
                        ) -> torch.Tensor:
        """AugMix's step: clean + two augmented views in one forward; CE(clean) + λ·JS(clean, v1, v2).

        With a memory, the clean third of the batch (only normalised: every pixel owned) writes it.
        """
        from .policies import jensen_shannon_loss
        with self._reading(memory, geometry):
            clean, views = self.augment.views(images, labels, 2)
        batch = labels.shape[0]
        stacked = torch.cat([clean, *views])
        if self.config.channels_last:
            stacked = stacked.contiguous(memory_format=torch.channels_last)
        if memory is not None:
            stacked = stacked.detach().requires_grad_(True)
        with autocast_context(self.device, self.config.amp):
            logits_all, aux = self.train_net(stacked, labels.repeat(3))
        logits_all = logits_all.float()
        logits = logits_all[:batch]
        loss = soft_target_cross_entropy(logits, labels, self.config.label_smoothing)
        total = loss + self.config.jsd_weight * jensen_shannon_loss(logits, logits_all[batch:2 * batch],
                                                                    logits_all[2 * batch:])
        if aux is not None:
            total = total + aux
        sums = self._step(total, loss, logits, labels, batch)
        if memory is not None:
            memory.record_gradient(geometry, stacked.grad[:batch])
        return sums

    def _step(self, total: torch.Tensor, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
              batch: int) -> torch.Tensor:
        """Backward of ``total``, the optimiser step (AMP-scaled for fp16); device sums of the main loss."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        correct = logits.detach().argmax(dim=1).eq(_hard_labels(targets)).float().sum()
        return torch.stack([loss.detach().float() * batch, correct, torch.tensor(float(batch), device=correct.device)])

    def train_epoch(self) -> Dict[str, float]:
        """One epoch over the loader (capped at ``max_steps_per_epoch``); returns train metrics."""
        self.net.train()
        self.augment.stats = OpStats()
        if self.memory is not None:
            self.memory.set_epoch(self.epoch)
            self.memory.reset_counters()
        sums = torch.zeros(3, device=self.device)
        bar = None
        if self.config.progress and self.job.is_main and _is_terminal(sys.stderr):
            from tqdm.auto import tqdm
            bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {self.epoch + 1}/{self.config.optim.epochs}",
                       leave=False, dynamic_ncols=True, file=sys.stderr)
        for index, batch in enumerate(_take(self.data.train, self.steps_per_epoch)):
            images, labels = batch
            sums += self.train_step(images, labels, getattr(batch, "geometry", None))
            if bar is not None:
                bar.update(1)
                if (index + 1) % self.config.log_every == 0:
                    bar.set_postfix(loss=f"{float(sums[0] / sums[2]):.3f}")
        if bar is not None:
            bar.close()
        totals = all_reduce_sum(sums, self.job).cpu()
        stats = self.augment.stats.summary(self.job, self.device)
        if self.memory is not None:
            stats.update(self._memory_stats())
        count = float(totals[2])
        return {"train_loss": float(totals[0]) / count, "train_acc": 100.0 * float(totals[1]) / count, **stats}

    def _memory_stats(self) -> Dict[str, float]:
        """The epoch's memory columns: ``memory.fallback`` (share of the maps read that came from the
        fallback) and its count, ``memory.age`` (mean epochs since the maps read from memory were
        written) and ``memory.written`` (share of the training set written so far)."""
        counts = self.memory.counters()
        reads = all_reduce_sum(counts[:3], self.job).cpu()     # every rank reads its own samples
        written = float(counts[3])                               # the memory is the same on every rank
        from_memory = float(reads[0] - reads[1])
        return {"memory.fallback": float(reads[1] / reads[0]) if reads[0] > 0 else math.nan,
                "memory.fallback_count": float(reads[1]),
                "memory.age": float(reads[2]) / from_memory if from_memory > 0 else math.nan,
                "memory.written": written / self.memory.num_samples}

    # ------------------------------------------------------------------ the run
    def fit(self, stop_after_epoch: Optional[int] = None) -> Dict[str, Any]:
        """Train until ``optim.epochs`` (or until ``stop_after_epoch`` epochs are done); returns the summary.

        Before the first epoch the run folder is created, locked and shown to hold a checkpoint
        (see :meth:`_writing`). Raises :class:`~keepmix.engine.checkpoint.RunLockedError` (another
        writer), :class:`~keepmix.engine.checkpoint.RunDirError` (the folder cannot be created or
        cannot hold the checkpoints), :class:`~keepmix.engine.checkpoint.CheckpointError` (a save
        failed; the previous checkpoints are intact) and, under DDP,
        :class:`~keepmix.engine.distributed.DistributedError` (a collective timed out or a peer dropped).
        """
        config = self.config
        with self._writing(), collective_errors(self.job):
            if self.job.is_main:
                atomic_write(self.run_dir / "config.yaml", config_to_yaml(config))
                if self.epoch < config.optim.epochs and (stop_after_epoch is None or self.epoch < stop_after_epoch):
                    self._log(f"[{config.name}] " + (f"resumed from {self.resumed_from} after epoch {self.epoch}"
                                                     if self.resumed_from is not None else
                                                     f"started: {config.optim.epochs} epochs"))
            writer = self._tensorboard()
            while self.epoch < config.optim.epochs:
                if stop_after_epoch is not None and self.epoch >= stop_after_epoch:
                    break
                start = time.perf_counter()
                lr = learning_rate(self.step, self.steps_per_epoch, config.optim)
                row: Dict[str, Any] = {"epoch": self.epoch + 1, "step": None, "lr": lr}
                row.update(self.train_epoch())
                self.epoch += 1
                row["step"] = self.step
                sync_buffers(self.net, self.job)  # every rank evaluates, and saves, the same model
                last = self.epoch == config.optim.epochs
                if self.epoch % config.eval_every == 0 or last:
                    metrics = self.evaluate()
                    row.update({"val_loss": metrics["loss"], "val_top1": metrics["top1"],
                                "val_top5": metrics["top5"]})
                seconds = time.perf_counter() - start
                self.elapsed += seconds
                row["time"] = seconds
                self.history.append(row)
                self.save()
                if self.job.is_main:
                    self._write_metrics()
                    if writer is not None:
                        for key, value in row.items():
                            if key not in ("epoch", "step") and isinstance(value, float) and not math.isnan(value):
                                writer.add_scalar(key.replace(".", "/"), value, self.epoch)
                        writer.flush()
                    line = self._epoch_line(row)
                    self._log(line)
                    if not self.quiet:
                        print(line, flush=True)
            if writer is not None:
                writer.close()
            if self.job.is_main and self.history:
                from .viz import plot_curves
                plot_curves(self.history, self.run_dir / "curves.png", title=config.name)
        return self.summary()

    @contextlib.contextmanager
    def _writing(self):
        """Hold the run folder for the run: created, locked, cleaned and proved to hold a checkpoint.

        Only rank 0 writes; its verdict is shared so that every rank fails together before any
        work. A folder created here is removed again if the run stops before writing into it.
        """
        created: List[Path] = []
        lock = RunLock(self.run_dir)
        problem = None
        if self.job.is_main:
            try:
                created = make_run_dir(self.run_dir)
                lock.acquire()
                remove_stale_temps(self.run_dir)
                ensure_space(self.run_dir, self._checkpoint_bytes())
            except (OSError, RuntimeError, ValueError) as error:
                problem = error
        if self.job.enabled:
            verdict = [None if problem is None else f"rank 0: {problem}"]
            with collective_errors(self.job):
                dist.broadcast_object_list(verdict, src=0)
            if verdict[0] is not None and problem is None:
                problem = RuntimeError(verdict[0])
        try:
            if problem is not None:
                raise problem
            yield
        finally:
            lock.release()
            remove_if_empty(created)

    def _checkpoint_bytes(self) -> int:
        """About the size of a checkpoint: the model, head and optimiser state (momentum included), the
        saliency memory, plus 1 MB."""
        tensors = list(self.model.state_dict().values())
        if self.early_head is not None:
            tensors += list(self.early_head.state_dict().values())
        params = sum(p.numel() * p.element_size() for p in self.net.parameters())
        momentum = params if self.config.optim.momentum > 0 else 0
        memory = self.memory.nbytes + self.memory.num_samples if self.memory is not None else 0
        return sum(t.numel() * t.element_size() for t in tensors) + momentum + memory + (1 << 20)

    def evaluate(self) -> Dict[str, float]:
        return evaluate(self.model, self.data.eval_batches(), device=self.device, amp=self.config.amp,
                        channels_last=self.config.channels_last, job=self.job)

    def summary(self) -> Dict[str, Any]:
        evaluated = [r for r in self.history if r.get("val_top1") is not None]
        final = evaluated[-1] if evaluated else {}
        return {
            "name": self.config.name, "epochs": self.epoch, "steps": self.step,
            "val_top1": final.get("val_top1"), "val_top5": final.get("val_top5"), "val_loss": final.get("val_loss"),
            "best_val_top1": max((r["val_top1"] for r in evaluated), default=None),
            "train_loss": self.history[-1]["train_loss"] if self.history else None,
            "seconds": self.elapsed, "run_dir": str(self.run_dir),
            "metrics": str(self.run_dir / "metrics.csv"), "curves": str(self.run_dir / "curves.png"),
            "checkpoint": str(self.run_dir / "checkpoint.pt"), "finished": self.epoch >= self.config.optim.epochs,
        }

    def _epoch_line(self, row: Dict[str, Any]) -> str:
        parts = [f"[{self.config.name}] epoch {row['epoch']}/{self.config.optim.epochs}", f"lr {row['lr']:.4g}",
                 f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}%"]
        if row.get("val_top1") is not None:
            parts.append(f"eval loss {row['val_loss']:.4f} top-1 {row['val_top1']:.2f}% top-5 {row['val_top5']:.2f}%")
        parts.append(f"{row['time']:.1f}s")
        return "  ".join(parts)

    def _log(self, line: str) -> None:
        """Append a line to the run folder's ``train.log`` (rank 0; the epoch lines, also under ``--quiet``)."""
        with open(self.run_dir / LOG_NAME, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def _tensorboard(self):
        if not (self.config.tensorboard and self.job.is_main):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard is optional
            return None
        return SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def _write_metrics(self) -> None:
        columns: List[str] = []
        for row in self.history:
            for key in row:
                if key not in columns:
                    columns.append(key)
        fixed = ["epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_top1", "val_top5", "time"]
        columns = [c for c in fixed if c in columns] + sorted(c for c in columns if c not in fixed)
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(columns)
        for row in self.history:
            writer.writerow([_csv_cell(row.get(c)) for c in columns])
        atomic_write(self.run_dir / "metrics.csv", text.getvalue())

    # ------------------------------------------------------------------ checkpoints
    def _local_state(self) -> Dict[str, Any]:
        loader_state = self.data.train.state_dict() if hasattr(self.data.train, "state_dict") else None
        return {"rng": capture_rng(self.context.generators), "loader": loader_state}

    def state_dict(self) -> Dict[str, Any]:
        """The checkpoint payload (the per-rank states gathered on every rank)."""
        local = self._local_state()
        if self.job.enabled:
            gathered: List[Any] = [None] * self.job.world_size
            dist.all_gather_object(gathered, local)
        else:
            gathered = [local]
        return {
            "format": "keepmix-checkpoint", "version": CHECKPOINT_VERSION, "config": config_to_dict(self.config),
            "epoch": self.epoch, "step": self.step, "elapsed": self.elapsed, "history": list(self.history),
            "num_classes": self.num_classes, "mean": tuple(self.data.mean), "std": tuple(self.data.std),
            "class_names": list(self.data.class_names),
            "model": self.model.state_dict(),
            "early_head": self.early_head.state_dict() if self.early_head is not None else None,
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "world_size": self.job.world_size, "ranks": gathered,
            "memory": self.memory.state_dict() if self.memory is not None else None,
        }

    def save(self) -> Optional[Path]:
        """Write ``checkpoint.pt`` (rank 0; the previous one becomes ``checkpoint.prev.pt``)."""
        payload = self.state_dict()
        if self.job.is_main:
            return save_checkpoint(payload, self.run_dir / CHECKPOINT_NAME)
        return None

    def load(self, path: os.PathLike) -> None:
        """Restore everything from a checkpoint written by this config.

        ``path`` is a checkpoint file, or a run folder: then its ``checkpoint.pt``, or
        ``checkpoint.prev.pt`` with a :class:`~keepmix.engine.checkpoint.CheckpointFallbackWarning`
        when that one is missing or damaged. Nothing is written. Raises ``ValueError`` when the
        checkpoint cannot continue this config (see :func:`check_resumable`).
        """
        payload, self.resumed_from = read_checkpoint(path, map_location=self.device, fallback=True)
        check_resumable(payload, self.config, self.job.world_size, self.resumed_from)
        if payload["num_classes"] != self.num_classes:
            raise ValueError(f"the checkpoint has {payload['num_classes']} classes, the data has {self.num_classes}")
        self.model.load_state_dict(payload["model"])
        if (payload["early_head"] is None) != (self.early_head is None):
            raise ValueError("the checkpoint and this config disagree on the early head")
        if self.early_head is not None:
            self.early_head.load_state_dict(payload["early_head"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scaler.load_state_dict(payload["scaler"])
        self.epoch, self.step = int(payload["epoch"]), int(payload["step"])
        self.elapsed = float(payload.get("elapsed", 0.0))
        self.history = list(payload["history"])
        local = payload["ranks"][self.job.rank]
        restore_rng(local["rng"], self.context.generators)
        if local["loader"] is not None:
            self.data.train.load_state_dict(local["loader"])
        if self.memory is not None:
            if payload.get("memory") is None:
                raise ValueError(f"{self.resumed_from}: the checkpoint holds no saliency memory for this run's "
                                 "'saliency: memory' ops")
            self.memory.load_state_dict(payload["memory"])


#: config fields that do not change what is trained (may differ when resuming)
RUNTIME_FIELDS = ("name", "description", "output_dir", "device", "progress", "tensorboard", "log_every", "eval_every",
                  "compile", "dist_timeout", "data.root", "data.download", "data.eval_batch_size", "data.workers")


def check_resumable(payload: Dict[str, Any], config: TrainConfig, world_size: int,
                    path: Optional[os.PathLike] = None) -> None:
    """Raise ``ValueError`` (naming the checkpoint and what differs) unless ``payload`` can continue ``config``.

    An exact resume needs the same training settings (only :data:`RUNTIME_FIELDS` may change)
    and the same number of processes. Reads nothing and writes nothing.
    """
    where = f"{path}: " if path is not None else ""
    changed = config_differences(config_from_dict(payload["config"]), config)
    if changed:
        raise ValueError(f"{where}the checkpoint was written with another config ({', '.join(changed)} differ); an "
                         "exact resume needs the same settings (only runtime fields may change: "
                         f"{', '.join(RUNTIME_FIELDS)})")
    if payload["world_size"] != world_size:
        raise ValueError(f"{where}the checkpoint was written by {payload['world_size']} process(es); resume it with "
                         f"the same number (this job has {world_size})")


def config_differences(saved: TrainConfig, current: TrainConfig) -> List[str]:
    """Dotted names of the training-relevant fields where two configs differ (sections compared field by field)."""
    a, b = config_to_dict(saved), config_to_dict(current)
    changed = []
    for key in a:
        if key in ("data", "model", "optim", "memory") and isinstance(a[key], dict) and isinstance(b.get(key), dict):
            changed.extend(f"{key}.{sub}" for sub in a[key]
                           if f"{key}.{sub}" not in RUNTIME_FIELDS and a[key][sub] != b[key][sub])
        elif key not in RUNTIME_FIELDS and a[key] != b[key]:
            changed.append(key)
    return changed


def _take(loader, count: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches from ``loader``, continuing its current epoch and starting new ones as needed.

    With ``max_steps_per_epoch`` below the loader's length, successive training epochs walk on
    through the loader's epoch instead of repeating its first batches.
    """
    taken = 0
    while taken < count:
        progressed = False
        iterator = iter(loader)
        try:
            for batch in iterator:
                progressed = True
                yield batch
                taken += 1
                if taken == count:
                    return
        finally:
            close = getattr(iterator, "close", None)
            if callable(close):
                close()
        if not progressed:
            raise ValueError("the training loader yields no batch")


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def _spec_has_policy(spec: Any) -> bool:
    """Whether a spec (nested ones included) names an image-level policy (raw-space op)."""
    from .recipes import _raw_space_class, resolve_op
    if isinstance(spec, dict):
        if isinstance(spec.get("name"), str):
            try:
                cls, _ = resolve_op(spec["name"])
            except ValueError:
                cls = None
            if cls is not None and _raw_space_class(cls):
                return True
        return any(_spec_has_policy(v) for k, v in spec.items() if k != "name")
    if isinstance(spec, list):
        return any(_spec_has_policy(v) for v in spec)
    return False


def validate_build(config: TrainConfig) -> None:
    """Build every op of ``config`` and of each of its arms once, against a small stand-in model.

    A wrong op name or argument (``size: -5``) is then refused before any data is loaded or any
    file written — and by ``--print-config`` — with the error of the op's own constructor,
    naming the op (``ops[0] (KeepCutout): size must be positive…``). The stand-in is a
    ``resnet_small`` with 10 classes built under a forked RNG (the caller's random state is
    untouched); model-specific checks happen when the run builds its real model.
    """
    from .models import build_model
    from .recipes import build_op
    configs = expand_arms(config)
    with torch.random.fork_rng(devices=[]):
        stand_in = build_model("resnet_small", 10)
        head: List[nn.Module] = []

        def early_head() -> nn.Module:
            if not head:
                from .saliency import EarlyHead
                head.append(EarlyHead(stand_in, 10))
            return head[0]

        memory: List[Any] = []

        def stand_in_memory():
            if not memory:
                from .memory import SaliencyMemory
                memory.append(SaliencyMemory(1, (8, 8)))
            return memory[0]

        for arm, c in configs:
            context = BuildContext(model=stand_in, num_classes=10, early_head=early_head, seed=c.seed, device="cpu",
                                   mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), memory=stand_in_memory,
                                   memory_fallback=c.memory.fallback)
            for index, spec in enumerate(c.ops):
                where = f"arm {arm!r}: ops[{index}]" if arm else f"ops[{index}]"
                try:
                    build_op(spec, context, f"ops[{index}]")
                except (TypeError, ValueError) as error:
                    message, prefix = str(error), f"ops[{index}]"
                    message = where + message[len(prefix):] if message.startswith(prefix) else f"{where}: {message}"
                    try:  # the same class, unless it takes more than a message (CheckpointError)
                        renamed = type(error)(message)
                    except TypeError:
                        renamed = (TypeError if isinstance(error, TypeError) else ValueError)(message)
                    raise renamed from None


# --------------------------------------------------------------------------- recipes with arms


def unique_run_dir(base: Path) -> Path:
    """``base`` if it does not exist yet, else ``base-2``, ``base-3``…"""
    if not base.exists():
        return base
    k = 2
    while base.with_name(f"{base.name}-{k}").exists():
        k += 1
    return base.with_name(f"{base.name}-{k}")


def run(config: TrainConfig, *, arms: Optional[Sequence[str]] = None, resume: bool = False,
        run_dir: Optional[os.PathLike] = None, quiet: bool = False,
        stop_after_epoch: Optional[int] = None, data: Optional[RunData] = None) -> List[Dict[str, Any]]:
    """Train every arm of a recipe (or the recipe itself when it has none); print the comparison.

    Output: ``output_dir/name`` — when that folder exists and ``resume`` is off, ``name-2``
    (``-3``…) and the run is *renamed* ``name-2`` (its epoch lines, config, summary and curves
    say so) — with one sub-folder per arm, plus ``recipe.yaml`` (the recipe with only the arms
    this run trains: ``arms`` selects them), ``summary.csv`` and ``curves.png`` overlaying the
    arms; each run folder also gets ``train.log``, its epoch lines. With ``resume`` each arm
    continues from its checkpoint when there is one (finished arms are only reported; a damaged
    ``checkpoint.pt`` falls back to ``checkpoint.prev.pt``); without ``arms`` only the arms the
    folder's ``recipe.yaml`` records are resumed. The summary table is printed even when
    ``quiet``. Ctrl-C raises :class:`TrainingInterrupted` naming the run folder (the lock is
    released; the last checkpoint is intact).

    Nothing is written until every arm's ops build (:func:`validate_build`), the output folder
    can be created, every checkpoint a resume would continue matches its arm
    (:func:`check_resumable`) and the first arm's data and model are ready; so a refused run
    leaves an existing folder byte-identical and creates none. The folder is locked
    (:class:`~keepmix.engine.checkpoint.RunLock`) from the first check to the end.
    """
    main = _is_main_env()
    if arms:  # unknown arm names fail here, before a run folder is chosen (and named in the message)
        expand_arms(config, arms)
    base = Path(run_dir) if run_dir is not None else Path(config.output_dir) / config.name
    if not resume and run_dir is None:
        wanted = base
        base = unique_run_dir(base) if main else base
        if base != wanted:
            config = renamed_run(config, base)
            print(f"keepmix: {wanted} exists; this run is {config.name!r} in {base}", file=sys.stderr, flush=True)
    if arms is None and resume and config.arms:
        recorded = _recorded_arms(base)  # resume only the arms the run was started with
        if recorded is not None and set(recorded) <= {arm.name for arm in config.arms}:
            arms = recorded
    if arms and config.arms:  # recipe.yaml records only the arms this run trains
        selected = config_to_dict(config)
        selected["arms"] = [arm for arm in selected["arms"] if arm["name"] in arms]
        config = config_from_dict(selected)
    expanded = expand_arms(config, arms)
    for _, arm_config in expanded:
        validate_build(arm_config)
    if main:
        check_output_dir(base)
    lock, created = RunLock(base), []
    try:
        if main and base.is_dir():
            lock.acquire()  # before reading checkpoints that another writer might be replacing
        resumable = set()
        if resume:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            for arm_name, arm_config in expanded:
                folder = base / arm_name if arm_name else base
                if (folder / CHECKPOINT_NAME).is_file() or (folder / PREVIOUS_NAME).is_file():
                    with warnings.catch_warnings():  # the trainer says it again when it loads
                        warnings.simplefilter("ignore", CheckpointFallbackWarning)
                        payload, source = read_checkpoint(folder, fallback=True)
                    check_resumable(payload, arm_config, world, source)
                    del payload
                    resumable.add(arm_name)
        summaries = []
        cache: Dict[str, Any] = {}
        for index, (arm_name, arm_config) in enumerate(expanded):
            folder = base / arm_name if arm_name else base
            trainer = Trainer(arm_config, run_dir=folder, resume=folder if arm_name in resumable else None,
                              quiet=quiet, data=data, data_cache=cache)
            if index == 0 and main:
                created = make_run_dir(base)
                lock.acquire()
                remove_stale_temps(base)
                ensure_space(base, trainer._checkpoint_bytes(), runs=len(expanded))
                atomic_write(base / "recipe.yaml", config_to_yaml(config))
            try:
                summary = trainer.fit(stop_after_epoch=stop_after_epoch)
            except KeyboardInterrupt:
                raise TrainingInterrupted(base) from None
            summary["arm"] = arm_name
            summaries.append(summary)
        if main:
            if len(summaries) > 1:
                _write_comparison(base, summaries)
            print(format_summary(summaries), flush=True)  # also under --quiet: the summary is the result
        return summaries
    finally:
        lock.release()
        remove_if_empty(created)


def _is_terminal(stream) -> bool:
    """Whether ``stream`` is an interactive terminal (progress bars go only there, never into a redirected log)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


#: the text log each run folder gets: its epoch lines (what is printed, also under --quiet)
LOG_NAME = "train.log"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run`: carries the run folder so the command line can say how to resume."""

    def __init__(self, run_dir: Path):
        super().__init__(str(run_dir))
        self.run_dir = Path(run_dir)


def renamed_run(config: TrainConfig, base: Path) -> TrainConfig:
    """``config`` renamed after the folder it really goes to: ``name`` → ``name-2`` when ``unique_run_dir`` moved it.

    The run's epoch lines, ``config.yaml``, ``recipe.yaml``, summary and curves then name the
    folder the files are in.
    """
    original = Path(config.name).name
    if base.name == original or not base.name.startswith(original):
        return config
    data = config_to_dict(config)
    data["name"] = config.name + base.name[len(original):]
    return config_from_dict(data)


def _recorded_arms(base: Path) -> Optional[List[str]]:
    """The arms a run folder was started with (from its ``recipe.yaml``), or None when it has none."""
    recipe = base / "recipe.yaml"
    if not recipe.is_file():
        return None
    import yaml
    try:
        data = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    arms = data.get("arms") if isinstance(data, dict) else None
    if not isinstance(arms, list):
        return None
    names = [arm.get("name") for arm in arms if isinstance(arm, dict)]
    return [n for n in names if isinstance(n, str)] or None


def _is_main_env() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _write_comparison(base: Path, summaries: List[Dict[str, Any]]) -> None:
    from .viz import plot_curves, read_metrics
    keys = ["arm", "val_top1", "val_top5", "val_loss", "best_val_top1", "train_loss", "epochs", "seconds", "run_dir"]
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(keys)
    for s in summaries:
        writer.writerow([_csv_cell(s.get(k)) for k in keys])
    atomic_write(base / "summary.csv", text.getvalue())
    curves = {s["arm"]: read_metrics(s["metrics"]) for s in summaries if Path(s["metrics"]).is_file()}
    if curves:
        plot_curves(curves, base / "curves.png", title=base.name)


def format_summary(summaries: List[Dict[str, Any]]) -> str:
    """A side-by-side table of the arms' final metrics and where their files are."""
    lines = []
    header = f"{'arm':<20} {'top-1 %':>8} {'top-5 %':>8} {'loss':>8} {'best %':>8} {'epochs':>6} {'time s':>7}"
    lines.append(header)
    lines.append("-" * len(header))
    for s in summaries:
        name = s.get("arm") or s["name"]
        lines.append(f"{name:<20} {_num(s['val_top1']):>8} {_num(s['val_top5']):>8} {_num(s['val_loss'], 4):>8} "
                     f"{_num(s['best_val_top1']):>8} {s['epochs']:>6} {s['seconds']:>7.1f}")
    lines.append("")
    for s in summaries:
        name = s.get("arm") or s["name"]
        lines.append(f"{name}: metrics {s['metrics']}  curves {s['curves']}  checkpoint {s['checkpoint']}")
    if len(summaries) > 1:
        base = Path(summaries[0]["run_dir"]).parent
        lines.append(f"comparison: {base / 'summary.csv'}  {base / 'curves.png'}")
    return "\n".join(lines)


def _num(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


__all__ = [
    "Augmentation", "CHECKPOINT_VERSION", "CheckpointError", "Distributed", "DistributedError", "OpStats", "RunData",
    "TrainNet", "Trainer", "TrainingInterrupted", "all_reduce_sum", "autocast_context", "RUNTIME_FIELDS", "build_optimizer", "capture_rng",
    "check_resumable", "config_differences", "evaluate", "format_summary", "init_distributed", "learning_rate",
    "load_checkpoint", "load_sets", "load_split", "op_display_names", "prepare_data", "ShardedLoader", "resolve_device",
    "restore_rng", "run", "save_checkpoint", "sync_buffers", "topk_correct", "unique_run_dir", "validate_build",
]
