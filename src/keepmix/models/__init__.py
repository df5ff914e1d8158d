"""Classifiers for the papers' experiments, all following :class:`~keepmix.models.base.ClassifierModel`.

:func:`build_model` builds any of them by name; ``MODELS`` maps the names to their factories,
each called as ``factory(num_classes=num_classes, **kwargs)``.

==================== ============================================== ====== ========================
name                 network                                        input  parameters (classes)
==================== ============================================== ====== ========================
resnet18_cifar       ResNet-18, 3×3 stem (Cutout, KeepAugment)      32 px  11.17 M (10)
preact_resnet18      PreActResNet-18 (Manifold Mixup, GuidedMixup)  32 px  11.17 M (10)
resnet110            ResNet-110, option-A shortcuts                 32 px  1.73 M (10)
wrn28_10             Wide ResNet-28-10                              32 px  36.48 M (10)
wrn28_2              Wide ResNet-28-2 (semi-supervised benchmarks)  32 px  1.47 M (10)
wide_resnet          WRN-depth-width (kwargs depth, width, dropout) 32 px  —
resnet18             ResNet-18, ImageNet stem                       224 px 11.69 M (1000)
resnet50             ResNet-50, ImageNet stem                       224 px 25.56 M (1000)
resnet101            ResNet-101, ImageNet stem                      224 px 44.55 M (1000)
densenet121          DenseNet-121                                   224 px 7.98 M (1000)
shake_shake26_2x96d  Shake-Shake-26 2×96d                           32 px  26.19 M (10)
pyramidnet_shakedrop PyramidNet + ShakeDrop (kwargs depth, alpha)   32 px  26.21 M (272, α 200, 10)
resnet_small         ResNet 16/32/64, one block per stage           32 px  0.08 M (10)
timm:NAME            any timm model via an adapter (needs timm)     —      —
==================== ============================================== ====== ========================
"""

from __future__ import annotations

from typing import Callable, Dict

from .base import ClassifierModel
from .densenet import DenseNet, densenet121
from .preact_resnet import PreActResNet, preact_resnet18
from .pyramidnet import PyramidNetShakeDrop, ShakeDrop, pyramidnet_shakedrop
from .resnet_cifar import CifarResNet, resnet18_cifar
from .resnet_deep_cifar import DeepCifarResNet, resnet110, resnet_cifar_depth
from .resnet_imagenet import ImageNetResNet, resnet18, resnet50, resnet101
from .shake_shake import ShakeShakeResNet, shake_shake26_2x96d
from .small import SmallResNet, resnet_small
from .wide_resnet import WideResNet, wide_resnet, wrn28_2, wrn28_10

MODELS: Dict[str, Callable[..., ClassifierModel]] = {
    "resnet18_cifar": resnet18_cifar,
    "preact_resnet18": preact_resnet18,
    "resnet110": resnet110,
    "wrn28_10": wrn28_10,
    "wrn28_2": wrn28_2,
    "wide_resnet": wide_resnet,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "densenet121": densenet121,
    "shake_shake26_2x96d": shake_shake26_2x96d,
    "pyramidnet_shakedrop": pyramidnet_shakedrop,
    "resnet_small": resnet_small,
}


def build_model(name: str, num_classes: int, **kwargs) -> ClassifierModel:
    """Build the model registered as ``name`` with ``num_classes`` outputs; ``kwargs`` go to its factory.

    ``timm:NAME`` builds timm's model NAME behind :class:`~keepmix.models.timm_adapter.TimmClassifier`
    (needs timm). Raises TypeError if ``name`` is not a string and ValueError (listing the choices)
    if it is unknown.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a model name (str), got {type(name).__name__}")
    if name.startswith("timm:"):
        from .timm_adapter import build_timm_model
        return build_timm_model(name[len("timm:"):], num_classes, **kwargs)
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes=num_classes, **kwargs)


__all__ = [
    "ClassifierModel", "MODELS", "build_model",
    "CifarResNet", "resnet18_cifar",
    "PreActResNet", "preact_resnet18",
    "DeepCifarResNet", "resnet_cifar_depth", "resnet110",
    "WideResNet", "wide_resnet", "wrn28_2", "wrn28_10",
    "ImageNetResNet", "resnet18", "resnet50", "resnet101",
    "DenseNet", "densenet121",
    "ShakeShakeResNet", "shake_shake26_2x96d",
    "PyramidNetShakeDrop", "ShakeDrop", "pyramidnet_shakedrop",
    "SmallResNet", "resnet_small",
]
