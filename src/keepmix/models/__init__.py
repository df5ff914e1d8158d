"""Classifiers for the papers' experiments, all following :class:`~keepmix.models.base.ClassifierModel`."""

from .base import ClassifierModel
from .resnet_cifar import CifarResNet, resnet18_cifar

__all__ = ["ClassifierModel", "CifarResNet", "resnet18_cifar"]
