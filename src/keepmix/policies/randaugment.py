"""RandAugment (Cubuk et al., CVPR-W 2020) and TrivialAugment Wide (Müller & Hutter, ICCV 2021).

Both draw the op (uniformly over the 14 ops of the RandAugment paper) and its
sign independently for every image — and, for TrivialAugment, the magnitude
too — so one call applies different ops and magnitudes to different images.

Magnitude ``m`` on ``num_magnitude_bins`` levels is read as the fraction
``f = m / (bins − 1)`` of each op's range; every op gets stronger with ``m``:

=====================  ===========================  ==========================
op                     RandAugment                  TrivialAugment Wide
=====================  ===========================  ==========================
shear_x / shear_y      ±0.3·f                       ±0.99·f
translate_x / _y       ±(150/331)·size·f, whole px  ±32·f pixels, whole px
rotate                 ±30°·f                       ±135°·f
color, contrast,       1 ± 0.9·f                    1 ± 0.99·f
brightness, sharpness
posterize              8 − round(4f) bits           8 − round(6f) bits
solarize               threshold 256·(1 − f)        threshold 256·(1 − f)
identity, auto_contrast, equalize: no magnitude
=====================  ===========================  ==========================

(± is a fair coin per image and op application. torchvision's tables are the
same except that its solarize threshold runs 255 → 0, which inverts pure white
at magnitude 0; here magnitude 0 leaves every op at the identity or at its
mildest setting.)
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch

from .. import _random
from . import functional as F
from ._engine import ImagePolicy, MagnitudeRange, check_int, check_real, magnitude_values

#: the 14 ops of the RandAugment paper
RANDAUGMENT_OPS = (
    "identity", "auto_contrast", "equalize", "rotate", "solarize", "color", "posterize",
    "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y",
)


def _ranges(names: Sequence[str], height: int, width: int, *, wide: bool) -> Sequence[MagnitudeRange]:
    shear, rotate, enhance, bits = (0.99, 135.0, 0.99, 6.0) if wide else (0.3, 30.0, 0.9, 4.0)
    translate_x = 32.0 if wide else 150.0 / 331.0 * width
    translate_y = 32.0 if wide else 150.0 / 331.0 * height
    table = {
        "shear_x": MagnitudeRange(0.0, shear, signed=True),
        "shear_y": MagnitudeRange(0.0, shear, signed=True),
        "translate_x": MagnitudeRange(0.0, translate_x, "floor", signed=True),
        "translate_y": MagnitudeRange(0.0, translate_y, "floor", signed=True),
        "rotate": MagnitudeRange(0.0, rotate, signed=True),
        "color": MagnitudeRange(1.0, 1.0 + enhance, signed=True),
        "contrast": MagnitudeRange(1.0, 1.0 + enhance, signed=True),
        "brightness": MagnitudeRange(1.0, 1.0 + enhance, signed=True),
        "sharpness": MagnitudeRange(1.0, 1.0 + enhance, signed=True),
        "posterize": MagnitudeRange(8.0, 8.0 - bits, "round"),
        "solarize": MagnitudeRange(256.0, 0.0),
    }
    return [table.get(name, MagnitudeRange()) for name in names]


class RandAugment(ImagePolicy):
    """RandAugment: ``num_ops`` ops per image, each drawn uniformly from the 14, at magnitude ``magnitude``.

    Args:
        num_ops: N, ops applied in sequence to every image (≥ 0; drawn with replacement).
        magnitude: M in ``[0, num_magnitude_bins − 1]`` (a real number is allowed).
        num_magnitude_bins: levels of the magnitude scale (≥ 2; 31 as in torchvision,
            i.e. M on the paper's 0–30 scale).
        magnitude_std: timm's magnitude noise: when > 0 each image and op draws
            ``m ~ N(M, std²)`` clipped to ``[0, bins − 1]``; ``float('inf')`` draws
            ``m ~ U[0, M]``; 0 keeps ``m = M``.
        fill: 0–255 fill of the geometric ops (number or per channel), default 128.
        interpolation: ``"nearest"`` or ``"bilinear"``.
        generator: optional ``torch.Generator``.
        engine: ``"auto"`` (fused step on accelerators and under ``torch.compile``, per-op-type
            dispatch on the CPU), ``"fused"`` or ``"dispatch"``; same result for every choice
            (:mod:`keepmix.policies._engine`).

    Images B×C×H×W, uint8 or float in [0, 1], 1 or 3 channels, un-normalised;
    output of the same dtype; targets returned unchanged. ``last_stats``:
    ``op_index`` (B, N) into :data:`RANDAUGMENT_OPS`, ``level`` (B, N) and
    ``magnitude`` (B, N), the op arguments.
    """

    op_names = RANDAUGMENT_OPS

    def __init__(self, num_ops: int = 2, magnitude: float = 9, num_magnitude_bins: int = 31,
                 magnitude_std: float = 0.0, fill=128, interpolation: str = "nearest",
                 generator: Optional[torch.Generator] = None, engine: str = "auto"):
        super().__init__(fill, interpolation, generator, engine)
        self.num_ops = check_int(num_ops, "num_ops", low=0)
        self.num_magnitude_bins = check_int(num_magnitude_bins, "num_magnitude_bins", low=2)
        self.magnitude = check_real(magnitude, "magnitude", low=0.0, high=float(self.num_magnitude_bins - 1))
        self.magnitude_std = check_real(magnitude_std, "magnitude_std", low=0.0, high=math.inf)

    def sample_plan(self, batch_size: int, height: int, width: int, device) -> Dict[str, torch.Tensor]:
        """Draw ops, levels and signs, each of shape (batch_size, num_ops)."""
        device = torch.device(device)
        shape = (batch_size, self.num_ops)
        op_index = _random.randint(0, len(self.op_names), shape, device, self.generator)
        top = float(self.num_magnitude_bins - 1)
        if self.magnitude_std == 0:
            level = torch.full(shape, self.magnitude, device=device)
        elif math.isinf(self.magnitude_std):
            level = _random.rand(shape, device, self.generator) * self.magnitude
        else:
            noise = _random.randn(shape, device, self.generator)
            level = (self.magnitude + self.magnitude_std * noise).clamp_(0.0, top)
        negate = _random.rand(shape, device, self.generator) < 0.5
        magnitude = magnitude_values(op_index, level, top, negate, _ranges(self.op_names, height, width, wide=False))
        return {"op_index": op_index, "level": level, "magnitude": magnitude}

    def apply(self, images, targets, **kwargs):
        return self._apply_sequence(images, self.num_ops), targets

    def _repr_fields(self):
        return {"num_ops": self.num_ops, "magnitude": self.magnitude,
                "num_magnitude_bins": self.num_magnitude_bins, "magnitude_std": self.magnitude_std,
                "fill": self.fill, "interpolation": self.interpolation}


class TrivialAugmentWide(ImagePolicy):
    """TrivialAugment (wide ranges): one op per image, uniform over the 14 ops, uniform magnitude level.

    For image ``i``: op ``~ U(RANDAUGMENT_OPS)``, level ``m ~ U{0, …, bins − 1}``,
    sign ``±`` with probability ½, argument from the wide column of the module's
    table. Args as :class:`RandAugment` (``num_magnitude_bins`` 31 as in the paper).
    ``last_stats``: ``op_index`` (B,), ``level`` (B,), ``magnitude`` (B,).
    """

    op_names = RANDAUGMENT_OPS

    def __init__(self, num_magnitude_bins: int = 31, fill=128, interpolation: str = "nearest",
                 generator: Optional[torch.Generator] = None, engine: str = "auto"):
        super().__init__(fill, interpolation, generator, engine)
        self.num_magnitude_bins = check_int(num_magnitude_bins, "num_magnitude_bins", low=2)

    def sample_plan(self, batch_size: int, height: int, width: int, device) -> Dict[str, torch.Tensor]:
        device = torch.device(device)
        op_index = _random.randint(0, len(self.op_names), (batch_size,), device, self.generator)
        level = _random.randint(0, self.num_magnitude_bins, (batch_size,), device, self.generator).float()
        negate = _random.rand((batch_size,), device, self.generator) < 0.5
        magnitude = magnitude_values(op_index, level, self.num_magnitude_bins - 1, negate,
                                     _ranges(self.op_names, height, width, wide=True))
        return {"op_index": op_index, "level": level, "magnitude": magnitude}

    def apply(self, images, targets, **kwargs):
        self._check_channels(images)
        batch, _, height, width = images.shape
        plan = self.sample_plan(batch, height, width, images.device)
        out = self._run(images, plan["op_index"], plan["magnitude"], F.fill_tensor(self.fill, images))
        self.last_stats = plan
        return (out.clone() if out is images else out), targets

    def _repr_fields(self):
        return {"num_magnitude_bins": self.num_magnitude_bins, "fill": self.fill,
                "interpolation": self.interpolation}
