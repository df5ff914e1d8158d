"""Any timm model behind keepmix's model interface: ``model: {name: "timm:NAME"}`` in a recipe.

timm is optional (``pip install timm``); it is imported only when a ``timm:`` model is built.
:func:`build_timm_model` calls ``timm.create_model(NAME, num_classes=K, **kwargs)`` (``kwargs``:
the recipe's ``model.kwargs``, e.g. ``pretrained: true`` to let timm fetch its weights, or
``drop_path_rate``) and wraps it in :class:`TimmClassifier`, which declares what keepmix needs:

* ``features(x)`` — timm's ``forward_features``: a CNN's last map B×C×h×w (NHWC outputs, as
  Swin's, are permuted); a transformer's tokens B×N×D become a map B×D×h×w of the patch tokens
  (the ``num_prefix_tokens`` class/register tokens dropped, h×w the patch grid);
* ``classifier`` — timm's ``get_classifier()`` (an ``nn.Linear``);
* ``forward(x)`` — timm's own forward (its pooling and head; for a ViT the class-token head, so
  CAM-based ops, which assume global average pooling, are an approximation there);
* ``first_block`` — the first module of ``feature_info`` at stride ≥ 4 (ResNet-50: ``layer1``,
  the paper's "first block"; ViT: ``blocks.0``; ConvNeXt: ``stages.0``);
* ``hidden_blocks()`` — every module of ``feature_info``, in order (ResNet-50: ``act1``,
  ``layer1`` … ``layer4``; ViT-B/16: ``blocks.0`` … ``blocks.11``).

KeepAugment's early head pools a 4-D map, so it needs a CNN backbone; for a ViT use the
low-resolution or memory saliency. A local ``model.pretrained`` state_dict may be timm's own
(keys without the adapter's ``net.`` prefix): :meth:`TimmClassifier.adapt_state_dict` adds it.

Documented set-ups::

    model: {name: "timm:resnet50", kwargs: {pretrained: true}}             # ImageNet weights from timm
    model: {name: "timm:vit_base_patch16_224", kwargs: {drop_path_rate: 0.1}}
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Dict, List

import torch
from torch import nn

from .base import ClassifierModel

__all__ = ["TimmClassifier", "build_timm_model", "TIMM_PREFIX", "TIMM_HINT"]

TIMM_PREFIX = "timm:"
TIMM_HINT = "model names 'timm:NAME' need timm, an optional dependency: pip install timm"


def _feature_info(model: nn.Module) -> List[Dict[str, Any]]:
    info = getattr(model, "feature_info", None)
    if info is None:
        raise ValueError(f"{type(model).__name__} declares no feature_info: keepmix cannot tell its blocks")
    entries = info.info if hasattr(info, "info") else list(info)   # timm's FeatureInfo or a list of dicts
    out = []
    for entry in entries:
        entry = dict(entry)
        if "module" not in entry:
            raise ValueError(f"feature_info entries need a 'module' name, got {entry}")
        out.append(entry)
    if not out:
        raise ValueError(f"{type(model).__name__}.feature_info is empty")
    return out


class TimmClassifier(ClassifierModel):
    """A timm model (``net``) with keepmix's interface; see the module docstring for each member."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.pool = nn.AdaptiveAvgPool2d(1)
        info = _feature_info(net)
        names = [entry["module"] for entry in info]
        modules = dict(net.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"feature_info names modules the model does not have: {missing}")
        self._hidden = names
        first = next((entry["module"] for entry in info if int(entry.get("reduction", 4)) >= 4), names[0])
        self._first = first

    @property
    def classifier(self) -> nn.Module:
        head = self.net.get_classifier() if hasattr(self.net, "get_classifier") else None
        if not isinstance(head, nn.Linear):
            raise ValueError(f"{type(self.net).__name__}'s classifier is {type(head).__name__}, not an nn.Linear")
        return head

    @property
    def first_block(self) -> nn.Module:
        return self.net.get_submodule(self._first)

    def hidden_blocks(self) -> List[nn.Module]:
        return [self.net.get_submodule(name) for name in self._hidden]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net.forward_features(x)
        if out.ndim == 4:
            if str(getattr(self.net, "output_fmt", "NCHW")).upper() == "NHWC":
                out = out.permute(0, 3, 1, 2)
            return out
        if out.ndim != 3:
            raise ValueError(f"forward_features gave shape {tuple(out.shape)}; expected B×C×h×w or tokens B×N×D")
        prefix = int(getattr(self.net, "num_prefix_tokens", 0))
        tokens = out[:, prefix:]
        grid = getattr(getattr(self.net, "patch_embed", None), "grid_size", None)
        if grid is None:
            side = int(math.isqrt(tokens.shape[1]))
            grid = (side, side)
        h, w = int(grid[0]), int(grid[1])
        if h * w != tokens.shape[1]:
            raise ValueError(f"{tokens.shape[1]} patch tokens do not fill a {h}×{w} grid")
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def adapt_state_dict(self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """A timm state_dict (keys of ``net`` itself) with the adapter's ``net.`` prefix; others unchanged."""
        if state and not any(key.startswith("net.") for key in state):
            return {f"net.{key}": value for key, value in state.items()}
        return state


def build_timm_model(name: str, num_classes: int, **kwargs) -> TimmClassifier:
    """``timm.create_model(name, num_classes=num_classes, **kwargs)`` behind :class:`TimmClassifier`."""
    try:
        timm = importlib.import_module("timm")
    except ImportError as error:
        raise ImportError(TIMM_HINT) from error
    if not name:
        raise ValueError("a timm model needs a name: 'timm:resnet50'")
    kwargs.setdefault("pretrained", False)
    return TimmClassifier(timm.create_model(name, num_classes=num_classes, **kwargs))
