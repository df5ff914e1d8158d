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

**Batch geometry.** Every batch either loader yields is a :class:`LoaderBatch`: it unpacks as
``images, labels`` exactly as before and also carries ``batch.geometry``, a :class:`BatchGeometry`
— the data-set index of every sample and the axis-aligned crop box (in the source image's own
pixels) and horizontal flip that took the stored image to the batch's H×W grid. Whatever is
stored per sample in the data set's own coordinates (a :class:`keepmix.memory.SaliencyMemory`)
maps through it: :func:`output_to_source` gives, for every output row and column, the source
position it shows; :func:`source_to_output` the reverse. Crops with padding, random-resized
crops (a box of any size resized to the output) and flips all have this form, and so has any
chain of them (:func:`compose_geometry`), so worker-side transforms and the device-side
:func:`random_crop_flip` compose into one geometry per batch.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Iterator, NamedTuple, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from .. import _random
from .._checks import check_generator, check_images

__all__ = ["random_crop_flip", "normalize", "DeviceLoader", "make_dataloader", "BatchGeometry", "LoaderBatch",
           "identity_geometry", "compose_geometry", "output_to_source", "source_to_output", "collate_with_geometry"]

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


# --------------------------------------------------------------------------- batch geometry


class BatchGeometry(NamedTuple):
    """Where every pixel of a batch came from: data-set indices, crop boxes and flips (B samples).

    Coordinates are continuous pixel-edge coordinates of each sample's *source* image (the image
    as the data set stores it, before any crop or flip): its pixel (r, c) covers [r, r + 1) ×
    [c, c + 1). Sample b's output pixel (i, j) of the H×W batch grid shows, before the flip,

        rows  ``top_b + [i, i + 1) · height_b / H``,   columns  ``left_b + [j', j' + 1) · width_b / W``,

    with ``j' = W − 1 − j`` when ``flip_b`` else ``j``: the box is resized to H×W, then mirrored.
    In pixel-centre indices: ``y = top + (i + ½)·height/H − ½`` and ``x = left + (j' + ½)·width/W − ½``
    (:func:`output_to_source`). A box may reach outside its source (padding): output pixels
    there show no source pixel. A pad-and-crop is ``height = H``, ``width = W`` with integer
    ``top``/``left`` in [−p, p]; a random-resized crop is any box.

    Fields (all on the batch's device except ``host_index``):
        index: int64 (B,) — the samples' data-set indices.
        top, left, height, width: float32 (B,) — the crop box in source pixels.
        flip: bool (B,) — mirrored horizontally after the crop.
        source_height, source_width: int64 (B,) — each source image's size.
        size: (H, W) — the batch's grid.
        host_index: the same indices as a CPU tensor when the loader has them without a device
            read (both loaders do), else None; it lets consumers decide things on the host
            without a device sync.
    """

    index: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    flip: torch.Tensor
    source_height: torch.Tensor
    source_width: torch.Tensor
    size: Tuple[int, int]
    host_index: Optional[torch.Tensor] = None

    def to(self, device, non_blocking: bool = False) -> "BatchGeometry":
        """The geometry with its tensors on ``device`` (``host_index`` stays on the CPU)."""
        moved = [t.to(device, non_blocking=non_blocking) for t in self[:8]]
        return BatchGeometry(*moved, self.size, self.host_index)

    def pin_memory(self) -> "BatchGeometry":
        return BatchGeometry(*[t.pin_memory() for t in self[:8]], self.size, self.host_index)

    def select(self, rows: torch.Tensor, host_rows: Optional[torch.Tensor] = None) -> "BatchGeometry":
        """The geometry of the samples ``rows`` (a device index tensor; ``host_rows`` its CPU copy, if any)."""
        picked = [t.index_select(0, rows) for t in self[:8]]
        host = None
        if self.host_index is not None and host_rows is not None:
            host = self.host_index.index_select(0, host_rows)
        return BatchGeometry(*picked, self.size, host)


def identity_geometry(index: torch.Tensor, source_size: Tuple[int, int], *,
                      host_index: Optional[torch.Tensor] = None) -> BatchGeometry:
    """The geometry of samples shown whole and unflipped at their own size ``source_size`` (H, W)."""
    index = index.to(torch.int64)
    batch, device = index.shape[0], index.device
    height, width = int(source_size[0]), int(source_size[1])
    zeros = torch.zeros(batch, dtype=torch.float32, device=device)
    return BatchGeometry(index, zeros, zeros, torch.full((batch,), float(height), device=device),
                         torch.full((batch,), float(width), device=device),
                         torch.zeros(batch, dtype=torch.bool, device=device),
                         torch.full((batch,), height, dtype=torch.int64, device=device),
                         torch.full((batch,), width, dtype=torch.int64, device=device), (height, width), host_index)


def compose_geometry(inner: BatchGeometry, outer: BatchGeometry) -> BatchGeometry:
    """``outer`` (a crop box and flip of ``inner``'s output, in its pixels) applied after ``inner``.

    The result maps the final grid straight to the source: with (t, l, h, w, f) the inner box
    and flip on an H₁×W₁ grid and (t', l', h', w', f') the outer one,

        top = t + t'·h/H₁,  height = h'·h/H₁,  left = l + l̃·w/W₁,  width = w'·w/W₁,  flip = f ⊕ f',

    where ``l̃ = W₁ − l' − w'`` when the inner flip is set (the outer box seen unmirrored), else l'.
    Indices, source sizes and ``host_index`` come from ``inner``; the size from ``outer``.
    """
    rows, cols = inner.size
    scale_y = inner.height / rows
    scale_x = inner.width / cols
    outer_left = torch.where(inner.flip, cols - outer.left - outer.width, outer.left)
    return BatchGeometry(inner.index, inner.top + outer.top * scale_y, inner.left + outer_left * scale_x,
                         outer.height * scale_y, outer.width * scale_x, inner.flip ^ outer.flip,
                         inner.source_height, inner.source_width, tuple(outer.size), inner.host_index)


def output_to_source(geometry: BatchGeometry) -> Tuple[torch.Tensor, torch.Tensor]:
    """Source pixel-centre coordinates of every output row and column: float32 (B, H) and (B, W).

    ``y[b, i] = top_b + (i + ½)·height_b/H − ½``; ``x[b, j] = left_b + (j' + ½)·width_b/W − ½`` with
    ``j' = W − 1 − j`` where flipped. Integer boxes of the output's size give exact integers.
    """
    rows, cols = geometry.size
    device = geometry.top.device
    i = torch.arange(rows, device=device, dtype=torch.float32).add_(0.5)
    j = torch.arange(cols, device=device, dtype=torch.float32).add_(0.5)
    j = torch.where(geometry.flip.view(-1, 1), cols - j.view(1, -1), j.view(1, -1))
    y = geometry.top.view(-1, 1) + i.view(1, -1) * (geometry.height / rows).view(-1, 1) - 0.5
    x = geometry.left.view(-1, 1) + j * (geometry.width / cols).view(-1, 1) - 0.5
    return y, x


def source_to_output(geometry: BatchGeometry, y: torch.Tensor, x: torch.Tensor
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`output_to_source`: output pixel-centre coordinates of source positions.

    ``y`` (B, n) and ``x`` (B, m) are source pixel-centre coordinates; returns ``i`` (B, n) and
    ``j`` (B, m), float32, with ``i = (y + ½ − top)·H/height − ½`` and
    ``j' = (x + ½ − left)·W/width − ½``, ``j = W − 1 − j'`` where flipped. A position is on the
    output grid when −½ ≤ i < H − ½ (and likewise j).
    """
    rows, cols = geometry.size
    i = (y + 0.5 - geometry.top.view(-1, 1)) * (rows / geometry.height).view(-1, 1) - 0.5
    j = (x + 0.5 - geometry.left.view(-1, 1)) * (cols / geometry.width).view(-1, 1) - 0.5
    j = torch.where(geometry.flip.view(-1, 1), (cols - 1) - j, j)
    return i, j


class LoaderBatch(tuple):
    """A batch ``(images, labels)`` — it unpacks as a pair — that also carries its :class:`BatchGeometry`.

    ``batch.images``, ``batch.labels``, ``batch.geometry`` (None when unknown). ``to(device)`` and
    ``pin_memory()`` keep the geometry (so a ``DataLoader`` with ``pin_memory=True`` keeps it).
    """

    def __new__(cls, images, labels, geometry: Optional[BatchGeometry] = None):
        batch = super().__new__(cls, (images, labels))
        batch.geometry = geometry
        return batch

    def __reduce__(self):
        return (LoaderBatch, (self[0], self[1], self.geometry))

    @property
    def images(self):
        return self[0]

    @property
    def labels(self):
        return self[1]

    def to(self, device, non_blocking: bool = False) -> "LoaderBatch":
        geometry = self.geometry.to(device, non_blocking) if self.geometry is not None else None
        return LoaderBatch(self[0].to(device, non_blocking=non_blocking),
                           self[1].to(device, non_blocking=non_blocking), geometry)

    def pin_memory(self) -> "LoaderBatch":
        geometry = self.geometry.pin_memory() if self.geometry is not None else None
        return LoaderBatch(self[0].pin_memory(), self[1].pin_memory(), geometry)


# --------------------------------------------------------------------------- crop and flip


def _crop_flip_draws(batch: int, padding: int, flip: bool, device, generator: Optional[torch.Generator]
                     ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Per sample: the offset (dy − p, dx − p) int64 (B, 2), then the mirror bit (B,) bool (None without flip)."""
    offsets = _random.randint(0, 2 * padding + 1, (batch, 2), device, generator) - padding
    mirrored = _random.rand((batch,), device, generator) < 0.5 if flip else None
    return offsets, mirrored


def _crop_flip_apply(images: torch.Tensor, offsets: torch.Tensor, mirrored: Optional[torch.Tensor], padding: int,
                     padding_mode: str) -> torch.Tensor:
    batch, channels, height, width = images.shape
    device = images.device
    columns = torch.arange(width, device=device).expand(batch, width)
    if mirrored is not None:
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


def _crop_flip_geometry(offsets: torch.Tensor, mirrored: Optional[torch.Tensor], size: Tuple[int, int]
                        ) -> BatchGeometry:
    """The crop-and-flip as a geometry relative to its input grid (indices and source sizes left empty)."""
    batch, device = offsets.shape[0], offsets.device
    height, width = size
    flip = mirrored if mirrored is not None else torch.zeros(batch, dtype=torch.bool, device=device)
    empty = torch.zeros(batch, dtype=torch.int64, device=device)
    offsets = offsets.to(torch.float32)
    return BatchGeometry(empty, offsets[:, 0], offsets[:, 1], torch.full((batch,), float(height), device=device),
                         torch.full((batch,), float(width), device=device), flip, empty, empty, (height, width))


def random_crop_flip(images: torch.Tensor, padding: int = 4, generator: Optional[torch.Generator] = None, *,
                     flip: bool = True, padding_mode: str = "zeros", geometry: Optional[BatchGeometry] = None):
    """Random crop with padding and random horizontal flip, per sample, batched.

    For every image independently: draw an offset ``(dy, dx)`` uniform in ``{0, …, 2p}²`` and,
    if ``flip``, a mirror bit with probability ½. The output is

        ``out[b, c, i, j] = padded[b, c, i + dy, j' + dx]``,  ``j' = W − 1 − j`` if mirrored else ``j``,

    where ``padded`` is the image padded by ``p`` on every side (zeros, reflection about the edge
    pixels, or edge replication): a shift by ``(p − dy, p − dx)`` whole pixels, then the mirror.
    As a :class:`BatchGeometry` relative to the input: ``top = dy − p``, ``left = dx − p``, the
    box of the image's own size, ``flip`` the mirror bit.

    Args:
        images: B×C×H×W, uint8 or floating point.
        padding: p ≥ 0 (p = 0 leaves only the flip). Reflect padding needs p < H and p < W.
        generator: optional ``torch.Generator``; draws are made on its device.
        flip: draw the horizontal mirror.
        padding_mode: ``"zeros"``, ``"reflect"`` or ``"replicate"``.
        geometry: the batch's geometry so far (e.g. ``batch.geometry`` of a :func:`make_dataloader`
            batch); when given, the call returns ``(images, geometry)`` with this crop and flip
            composed onto it (:func:`compose_geometry`). The draws are the same either way.

    Returns:
        A new tensor with the input's shape, dtype and device (and the composed geometry when
        ``geometry`` is given).

    Randomness: per sample, two integer offsets then one uniform for the flip.
    """
    check_images(images)
    check_generator(generator)
    batch, _, height, width = images.shape
    padding = _check_padding(padding, height, width, padding_mode)
    if geometry is not None and (geometry.index.shape[0] != batch or tuple(geometry.size) != (height, width)):
        raise ValueError(f"geometry describes {geometry.index.shape[0]} images of {tuple(geometry.size)}, the batch "
                         f"holds {batch} of {(height, width)}")
    offsets, mirrored = _crop_flip_draws(batch, padding, flip, images.device, generator)
    out = _crop_flip_apply(images, offsets, mirrored, padding, padding_mode)
    if geometry is None:
        return out
    return out, compose_geometry(geometry, _crop_flip_geometry(offsets, mirrored, (height, width)))


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
    :func:`random_crop_flip` when ``augment``) and int64 B, on ``device`` — a :class:`LoaderBatch`
    whose ``geometry`` gives the samples' indices in ``images`` and their crop offsets and flips.

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

    def epoch_order_host(self, epoch: int) -> torch.Tensor:
        """The sample order of ``epoch`` as an int64 N tensor on the CPU (where it is drawn)."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, 0))
        return torch.randperm(self.num_samples, generator=generator)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The sample order of ``epoch`` (int64 N on the device)."""
        if not self.shuffle:
            return torch.arange(self.num_samples, device=self.device)
        return self.epoch_order_host(epoch).to(self.device, non_blocking=True)

    def make_batch(self, indices: torch.Tensor, epoch: int, batch: int,
                   host_indices: Optional[torch.Tensor] = None) -> LoaderBatch:
        """The augmented, normalised batch of ``indices`` as batch ``batch`` of ``epoch``.

        ``host_indices``: the same indices on the CPU, if the caller has them (they go into the
        geometry's ``host_index``; without them it is the CPU copy of ``indices`` when those are on
        the CPU, else None).
        """
        images = self.images.index_select(0, indices)
        if host_indices is None and indices.device.type == "cpu":
            host_indices = indices
        geometry = identity_geometry(indices, tuple(self.images.shape[-2:]), host_index=host_indices)
        if self.augment:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, batch + 1))
            images, geometry = random_crop_flip(images, self.crop_padding, generator, flip=self.flip,
                                                padding_mode=self.padding_mode, geometry=geometry)
        images = torch.addcmul(self._shift, images.to(torch.float32), self._scale)
        return LoaderBatch(images, self.labels.index_select(0, indices), geometry)

    def __iter__(self) -> Iterator[LoaderBatch]:
        batches = roll_over_finished_epoch(self)
        if batches == 0:
            return
        epoch = self.epoch
        host_order = self.epoch_order_host(epoch)
        order = host_order if self.device.type == "cpu" else host_order.to(self.device, non_blocking=True)
        while self.batch_index < batches:
            batch = self.batch_index
            window = slice(batch * self.batch_size, (batch + 1) * self.batch_size)
            self.batch_index = batch + 1  # counted when handed out: a checkpoint taken now resumes after it
            yield self.make_batch(order[window], epoch, batch, host_order[window])
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


class _IndexedDataset(Dataset):
    """Items ``(image, label, index, crop)`` of a map-style data set, for :func:`collate_with_geometry`.

    ``crop`` is the third element of the data set's own item when it has one (a transform applied
    in the worker: ``(top, left, height, width, flip, source_height, source_width)`` in source
    pixels), else None (the image as stored).
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        item = self.dataset[index]
        crop = item[2] if len(item) > 2 else None
        return item[0], item[1], int(index), crop


def collate_with_geometry(items: Sequence[Tuple[Any, Any, int, Any]]) -> LoaderBatch:
    """Collate ``(image, label, index, crop)`` items into a :class:`LoaderBatch` with its geometry.

    Images and labels are collated as ``default_collate`` does; each sample's geometry is its
    ``crop`` ``(top, left, height, width, flip, source_height, source_width)`` when given, else
    the whole image unflipped at its own size. All tensors are on the CPU (``host_index`` is the
    index tensor itself).
    """
    images, labels = default_collate([(item[0], item[1]) for item in items])
    height, width = int(images.shape[-2]), int(images.shape[-1])
    index = torch.tensor([item[2] for item in items], dtype=torch.int64)
    crops = [item[3] if item[3] is not None else (0.0, 0.0, float(height), float(width), False, height, width)
             for item in items]
    columns = list(zip(*crops))
    box = torch.tensor([columns[0], columns[1], columns[2], columns[3]], dtype=torch.float32)
    geometry = BatchGeometry(index, box[0], box[1], box[2], box[3], torch.tensor(columns[4], dtype=torch.bool),
                             torch.tensor(columns[5], dtype=torch.int64), torch.tensor(columns[6], dtype=torch.int64),
                             (height, width), index)
    return LoaderBatch(images, labels, geometry)


def roll_over_finished_epoch(loader) -> int:
    """Start a loader's next epoch when the current one ran to its end but was not yet counted
    (``batch_index == len``); returns the number of batches per epoch. Shared by the resumable loaders
    (``epoch`` and ``batch_index`` attributes, ``len()``)."""
    batches = len(loader)
    if loader.batch_index >= batches:
        loader.epoch += 1
        loader.batch_index = 0
    return batches


def make_dataloader(dataset: Dataset, batch_size: int = 128, shuffle: bool = True, drop_last: bool = False,
                    num_workers: int = 0, generator: Optional[torch.Generator] = None,
                    pin_memory: Optional[bool] = None, persistent_workers: Optional[bool] = None,
                    **kwargs) -> DataLoader:
    """A ``DataLoader`` over a map-style data set of ``(uint8 image, int label)`` pairs.

    Defaults: ``pin_memory`` when CUDA is available, ``persistent_workers`` when
    ``num_workers > 0``. Worker processes get their torch seeds from ``generator``, so a seeded
    generator makes the order and any worker-side randomness reproducible. Batches are uint8
    B×C×H×W and int64 B — :class:`LoaderBatch` es whose ``geometry`` holds the samples' indices
    (and the whole-image box; a data set may return ``(image, label, crop)`` to report a crop it
    made, see :func:`collate_with_geometry`). Move them to the device (``batch.to(device)``), then
    :func:`random_crop_flip` (``geometry=batch.geometry`` composes the crop onto it) and
    :func:`normalize`. Extra keyword arguments go to ``DataLoader``; a ``collate_fn`` of your own
    replaces the geometry collation (batches are then what it returns).
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
    if kwargs.get("collate_fn") is None:
        kwargs.pop("collate_fn", None)
        dataset, kwargs["collate_fn"] = _IndexedDataset(dataset), collate_with_geometry
    return DataLoader(dataset, batch_size=int(batch_size), shuffle=shuffle, drop_last=drop_last,
                      num_workers=int(num_workers), generator=generator, pin_memory=pin_memory,
                      persistent_workers=persistent_workers, **kwargs)
