"""Composition of ops: Compose, RandomApply and RandomChoice, per batch or per sample.

Each is itself an op (``op(images, targets) -> (images, targets)``), so they
nest. The members are keepmix ops or any callable following the protocol; a
callable that returns a tensor instead of a pair is taken as an image-only
transform (targets pass through).

**Targets.** A label-preserving op returns the targets object unchanged; a
mixer returns soft targets B×K. Whenever a composition could hand back either
(a mixer applied to some samples or batches and not others), the targets are
*harmonised* to float32 soft targets: the samples that were not mixed get their
original targets one-hot encoded (class indices need ``num_classes``, taken from
the argument or from a member's ``num_classes``). So the output kind does not
depend on the random draws: always soft when any member mixes labels, and the
untouched targets object when none does. Train on soft targets with
:func:`keepmix.losses.soft_target_cross_entropy`.

**Per batch or per sample.** ``per_sample=False`` draws one decision for the
batch and runs only what was chosen (the decision is read on the host: one
number per call, no device sync when the generator is on the CPU or absent).
``per_sample=True`` draws one decision per image on the batch's device and, to
stay batched, runs the op(s) on the *whole* batch and selects each image's
output: the cost is that of running every member on every image. Mixers then
pair over the whole batch, so a mixed image's partner may itself be an
unselected image — it is still a real image of the batch.

Recipes::

    RandomApply(Mixup(K), p=0.5)                       # mix with probability 0.5, else clean (per batch)
    Mixup(K, prob=0.5)                                 # the same decision per image
    RandomChoice([Mixup(K, 0.8), CutMix(K, 1.0)], per_sample=True)   # timm's Mixup/CutMix switching, per image
    Compose([RandomErasing(), RandomApply(CutMix(K), p=0.5)])
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import _random
from ._checks import check_num_classes, check_probability
from .losses import to_soft_targets
from .protocol import Batch, Op

OpLike = Callable[..., object]


def _check_op(op, name: str) -> OpLike:
    if not callable(op):
        raise TypeError(f"{name} must be a keepmix op or a callable (images, targets) -> (images, targets), "
                        f"got {type(op).__name__}")
    return op


def _run(op: OpLike, images: torch.Tensor, targets: Optional[torch.Tensor]) -> Batch:
    """Call a member; a bare tensor result is an image-only transform's output."""
    result = op(images, targets)
    if isinstance(result, torch.Tensor):
        result = (result, targets)
    if not isinstance(result, tuple) or len(result) != 2 or not isinstance(result[0], torch.Tensor):
        raise TypeError(f"{type(op).__name__} must return (images, targets) or images")
    out, new_targets = result
    if out.shape != images.shape:
        raise ValueError(f"{type(op).__name__} returned images of shape {tuple(out.shape)}, "
                         f"expected {tuple(images.shape)}")
    return out, new_targets


def _mixes(op) -> bool:
    return bool(getattr(op, "mixes_labels", False))


def _num_classes(explicit: Optional[int], ops: Sequence[OpLike]) -> Optional[int]:
    if explicit is not None:
        return explicit
    for op in ops:
        k = getattr(op, "num_classes", None)
        if k is not None:
            return k
    return None


def _soft(targets: torch.Tensor, num_classes: Optional[int], device) -> torch.Tensor:
    if targets.ndim == 1 and num_classes is None:
        raise ValueError("num_classes is needed to turn class indices into soft targets when a mixer is applied "
                         "to only some samples or batches: pass num_classes= (or give the mixer num_classes)")
    return to_soft_targets(targets, num_classes).to(device)


def _prefixed(stats: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {f"{prefix}{key}": value for key, value in stats.items()}


def _host_origin(generator: Optional[torch.Generator]):
    return "cpu" if generator is None else generator.device


def _check_op_list(ops) -> List[OpLike]:
    if isinstance(ops, (str, bytes)) or not isinstance(ops, Sequence) or callable(ops):
        raise TypeError(f"ops must be a sequence of ops, got {type(ops).__name__}")
    if len(ops) == 0:
        raise ValueError("ops must hold at least one op")
    return [_check_op(op, f"ops[{i}]") for i, op in enumerate(ops)]


class Compose(Op):
    """Apply ops one after the other: ``(x, y) → op_n(… op_1(x, y))``.

    ``mixes_labels`` is true when any member mixes labels; uint8 is accepted when
    every member accepts it. ``last_stats`` gathers the members' stats under
    ``"{index}.{key}"``. Compose draws nothing itself (``generator`` is unused and
    accepted for symmetry).
    """

    def __init__(self, ops: Sequence[OpLike], generator: Optional[torch.Generator] = None):
        super().__init__(generator)
        self.ops: List[OpLike] = _check_op_list(ops)
        self.mixes_labels = any(_mixes(op) for op in self.ops)
        # only the first op sees the input; each later op checks what it is given (e.g. after Normalize)
        self.accepts_uint8 = getattr(self.ops[0], "accepts_uint8", True)
        self.num_classes = _num_classes(None, self.ops)  # so that an enclosing composition can harmonise

    def _repr_fields(self):
        return {"ops": self.ops}

    def apply(self, images, targets) -> Batch:
        stats: Dict[str, torch.Tensor] = {}
        for i, op in enumerate(self.ops):
            images, targets = _run(op, images, targets)
            stats.update(_prefixed(getattr(op, "last_stats", {}), f"{i}."))
        self.last_stats = stats
        return images, targets


class RandomApply(Op):
    """Apply ``op`` with probability ``p``, per batch or per sample.

    * ``per_sample=False``: one coin U < p for the batch; if it fails ``op`` is not
      run at all.
    * ``per_sample=True``: a coin per image; ``op`` runs on the whole batch and each
      image takes the op's output where its coin succeeded and stays as it was
      otherwise: x̃_b = op(x)_b if U_b < p else x_b. The op's cost is paid for the
      full batch.

    Targets follow the module rules: for a mixer the result is always soft
    targets B×K (unselected samples or batches get their one-hot targets — with
    class indices this needs ``num_classes``, here or on the mixer); for a
    label-preserving op the targets object comes back unchanged.

    Args:
        op: the op (or protocol callable).
        p: application probability.
        per_sample: per-image coins instead of one per batch.
        num_classes: K for harmonising class-index targets (default: ``op.num_classes``,
            read once at construction).
        generator: optional ``torch.Generator`` for the coins (the op uses its own).

    ``last_stats``: ``applied`` ((B,) bool per sample, a 0-d bool per batch) and the
    op's stats under ``"op.{key}"`` (describing the full batch when per sample).
    """

    def __init__(self, op: OpLike, p: float = 0.5, *, per_sample: bool = False, num_classes: Optional[int] = None,
                 generator: Optional[torch.Generator] = None):
        super().__init__(generator)
        self.op = _check_op(op, "op")
        self.p = check_probability(p, "p")
        self.per_sample = bool(per_sample)
        self.num_classes = _num_classes(check_num_classes(num_classes), [self.op])
        self.mixes_labels = _mixes(op)
        self.accepts_uint8 = getattr(op, "accepts_uint8", True)

    def _repr_fields(self):
        return {"op": self.op, "p": self.p, "per_sample": self.per_sample}

    def apply(self, images, targets) -> Batch:
        num_classes = self.num_classes
        if not self.per_sample:
            coin = _random.rand((1,), _host_origin(self.generator), self.generator)
            applied = bool(coin < self.p)
            if applied:
                images, new_targets = _run(self.op, images, targets)
                op_stats = getattr(self.op, "last_stats", {})
            else:
                new_targets, op_stats = targets, {}
            if self.mixes_labels and targets is not None and new_targets is targets:
                new_targets = _soft(targets, num_classes, images.device)
            self.last_stats = {"applied": torch.tensor(applied), **_prefixed(op_stats, "op.")}
            return images, new_targets

        batch = images.shape[0]
        applied = _random.rand((batch,), images.device, self.generator) < self.p
        out, out_targets = _run(self.op, images, targets)
        images = torch.where(applied.view(-1, 1, 1, 1), out, images)
        if out_targets is not targets and targets is not None:
            original = _soft(targets, num_classes, images.device)
            out_targets = torch.where(applied.view(-1, 1), _soft(out_targets, num_classes, images.device), original)
        self.last_stats = {"applied": applied, **_prefixed(getattr(self.op, "last_stats", {}), "op.")}
        return images, out_targets


class RandomChoice(Op):
    """Apply one of ``ops``, drawn with probabilities ∝ ``weights``, per batch or per sample.

    * ``per_sample=False``: one op is drawn for the batch and only it runs.
    * ``per_sample=True``: every image draws its op; each op runs *once on the whole
      batch* (a loop over the ops, not the samples) and each image takes the output
      of its own draw. The cost is that of all ops on the full batch.

    Targets: when any member mixes labels the result is always soft targets B×K
    (one-hot for images whose op preserves labels; class indices need
    ``num_classes``, here or on a member); when none does, the targets object is
    returned unchanged.

    Args:
        ops: the candidates (ops or protocol callables), at least one.
        weights: non-negative, not all zero, one per op (default: uniform).
        per_sample: one draw per image instead of one per batch.
        num_classes: K for harmonising class-index targets (default: the first member's
            ``num_classes``, read once at construction).
        generator: optional ``torch.Generator`` for the draws (the ops use their own).

    ``last_stats``: ``choice`` ((B,) int64 per sample, a 0-d int64 per batch) and
    the stats of the op(s) that ran under ``"{index}.{key}"``.

    Example (timm's switching between Mixup and CutMix, per image)::

        mixer = RandomChoice([Mixup(K, alpha=0.8), CutMix(K, alpha=1.0)], per_sample=True)
    """

    def __init__(self, ops: Sequence[OpLike], weights: Optional[Sequence[float]] = None, *, per_sample: bool = False,
                 num_classes: Optional[int] = None, generator: Optional[torch.Generator] = None):
        super().__init__(generator)
        self.ops: List[OpLike] = _check_op_list(ops)
        if weights is None:
            weights = [1.0] * len(self.ops)
        try:
            weights = [float(w) for w in weights]
        except (TypeError, ValueError):
            raise TypeError(f"weights must be a sequence of numbers, got {weights!r}") from None
        if len(weights) != len(self.ops):
            raise ValueError(f"weights must have one entry per op ({len(self.ops)}), got {len(weights)}")
        if any(not (w >= 0.0) or w == float("inf") for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be finite, non-negative and not all zero, got {weights!r}")
        self.weights: Tuple[float, ...] = tuple(weights)
        self.per_sample = bool(per_sample)
        self.num_classes = _num_classes(check_num_classes(num_classes), self.ops)
        self.mixes_labels = any(_mixes(op) for op in self.ops)
        self.accepts_uint8 = all(getattr(op, "accepts_uint8", True) for op in self.ops)
        self._last_positive = max(i for i, w in enumerate(weights) if w > 0)

    def _repr_fields(self):
        return {"ops": self.ops, "weights": self.weights, "per_sample": self.per_sample}

    def _draw(self, count: int, device) -> torch.Tensor:
        """Inverse-CDF draws of op indices (count,) int64: the number of cumulative weights ≤ U·Σw.

        Zero-weight ops are never drawn; thresholds are Python numbers, so nothing is copied to the device.
        """
        cumulative = np.cumsum(np.asarray(self.weights, dtype=np.float64))
        scaled = _random.rand((count,), device, self.generator, torch.float64) * float(cumulative[-1])
        choice = torch.zeros(count, dtype=torch.long, device=scaled.device)
        for threshold in cumulative[:-1]:
            choice += scaled >= float(threshold)
        return choice.clamp_max(self._last_positive)

    def apply(self, images, targets) -> Batch:
        num_classes = self.num_classes
        harmonise = self.mixes_labels and targets is not None
        if not self.per_sample:
            choice = self._draw(1, _host_origin(self.generator))[0]
            index = int(choice)
            op = self.ops[index]
            images, new_targets = _run(op, images, targets)
            if harmonise:
                new_targets = _soft(new_targets, num_classes, images.device)
            self.last_stats = {"choice": choice, **_prefixed(getattr(op, "last_stats", {}), f"{index}.")}
            return images, new_targets

        batch = images.shape[0]
        choice = self._draw(batch, images.device)
        out_images = images
        out_targets = _soft(targets, num_classes, images.device) if harmonise else targets
        stats: Dict[str, torch.Tensor] = {"choice": choice}
        for index, op in enumerate(self.ops):  # each op once on the full batch, then per-sample selection
            if self.weights[index] == 0:
                continue
            result, result_targets = _run(op, images, targets)
            picked = choice == index
            out_images = torch.where(picked.view(-1, 1, 1, 1), result, out_images)
            if harmonise:
                out_targets = torch.where(picked.view(-1, 1), _soft(result_targets, num_classes, images.device),
                                          out_targets)
            elif result_targets is not targets and targets is not None:
                raise ValueError(f"ops[{index}] changed the targets but does not declare mixes_labels=True; "
                                 "RandomChoice cannot harmonise them")
            stats.update(_prefixed(getattr(op, "last_stats", {}), f"{index}."))
        self.last_stats = stats
        return out_images, out_targets
