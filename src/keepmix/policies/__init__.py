"""Image-level augmentation policies, drawn independently for every image of a batch.

* :class:`AutoAugment` — the published CIFAR-10, SVHN and ImageNet policies;
* :class:`RandAugment` — N ops from the 14 at magnitude M (optional magnitude noise);
* :class:`TrivialAugmentWide` — one op per image at a uniform magnitude, wide ranges;
* :class:`AugMix` — mixtures of random op chains, and :func:`jensen_shannon_loss`;
* :mod:`keepmix.policies.functional` — the batched ops with one magnitude per image.

All follow :class:`keepmix.protocol.Op` (label-preserving: targets come back
unchanged) and work on un-normalised images, uint8 (0–255) or float in [0, 1];
normalise after them.
"""

from . import functional
from ._engine import OPS, apply_per_sample
from .augmix import AUGMIX_COLOR_OPS, AUGMIX_OPS, AugMix, jensen_shannon_loss
from .autoaugment import POLICIES, AutoAugment
from .randaugment import RANDAUGMENT_OPS, RandAugment, TrivialAugmentWide

__all__ = [
    "functional", "OPS", "apply_per_sample", "AutoAugment", "POLICIES", "RandAugment", "TrivialAugmentWide",
    "RANDAUGMENT_OPS", "AugMix", "AUGMIX_OPS", "AUGMIX_COLOR_OPS", "jensen_shannon_loss",
]
