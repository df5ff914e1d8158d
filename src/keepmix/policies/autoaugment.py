"""AutoAugment (Cubuk et al., CVPR 2019) with the published CIFAR-10, SVHN and ImageNet policies.

Each policy is 25 sub-policies of two ``(op, probability, magnitude level)``
steps, levels 0–9. Every image draws its own sub-policy (uniformly), its own
probability coin for each step and its own sign for the signed ops, so one call
applies different sub-policies to different images.

Level ``l`` maps linearly onto the paper's ranges, the 10 levels spanning them
end to end (``v = low + (high − low)·l/9``):

============================  ==========================================
shear_x, shear_y              0 … 0.3, random sign
translate_x, translate_y      0 … 150/331 of the width / height, random
                              sign, truncated to whole pixels
rotate                        0 … 30°, random sign
color, contrast, brightness,  0.1 … 1.9 (the enhance factor; level 0 is
sharpness                     strong reduction, as in the searched code)
posterize                     8 … 4 bits (rounded: 8 8 7 7 6 6 5 5 4 4)
solarize                      threshold 256 … 0
auto_contrast, equalize,      no magnitude
invert
============================  ==========================================

The original search code scaled levels by 1/10 instead of 1/9 and used 10
pixels of translation on CIFAR; torchvision reads the enhance ops as 1 ± 0.9·l/9.
The ranges above are the paper's table, with the 150/331 translation used at
every resolution.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .. import _random
from ._engine import ImagePolicy, MagnitudeRange, magnitude_values

Step = Tuple[str, float, Optional[int]]
SubPolicy = Tuple[Step, Step]

#: number of magnitude levels (0–9)
NUM_LEVELS = 10

POLICIES: Dict[str, Tuple[SubPolicy, ...]] = {
    "imagenet": (
        (("posterize", 0.4, 8), ("rotate", 0.6, 9)),
        (("solarize", 0.6, 5), ("auto_contrast", 0.6, None)),
        (("equalize", 0.8, None), ("equalize", 0.6, None)),
        (("posterize", 0.6, 7), ("posterize", 0.6, 6)),
        (("equalize", 0.4, None), ("solarize", 0.2, 4)),
        (("equalize", 0.4, None), ("rotate", 0.8, 8)),
        (("solarize", 0.6, 3), ("equalize", 0.6, None)),
        (("posterize", 0.8, 5), ("equalize", 1.0, None)),
        (("rotate", 0.2, 3), ("solarize", 0.6, 8)),
        (("equalize", 0.6, None), ("posterize", 0.4, 6)),
        (("rotate", 0.8, 8), ("color", 0.4, 0)),
        (("rotate", 0.4, 9), ("equalize", 0.6, None)),
        (("equalize", 0.0, None), ("equalize", 0.8, None)),
        (("invert", 0.6, None), ("equalize", 1.0, None)),
        (("color", 0.6, 4), ("contrast", 1.0, 8)),
        (("rotate", 0.8, 8), ("color", 1.0, 2)),
        (("color", 0.8, 8), ("solarize", 0.8, 7)),
        (("sharpness", 0.4, 7), ("invert", 0.6, None)),
        (("shear_x", 0.6, 5), ("equalize", 1.0, None)),
        (("color", 0.4, 0), ("equalize", 0.6, None)),
        (("equalize", 0.4, None), ("solarize", 0.2, 4)),
        (("solarize", 0.6, 5), ("auto_contrast", 0.6, None)),
        (("invert", 0.6, None), ("equalize", 1.0, None)),
        (("color", 0.6, 4), ("contrast", 1.0, 8)),
        (("equalize", 0.8, None), ("equalize", 0.6, None)),
    ),
    "cifar10": (
        (("invert", 0.1, None), ("contrast", 0.2, 6)),
        (("rotate", 0.7, 2), ("translate_x", 0.3, 9)),
        (("sharpness", 0.8, 1), ("sharpness", 0.9, 3)),
        (("shear_y", 0.5, 8), ("translate_y", 0.7, 9)),
        (("auto_contrast", 0.5, None), ("equalize", 0.9, None)),
        (("shear_y", 0.2, 7), ("posterize", 0.3, 7)),
        (("color", 0.4, 3), ("brightness", 0.6, 7)),
        (("sharpness", 0.3, 9), ("brightness", 0.7, 9)),
        (("equalize", 0.6, None), ("equalize", 0.5, None)),
        (("contrast", 0.6, 7), ("sharpness", 0.6, 5)),
        (("color", 0.7, 7), ("translate_x", 0.5, 8)),
        (("equalize", 0.3, None), ("auto_contrast", 0.4, None)),
        (("translate_y", 0.4, 3), ("sharpness", 0.2, 6)),
        (("brightness", 0.9, 6), ("color", 0.2, 8)),
        (("solarize", 0.5, 2), ("invert", 0.0, None)),
        (("equalize", 0.2, None), ("auto_contrast", 0.6, None)),
        (("equalize", 0.2, None), ("equalize", 0.6, None)),
        (("color", 0.9, 9), ("equalize", 0.6, None)),
        (("auto_contrast", 0.8, None), ("solarize", 0.2, 8)),
        (("brightness", 0.1, 3), ("color", 0.7, 0)),
        (("solarize", 0.4, 5), ("auto_contrast", 0.9, None)),
        (("translate_y", 0.9, 9), ("translate_y", 0.7, 9)),
        (("auto_contrast", 0.9, None), ("solarize", 0.8, 3)),
        (("equalize", 0.8, None), ("invert", 0.1, None)),
        (("translate_y", 0.7, 9), ("auto_contrast", 0.9, None)),
    ),
    "svhn": (
        (("shear_x", 0.9, 4), ("invert", 0.2, None)),
        (("shear_y", 0.9, 8), ("invert", 0.7, None)),
        (("equalize", 0.6, None), ("solarize", 0.6, 6)),
        (("invert", 0.9, None), ("equalize", 0.6, None)),
        (("equalize", 0.6, None), ("rotate", 0.9, 3)),
        (("shear_x", 0.9, 4), ("auto_contrast", 0.8, None)),
        (("shear_y", 0.9, 8), ("invert", 0.4, None)),
        (("shear_y", 0.9, 5), ("solarize", 0.2, 6)),
        (("invert", 0.9, None), ("auto_contrast", 0.8, None)),
        (("equalize", 0.6, None), ("rotate", 0.9, 3)),
        (("shear_x", 0.9, 4), ("solarize", 0.3, 3)),
        (("shear_y", 0.8, 8), ("invert", 0.7, None)),
        (("equalize", 0.9, None), ("translate_y", 0.6, 6)),
        (("invert", 0.9, None), ("equalize", 0.6, None)),
        (("contrast", 0.3, 3), ("rotate", 0.8, 4)),
        (("invert", 0.8, None), ("translate_y", 0.0, 2)),
        (("shear_y", 0.7, 6), ("solarize", 0.4, 8)),
        (("invert", 0.6, None), ("rotate", 0.8, 4)),
        (("shear_y", 0.3, 7), ("translate_x", 0.9, 3)),
        (("shear_x", 0.1, 6), ("invert", 0.6, None)),
        (("solarize", 0.7, 2), ("translate_y", 0.6, 7)),
        (("shear_y", 0.8, 4), ("invert", 0.8, None)),
        (("shear_x", 0.7, 9), ("translate_y", 0.8, 3)),
        (("shear_y", 0.8, 5), ("auto_contrast", 0.7, None)),
        (("shear_x", 0.7, 2), ("invert", 0.1, None)),
    ),
}

#: translation range of the paper: 150 pixels at 331×331
TRANSLATE_FRACTION = 150.0 / 331.0


def magnitude_range(name: str, height: int, width: int) -> MagnitudeRange:
    """The paper's range of ``name`` at an image size (translation scales with it)."""
    if name in ("shear_x", "shear_y"):
        return MagnitudeRange(0.0, 0.3, signed=True)
    if name == "translate_x":
        return MagnitudeRange(0.0, TRANSLATE_FRACTION * width, "floor", signed=True)
    if name == "translate_y":
        return MagnitudeRange(0.0, TRANSLATE_FRACTION * height, "floor", signed=True)
    if name == "rotate":
        return MagnitudeRange(0.0, 30.0, signed=True)
    if name in ("color", "contrast", "brightness", "sharpness"):
        return MagnitudeRange(0.1, 1.9)
    if name == "posterize":
        return MagnitudeRange(8.0, 4.0, "round")
    if name == "solarize":
        return MagnitudeRange(256.0, 0.0)
    return MagnitudeRange()  # auto_contrast, equalize, invert, identity


class AutoAugment(ImagePolicy):
    """AutoAugment with a published policy, drawn independently for every image.

    Args:
        policy: ``"cifar10"``, ``"svhn"`` or ``"imagenet"`` (the 25 sub-policies of
            Cubuk et al. 2019, :data:`POLICIES`).
        fill: value of pixels uncovered by the geometric ops, 0–255 scale (one
            number or one per channel). Default 128 (mid-gray; the original code
            filled with the dataset mean, torchvision fills with 0).
        interpolation: ``"nearest"`` (PIL's default, used by the policies) or ``"bilinear"``.
        generator: optional ``torch.Generator`` for every draw.
        engine: ``"auto"`` (fused step on accelerators and under ``torch.compile``, per-op-type
            dispatch on the CPU), ``"fused"`` or ``"dispatch"``; same result for every choice
            (:mod:`keepmix.policies._engine`).

    For image ``i``: ``s_i ~ U{0..24}``; for step ``j ∈ {0, 1}`` the op of
    ``s_i`` is applied iff ``u_ij < p_{s_i j}`` (``u ~ U[0, 1)``), with its level
    mapped through the module's table and a sign ``±`` (probability ½) for the
    signed ops. Shapes: images B×C×H×W (uint8 or float in [0, 1], 1 or 3
    channels), output of the same dtype; targets returned unchanged.
    ``last_stats``: ``subpolicy`` (B,), ``applied`` (B, 2) bool, ``op_index``
    (B, 2) into ``op_names``, ``magnitude`` (B, 2).
    """

    def __init__(self, policy: str = "cifar10", fill=128, interpolation: str = "nearest",
                 generator: Optional[torch.Generator] = None, engine: str = "auto"):
        super().__init__(fill, interpolation, generator, engine)
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {sorted(POLICIES)}, got {policy!r}")
        self.policy = policy
        subpolicies = POLICIES[policy]
        names: List[str] = ["identity"]
        for subpolicy in subpolicies:
            for name, _, _ in subpolicy:
                if name not in names:
                    names.append(name)
        self.op_names = tuple(names)
        self._step_ops = torch.tensor([[names.index(n) for n, _, _ in s] for s in subpolicies])
        self._step_probs = torch.tensor([[p for _, p, _ in s] for s in subpolicies], dtype=torch.float32)
        self._step_levels = torch.tensor([[0 if lv is None else lv for _, _, lv in s] for s in subpolicies],
                                         dtype=torch.float32)

    @property
    def subpolicies(self) -> Tuple[SubPolicy, ...]:
        return POLICIES[self.policy]

    def magnitude_ranges(self, height: int, width: int) -> Sequence[MagnitudeRange]:
        return [magnitude_range(name, height, width) for name in self.op_names]

    def sample_plan(self, batch_size: int, height: int, width: int, device) -> Dict[str, torch.Tensor]:
        """Draw sub-policies, coins and signs for ``batch_size`` images of ``height``×``width``."""
        device = torch.device(device)
        count = len(self.subpolicies)
        subpolicy = _random.randint(0, count, (batch_size,), device, self.generator)
        coins = _random.rand((batch_size, 2), device, self.generator)
        negate = _random.rand((batch_size, 2), device, self.generator) < 0.5
        step_ops = self._step_ops.to(device)[subpolicy]
        applied = coins < self._step_probs.to(device)[subpolicy]
        op_index = torch.where(applied, step_ops, torch.zeros_like(step_ops))  # 0 = identity
        level = self._step_levels.to(device)[subpolicy]
        magnitude = magnitude_values(op_index, level, NUM_LEVELS - 1, negate, self.magnitude_ranges(height, width))
        return {"subpolicy": subpolicy, "applied": applied, "op_index": op_index, "magnitude": magnitude}

    def apply(self, images, targets, **kwargs):
        return self._apply_sequence(images, 2), targets

    def _repr_fields(self):
        return {"policy": self.policy, "fill": self.fill, "interpolation": self.interpolation}
