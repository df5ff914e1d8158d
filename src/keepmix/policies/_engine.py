"""Per-sample execution of image ops, and the magnitude tables the policies share.

A policy draws, for every image, an op (an index into its list of op names) and a magnitude, and
runs the plan through one of two engines that give the same batch bit for bit
(``tests/test_policy_engine.py``):

* :func:`apply_per_sample` (**dispatch**) runs each op type once, on the images that drew it, and
  puts the results back in place. The loop is over the op types present (at most a few dozen),
  never over samples; it reads the vector of op counts back once per step (a host sync) and its
  operator count follows the op types a batch drew. Each image gets exactly its op's work.
* :func:`fused_step` (**fused**) runs a fixed sequence of batched passes — one affine resampling,
  one 256-level table per image and channel, one blend — on every image and selects per image.
  No host sync, an operator count fixed by the op list (~210 per step), one graph under
  ``torch.compile(fullgraph=True)``; every image pays for all three families.

``engine="auto"`` (the policies' default) takes the fused step on accelerators and under
``torch.compile``, where kernel launches and host syncs are what cost, and the dispatch on the CPU,
where a sync is free and work is what costs (the fused step is 5–15× slower there).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from .._checks import check_generator
from ..protocol import Op
from . import functional as F

OpImpl = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, str], torch.Tensor]

#: name → batched implementation ``(images, magnitude (B,), fill 1×C×1×1, interpolation) -> images``
OPS: Dict[str, OpImpl] = {
    "identity": lambda x, m, fill, interp: x,
    "auto_contrast": lambda x, m, fill, interp: F._auto_contrast(x),
    "equalize": lambda x, m, fill, interp: F._equalize(x),
    "invert": lambda x, m, fill, interp: F._invert(x),
    "posterize": lambda x, m, fill, interp: F._posterize(x, m),
    "solarize": lambda x, m, fill, interp: F._solarize(x, m),
    "solarize_add": lambda x, m, fill, interp: F._solarize_add(x, m, torch.full_like(m, 128.0)),
    "brightness": lambda x, m, fill, interp: F._brightness(x, m),
    "color": lambda x, m, fill, interp: F._color(x, m),
    "contrast": lambda x, m, fill, interp: F._contrast(x, m),
    "sharpness": lambda x, m, fill, interp: F._sharpness(x, m),
    "rotate": F._rotate,
    "shear_x": F._shear_x,
    "shear_y": F._shear_y,
    "translate_x": F._translate_x,
    "translate_y": F._translate_y,
}

#: ops defined through a grayscale image (need 1 or 3 channels)
GRAYSCALE_OPS = frozenset({"color", "contrast"})


def apply_per_sample(images: torch.Tensor, op_index: torch.Tensor, magnitude: torch.Tensor,
                     op_names: Sequence[str], fill: torch.Tensor, interpolation: str) -> torch.Tensor:
    """``out[i] = OPS[op_names[op_index[i]]](images[i], magnitude[i])`` for every image ``i``.

    Args:
        images: B×C×H×W, uint8 or float.
        op_index: (B,) int64 indices into ``op_names``.
        magnitude: (B,) float32, the argument of each image's op.
        op_names: names of :data:`OPS`.
        fill: 1×C×1×1 fill in the images' dtype (geometric ops).
        interpolation: ``"nearest"`` or ``"bilinear"`` (geometric ops).

    Images are grouped by op (a stable argsort; the group sizes are the one host read), each
    group is gathered and goes through its op in one batched call, and one gather by the inverse
    permutation puts the results back in place (gathers are fast where scattered writes such as
    ``index_copy_`` are not); images whose op is the identity are only copied. On the CPU a group
    runs in chunks of about :data:`CPU_CHUNK_ELEMENTS` values: the ops make a dozen full-size
    float temporaries, and a chunk's stay in cache (bilinear rotation of 64 images at 224 px:
    570 ms in one piece, 115 ms in pieces of one or two images).
    """
    count = len(op_names)
    counts = torch.bincount(op_index, minlength=count).tolist()  # the one sync
    if len(counts) != count:
        raise ValueError(f"op_index must lie in [0, {count}), got a larger index")
    present = [k for k, n in enumerate(counts) if n > 0]
    if len(present) == 1:
        return OPS[op_names[present[0]]](images, magnitude, fill, interpolation)
    order = torch.argsort(op_index, stable=True)
    chunk = chunk_size(images)
    pieces = []  # the results in sorted order, then one gather puts every image back in its place
    start = 0
    for k in present:
        group = order.narrow(0, start, counts[k])
        start += counts[k]
        if op_names[k] == "identity":  # copied, never computed
            pieces.append(images.index_select(0, group))
            continue
        for part in group.split(chunk):
            pieces.append(OPS[op_names[k]](images.index_select(0, part), magnitude.index_select(0, part),
                                           fill, interpolation))
    inverse = torch.empty_like(order).scatter_(0, order, torch.arange(order.shape[0], device=order.device))
    return torch.cat(pieces).index_select(0, inverse)


#: values per chunk of the CPU dispatch (see :func:`apply_per_sample`)
CPU_CHUNK_ELEMENTS = 2 ** 18


def chunk_size(images: torch.Tensor) -> int:
    """Images per chunk for per-pixel work on this batch: about :data:`CPU_CHUNK_ELEMENTS` values on the
    CPU (cache-sized temporaries), the whole batch on accelerators (where a chunk is a kernel launch)."""
    if images.device.type != "cpu" or images.shape[0] == 0:
        return max(1, images.shape[0])
    return max(1, CPU_CHUNK_ELEMENTS // max(1, images[0].numel()))


GEOMETRIC_OPS = frozenset({"rotate", "shear_x", "shear_y", "translate_x", "translate_y"})
#: blends ``d + f·(x − d)`` against a degenerate image (black, grayscale, grayscale mean, smoothed)
BLEND_OPS = ("brightness", "color", "contrast", "sharpness")
#: ops on 8-bit levels: a 256-entry table per image and channel on uint8 images
LEVEL_OPS = ("invert", "posterize", "solarize", "solarize_add", "auto_contrast", "equalize")
ENGINES = ("auto", "dispatch", "fused")

# where a geometric op's magnitude enters the 2×3 matrix (row-major index, coefficient)
_MATRIX_ENTRY = {"shear_x": (1, 1.0), "shear_y": (3, 1.0), "translate_x": (2, -1.0), "translate_y": (5, -1.0)}
_CONSTANTS: Dict[Tuple, Dict[str, torch.Tensor]] = {}


def _constants(op_names: Tuple[str, ...], device: torch.device) -> Dict[str, torch.Tensor]:
    """Per-op lookup tables of the fused step for one op list, cached per device."""
    key = (op_names, str(device))
    if key not in _CONSTANTS:  # a dict of tables per op list (functional._device_constant holds one tensor)
        count = len(op_names)
        coefficient = torch.zeros(count, 6)
        for k, name in enumerate(op_names):
            if name in _MATRIX_ENTRY:
                entry, value = _MATRIX_ENTRY[name]
                coefficient[k, entry] = value
        flags = {name: torch.tensor([n == name for n in op_names]) for name in set(op_names) | set(LEVEL_OPS)}
        blend = torch.tensor([n in BLEND_OPS for n in op_names])
        # (scale, offset, low, high) of _pointwise_table: base + coefficient·magnitude
        level_base = torch.tensor([[1.0, 0.0, 256.0, 256.0]]).repeat(count, 1)
        level_coefficient = torch.zeros(count, 4)
        for k, name in enumerate(op_names):
            if name == "invert":
                level_base[k] = torch.tensor([-1.0, 255.0, 0.0, 256.0])
            elif name == "solarize":
                level_base[k] = torch.tensor([-1.0, 255.0, 0.0, 256.0])
                level_coefficient[k, 2] = 1.0
            elif name == "solarize_add":
                level_base[k] = torch.tensor([1.0, 0.0, 0.0, 128.0])
                level_coefficient[k, 1] = 1.0
        table = {"coefficient": coefficient, "identity": torch.tensor([1.0, 0, 0, 0, 1, 0]),
                 "blend": blend, "level_base": level_base, "level_coefficient": level_coefficient}
        table.update({f"is_{name}": flag for name, flag in flags.items()})
        _CONSTANTS[key] = {k: v.to(device) for k, v in table.items()}
    return _CONSTANTS[key]


def fused_step(images: torch.Tensor, op_index: torch.Tensor, magnitude: torch.Tensor,
               op_names: Sequence[str], fill: torch.Tensor, interpolation: str) -> torch.Tensor:
    """The same result as :func:`apply_per_sample`, as a fixed sequence of batched passes.

    No host sync, no loop over op types that depends on the draws, and an operator count that
    depends only on ``op_names`` (not on the batch or on which ops it drew), so it compiles to
    one graph and launches the same kernels for every batch. Each image has exactly one op, and
    the families compose without touching each other's images:

    1. **geometry** — every image through one affine resampling (:func:`functional._affine`):
       image i's 2×3 matrix is its op's (rotation, shear, translation) or the identity, which
       samples every pixel at its own centre and returns it exactly (nearest and bilinear);
    2. **levels** (uint8) — invert, posterize, solarize, solarize_add, autocontrast and
       equalize are per-channel maps of the 256 levels: their tables are built for every image
       (B×C×256: one parametric table for the first four, :func:`_pointwise_table`, and tables
       from the image's extremes or histogram for the last two), the image's own op picks one
       (the identity table for other ops), and one gather applies it. Float images take each level op on the whole batch and a select;
    3. **blends** — brightness, color, contrast and sharpness are ``d + f·(x − d)`` with a
       per-image degenerate image ``d`` (black, grayscale, grayscale mean, smoothed): one blend
       with ``d`` selected per image.

    Every op is the functional one on the same arithmetic, so the result equals
    :func:`apply_per_sample` bit for bit (tested on every op, dtype and interpolation). The price
    is work: every family runs on every image (about 3–6 passes over the batch per step where
    the dispatch does one op's), which a GPU absorbs and a CPU does not — hence ``engine="auto"``.
    """
    names = tuple(op_names)
    c = _constants(names, images.device)
    batch, channels, height, width = images.shape
    present = set(names)
    out = images
    if present & GEOMETRIC_OPS:
        matrix = c["identity"] + c["coefficient"][op_index] * magnitude.unsqueeze(1)
        if "rotate" in present:
            is_rotate = c["is_rotate"][op_index]
            rotation = F._rotate_matrix(magnitude * is_rotate, height, width).view(batch, 6)
            matrix = torch.where(is_rotate.unsqueeze(1), rotation, matrix)
        out = F._affine(out, matrix.view(batch, 2, 3), fill, interpolation)
    levels = [n for n in LEVEL_OPS if n in present]
    if levels:
        out = _level_ops(out, op_index, magnitude, levels, c)
    blends = [n for n in BLEND_OPS if n in present]
    if blends:
        work, _ = F._work(out)
        degenerate = torch.zeros_like(work) if "brightness" in present else None
        gray = F._grayscale(out, work, "color") if ("color" in present or "contrast" in present) else None

        def choose(name, value):
            flag = c[f"is_{name}"][op_index].view(batch, 1, 1, 1)
            return value if degenerate is None else torch.where(flag, value, degenerate)

        if "contrast" in present:
            degenerate = choose("contrast", F._contrast_mean(out, gray).expand_as(work))
        if "color" in present:
            degenerate = choose("color", gray.expand_as(work))
        if "sharpness" in present:
            degenerate = choose("sharpness", F._smoothed(out, work))
        blended = F._blend(degenerate, work, magnitude, out)
        out = torch.where(c["blend"][op_index].view(batch, 1, 1, 1), blended, out)
    return out


def _level_ops(images: torch.Tensor, op_index: torch.Tensor, magnitude: torch.Tensor,
               levels: Sequence[str], c: Dict[str, torch.Tensor]) -> torch.Tensor:
    batch, channels, height, width = images.shape
    if images.dtype != torch.uint8:
        out = images
        for name in levels:  # fixed by the op list, not by the draws
            flag = c[f"is_{name}"][op_index].view(batch, 1, 1, 1)
            out = torch.where(flag, OPS[name](images, magnitude, None, "nearest"), out)
        return out
    planes = images.reshape(batch * channels, height * width).long()
    ramp = _ramp(images.device)
    tables = [_pointwise_table(ramp, op_index, magnitude, c).expand(batch, channels, 256)]
    if "auto_contrast" in levels:
        low, high = images.amin(dim=(2, 3)), images.amax(dim=(2, 3))
        table = F._auto_contrast_table(low, high).view(batch, channels, 256)
        tables.append(torch.where(c["is_auto_contrast"][op_index].view(batch, 1, 1), table, tables[-1]))
    if "equalize" in levels:
        table = F._equalize_table(planes).to(torch.uint8).view(batch, channels, 256)
        tables.append(torch.where(c["is_equalize"][op_index].view(batch, 1, 1), table, tables[-1]))
    return tables[-1].reshape(batch * channels, 256).gather(1, planes).view(batch, channels, height, width)


def _pointwise_table(ramp: torch.Tensor, op_index: torch.Tensor, magnitude: torch.Tensor,
                     c: Dict[str, torch.Tensor]) -> torch.Tensor:
    """B×1×256 uint8 table of invert, posterize, solarize and solarize_add (identity for other ops).

    One form covers the four, with per-image parameters (mask, s, a, lo, hi) from the op and its
    magnitude: ``y = v & mask``, then ``y = round(clamp(s·v + a, 0, 255))`` where ``lo ≤ v < hi``.
    invert: s = −1, a = 255 on [0, 256); solarize(t): the same on [t, 256); solarize_add(a):
    s = 1 on [0, 128); posterize(bits): mask = 255 >> (8 − bits) << (8 − bits), no range. The
    arithmetic is that of the functional ops on integer levels, so the tables equal theirs.
    """
    params = c["level_base"][op_index] + c["level_coefficient"][op_index] * magnitude.unsqueeze(1)
    scale, offset, low, high = params.view(-1, 4, 1, 1).unbind(1)
    shift = (8 - magnitude.round().long()).clamp(0, 8)
    mask = torch.where(c["is_posterize"][op_index], (255 >> shift) << shift, 255).view(-1, 1, 1).to(torch.uint8)
    v = ramp.view(1, 1, 256)
    level = v.float()
    inside = (level >= low) & (level < high)
    mapped = (scale * level + offset).clamp_(0.0, 255.0).round_().to(torch.uint8)
    return torch.where(inside, mapped, v & mask)


def _ramp(device: torch.device) -> torch.Tensor:
    """Cached uint8 levels 0…255 as a 1×1×1×256 image on ``device``."""
    return F._device_constant("ramp_u8", device,
                              lambda d: torch.arange(256, dtype=torch.uint8, device=d).view(1, 1, 1, 256))


def use_fused(images: torch.Tensor, engine: str) -> bool:
    """Whether ``engine`` runs the fused step for this batch (``"auto"``: on accelerators and under compile)."""
    if engine == "auto":
        return images.device.type != "cpu" or torch.compiler.is_compiling()
    return engine == "fused"


@dataclass(frozen=True)
class MagnitudeRange:
    """How a magnitude level maps to an op's argument.

    ``value = low + (high − low)·level / denominator``, then rounded (``"none"``,
    ``"round"`` half up, ``"floor"``, ``"ceil"``); a ``signed`` op is reflected
    about ``low`` (``2·low − value``) when the image's sign coin says so — e.g.
    rotate ±θ about 0, an enhance factor 1 ± δ about 1.
    """

    low: float = 0.0
    high: float = 0.0
    rounding: str = "none"
    signed: bool = False


_ROUNDING_CODES = {"none": 0, "round": 1, "floor": 2, "ceil": 3}


def magnitude_values(op_index: torch.Tensor, level: torch.Tensor, denominator: float,
                     negate: torch.Tensor, ranges: Sequence[MagnitudeRange]) -> torch.Tensor:
    """Per-sample op arguments (float32, shape of ``op_index``) from levels and sign coins.

    Computed in float32 on the device (no float64: MPS has none). The product is formed before
    the division, and IEEE division is correctly rounded, so a value whose exact result is a
    whole number comes out exactly whole before rounding.
    """
    device = op_index.device
    dtype = torch.float32
    lows = torch.tensor([r.low for r in ranges], dtype=dtype, device=device)[op_index]
    highs = torch.tensor([r.high for r in ranges], dtype=dtype, device=device)[op_index]
    codes = torch.tensor([_ROUNDING_CODES[r.rounding] for r in ranges], device=device)[op_index]
    signed = torch.tensor([r.signed for r in ranges], dtype=torch.bool, device=device)[op_index]
    value = lows + (highs - lows) * level.to(dtype) / float(denominator)
    value = torch.where(codes == 1, torch.floor(value + 0.5), value)
    value = torch.where(codes == 2, torch.floor(value), value)
    value = torch.where(codes == 3, torch.ceil(value), value)
    value = torch.where(signed & negate, 2.0 * lows - value, value)
    return value.float()


def check_int(value, name: str, *, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return value


def check_real(value, name: str, *, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (low <= value <= high):
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value}")
    return value


class ImagePolicy(Op):
    """Base of the image-level policies: fill, interpolation, the op list and the dispatch.

    Policies are label-preserving: ``apply`` returns the targets object unchanged.
    They expect un-normalised images (uint8 0–255, or float in [0, 1]);
    normalise afterwards. After each call ``last_stats`` holds the plan that was
    applied (device tensors): ``op_index`` (indices into ``op_names``) and
    ``magnitude`` (the op arguments), plus policy-specific entries.
    """

    op_names: Tuple[str, ...] = ()

    def __init__(self, fill, interpolation: str, generator: Optional[torch.Generator], engine: str = "auto"):
        super().__init__(check_generator(generator))
        self.fill = F.check_fill(fill)
        self.interpolation = F._check_interpolation(interpolation)
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        self.engine = engine

    def _check_channels(self, images: torch.Tensor) -> None:
        channels = images.shape[1]
        if channels not in (1, 3) and GRAYSCALE_OPS.intersection(self.op_names):
            raise ValueError(f"images must have 1 or 3 channels for {type(self).__name__} "
                             f"(it uses {sorted(GRAYSCALE_OPS.intersection(self.op_names))}), got {channels}")
        if isinstance(self.fill, tuple) and len(self.fill) != channels:
            raise ValueError(f"fill has {len(self.fill)} values but the images have {channels} channels")

    def _run(self, images: torch.Tensor, op_index: torch.Tensor, magnitude: torch.Tensor,
             fill: torch.Tensor) -> torch.Tensor:
        run = fused_step if use_fused(images, self.engine) else apply_per_sample
        return run(images, op_index, magnitude, self.op_names, fill, self.interpolation)

    def _apply_sequence(self, images: torch.Tensor, steps: int) -> torch.Tensor:
        """Draw a plan (``sample_plan``: op_index/magnitude B×steps) and run its steps in order."""
        self._check_channels(images)
        batch, _, height, width = images.shape
        plan = self.sample_plan(batch, height, width, images.device)
        fill = F.fill_tensor(self.fill, images)
        out = images
        for step in range(steps):
            out = self._run(out, plan["op_index"][:, step], plan["magnitude"][:, step], fill)
        self.last_stats = plan
        return out.clone() if out is images else out
