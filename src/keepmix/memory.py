"""Saliency for free: a per-sample saliency memory written by the training backward.

Every gradient-saliency method (KeepAugment, Guided-AP, PuzzleMix…) pays a second forward and
backward per step for ``∂ℓ/∂x``. The training step already runs a backward through the whole
network; asking it for the input gradient as well costs one more transposed convolution at the
stem. :class:`SaliencyMemory` keeps that gradient, per training sample, in the data set's own
coordinates, and the ops read it back the next time the sample comes round (one epoch later).

**What is stored.** For sample n a map ``m_n`` on an R_h×R_w grid over its source image (the
image as the data set stores it, before crop and flip; R = the image's size by default,
``scale=0.5`` halves it), in float16 (or bfloat16/float32), on the data's device, plus
``written_n`` (any pixel written yet), ``stamp_n`` (the epoch of the last write; age = epoch − stamp)
and, on the host, ``seen_n`` (a copy of ``written_n``, landed without a sync). Memory cost::

    bytes = N · R_h · R_w · (2 for float16/bfloat16, 4 for float32)  +  5 N

CIFAR-10 at full resolution in float16: 50 000 · 32 · 32 · 2 B ≈ 102 MB; at ½: 26 MB. ImageNet
(1.28 M images) at 56 × 56: ≈ 8.0 GB, at 28 × 28: 2.0 GB (:meth:`SaliencyMemory.bytes_needed`).
The memory is saved in every checkpoint, so checkpoints grow by as much.

**Writing** (:meth:`SaliencyMemory.record_gradient`, called by the engine after the step's
backward; no extra forward or backward, no host sync). With g = ∂L/∂x̃ the input gradient of the
training loss at the augmented batch x̃ (the model's input; the engine sets ``requires_grad`` on it),

    s_b(p) = max_c |g_{b,c}(p)|           (``reduce="max"``, KeepAugment's form)
    s_b(p) = sqrt(mean_c g_{b,c}(p)²)     (``reduce="rms"``, Guided-AP's form)

divided by its peak ``max_p s_b(p)`` (maps are compared only within an image by every op, and a
per-write scale keeps float16 away from underflow; a non-finite or all-zero gradient — an fp16
overflow step — writes nothing). Each output pixel p also has an **ownership** w_b(p) ∈ [0, 1]:
the share of x̃_b(p) that is sample b's own clean pixel at the place the geometry says
(:func:`ownership`). Memory cell q of sample n = index_b is then

    m_n(q) ← Σ_k w_b(p_k) s_b(p_k) / Σ_k w_b(p_k)   if  (1/S²) Σ_k w_b(p_k) ≥ ½  (``min_own``)
    m_n(q) ← m_n(q)                                  otherwise (kept from before),

where p_1…p_{S²} are the output positions of S×S points spread over cell q (S = 1 at full
resolution, 2 at ½), found through the batch geometry (:func:`keepmix.data.source_to_output`:
crop box, resize, flip) and sampled bilinearly (positions off the output grid have w = 0).
The first write of a sample also fills the cells it could not write with the mean of those it
wrote (a neutral value), so a sample is never half zeros.

**The rule for erased, replaced and mixed pixels, and why.** Ownership is read off what the ops
did: a pixel an op left bit-for-bit unchanged is owned (w = 1); one it erased, filled, replaced
with a partner's pixel or transformed is not (w = 0); an op that blends declares its share
(``last_stats["own"]``: GuidedMixup's per-pixel ratio M_b, Mixup's λ_b); a pipeline multiplies
its ops' shares. So an erased or pasted-over pixel keeps the memory's previous value — its
gradient says how the loss depends on the fill or on another image, not on this sample — and a
mixed pixel is written only where it is mostly the sample's own (w ≥ ½), own-weighted, into the
sample's own memory only (the partner's share of a pixel is never written to the partner, whose
content sits elsewhere in its own coordinates). The threshold is the natural one: it keeps what
GuidedMixup keeps of each image (its salient part, where M_b > ½) and drops what it gives away.
The gradient there still comes from the mixed loss (both labels); with pixels mostly the
sample's own, that is the closest evidence the step has. Colour-changing policies leave no pixel
unchanged and so write only where a selective paste put the original back.

**Reading** (:class:`MemorySaliency`, a saliency source like a model: ``KeepCutout(saliency=
MemorySaliency(memory, fallback=model))``): the engine binds the batch's geometry
(:meth:`SaliencyMemory.bind`); the source returns, for every output pixel, the memory bilinearly
sampled at the source position it shows (0 off the source image), float32 B×H×W. Samples never
written get the ``fallback`` source's maps instead (a model → a fresh gradient pass, ``"spectral"``,
``"early_head"`` in recipes, or None → uniform maps); the fallback runs only for batches holding
a sample the memory has never written (decided on the host, no sync): in practice the first epoch, and
later the samples none of whose visits wrote a cell (Mixup's λ < ½, a fully erased image, an fp16 overflow step).
``last_stats["memory_fallback"]`` (B,) bool marks who fell back; the ops that take ``saliency=``
copy it into their own ``last_stats``. Every consumer of saliency in keepmix is per-image
scale-free (quantiles of window sums, sum-to-1 normalisation), so memory maps and fresh maps mix
in one batch.

**Distributed.** Each rank writes what it saw; the new rows are all-gathered every step, so every
rank holds the whole memory (identical on all ranks; rank 0 checkpoints it).
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .pairing import greedy_pairing, saliency_distance
from .saliency import NormalizedInput, as_source

if TYPE_CHECKING:  # pragma: no cover
    from .data.loader import BatchGeometry

__all__ = ["SaliencyMemory", "MemorySaliency", "MemoryPairing", "UniformSaliency", "ownership", "combine_ownership",
           "gradient_map", "source_stats", "DTYPES"]

#: storage dtypes by name
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}

_TINY = torch.finfo(torch.float32).tiny


def _loader():
    """keepmix.data.loader, imported on first use (the ops import this module; ``import keepmix`` stays
    free of the data package)."""
    from .data import loader
    return loader


def _dtype(value) -> torch.dtype:
    if isinstance(value, torch.dtype) and value in DTYPES.values():
        return value
    if isinstance(value, str) and value in DTYPES:
        return DTYPES[value]
    raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {value!r}")


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def gradient_map(grad: torch.Tensor, reduce: str = "max") -> torch.Tensor:
    """Channel reduction of an input gradient B×C×H×W: ``max_c |g|`` or ``sqrt(mean_c g²)``, float32 B×H×W."""
    if grad.ndim != 4:
        raise ValueError(f"grad must be B×C×H×W, got shape {tuple(grad.shape)}")
    g = grad.float()
    if reduce == "max":
        return g.abs().amax(dim=1)
    if reduce == "rms":
        return g.square().mean(dim=1).sqrt()
    raise ValueError(f"reduce must be 'max' or 'rms', got {reduce!r}")


def _sample(maps: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Separable bilinear sampling of maps B×H×W at rows y (B, n) × columns x (B, m), edges replicated.

    Exact at integer coordinates (the other neighbour's weight is exactly 0).
    """
    batch, height, width = maps.shape
    n, m = y.shape[1], x.shape[1]
    y = y.clamp(0, height - 1)
    y0 = y.floor()
    fy = (y - y0).unsqueeze(-1)
    y0 = y0.long()
    y1 = (y0 + 1).clamp_max(height - 1)
    top = maps.gather(1, y0.unsqueeze(-1).expand(batch, n, width))
    bottom = maps.gather(1, y1.unsqueeze(-1).expand(batch, n, width))
    rows = torch.lerp(top, bottom, fy)
    x = x.clamp(0, width - 1)
    x0 = x.floor()
    fx = (x - x0).unsqueeze(1)
    x0 = x0.long()
    x1 = (x0 + 1).clamp_max(width - 1)
    left = rows.gather(2, x0.unsqueeze(1).expand(batch, n, m))
    right = rows.gather(2, x1.unsqueeze(1).expand(batch, n, m))
    return torch.lerp(left, right, fx)


def _inside(coords: torch.Tensor, size) -> torch.Tensor:
    """Pixel-centre coordinates that fall on a grid of ``size`` pixels: −½ ≤ c < size − ½."""
    return (coords >= -0.5) & (coords < size - 0.5)


class SaliencyMemory:
    """Per-sample saliency maps of a whole training set, written by the training backward.

    See the module docstring for the maths. Args:
        num_samples: N, the training set's size (indices are 0…N−1, the loader's ``geometry.index``).
        image_size: (H, W) of the stored images (or one int); the memory grid covers this.
        scale: memory resolution as a share of the image's (1.0 default; 0.5 halves each side).
        resolution: (R_h, R_w) explicitly instead of ``scale``.
        dtype: ``"float16"`` (default), ``"bfloat16"`` or ``"float32"`` (or the torch dtype).
        device: where the maps live (the data's device).
        reduce: what is written: ``"max"`` (KeepAugment, max_c |∂ℓ/∂x|) or ``"rms"`` (Guided-AP).
        min_own: the ownership a memory cell needs to be written (½; in (0, 1]).
        supersample: S, points per cell side when writing (default ⌈image/memory⌉ per side).
        fallback: the source for samples not written yet when the memory itself is given to an op as
            ``saliency=memory`` (a model, ``"spectral"``, any source; None: flat maps) — the memory is
            then a saliency source like a model (:class:`MemorySaliency` over it).

    Attributes: ``maps`` N×R_h×R_w, ``written`` (N,) bool, ``stamp`` (N,) int32 (epoch of the last
    write, −1 never), ``epoch`` (the engine's epoch, for ages), ``current`` (the bound geometry).
    """

    def __init__(self, num_samples: int, image_size, *, scale: float = 1.0,
                 resolution: Optional[Tuple[int, int]] = None, dtype: Union[str, torch.dtype] = "float16",
                 device=None, reduce: str = "max", min_own: float = 0.5, supersample: Optional[int] = None,
                 fallback=None):
        self.num_samples = _positive_int(num_samples, "num_samples")
        if isinstance(image_size, numbers.Integral):
            image_size = (image_size, image_size)
        self.image_size = (_positive_int(image_size[0], "image_size"), _positive_int(image_size[1], "image_size"))
        if resolution is None:
            if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not 0 < scale <= 1:
                raise ValueError(f"scale must be in (0, 1], got {scale!r}")
            resolution = tuple(max(1, round(s * float(scale))) for s in self.image_size)
        self.resolution = (_positive_int(resolution[0], "resolution"), _positive_int(resolution[1], "resolution"))
        if reduce not in ("max", "rms"):
            raise ValueError(f"reduce must be 'max' (KeepAugment) or 'rms' (Guided-AP), got {reduce!r}")
        self.reduce = reduce
        if isinstance(min_own, bool) or not isinstance(min_own, numbers.Real) or not 0 < min_own <= 1:
            raise ValueError(f"min_own must be in (0, 1], got {min_own!r}")
        self.min_own = float(min_own)
        if supersample is None:
            supersample = max(-(-self.image_size[0] // self.resolution[0]), -(-self.image_size[1] // self.resolution[1]))
        self.supersample = _positive_int(supersample, "supersample")
        self.dtype = _dtype(dtype)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.maps = torch.zeros((self.num_samples, *self.resolution), dtype=self.dtype, device=self.device)
        self.written = torch.zeros(self.num_samples, dtype=torch.bool, device=self.device)
        self.stamp = torch.full((self.num_samples,), -1, dtype=torch.int32, device=self.device)
        self.epoch = 0
        self.current: Optional[BatchGeometry] = None
        self.distributed = False  # all-gather every write (set by the engine under DDP)
        self._seen = torch.zeros(self.num_samples, dtype=torch.bool)  # host: ever written (a lagging copy)
        self._pending: List[Tuple[torch.Tensor, torch.Tensor, Any]] = []  # device→host copies: indices, written
        self.reset_counters()
        self._reader = MemorySaliency(self, fallback)

    # ------------------------------------------------------------------ the memory as a saliency source
    def __call__(self, images: torch.Tensor, targets: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``saliency=memory``: the bound batch's maps, falling back as :class:`MemorySaliency` does."""
        return self._reader(images, targets)

    @property
    def last_stats(self) -> Dict[str, torch.Tensor]:
        """``memory_fallback`` of the last call as a source."""
        return self._reader.last_stats

    def set_fallback(self, fallback, *, scale: float = 1.0) -> None:
        """The source used for unwritten samples when the memory is called as a source."""
        self._reader = MemorySaliency(self, fallback, scale=scale)

    # ------------------------------------------------------------------ sizes
    @staticmethod
    def bytes_needed(num_samples: int, resolution: Tuple[int, int], dtype: Union[str, torch.dtype] = "float16") -> int:
        """``N · R_h · R_w · itemsize + 5 N`` bytes (maps, the written flags and the int32 stamps)."""
        itemsize = torch.empty((), dtype=_dtype(dtype)).element_size()
        return int(num_samples) * (int(resolution[0]) * int(resolution[1]) * itemsize + 5)

    @property
    def nbytes(self) -> int:
        return self.bytes_needed(self.num_samples, self.resolution, self.dtype)

    def __repr__(self) -> str:
        return (f"SaliencyMemory(num_samples={self.num_samples}, resolution={self.resolution}, "
                f"dtype={str(self.dtype).replace('torch.', '')}, reduce={self.reduce!r}, device={self.device})")

    # ------------------------------------------------------------------ the bound batch
    def bind(self, geometry: Optional[BatchGeometry]) -> None:
        """Make ``geometry`` the batch that :class:`MemorySaliency` sources read for (None unbinds)."""
        if geometry is not None:
            self._check_geometry(geometry)
        self.current = geometry

    def unbind(self) -> None:
        self.current = None

    @contextlib.contextmanager
    def batch(self, geometry: BatchGeometry):
        """``with memory.batch(geometry): x, y = op(x, y)`` — bind for the duration of the block."""
        previous = self.current
        self.bind(geometry)
        try:
            yield self
        finally:
            self.current = previous

    def set_epoch(self, epoch: int) -> None:
        """The epoch now running (ages are counted from it)."""
        self.epoch = int(epoch)

    def age(self, index: torch.Tensor) -> torch.Tensor:
        """Epochs since each sample was last written, int32 (B,); −1 where never written."""
        stamp = self.stamp.index_select(0, index.to(self.device))
        return torch.where(stamp >= 0, self.epoch - stamp, torch.full_like(stamp, -1))

    def _check_geometry(self, geometry: BatchGeometry) -> None:
        if not isinstance(geometry, _loader().BatchGeometry):
            raise TypeError(f"geometry must be a keepmix.data.BatchGeometry, got {type(geometry).__name__}")
        # indices checked where they are on the host (free); on a device an index out of range would be
        # a device-side assert that ends the process's use of the device
        host = geometry.host_index if geometry.host_index is not None else geometry.index
        if host.device.type == "cpu" and host.numel():
            values = host.detach().numpy()  # host memory: no device read (numpy, not aten scalar reads)
            low, high = int(values.min()), int(values.max())
            if low < 0 or high >= self.num_samples:
                raise IndexError(f"the batch's data-set indices span [{low}, {high}], outside the memory's "
                                 f"0…{self.num_samples - 1} (num_samples={self.num_samples})")

    # ------------------------------------------------------------------ host bookkeeping
    def _flush_pending(self) -> None:
        still = []
        for host, flags, event in self._pending:
            if event is None or event.query():
                self._seen[host[flags]] = True
            else:
                still.append((host, flags, event))
        self._pending = still

    def _mark_seen(self, index: torch.Tensor, written: torch.Tensor, host_index: Optional[torch.Tensor] = None
                   ) -> None:
        """Record on the host which of ``index`` are now written (``written``, on the memory's device).

        A sample passed to a write that wrote none of its cells (all pixels erased or mostly another
        image's, a non-finite gradient) stays unseen: its batches keep running the fallback.
        """
        if written.device.type == "cpu":
            self._seen[(host_index if host_index is not None else index.cpu())[written]] = True
        elif written.device.type == "cuda":  # an asynchronous copy, consulted once it has landed
            flags = torch.empty(written.shape, dtype=written.dtype, pin_memory=True)
            flags.copy_(written, non_blocking=True)
            host = host_index
            if host is None:
                host = torch.empty(index.shape, dtype=index.dtype, pin_memory=True)
                host.copy_(index, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending.append((host, flags, event))
        else:  # pragma: no cover - other accelerators: a plain copy
            self._seen[index.cpu()[written.cpu()]] = True

    def unseen(self, geometry: BatchGeometry) -> bool:
        """Whether the batch holds a sample never written (host data only, no device sync when the
        geometry has ``host_index``; a write still in flight counts as not yet made)."""
        self._flush_pending()
        host = geometry.host_index if geometry.host_index is not None else geometry.index.cpu()
        return not bool(self._seen[host].all())

    # ------------------------------------------------------------------ read
    def read(self, geometry: BatchGeometry) -> torch.Tensor:
        """The maps of the batch's samples on its output grid: float32 B×H×W (0 off the source image)."""
        self._check_geometry(geometry)
        rows = self.maps.index_select(0, geometry.index).float()
        y, x = _loader().output_to_source(geometry)
        r_h, r_w = self.resolution
        src_h = geometry.source_height.to(torch.float32).view(-1, 1)
        src_w = geometry.source_width.to(torch.float32).view(-1, 1)
        inside = _inside(y, src_h).unsqueeze(2) & _inside(x, src_w).unsqueeze(1)
        y_mem = (y + 0.5) * (r_h / src_h) - 0.5
        x_mem = (x + 0.5) * (r_w / src_w) - 0.5
        return _sample(rows, y_mem, x_mem) * inside

    def read_source(self, index: torch.Tensor) -> torch.Tensor:
        """The stored maps themselves, float32 B×R_h×R_w (the data set's coordinates)."""
        return self.maps.index_select(0, index.to(self.device)).float()

    # ------------------------------------------------------------------ write
    def _cell_points(self, geometry: BatchGeometry) -> Tuple[torch.Tensor, torch.Tensor]:
        """Source pixel-centre coordinates of the S×S points of every memory cell: (B, R_h·S), (B, R_w·S)."""
        s = self.supersample
        r_h, r_w = self.resolution
        device = geometry.top.device
        base_y = (torch.arange(r_h * s, device=device, dtype=torch.float32) + 0.5) / s
        base_x = (torch.arange(r_w * s, device=device, dtype=torch.float32) + 0.5) / s
        src_h = geometry.source_height.to(torch.float32).view(-1, 1)
        src_w = geometry.source_width.to(torch.float32).view(-1, 1)
        return base_y.view(1, -1) * (src_h / r_h) - 0.5, base_x.view(1, -1) * (src_w / r_w) - 0.5

    def write(self, geometry: BatchGeometry, maps: torch.Tensor, own: Optional[torch.Tensor] = None) -> None:
        """Write saliency maps of the batch (its output grid, B×H×W, ≥ 0) with ownership ``own``.

        ``own``: B×H×W or (B,) in [0, 1], or None (every pixel owned). Follows the rule of the
        module docstring; device work only (no host sync), all-gathered under DDP.
        """
        self._check_geometry(geometry)
        batch = geometry.index.shape[0]
        height, width = geometry.size
        if maps.shape != (batch, height, width):
            raise ValueError(f"maps must be B×H×W = {(batch, height, width)} (the geometry's), got {tuple(maps.shape)}")
        maps = maps.detach().float()
        peak = maps.amax(dim=(1, 2))
        ok = torch.isfinite(peak) & (peak > 0)
        s = torch.where(ok.view(-1, 1, 1), maps / peak.clamp_min(_TINY).view(-1, 1, 1), 0.0)
        if own is None:
            w = ok.view(-1, 1, 1).float().expand(batch, height, width)
        else:
            w = own.detach().float()
            w = w.view(-1, 1, 1).expand(batch, height, width) if w.ndim == 1 else w
            if w.shape != (batch, height, width):
                raise ValueError(f"own must be B×H×W or (B,), got {tuple(own.shape)}")
            w = w.clamp(0, 1) * ok.view(-1, 1, 1)
        y, x = self._cell_points(geometry)
        i, j = _loader().source_to_output(geometry, y, x)
        inside = (_inside(i, height).unsqueeze(2) & _inside(j, width).unsqueeze(1)).float()
        num = _sample(s * w, i, j) * inside
        den = _sample(w.contiguous(), i, j) * inside
        if self.supersample > 1:
            num = F.avg_pool2d(num.unsqueeze(1), self.supersample).squeeze(1)
            den = F.avg_pool2d(den.unsqueeze(1), self.supersample).squeeze(1)
        value = num / den.clamp_min(_TINY)
        writes = den >= self.min_own
        self._store(geometry.index, value, writes, geometry.host_index)

    def record_gradient(self, geometry: BatchGeometry, grad: torch.Tensor, own: Optional[torch.Tensor] = None
                        ) -> None:
        """Write the channel-reduced input gradient ``grad`` (B×C×H×W, what ``x.grad`` holds after the
        step's backward) — :func:`gradient_map` with the memory's ``reduce`` — see :meth:`write`."""
        if grad is None:
            raise ValueError("no input gradient: set requires_grad on the model's input before the backward")
        self.write(geometry, gradient_map(grad, self.reduce), own)

    def _store(self, index: torch.Tensor, value: torch.Tensor, writes: torch.Tensor,
               host_index: Optional[torch.Tensor]) -> None:
        old = self.maps.index_select(0, index).float()
        count = writes.sum(dim=(1, 2))
        wrote = count > 0
        first = ~self.written.index_select(0, index)
        fill = (value * writes).sum(dim=(1, 2)) / count.clamp_min(1)
        base = torch.where(first.view(-1, 1, 1), fill.view(-1, 1, 1), old)
        new = torch.where(writes, value, base)
        new = torch.where(wrote.view(-1, 1, 1), new, old).to(self.dtype)
        new_written = self.written.index_select(0, index) | wrote
        old_stamp = self.stamp.index_select(0, index)
        new_stamp = torch.where(wrote, torch.full_like(old_stamp, self.epoch), old_stamp)
        if self.distributed and _world_size() > 1:
            index, new, new_written, new_stamp = _all_gather_rows(index, new, new_written, new_stamp)
            host_index = None
        self._mark_seen(index, new_written, host_index)
        self.maps.index_copy_(0, index, new)
        self.written.index_copy_(0, index, new_written)
        self.stamp.index_copy_(0, index, new_stamp)

    # ------------------------------------------------------------------ counters (per epoch, on the device)
    def reset_counters(self) -> None:
        """Zero the read counters (the engine does at every epoch's start)."""
        self._counts = torch.zeros(3, device=self.device)

    def count_reads(self, fell_back: torch.Tensor, index: Optional[torch.Tensor] = None) -> None:
        """Count a read of ``fell_back.numel()`` samples (and the age of those read from the memory)."""
        fell_back = fell_back.to(self.device)
        age = torch.zeros((), device=self.device)
        if index is not None:
            age = torch.where(fell_back, 0, self.age(index)).float().sum()
        self._counts = self._counts + torch.stack([torch.full((), float(fell_back.numel()), device=self.device),
                                                   fell_back.float().sum(), age])

    def counters(self) -> torch.Tensor:
        """``[samples read, of them fell back, Σ age of the maps read from memory, samples written so far]``
        (float32, on the memory's device; the first three since :meth:`reset_counters`)."""
        return torch.cat([self._counts, self.written.float().sum().view(1)])

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> Dict[str, Any]:
        """Tensors and plain data (loads with ``weights_only=True``)."""
        self._flush_pending()
        for _, _, event in self._pending:  # a checkpoint is a sync point anyway
            if event is not None:
                event.synchronize()
        self._flush_pending()
        return {"maps": self.maps, "written": self.written, "stamp": self.stamp, "seen": self._seen.clone(),
                "epoch": self.epoch, "resolution": list(self.resolution), "num_samples": self.num_samples,
                "dtype": str(self.dtype).replace("torch.", ""), "reduce": self.reduce}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the size, resolution, dtype and reduction must match."""
        for key, mine in (("num_samples", self.num_samples), ("resolution", list(self.resolution)),
                          ("dtype", str(self.dtype).replace("torch.", "")), ("reduce", self.reduce)):
            if state.get(key) != mine:
                raise ValueError(f"the saved memory has {key}={state.get(key)!r}, this one {mine!r}")
        self.maps.copy_(state["maps"])
        self.written.copy_(state["written"])
        self.stamp.copy_(state["stamp"])
        self._seen = state["seen"].to("cpu", torch.bool) & self.written.to("cpu")  # saved before: ever passed
        self._pending = []
        self.epoch = int(state["epoch"])


def _world_size() -> int:
    import torch.distributed as dist
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_gather(tensor: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def _all_gather_rows(index, rows, written, stamp):
    """Every rank's new rows (equal batch sizes on every rank), as raw bits so any backend carries them."""
    gathered_rows = _all_gather(rows.contiguous().view(torch.uint8)).view(rows.dtype)
    return (_all_gather(index), gathered_rows, _all_gather(written.to(torch.uint8)).bool(), _all_gather(stamp))


# --------------------------------------------------------------------------- reading: the source


class UniformSaliency:
    """Saliency source of flat maps (ones, float32 B×H×W): no information, no cost. The ops treat a flat
    map as they always do (KeepCutout draws uniformly and reports ``fallback``; GuidedMixup mixes ½–½)."""

    def __call__(self, images: torch.Tensor, targets: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, _, height, width = images.shape
        return torch.ones((batch, height, width), device=images.device)

    def __repr__(self) -> str:
        return "UniformSaliency()"


class MemorySaliency:
    """Saliency source reading a :class:`SaliencyMemory` at the bound batch's geometry.

    ``source(images, targets) -> maps`` float32 B×H×W like any source: give it to an op as
    ``saliency=`` (``KeepCutout``, ``KeepRandomErasing``, ``KeepCutMix``, ``SelectivePaste`` and
    the Keep policies, ``GuidedMixup``, ``SaliencyMix``) or wrap it in :class:`MemoryPairing` for
    a mixer's greedy pairing. The batch's :class:`~keepmix.data.BatchGeometry` must be bound
    (:meth:`SaliencyMemory.bind`; the engine does it); without one every sample falls back.

    Args:
        memory: the :class:`SaliencyMemory`.
        fallback: the source for samples never written: a model (fresh gradient saliency with the
            memory's ``reduce``), an :class:`~keepmix.saliency.EarlyHead`, ``"spectral"``, any
            source callable, or None / ``"uniform"`` (flat maps, free).
        scale: resolution factor of a model fallback's gradient pass.

    ``last_stats["memory_fallback"]`` (B,) bool: samples that got the fallback's maps (or flat
    ones) this call. Images are not looked at except by the fallback.
    """

    def __init__(self, memory: SaliencyMemory, fallback=None, *, scale: float = 1.0):
        if not isinstance(memory, SaliencyMemory):
            raise TypeError(f"memory must be a SaliencyMemory, got {type(memory).__name__}")
        self.memory = memory
        if isinstance(fallback, str) and fallback == "uniform":
            fallback = None
        self.fallback = as_source(fallback, reduce=memory.reduce, scale=scale)
        self.last_stats: Dict[str, torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"MemorySaliency(fallback={self.fallback!r})"

    def __call__(self, images: torch.Tensor, targets: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, _, height, width = images.shape
        geometry = self.memory.current
        if geometry is None:
            maps = self.fallback(images, targets) if self.fallback is not None else UniformSaliency()(images)
            flags = torch.ones(batch, dtype=torch.bool, device=images.device)
        else:
            if geometry.index.shape[0] != batch or tuple(geometry.size) != (height, width):
                raise ValueError(f"the bound geometry describes {geometry.index.shape[0]} images of "
                                 f"{tuple(geometry.size)}, the op got {batch} of {(height, width)}")
            maps = self.memory.read(geometry).to(images.device)
            flags = ~self.memory.written.index_select(0, geometry.index).to(images.device)
            if self.fallback is not None and self.memory.unseen(geometry):
                fresh = self.fallback(images, targets)
                maps = torch.where(flags.view(-1, 1, 1), fresh.to(maps.dtype), maps)
        self.memory.count_reads(flags, None if geometry is None else geometry.index)
        self.last_stats = {"memory_fallback": flags}
        return maps


class MemoryPairing:
    """``pairing=MemoryPairing(source)``: GuidedMixup's greedy farthest-first pairing on memory maps.

    For the mixers whose greedy pairing otherwise runs on spectral-residual maps (Mixup, CutMix,
    Manifold Mixup): the mixer asks ``pairing.saliency`` for the batch's maps (a
    :class:`MemorySaliency`, or a :class:`SaliencyMemory` wrapped in one with ``fallback``),
    blurs and normalises them as always, and calls ``pairing(maps)`` → partner (B,) int64.
    Mixers that pass their own maps (SaliencyMix, SnapMix…) pair on those; give them
    ``saliency=`` a memory source instead.
    """

    def __init__(self, source, fallback="spectral"):
        if isinstance(source, SaliencyMemory):  # its own fallback when it has one, else ``fallback``
            source = source._reader if source._reader.fallback is not None else MemorySaliency(source, fallback)
        if not isinstance(source, MemorySaliency):
            raise TypeError(f"source must be a MemorySaliency or a SaliencyMemory, got {type(source).__name__}")
        self.saliency = source

    @property
    def last_stats(self) -> Dict[str, torch.Tensor]:
        return self.saliency.last_stats

    def __call__(self, maps: torch.Tensor) -> torch.Tensor:
        return greedy_pairing(saliency_distance(maps))

    def __repr__(self) -> str:
        return f"MemoryPairing({self.saliency!r})"


def source_stats(source, saliency_maps: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """What a memory source reports about its last call (``memory_fallback``), for an op's ``last_stats``.

    Empty when the op was given precomputed ``saliency_maps`` (the source did not run) or its
    source is not a memory.
    """
    if saliency_maps is not None:
        return {}
    while isinstance(source, NormalizedInput):
        source = source.source
    if isinstance(source, (MemorySaliency, SaliencyMemory)):
        return dict(source.last_stats)
    return {}


# --------------------------------------------------------------------------- ownership


def ownership(op: Any, before: torch.Tensor, after: torch.Tensor) -> Optional[torch.Tensor]:
    """The share of each output pixel of ``op`` that is its input image's own pixel at that place.

    float32 B×H×W in [0, 1], or None for "all of it" (the op returned its input). An op that blends
    declares it as ``last_stats["own"]`` (B×H×W, or (B,) for a whole-image share); otherwise a
    pixel is owned exactly when every channel is unchanged (erasing, filling, pasting another
    image's box and moving content all change it).
    """
    stats = getattr(op, "last_stats", None)
    if isinstance(stats, Mapping) and "own" in stats:
        declared = stats["own"].float()
        batch, _, height, width = after.shape
        return declared.view(-1, 1, 1).expand(batch, height, width) if declared.ndim == 1 else declared
    if after is before:
        return None
    if after.shape != before.shape:
        raise ValueError(f"an op changed the batch's shape ({tuple(before.shape)} -> {tuple(after.shape)}): "
                         "the saliency memory cannot follow its pixels")
    return (after == before).all(dim=1).float()


def combine_ownership(own: Optional[torch.Tensor], step: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Ownership through two ops in a row: the product (None means 1)."""
    if own is None:
        return step
    if step is None:
        return own
    return own * step
