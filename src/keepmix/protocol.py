"""The one protocol every keepmix augmentation follows.

``op(images, targets) -> (images, targets)``

* ``images``: B×C×H×W, floating point (any float dtype) or uint8; the output has
  the input's dtype, device and shape.
* ``targets``: class indices (B,) int64, soft targets (B×K) float, or ``None``
  for unlabeled data (label-preserving ops only). Label-preserving ops return the
  targets object unchanged; mixers return soft targets B×K float32.
* Randomness is drawn per sample from torch (the op's optional
  ``torch.Generator``), on the batch's device.

Ops are plain callables, not ``nn.Module`` s: they hold no parameters. After each
call ``op.last_stats`` holds device tensors describing what the op did (fallback
counts, λ mean, share of saliency kept…); reading them is the caller's choice
and the only sync.
"""

from __future__ import annotations

import abc
from typing import Dict, Optional, Tuple

import torch

from ._checks import check_generator, check_images, check_targets, deferred_checks

Batch = Tuple[torch.Tensor, Optional[torch.Tensor]]


class Op(abc.ABC):
    """Base class of keepmix ops: argument plumbing, generator, stats and repr.

    Subclasses implement :meth:`apply` with validated inputs. A call runs with autocast
    disabled, so an op's result does not depend on the caller's ``torch.autocast`` (saliency
    passes, blurs and distances stay in the batch's dtype).
    """

    #: whether the op mixes labels (returns soft targets)
    mixes_labels: bool = False
    #: whether uint8 images are accepted
    accepts_uint8: bool = True

    def __init__(self, generator: Optional[torch.Generator] = None):
        self.generator = check_generator(generator)
        self.last_stats: Dict[str, torch.Tensor] = {}

    def __call__(self, images: torch.Tensor, targets: Optional[torch.Tensor] = None, **kwargs) -> Batch:
        # value checks of the whole call are read back with one sync at the end; the op's maths run in
        # the batch's own dtype, whatever autocast the caller runs under
        with deferred_checks(), torch.autocast(images.device.type, enabled=False):
            check_images(images, allow_uint8=self.accepts_uint8)
            if targets is not None:
                check_targets(targets, images.shape[0])
            return self.apply(images, targets, **kwargs)

    @abc.abstractmethod
    def apply(self, images: torch.Tensor, targets: Optional[torch.Tensor], **kwargs) -> Batch:
        """The op itself, on validated inputs."""

    def _repr_fields(self) -> Dict[str, object]:
        return {}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._repr_fields().items())
        return f"{type(self).__name__}({fields})"


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Work copy in a float dtype: uint8 becomes float32 on the 0–255 scale, floats stay as they are."""
    return images.float() if images.dtype == torch.uint8 else images


def restore_dtype(result: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Cast a float result back to the dtype of the input batch (uint8: rounded and clamped)."""
    if like.dtype == torch.uint8:
        return result.round().clamp_(0, 255).to(torch.uint8)
    return result.to(like.dtype)
