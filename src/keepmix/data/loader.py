"""Batched augmentation and normalisation on the device, and the loaders that use them.

* :func:`random_crop_flip` — the standard CIFAR augmentation (pad by ``p``, crop back at a
  random offset, mirror with probability ½) for a whole batch at once, as two ``gather``
  calls on the batch's device: no loop over images, no host sync.
* :func:`normalize` — uint8 (0–255) or float (0–1) images to ``(x − mean) / std`` float32.
* :class:`DeviceLoader` — for sets that fit in device memory: the uint8 images live on the
  device; each batch is indexed, augmented and normalised there. Its randomness is derived
  from a seed and the epoch (and batch) number, so :meth:`DeviceLoader.state_dict` /
  :meth:`DeviceLoader.load_state_dict` resume exactly, even mid-epoch.
* :func:`make_dataloader` — a ``torch.utils.data.DataLoader`` with sensible defaults for
  file-backed sets; augment the uint8 batches on the device with :func:`random_crop_flip` and
  :func:`normalize`.
"""

from __future__ import annotations

import math
import numbers
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from .. import _random
from .._checks import check_generator, check_images

__all__ = ["random_crop_flip", "normalize", "DeviceLoader", "make_dataloader"]

PADDING_MODES = ("zeros", "reflect", "replicate")


def _check_padding(padding, height: int, width: int, padding_mode: str) -> int:
    if isinstance(padding, bool) or not isinstance(padding, numbers.Integral):
        raise TypeError(f"padding must be an int, got {padding!r}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if padding_mode == "reflect" and padding > 0 and (padding >= height or padding >= width):
        raise ValueError(f"padding must be smaller than the image ({height}×{width}) for reflect padding, "
                         f"got {padding}")
    return int(padding)


def _source_index(index: torch.Tensor, size: int, padding_mode: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Map source coordinates that may fall outside [0, size) back inside, by ``padding_mode``.

    Returns the in-range index and a mask of positions that are inside the original image
    (only meaningful for zero padding, where outside positions become 0).
    """
    inside = (index >= 0) & (index < size)
    if padding_mode == "reflect":  # mirror about the edge pixels: -1 -> 1, size -> size - 2
        index = index.abs()
        index = torch.where(index > size - 1, 2 * (size - 1) - index, index)
    return index.clamp(0, size - 1), inside


def random_crop_flip(images: torch.Tensor, padding: int = 4, generator: Optional[torch.Generator] = None, *,
                     flip: bool = True, padding_mode: str = "zeros") -> torch.Tensor:
    """Random crop with padding and random horizontal flip, per sample, batched.

    For every image independently: draw an offset ``(dy, dx)`` uniform in ``{0, …, 2p}²`` and,
    if ``flip``, a mirror bit with probability ½. The output is

        ``out[b, c, i, j] = padded[b, c, i + dy, j' + dx]``,  ``j' = W − 1 − j`` if mirrored else ``j``,

    where ``padded`` is the image padded by ``p`` on every side (zeros, reflection about the edge
    pixels, or edge replication): a shift by ``(p − dy, p − dx)`` whole pixels, then the mirror.

    Args:
        images: B×C×H×W, uint8 or floating point.
        padding: p ≥ 0 (p = 0 leaves only the flip). Reflect padding needs p < H and p < W.
        generator: optional ``torch.Generator``; draws are made on its device.
        flip: draw the horizontal mirror.
        padding_mode: ``"zeros"``, ``"reflect"`` or ``"replicate"``.

    Returns:
        A new tensor with the input's shape, dtype and device.

    Randomness: per sample, two integer offsets then one uniform for the flip.
    """
    check_images(images)
    check_generator(generator)
    batch, channels, height, width = images.shape
    padding = _check_padding(padding, height, width, padding_mode)
    device = images.device
    offsets = _random.randint(0, 2 * padding + 1, (batch, 2), device, generator) - padding
    columns = torch.arange(width, device=device).expand(batch, width)
    if flip:
        mirrored = _random.rand((batch,), device, generator) < 0.5
        columns = torch.where(mirrored.view(-1, 1), width - 1 - columns, columns)
    rows = torch.arange(height, device=device).view(1, -1) + offsets[:, :1]
    columns = columns + offsets[:, 1:]
    rows, rows_inside = _source_index(rows, height, padding_mode)
    columns, columns_inside = _source_index(columns, width, padding_mode)
    out = images.gather(2, rows.view(batch, 1, height, 1).expand(batch, channels, height, width))
    out = out.gather(3, columns.view(batch, 1, 1, width).expand(batch, channels, height, width))
    if padding_mode == "zeros" and padding > 0:
        outside = ~(rows_inside.view(batch, 1, height, 1) & columns_inside.view(batch, 1, 1, width))
        out = out.masked_fill(outside, 0)
    return out


def _check_stats(values, name: str, channels: int) -> Optional[Tuple[float, ...]]:
    if values is None:
        return None
    try:
        stats = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of {channels} numbers or None, got {values!r}") from None
    if len(stats) != channels:
        raise ValueError(f"{name} must hold one value per channel ({channels}), got {len(stats)}")
    if not all(math.isfinite(v) for v in stats):
        raise ValueError(f"{name} must be finite, got {stats}")
    return stats


def _affine(mean, std, channels: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) with ``x_uint8 · scale + shift = (x_uint8/255 − mean)/std``."""
    mean = _check_stats(mean, "mean", channels) or (0.0,) * channels
    std = _check_stats(std, "std", channels) or (1.0,) * channels
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive, got {std}")
    std_t = torch.tensor(std, dtype=torch.float32)
    scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1).to(device)
    shift = (-torch.tensor(mean, dtype=torch.float32) / std_t).view(1, -1, 1, 1).to(device)
    return scale, shift


def normalize(images: torch.Tensor, mean: Optional[Sequence[float]] = None,
              std: Optional[Sequence[float]] = None) -> torch.Tensor:
    """``(x − mean) / std`` per channel, as float32, with ``x`` on the 0–1 scale.

    uint8 images are divided by 255 first; floating-point images are taken to be on the
    0–1 scale already. ``mean``/``std`` ``None`` mean 0 and 1. Works on any device.
    """
    check_images(images)
    channels = images.shape[1]
    scale, shift = _affine(mean, std, channels, images.device)
    if images.dtype != torch.uint8:
        scale = scale * 255.0
    return torch.addcmul(shift, images.to(torch.float32), scale)


_MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def derive_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (splitmix64 chained), for independent streams."""
    state = 0
    for value in values:
        state = _splitmix64(state ^ (int(value) & _MASK64))
    return state & ((1 << 63) - 1)


class DeviceLoader:
    """Mini-batches of an in-memory uint8 set, augmented and normalised on the device.

    Each batch is ``(images, labels)``: float32 B×C×H×W ``(x/255 − mean)/std`` (after
    :func:`random_crop_flip` when ``augment``) and int64 B, on ``device``.

    Args:
        images: uint8 N×C×H×W (moved to ``device`` once).
        labels: N class indices (int64 on ``device``), or soft targets N×K float.
        batch_size: samples per batch.
        shuffle: a new random order every epoch (else the stored order).
        drop_last: drop the last incomplete batch.
        generator: seeds the loader: its ``initial_seed()`` is the loader's seed. Without it a
            seed is drawn from torch's global generator.
        device: where the data lives and batches are made (default: the images' device).
        mean, std: per-channel normalisation on the 0–1 scale (``None``: 0 and 1).
        augment: apply random crop and flip.
        crop_padding, flip, padding_mode: as :func:`random_crop_flip`.

    Randomness: epoch ``e`` shuffles with a CPU generator seeded ``derive_seed(seed, e, 0)``;
    its batch ``b`` is augmented with one seeded ``derive_seed(seed, e, b + 1)``. Hence an
    epoch's batches depend only on ``(seed, e)``, equal on CPU and GPU, and resuming from
    :meth:`state_dict` (seed, epoch, next batch) reproduces the remaining batches exactly.

    Iteration: each ``iter()`` runs the rest of the current epoch (all of it when at its
    start), then advances the epoch counter; ``len()`` is the number of batches of a full epoch.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128, shuffle: bool = True,
                 drop_last: bool = False, generator: Optional[torch.Generator] = None, device=None,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 augment: bool = True, crop_padding: int = 4, flip: bool = True, padding_mode: str = "zeros"):
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            described = (f"{images.dtype} tensor of shape {tuple(images.shape)}" if isinstance(images, torch.Tensor)
                         else type(images).__name__)
            raise TypeError(f"images must be a uint8 tensor N×C×H×W, got {described}")
        if images.shape[0] == 0:
            raise ValueError("images must hold at least one image")
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
        if labels.ndim not in (1, 2) or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must hold one entry per image ({images.shape[0]}), got shape "
                             f"{tuple(labels.shape)}")
        if labels.ndim == 1 and (labels.is_floating_point() or labels.dtype == torch.bool):
            raise TypeError(f"labels given as a 1-d tensor must be integer class indices, got {labels.dtype}")
        if labels.ndim == 2 and not labels.is_floating_point():
            raise TypeError(f"labels given as a 2-d tensor must be floating point soft targets, got {labels.dtype}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        check_generator(generator)
        self.device = torch.device(device) if device is not None else images.device
        _check_padding(crop_padding, images.shape[2], images.shape[3], padding_mode)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device) if labels.ndim == 2 else labels.to(self.device, torch.int64)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.augment = bool(augment)
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self.padding_mode = padding_mode
        self.mean = _check_stats(mean, "mean", images.shape[1])
        self.std = _check_stats(std, "std", images.shape[1])
        self._scale, self._shift = _affine(self.mean, self.std, images.shape[1], self.device)
        if generator is not None:
            self.seed = int(generator.initial_seed())
        else:
            self.seed = int(torch.randint(0, 2 ** 62, ()))
        self.epoch = 0
        self.batch_index = 0

    @property
    def num_samples(self) -> int:
        return int(self.images.shape[0])

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The sample order of ``epoch`` (int64 N on the device)."""
        if not self.shuffle:
            return torch.arange(self.num_samples, device=self.device)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, 0))
        return torch.randperm(self.num_samples, generator=generator).to(self.device, non_blocking=True)

    def make_batch(self, indices: torch.Tensor, epoch: int, batch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The augmented, normalised batch of ``indices`` as batch ``batch`` of ``epoch``."""
        images = self.images.index_select(0, indices)
        if self.augment:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, batch + 1))
            images = random_crop_flip(images, self.crop_padding, generator, flip=self.flip,
                                      padding_mode=self.padding_mode)
        images = torch.addcmul(self._shift, images.to(torch.float32), self._scale)
        return images, self.labels.index_select(0, indices)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        batches = len(self)
        if self.batch_index >= batches:  # a finished epoch whose end was not yet counted
            self.epoch += 1
            self.batch_index = 0
        if batches == 0:
            return
        epoch = self.epoch
        order = self.epoch_order(epoch)
        while self.batch_index < batches:
            batch = self.batch_index
            indices = order[batch * self.batch_size:(batch + 1) * self.batch_size]
            self.batch_index = batch + 1  # counted when handed out: a checkpoint taken now resumes after it
            yield self.make_batch(indices, epoch, batch)
        self.epoch += 1
        self.batch_index = 0

    def state_dict(self) -> Dict[str, int]:
        """Everything needed to resume: seed, epoch, next batch, and the sizes it assumes."""
        return {"seed": self.seed, "epoch": self.epoch, "batch_index": self.batch_index,
                "num_samples": self.num_samples, "batch_size": self.batch_size}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Resume from :meth:`state_dict`; the data set size and batch size must match."""
        missing = {"seed", "epoch", "batch_index"} - set(state)
        if missing:
            raise ValueError(f"state is missing {sorted(missing)}")
        for key, mine in (("num_samples", self.num_samples), ("batch_size", self.batch_size)):
            if key in state and int(state[key]) != mine:
                raise ValueError(f"state was saved with {key}={state[key]}, this loader has {mine}")
        epoch, batch_index = int(state["epoch"]), int(state["batch_index"])
        if epoch < 0 or not 0 <= batch_index <= len(self):
            raise ValueError(f"state has an invalid position: epoch {epoch}, batch {batch_index} "
                             f"of {len(self)}")
        self.seed, self.epoch, self.batch_index = int(state["seed"]), epoch, batch_index

    def set_epoch(self, epoch: int) -> None:
        """Jump to the start of ``epoch``."""
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch, self.batch_index = int(epoch), 0


def make_dataloader(dataset: Dataset, batch_size: int = 128, shuffle: bool = True, drop_last: bool = False,
                    num_workers: int = 0, generator: Optional[torch.Generator] = None,
                    pin_memory: Optional[bool] = None, persistent_workers: Optional[bool] = None,
                    **kwargs) -> DataLoader:
    """A ``DataLoader`` over a map-style data set of ``(uint8 image, int label)`` pairs.

    Defaults: ``pin_memory`` when CUDA is available, ``persistent_workers`` when
    ``num_workers > 0``. Worker processes get their torch seeds from ``generator``, so a seeded
    generator makes the order and any worker-side randomness reproducible. Batches are uint8
    B×C×H×W and int64 B; move them to the device, then :func:`random_crop_flip` and
    :func:`normalize`. Extra keyword arguments go to ``DataLoader``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, numbers.Integral) or num_workers < 0:
        raise ValueError(f"num_workers must be a non-negative int, got {num_workers!r}")
    check_generator(generator)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    return DataLoader(dataset, batch_size=int(batch_size), shuffle=shuffle, drop_last=drop_last,
                      num_workers=int(num_workers), generator=generator, pin_memory=pin_memory,
                      persistent_workers=persistent_workers, **kwargs)
