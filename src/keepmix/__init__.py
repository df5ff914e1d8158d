"""keepmix: saliency-guided data augmentation for PyTorch.

Every augmentation follows ``op(images, targets) -> (images, targets)``
(:mod:`keepmix.protocol`). The functional core lives in :mod:`keepmix.saliency`,
:mod:`keepmix.regions`, :mod:`keepmix.pairing` and :mod:`keepmix.mix`.

The public surface (``__all__``, what ``from keepmix import *`` gives): every op of the README's
"Every op" table — the erasing ops, the Keep ops, the mixers, the image-level policies
(``AutoAugment``, ``RandAugment``, ``TrivialAugmentWide``, ``AugMix``), ``Normalize`` and the
compositions —, the saliency sources and ``EarlyHead``, the saliency memory (``SaliencyMemory``,
``MemorySaliency``, ``MemoryPairing``), the soft-target losses (with AugMix's
``jensen_shannon_loss``), the ``Op`` base class, the input-check switches and the functional
modules. Data sets, models, recipes, the training engine and integrations stay in their
subpackages (``keepmix.data``, ``keepmix.models``, ``keepmix.integrations.timm`` …).
"""

from . import graphcut, losses, mix, pairing, policies, regions, saliency
from ._checks import input_checks, set_input_checks
from .compose import Compose, RandomApply, RandomChoice
from .erase import Cutout, GridMask, RandomErasing
from .convert import Normalize
from .keep import (KeepAugMix, KeepAutoAugment, KeepCutMix, KeepCutout, KeepRandAugment, KeepRandomErasing,
                   KeepTrivialAugment, SelectivePaste)
from .losses import SoftTargetCrossEntropy, soft_target_cross_entropy, to_soft_targets
from .memory import MemoryPairing, MemorySaliency, SaliencyMemory
from .mix import GuidedMixup
from .mixers import AttentiveCutMix, CutMix, ManifoldMixup, Mixup, SaliencyMix, SnapMix
from .optmix import CoMixup, PuzzleMix
from .policies import AugMix, AutoAugment, RandAugment, TrivialAugmentWide, jensen_shannon_loss
from .protocol import Op
from .saliency import EarlyHead, EarlyHeadSaliency, GradientSaliency, NormalizedInput, SpectralSaliency

__version__ = "0.1.0"

__all__ = [
    "AugMix", "AutoAugment", "RandAugment", "TrivialAugmentWide", "jensen_shannon_loss",
    "AttentiveCutMix", "CoMixup", "Compose", "CutMix", "Cutout", "GridMask", "ManifoldMixup", "Mixup",
    "NormalizedInput", "KeepAugMix", "KeepAutoAugment", "KeepRandAugment", "KeepTrivialAugment", "Normalize",
    "PuzzleMix", "RandomApply", "RandomChoice", "RandomErasing", "SaliencyMix", "SnapMix",
    "EarlyHead", "EarlyHeadSaliency", "GradientSaliency", "GuidedMixup", "KeepCutMix", "KeepCutout",
    "KeepRandomErasing", "MemoryPairing", "MemorySaliency", "Op", "SaliencyMemory", "SelectivePaste",
    "SoftTargetCrossEntropy", "SpectralSaliency", "input_checks",
    "graphcut", "losses", "mix", "pairing", "policies", "regions", "saliency", "set_input_checks",
    "soft_target_cross_entropy", "to_soft_targets",
]
