"""keepmix: saliency-guided data augmentation for PyTorch.

Every augmentation follows ``op(images, targets) -> (images, targets)``
(:mod:`keepmix.protocol`). The functional core lives in :mod:`keepmix.saliency`,
:mod:`keepmix.regions`, :mod:`keepmix.pairing` and :mod:`keepmix.mix`.
"""

from . import graphcut, losses, mix, pairing, policies, regions, saliency
from ._checks import input_checks, set_input_checks
from .compose import Compose, RandomApply, RandomChoice
from .erase import Cutout, GridMask, RandomErasing
from .convert import Normalize
from .keep import (KeepAugMix, KeepAutoAugment, KeepCutMix, KeepCutout, KeepRandAugment, KeepRandomErasing,
                   KeepTrivialAugment, SelectivePaste)
from .losses import SoftTargetCrossEntropy, soft_target_cross_entropy, to_soft_targets
from .mix import GuidedMixup
from .mixers import AttentiveCutMix, CutMix, ManifoldMixup, Mixup, SaliencyMix, SnapMix
from .optmix import CoMixup, PuzzleMix
from .protocol import Op
from .saliency import EarlyHead, EarlyHeadSaliency, GradientSaliency, NormalizedInput, SpectralSaliency

__version__ = "0.1.0"

__all__ = [
    "AttentiveCutMix", "CoMixup", "Compose", "CutMix", "Cutout", "GridMask", "ManifoldMixup", "Mixup",
    "NormalizedInput", "KeepAugMix", "KeepAutoAugment", "KeepRandAugment", "KeepTrivialAugment", "Normalize",
    "PuzzleMix", "RandomApply", "RandomChoice", "RandomErasing", "SaliencyMix", "SnapMix",
    "EarlyHead", "EarlyHeadSaliency", "GradientSaliency", "GuidedMixup", "KeepCutMix", "KeepCutout",
    "KeepRandomErasing", "Op", "SelectivePaste", "SoftTargetCrossEntropy", "SpectralSaliency", "input_checks",
    "graphcut", "losses", "mix", "pairing", "policies", "regions", "saliency", "set_input_checks",
    "soft_target_cross_entropy", "to_soft_targets",
]
