"""Per-sample dispatch of image ops and the magnitude tables the policies share.

A policy draws, for every image, an op (an index into its list of op names)
and a magnitude; :func:`apply_per_sample` then runs each op once, on the images
that drew it, and puts the results back in place. The loop is over the op
types present (at most a few dozen), never over samples, and the only host
read is the vector of op counts (one sync per call).
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

    Images are sorted by op (stable), each contiguous group goes through its op in
    one batched call, and the results are scattered back to their places.
    """
    count = len(op_names)
    counts = torch.bincount(op_index, minlength=count).tolist()  # the one sync
    if len(counts) != count:
        raise ValueError(f"op_index must lie in [0, {count}), got a larger index")
    present = [k for k, n in enumerate(counts) if n > 0]
    if len(present) == 1:
        return OPS[op_names[present[0]]](images, magnitude, fill, interpolation)
    order = torch.argsort(op_index, stable=True)
    sorted_images = images.index_select(0, order)
    sorted_magnitude = magnitude.index_select(0, order)
    pieces = []
    start = 0
    for k in present:
        n = counts[k]
        pieces.append(OPS[op_names[k]](sorted_images.narrow(0, start, n), sorted_magnitude.narrow(0, start, n),
                                       fill, interpolation))
        start += n
    return torch.empty_like(images).index_copy_(0, order, torch.cat(pieces))


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

    def __init__(self, fill, interpolation: str, generator: Optional[torch.Generator]):
        super().__init__(check_generator(generator))
        self.fill = F.check_fill(fill)
        self.interpolation = F._check_interpolation(interpolation)

    def _check_channels(self, images: torch.Tensor) -> None:
        channels = images.shape[1]
        if channels not in (1, 3) and GRAYSCALE_OPS.intersection(self.op_names):
            raise ValueError(f"images must have 1 or 3 channels for {type(self).__name__} "
                             f"(it uses {sorted(GRAYSCALE_OPS.intersection(self.op_names))}), got {channels}")
        if isinstance(self.fill, tuple) and len(self.fill) != channels:
            raise ValueError(f"fill has {len(self.fill)} values but the images have {channels} channels")

    def _run(self, images: torch.Tensor, op_index: torch.Tensor, magnitude: torch.Tensor,
             fill: torch.Tensor) -> torch.Tensor:
        return apply_per_sample(images, op_index, magnitude, self.op_names, fill, self.interpolation)

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
