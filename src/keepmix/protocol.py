"""The one protocol every keepmix augmentation follows.

``op(images, targets) -> (images, targets)``

* ``images``: B×C×H×W, floating point (any float dtype) or uint8; the output has
  the input's dtype, device and shape.
* ``targets``: class indices (B,) int64, soft targets (B×K) float, or ``None``
  for unlabeled data (label-preserving ops only). Label-preserving ops return the
  targets object unchanged; mixers return soft targets B×K float32.
* Randomness is drawn per sample from torch (the op's optional
  ``torch.Generator``), on the batch's device.

Ops are ``torch.nn.Module`` s, as torchvision v2 transforms and kornia augmentations
are: they sit in ``nn.Sequential``, follow ``.to()``/``.train()``/``.apply(fn)`` of an
enclosing module and print their arguments. They hold no parameters or buffers of
their own, and **a model an op uses is never its submodule**: a saliency model, a
teacher, the model being trained (SnapMix, Manifold Mixup), an early head or a member
op is kept as a plain reference — it is not in the op's ``state_dict()`` or
``parameters()``, ``op.to(device)`` does not move it and ``op.train()`` does not
switch its mode. ``op.state_dict()`` is therefore always empty; ops compute on the
device of the batch they are given.

**Calling conventions** (one rule: an op returns what it was given, with the images
augmented):

* ``op(images, targets)`` → ``(images, targets)``; ``op(images)`` → ``(images, None)``.
* ``op((images, targets))`` — the pair as one argument — → ``(images, targets)``. So ops
  chain in ``nn.Sequential``: ``nn.Sequential(a, b)((x, y))`` is ``b(*a(x, y))``, and
  ``nn.Sequential(a, b)(x)`` gives ``(x', None)``. :class:`keepmix.Compose` does the same
  and also accepts plain callables and harmonises targets when a mixer is applied
  to only some batches.
* A single C×H×W image (label-preserving ops only, as torchvision's per-image
  transforms): ``op(image)`` → the C×H×W image, ``op(image, label)`` → ``(image,
  label)`` with the label object unchanged (an int or a 0-d tensor; gradient saliency
  uses it). Mixers need a batch.

After each call ``op.last_stats`` holds device tensors describing what the op did
(fallback counts, λ mean, share of saliency kept…); reading them is the caller's
choice and the only sync.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Mapping
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from ._checks import check_generator, check_images, check_targets, deferred_checks

Batch = Tuple[torch.Tensor, Optional[torch.Tensor]]


class Stats(Mapping):
    """``op.last_stats``: a read-only mapping of name → tensor whose entries may be computed lazily.

    An op stores a tensor, or a zero-argument function that computes one; a function runs
    on first access (and its result is kept). So the statistics nobody reads launch no
    kernels on the op's hot path.
    """

    def __init__(self, **entries):
        self._entries = entries

    def __getitem__(self, key: str) -> torch.Tensor:
        value = self._entries[key]
        if callable(value) and not isinstance(value, torch.Tensor):
            value = self._entries[key] = value()
        return value

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Stats({dict(self)!r})"


class Op(nn.Module, abc.ABC):
    """Base class of keepmix ops: argument plumbing, generator, stats and repr; an ``nn.Module``.

    Subclasses implement :meth:`apply` with validated inputs. A call runs with autocast
    disabled, so an op's result does not depend on the caller's ``torch.autocast`` (saliency
    passes, blurs and distances stay in the batch's dtype). ``forward(images, targets=None)``
    checks the inputs and runs :meth:`apply`; ``op(...)`` also takes the ``(images, targets)``
    pair as one argument and single C×H×W images (module docstring).

    Any ``nn.Module`` assigned to an op attribute (a model, a teacher, an early head, a member
    op) is kept as a plain reference, not registered as a submodule: the op's
    ``state_dict()`` stays empty and ``.to()``/``.train()`` on the op leave the model alone.
    ``apply`` keeps its op meaning; ``op.apply(fn)`` with a function (what ``nn.Module.apply``
    does on the children of an enclosing module, e.g. weight initialisation) applies ``fn`` to
    the op itself, as ``nn.Module.apply`` does.
    """

    #: whether the op mixes labels (returns soft targets)
    mixes_labels: bool = False
    #: whether uint8 images are accepted
    accepts_uint8: bool = True

    def __init__(self, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.generator = check_generator(generator)
        self.last_stats: Mapping = Stats()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("apply")
        if own is not None and not getattr(own, "_keepmix_op_apply", False):
            cls.apply = _module_apply_aware(own)

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, nn.Module):  # a model (or member op) is a reference, never a submodule
            modules = self.__dict__.get("_modules")
            if modules is not None:
                modules.pop(name, None)
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def __call__(self, images: torch.Tensor, targets: Optional[torch.Tensor] = None, **kwargs) -> Batch:
        if isinstance(images, (tuple, list)):  # the (images, targets) pair as one argument (nn.Sequential)
            if targets is not None or len(images) != 2:
                raise TypeError("an op takes images and targets as two arguments or as one (images, targets) pair, "
                                f"got a {type(images).__name__} of {len(images)} items"
                                + (" and targets" if targets is not None else ""))
            images, targets = images
            if isinstance(images, torch.Tensor) and images.ndim == 3 and not self.mixes_labels:
                return self._single(images, targets, kwargs)  # a pair stays a pair (targets given)
        elif isinstance(images, torch.Tensor) and images.ndim == 3 and not self.mixes_labels:
            return self._single(images, targets, kwargs, pair=targets is not None)
        if not isinstance(images, torch.Tensor):
            check_images(images)  # TypeError naming what was given
        if images.ndim == 3 and self.mixes_labels:
            raise ValueError(f"{type(self).__name__} mixes images of a batch: images must be B×C×H×W, got one "
                             f"image of shape {tuple(images.shape)} (add a batch dimension: images[None])")
        # value checks of the whole call are read back with one sync at the end; the op's maths run in
        # the batch's own dtype, whatever autocast the caller runs under
        if torch.compiler.is_compiling():  # traced: no value checks (they need a host read), same maths
            with torch.autocast(images.device.type, enabled=False):
                return super().__call__(images, targets, **kwargs)
        with deferred_checks(), torch.autocast(images.device.type, enabled=False):
            return super().__call__(images, targets, **kwargs)

    def forward(self, images: torch.Tensor, targets: Optional[torch.Tensor] = None, **kwargs) -> Batch:
        """Check the batch and run :meth:`apply` (call the op itself: ``op(images, targets)``)."""
        check_images(images, allow_uint8=self.accepts_uint8, boundary=True)
        if targets is not None:
            check_targets(targets, images.shape[0])
        return self.apply(images, targets, **kwargs)

    def _single(self, image: torch.Tensor, label, kwargs, pair: bool = True):
        """One C×H×W image: run as a batch of one; the image comes back C×H×W and the label unchanged."""
        batch_label = None
        if label is not None:
            if isinstance(label, torch.Tensor):
                if label.numel() != 1:
                    raise ValueError(f"the label of a single image must be one class index, got shape "
                                     f"{tuple(label.shape)}")
                batch_label = label.reshape(1).to(image.device)
            elif isinstance(label, int) and not isinstance(label, bool):
                batch_label = torch.tensor([label], device=image.device)
            else:
                raise TypeError(f"the label of a single image must be an int or a tensor, got {type(label).__name__}")
        maps = kwargs.get("saliency_maps")
        if isinstance(maps, torch.Tensor) and maps.ndim == 2:
            kwargs = {**kwargs, "saliency_maps": maps.unsqueeze(0)}
        out, _ = self(image.unsqueeze(0), batch_label, **kwargs)
        return (out[0], label) if pair else out[0]

    @abc.abstractmethod
    def apply(self, images: torch.Tensor, targets: Optional[torch.Tensor], **kwargs) -> Batch:
        """The op itself, on validated inputs."""

    def _repr_fields(self) -> Dict[str, object]:
        return {}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._repr_fields().items())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


def _module_apply_aware(apply):
    """Wrap an op's ``apply(images, targets, …)`` so that ``apply(fn)`` keeps ``nn.Module.apply``'s meaning."""
    @functools.wraps(apply)
    def wrapper(self, images, *args, **kwargs):
        if not args and not kwargs and callable(images) and not isinstance(images, torch.Tensor):
            images(self)  # nn.Module.apply(fn): an op has no children, so fn sees the op only
            return self
        return apply(self, images, *args, **kwargs)
    wrapper._keepmix_op_apply = True
    return wrapper


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Work copy in a float dtype: uint8 becomes float32 on the 0–255 scale, floats stay as they are."""
    return images.float() if images.dtype == torch.uint8 else images


def restore_dtype(result: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Cast a float result back to the dtype of the input batch (uint8: rounded and clamped)."""
    if like.dtype == torch.uint8:
        return result.round().clamp_(0, 255).to(torch.uint8)
    return result if result.dtype == like.dtype else result.to(like.dtype)
