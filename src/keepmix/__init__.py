"""keepmix: saliency-guided data augmentation for PyTorch.

Every augmentation follows ``op(images, targets) -> (images, targets)``
(:mod:`keepmix.protocol`). The functional core lives in :mod:`keepmix.saliency`,
:mod:`keepmix.regions`, :mod:`keepmix.pairing` and :mod:`keepmix.mix`.
"""

from . import losses, mix, pairing, regions, saliency
from ._checks import input_checks, set_input_checks
from .keep import KeepCutMix, KeepCutout, KeepRandomErasing, SelectivePaste
from .losses import SoftTargetCrossEntropy, soft_target_cross_entropy, to_soft_targets
from .mix import GuidedMixup
from .protocol import Op
from .saliency import EarlyHead, EarlyHeadSaliency, GradientSaliency, SpectralSaliency

__version__ = "0.1.0"

__all__ = [
    "EarlyHead", "EarlyHeadSaliency", "GradientSaliency", "GuidedMixup", "KeepCutMix", "KeepCutout",
    "KeepRandomErasing", "Op", "SelectivePaste", "SoftTargetCrossEntropy", "SpectralSaliency", "input_checks",
    "losses", "mix", "pairing", "regions", "saliency", "set_input_checks", "soft_target_cross_entropy",
    "to_soft_targets",
]
