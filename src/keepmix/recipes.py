"""Training recipes: the YAML ↔ :class:`TrainConfig` schema, overrides, and building from a config.

A recipe is a YAML mapping with the fields of :class:`TrainConfig` (nested sections ``data``,
``model``, ``optim``). Unknown keys raise ``ValueError`` naming the key; every value is checked
against its field's type. ``extends: other.yaml`` (a path relative to the recipe) deep-merges the
recipe on top of another one, so the papers' settings live in one base file each. Relative paths
in a recipe (``data.root``, ``model.pretrained``) are relative to the recipe file that sets them,
wherever the command runs; paths given on the command line are relative to the current folder.

Overrides ``key=value`` (``--set optim.lr=0.05``) are typed by the field: the value is parsed as
YAML (``0.05`` → float, ``[1, 2]`` → list, ``null`` → None) and then checked like a recipe value.

Augmentations are data: ``ops`` is a list of mappings ``{name: <op>, <kwarg>: <value>, ...}``
built through :func:`build_ops`, whose registry covers every :class:`~keepmix.protocol.Op`
subclass that exists in ``keepmix.keep``, ``keepmix.mix``, ``keepmix.erase``, ``keepmix.mixers``,
``keepmix.optmix``, ``keepmix.compose`` and ``keepmix.policies`` (looked up at build time). Values
are resolved so a recipe never names Python objects:

* ``saliency: model`` → the model being trained (unwrapped); ``saliency: early_head`` → the
  KeepAugment early head (created on demand, trained with the auxiliary loss);
  ``saliency: memory`` → the run's saliency memory (:mod:`keepmix.memory`, written by the
  training backward; section ``memory`` of the recipe: fallback, resolution, dtype), and
  ``pairing: memory`` → greedy pairing on its maps;
  ``saliency: spectral`` / ``gradient`` as the op defines them;
* a mapping with a ``name`` key, or a list of them, is built as a nested op (``SelectivePaste``'s
  ``transform``, ``Compose``'s ``ops``…);
* ``model``, ``num_classes`` and ``generator`` are supplied when the op's constructor takes them
  and the recipe does not give them (every op gets its own seeded ``torch.Generator``);
* ``teacher: {model: resnet50, pretrained: path.pt}`` builds a frozen network (Attentive
  CutMix); ``teacher: model`` uses the model being trained.

``arms`` turns a recipe into a comparison: each arm ``{name, ops, set}`` is one run of the same
recipe with its own ops and dotted overrides; :func:`expand_arms` yields one config per arm.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib
import importlib.util
import inspect
import warnings
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import yaml
from torch import nn

from .protocol import Op
from .saliency import NormalizedInput

PathLike = Union[str, os.PathLike]

# --------------------------------------------------------------------------- schema


@dataclass
class DataConfig:
    """Where the images come from and how they are prepared (crop/flip/normalise run on the device).

    ``name``: a data set known to :func:`keepmix.data.load_dataset` (``salient_shapes`` — the
    embedded synthetic default —, ``cifar10``, ``cifar100``, ``tiny_imagenet``, ``cub200``,
    ``stanford_cars``, ``fgvc_aircraft``, ``caltech101``, ``flowers102``, ``image_folder``).
    ``kwargs`` go to the loader (for ``salient_shapes``: ``n_per_class``, ``clutter``,
    ``object_size``…). ``train_size`` caps the training set at a class-stratified subset of that
    many images, ``fraction`` keeps that share of every class (GuidedMixup's data-scarcity
    study); ``val_fraction`` holds out a stratified share of the training set for evaluation
    instead of the ``eval_split``. Subsets and splits are drawn with ``subset_seed`` (fixed
    across training seeds). ``image_size`` decodes file-backed sets at that size on the in-memory
    path, and is the crop size S when streaming. ``crop_padding``/``flip``: the random crop (zero
    padding) and horizontal flip applied per sample on the device.

    Input path (:mod:`keepmix.engine.streaming`): ``loader`` — ``memory`` (the whole set on the
    device), ``stream`` (``DataLoader`` workers decode and crop files; :mod:`keepmix.data.stream`) or
    ``auto`` (in-memory sets stay in memory; a file-backed set streams when its decoded size exceeds
    ``memory_limit_gb`` or it needs random-resized crops). ``crop`` — ``pad`` (``crop_padding`` +
    ``flip``, on the device), ``resized`` (random-resized crop with area share ``crop_scale`` and
    aspect ratio ``crop_ratio``, plus ``flip``, in the workers; evaluation resizes the shorter side
    to ``eval_resize`` (default S/0.875) and keeps the central S×S) or ``auto`` (``pad`` in memory,
    ``resized`` when streaming). ``workers``: worker processes per rank (null: the usable CPUs over
    the local ranks, at most 8; batches do not depend on it).
    """

    name: str = "salient_shapes"
    root: Optional[str] = None
    download: bool = False
    kwargs: Dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    eval_split: str = "test"
    train_size: Optional[int] = None
    eval_size: Optional[int] = None
    fraction: Optional[float] = None
    val_fraction: Optional[float] = None
    image_size: Optional[int] = None
    crop_padding: int = 4
    flip: bool = True
    eval_batch_size: Optional[int] = None
    subset_seed: int = 0
    loader: str = "auto"
    crop: str = "auto"
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: List[float] = field(default_factory=lambda: [3.0 / 4.0, 4.0 / 3.0])
    eval_resize: Optional[int] = None
    workers: Optional[int] = None
    memory_limit_gb: float = 4.0


@dataclass
class ModelConfig:
    """The classifier: ``name`` for :func:`keepmix.models.build_model`, ``kwargs`` for its factory.

    ``pretrained``: path to a local ``state_dict`` file (``torch.save(model.state_dict())``) loaded
    before training — the FGVC settings start from ImageNet weights, which this library does not
    download. The final classifier is skipped when its shape differs (a new head for the classes).
    """

    name: str = "resnet_small"
    kwargs: Dict[str, Any] = field(default_factory=dict)
    pretrained: Optional[str] = None


@dataclass
class OptimConfig:
    """SGD and the learning-rate schedule.

    ``batch_size`` is the global batch (split evenly across distributed ranks). ``schedule``:
    ``cosine`` (per step, from ``lr`` to ``min_lr``), ``multistep`` (×``gamma`` at each epoch in
    ``milestones``) or ``constant``; ``warmup_epochs`` ramps linearly from ``lr/warmup_steps`` to
    ``lr`` first (may be fractional). ``base_batch_size``: when set, ``lr`` and ``min_lr`` are the
    rates for a global batch of that size and the run uses them × ``batch_size / base_batch_size``
    (the linear scaling rule of Goyal et al. 2017), so ``--batch-size`` changes keep the schedule.
    """

    epochs: int = 300
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: List[int] = field(default_factory=list)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    base_batch_size: Optional[int] = None

    @property
    def lr_scale(self) -> float:
        """The factor on ``lr`` and ``min_lr``: ``batch_size / base_batch_size`` (1 without ``base_batch_size``)."""
        return self.batch_size / self.base_batch_size if self.base_batch_size else 1.0


@dataclass
class MemoryConfig:
    """The saliency memory (:mod:`keepmix.memory`) that ops given ``saliency: memory`` or
    ``pairing: memory`` read; created only when an op asks for it, and written by the step's own backward.

    ``fallback``: the saliency of samples not written yet (the first epoch) — ``model`` (a fresh
    gradient pass of the model being trained), ``early_head``, ``spectral`` or ``uniform`` (flat
    maps, free). ``scale``: the memory's resolution as a share of the image's (1.0; 0.5 halves
    each side). ``dtype``: ``float16``, ``bfloat16`` or ``float32``. ``reduce``: what is written —
    ``max`` (KeepAugment's max_c |∂ℓ/∂x|), ``rms`` (Guided-AP's channel RMS) or ``auto`` (``rms``
    when a GuidedMixup reads the memory, else ``max``). ``min_own``: the share of a pixel that
    must be the sample's own for the pixel to be written (½).
    """

    fallback: str = "model"
    scale: float = 1.0
    dtype: str = "float16"
    reduce: str = "auto"
    min_own: float = 0.5


@dataclass
class SemiConfig:
    """Semi-supervised training with UDA (Xie et al., arXiv 1904.12848); off while ``labels`` is null.

    With ``labels: N`` the run keeps the labels of a class-balanced, seeded choice of N training images
    (N/K per class, drawn with ``data.subset_seed``; :func:`keepmix.data.stratified_subset`) and uses
    the rest of the training set without its labels. Every step takes a labelled batch of
    ``optim.batch_size`` and an unlabelled batch ``unlabeled_ratio`` (μ) times larger; the recipe's
    ``ops`` become the **strong** augmentation of the unlabelled images (``rand_augment``,
    ``keep_rand_augment`` — whose model saliency then uses the predicted class, KeepAugment Table 7),
    and the loss is :func:`keepmix.losses.tsa_cross_entropy` + ``weight`` (λ) ×
    :func:`keepmix.losses.uda_consistency` (:mod:`keepmix.engine.semi`). ``temperature`` (τ) sharpens
    the weak view's prediction, ``threshold`` (β) is the confidence mask, ``tsa`` the Training Signal
    Annealing schedule (``none``, ``linear``, ``log``, ``exp``). Defaults: μ = 7, λ = 1, τ = 0.4,
    β = 0.8, linear TSA — UDA's CIFAR-10 settings as we recall them (see :mod:`keepmix.losses`).
    """

    labels: Optional[int] = None
    unlabeled_ratio: int = 7
    weight: float = 1.0
    temperature: float = 0.4
    threshold: float = 0.8
    tsa: str = "linear"

    @property
    def enabled(self) -> bool:
        """Whether the run is semi-supervised (``labels`` is set)."""
        return self.labels is not None


@dataclass
class ArmConfig:
    """One arm of a comparison: its ops and dotted overrides applied to the recipe (``set``)."""

    name: str = ""
    ops: List[Dict[str, Any]] = field(default_factory=list)
    set: Dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Everything a training run needs; YAML recipes map onto it one to one.

    Runtime fields: ``device`` (``auto`` = CUDA when available), ``amp`` (``none``, ``bf16``,
    ``fp16``), ``channels_last``, ``compile`` (``torch.compile`` of the training forward; saliency
    uses the plain model), ``max_steps_per_epoch`` (cap for smoke runs), ``eval_every`` (epochs),
    ``progress`` (tqdm bars), ``tensorboard`` (when installed), ``log_every`` (steps between tqdm
    loss readouts — each one a device sync).

    Loss fields: ``label_smoothing`` (applied once, in the soft-target loss); ``early_head`` forces
    KeepAugment's early head (created anyway when an op asks for ``saliency: early_head``) and
    ``early_head_weight`` weighs its auxiliary loss (0.3); ``jsd_weight`` > 0 turns on AugMix's
    Jensen–Shannon consistency (12 in the AugMix paper): the ops run twice to make two views of
    every image, the loss is the cross-entropy of the clean images plus ``jsd_weight`` × JS.

    ``dist_timeout``: seconds a distributed collective may wait for the other ranks before the
    job fails with a message naming the rank that stopped (runtime field; 10 minutes).

    ``semi``: UDA semi-supervised training (:class:`SemiConfig`); with ``semi.labels`` set, ``ops``
    are the strong augmentation of the unlabelled batch.
    """

    name: str = "run"
    description: str = ""
    seed: int = 0
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)
    ops: List[Dict[str, Any]] = field(default_factory=list)
    arms: List[ArmConfig] = field(default_factory=list)
    early_head: bool = False
    early_head_weight: float = 0.3
    label_smoothing: float = 0.0
    jsd_weight: float = 0.0
    device: str = "auto"
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    max_steps_per_epoch: Optional[int] = None
    eval_every: int = 1
    progress: bool = True
    tensorboard: bool = True
    log_every: int = 50
    dist_timeout: float = 600.0

    def validate(self) -> "TrainConfig":
        """Range checks that the type system cannot express; returns self."""
        _require(self.seed >= 0, "seed", "must be >= 0", self.seed)
        _require(self.optim.epochs >= 1, "optim.epochs", "must be >= 1", self.optim.epochs)
        _require(self.optim.batch_size >= 1, "optim.batch_size", "must be >= 1", self.optim.batch_size)
        _require(self.optim.lr > 0, "optim.lr", "must be > 0", self.optim.lr)
        _require(0 <= self.optim.momentum < 1, "optim.momentum", "must be in [0, 1)", self.optim.momentum)
        _require(not self.optim.nesterov or self.optim.momentum > 0, "optim.nesterov",
                 "needs optim.momentum > 0", self.optim.nesterov)
        _require(self.optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0", self.optim.weight_decay)
        _require(self.optim.schedule in SCHEDULES, "optim.schedule", f"must be one of {SCHEDULES}",
                 self.optim.schedule)
        _require(self.optim.warmup_epochs >= 0, "optim.warmup_epochs", "must be >= 0", self.optim.warmup_epochs)
        if 0 < self.optim.epochs <= self.optim.warmup_epochs:
            warnings.warn(f"optim.warmup_epochs ({self.optim.warmup_epochs:g}) >= optim.epochs ({self.optim.epochs}): "
                          f"the learning rate never reaches optim.lr ({self.optim.lr:g}); lower the warm-up "
                          f"(--set optim.warmup_epochs=0) for a short run", UserWarning, stacklevel=2)
        _require(self.optim.min_lr >= 0, "optim.min_lr", "must be >= 0", self.optim.min_lr)
        _require(0 < self.optim.gamma <= 1, "optim.gamma", "must be in (0, 1]", self.optim.gamma)
        _require(list(self.optim.milestones) == sorted(self.optim.milestones)
                 and all(m >= 1 for m in self.optim.milestones), "optim.milestones",
                 "must be increasing epochs >= 1", self.optim.milestones)
        _require(self.amp in AMP_MODES, "amp", f"must be one of {AMP_MODES}", self.amp)
        _require(self.device == "auto" or re.fullmatch(r"cpu|cuda(:\d+)?|mps", self.device) is not None,
                 "device", "must be 'auto', 'cpu', 'cuda' or 'cuda:N'", self.device)
        _require(0 <= self.label_smoothing <= 1, "label_smoothing", "must be in [0, 1]", self.label_smoothing)
        _require(self.jsd_weight >= 0, "jsd_weight", "must be >= 0", self.jsd_weight)
        _require(self.early_head_weight >= 0, "early_head_weight", "must be >= 0", self.early_head_weight)
        _require(self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1, "max_steps_per_epoch",
                 "must be >= 1 or null", self.max_steps_per_epoch)
        _require(self.eval_every >= 1, "eval_every", "must be >= 1", self.eval_every)
        _require(self.log_every >= 1, "log_every", "must be >= 1", self.log_every)
        _require(self.dist_timeout > 0, "dist_timeout", "must be > 0 seconds", self.dist_timeout)
        data = self.data
        _require(data.crop_padding >= 0, "data.crop_padding", "must be >= 0", data.crop_padding)
        _require(data.loader in LOADERS, "data.loader", f"must be one of {LOADERS}", data.loader)
        _require(data.crop in CROPS, "data.crop", f"must be one of {CROPS}", data.crop)
        _require(not (data.loader == "memory" and data.crop == "resized"), "data.crop",
                 "'resized' needs data.loader 'stream' or 'auto' (the in-memory path holds one fixed size)", data.crop)
        _require(len(data.crop_scale) == 2 and 0 < data.crop_scale[0] <= data.crop_scale[1] <= 1, "data.crop_scale",
                 "must be [low, high] with 0 < low <= high <= 1", data.crop_scale)
        _require(len(data.crop_ratio) == 2 and 0 < data.crop_ratio[0] <= data.crop_ratio[1], "data.crop_ratio",
                 "must be [low, high] with 0 < low <= high", data.crop_ratio)
        _require(data.eval_resize is None or data.image_size is None or data.eval_resize >= data.image_size,
                 "data.eval_resize", "must be >= data.image_size or null", data.eval_resize)
        _require(data.workers is None or data.workers >= 0, "data.workers", "must be >= 0 or null", data.workers)
        _require(data.memory_limit_gb > 0, "data.memory_limit_gb", "must be > 0", data.memory_limit_gb)
        _require(self.optim.base_batch_size is None or self.optim.base_batch_size >= 1, "optim.base_batch_size",
                 "must be >= 1 or null", self.optim.base_batch_size)
        _require(data.fraction is None or 0 < data.fraction <= 1, "data.fraction", "must be in (0, 1]",
                 data.fraction)
        _require(data.val_fraction is None or 0 < data.val_fraction < 1, "data.val_fraction",
                 "must be in (0, 1)", data.val_fraction)
        memory = self.memory
        _require(memory.fallback in MEMORY_FALLBACKS, "memory.fallback", f"must be one of {MEMORY_FALLBACKS}",
                 memory.fallback)
        _require(0 < memory.scale <= 1, "memory.scale", "must be in (0, 1]", memory.scale)
        _require(memory.dtype in ("float16", "bfloat16", "float32"), "memory.dtype",
                 "must be float16, bfloat16 or float32", memory.dtype)
        _require(memory.reduce in ("auto", "max", "rms"), "memory.reduce", "must be auto, max or rms", memory.reduce)
        _require(0 < memory.min_own <= 1, "memory.min_own", "must be in (0, 1]", memory.min_own)
        self._validate_semi()
        for key in ("train_size", "eval_size", "image_size", "eval_batch_size"):
            value = getattr(data, key)
            _require(value is None or value >= 1, f"data.{key}", "must be >= 1 or null", value)
        _require(re.fullmatch(r"[A-Za-z0-9_.\-/]+", self.name) is not None and ".." not in self.name, "name",
                 "must be letters, digits, '_', '-', '.', '/' (a path under output_dir)", self.name)
        for index, spec in enumerate(self.ops):
            check_op_spec(spec, f"ops[{index}]")
        names = [arm.name for arm in self.arms]
        for index, arm in enumerate(self.arms):
            _require(re.fullmatch(r"[A-Za-z0-9_.\-]+", arm.name) is not None, f"arms[{index}].name",
                     "must be a non-empty name of letters, digits, '_', '-', '.'", arm.name)
            _require(names.count(arm.name) == 1, f"arms[{index}].name", "must be unique", arm.name)
            for j, spec in enumerate(arm.ops):
                check_op_spec(spec, f"arms[{index}].ops[{j}]")
        return self


    def _validate_semi(self) -> None:
        """Ranges of ``semi.*``, and what UDA training cannot combine with (named by field)."""
        from .losses import TSA_SCHEDULES
        semi = self.semi
        _require(semi.labels is None or semi.labels >= 1, "semi.labels", "must be >= 1 or null", semi.labels)
        _require(semi.unlabeled_ratio >= 1, "semi.unlabeled_ratio", "must be >= 1", semi.unlabeled_ratio)
        _require(semi.weight >= 0, "semi.weight", "must be >= 0", semi.weight)
        _require(semi.temperature > 0, "semi.temperature", "must be > 0", semi.temperature)
        _require(0 <= semi.threshold <= 1, "semi.threshold", "must be in [0, 1]", semi.threshold)
        _require(semi.tsa in TSA_SCHEDULES, "semi.tsa", f"must be one of {TSA_SCHEDULES}", semi.tsa)
        if not semi.enabled:
            return
        _require(self.jsd_weight == 0, "jsd_weight", "must be 0 with semi.labels (UDA has its own consistency loss)",
                 self.jsd_weight)
        _require(not self.early_head and not uses_early_head(self.ops), "early_head",
                 "is not supported with semi.labels (the unlabelled batch has no labels for its loss)",
                 self.early_head)
        _require(not uses_memory(self.ops), "ops", "may not read the saliency memory (saliency/pairing: memory) "
                 "with semi.labels", self.ops)
        _require(self.data.loader != "stream", "data.loader", "must be 'memory' or 'auto' with semi.labels "
                 "(the labelled and unlabelled sets live on the device)", self.data.loader)
        for index, spec in enumerate(self.ops):
            try:
                cls, _ = resolve_op(spec["name"]) if isinstance(spec, dict) and isinstance(spec.get("name"), str) \
                    else (None, None)
            except ValueError:  # an unknown name is reported when the ops are built
                cls = None
            _require(not getattr(cls, "mixes_labels", False), f"ops[{index}]",
                     "mixes labels; with semi.labels the ops are the strong view of unlabelled images and must "
                     "preserve labels (rand_augment, keep_rand_augment, cutout…)", spec)


SCHEDULES = ("cosine", "multistep", "constant")
LOADERS = ("auto", "memory", "stream")
CROPS = ("auto", "pad", "resized")
MEMORY_FALLBACKS = ("model", "early_head", "spectral", "uniform")
AMP_MODES = ("none", "bf16", "fp16")


def _require(ok: bool, key: str, what: str, value) -> None:
    if not ok:
        raise ValueError(f"{key} {what}, got {value!r}")


def check_op_spec(spec, where: str) -> None:
    """An op spec is a mapping with a string ``name``."""
    if not isinstance(spec, dict):
        raise TypeError(f"{where} must be a mapping {{name: <op>, ...kwargs}}, got {spec!r}")
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        raise ValueError(f"{where} needs a 'name' (the op), got {spec!r}")


# --------------------------------------------------------------------------- dict <-> dataclass


def _hints(cls) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value, tp, key: str):
    """Check ``value`` against the annotation ``tp`` (ints accepted for floats); return it converted."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return copy.deepcopy(value)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except (TypeError, ValueError) as error:
                errors.append(str(error))
        raise TypeError(f"{key} must be {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return copy.deepcopy(value)
        if not isinstance(value, dict):
            raise TypeError(f"{key} must be a mapping (section {tp.__name__}), got {value!r}")
        return _from_dict(tp, value, key + ".")
    if origin in (list, List):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise TypeError(f"{key} must be a list, got {value!r}")
        (item,) = args or (Any,)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise TypeError(f"{key} must be a mapping, got {value!r}")
        return copy.deepcopy(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported field type {tp!r}")  # pragma: no cover - schema error


def _unknown_key(key: str, known: Sequence[str], prefix: str, owner=None) -> ValueError:
    """The error for an unknown key, with a did-you-mean: a close key at this level, else a field of that
    name (or close to it) one level down in ``owner``'s nested sections (``epochs`` → ``optim.epochs``)."""
    close = [prefix + c for c in difflib.get_close_matches(key, known, n=1)]
    if not close and owner is not None:
        hints = _hints(owner)
        nested = [f"{name}.{field.name}" for name in known if dataclasses.is_dataclass(hints.get(name))
                  for field in dataclasses.fields(hints[name])]
        leaves = {path.split(".")[-1]: path for path in nested}
        close = [prefix + leaves[c] for c in difflib.get_close_matches(key, list(leaves), n=1)]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown key {prefix + key!r}{hint}; known keys: {', '.join(prefix + k for k in known)}")


def _from_dict(cls, data: Dict[str, Any], prefix: str = ""):
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise _unknown_key(str(key), names, prefix, cls)
    kwargs = {key: _coerce(value, hints[key], prefix + key) for key, value in data.items()}
    return cls(**kwargs)


def config_from_dict(data: Dict[str, Any]) -> TrainConfig:
    """Build a validated :class:`TrainConfig` from a mapping (unknown keys → ``ValueError``)."""
    if not isinstance(data, dict):
        raise TypeError(f"a recipe must be a mapping of config keys, got {type(data).__name__}")
    data = {k: v for k, v in data.items() if k != "extends"}
    return _from_dict(TrainConfig, data).validate()


def config_to_dict(config: TrainConfig) -> Dict[str, Any]:
    """Plain nested dict (YAML-safe) of a config."""
    return dataclasses.asdict(config)


def config_to_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=None)


# --------------------------------------------------------------------------- recipe files


def recipe_dirs() -> List[Path]:
    """Where recipe names are looked up: ``$KEEPMIX_RECIPES``, ``./recipes``, the source checkout's ``recipes/``."""
    dirs = []
    if os.environ.get("KEEPMIX_RECIPES"):
        dirs.extend(Path(p) for p in os.environ["KEEPMIX_RECIPES"].split(os.pathsep) if p)
    dirs.append(Path.cwd() / "recipes")
    dirs.append(Path(__file__).resolve().parents[2] / "recipes")
    unique = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def find_recipe(name: PathLike) -> Path:
    """A recipe file: an existing path, or a name (``default``, ``keepaugment/cutout_resnet18``) in :func:`recipe_dirs`."""
    path = Path(name)
    if path.is_file():
        return path
    candidates = [str(name)] if str(name).endswith((".yaml", ".yml")) else [f"{name}.yaml", f"{name}.yml"]
    for folder in recipe_dirs():
        for candidate in candidates:
            if (folder / candidate).is_file():
                return folder / candidate
    searched = ", ".join(str(d) for d in recipe_dirs())
    import difflib
    hints = difflib.get_close_matches(str(name), list_recipes(), n=3)
    raise FileNotFoundError(f"recipe {str(name)!r} not found as a file or by name in: {searched}"
                            + (f" (did you mean {', '.join(hints)}?)" if hints else "; keepmix list recipes names them"))


def list_recipes() -> List[str]:
    """Names of the recipes found in :func:`recipe_dirs` (files starting with '_' are bases, not listed)."""
    names = set()
    for folder in recipe_dirs():
        if folder.is_dir():
            for path in folder.rglob("*.yaml"):
                if not path.name.startswith("_"):
                    names.add(path.relative_to(folder).with_suffix("").as_posix())
    return sorted(names)


def _deep_merge(base: Dict[str, Any], top: Dict[str, Any]) -> Dict[str, Any]:
    """``top`` over ``base``; mappings merge key by key, everything else (lists too) is replaced."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("kwargs", "set"):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_recipe(path: PathLike, _seen: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    """The recipe at ``path`` as a dict, with ``extends`` resolved (relative to the file)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ValueError(f"recipe {path} extends itself (cycle: {' -> '.join(str(p) for p in _seen)})")
    with open(path, "r", encoding="utf-8") as handle:
        try:
            data = yaml.safe_load(handle)
        except yaml.YAMLError as error:
            raise ValueError(f"recipe {path}: {yaml_error_line(error)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"recipe {path} must hold a mapping of config keys, got {type(data).__name__}")
    _resolve_paths(data, path.parent)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise TypeError(f"extends in {path} must be a path string, got {parent!r}")
    base = read_recipe(path.parent / parent, _seen + (path,))
    return _deep_merge(base, data)


#: recipe fields holding file paths; relative ones are relative to the recipe file that sets them
RECIPE_PATH_FIELDS = (("data", "root"), ("model", "pretrained"))


def _resolve_paths(data: Dict[str, Any], folder: Path) -> None:
    """Make the relative ``data.root`` / ``model.pretrained`` of one recipe file absolute, against ``folder``.

    ``~`` is expanded; absolute paths stay as they are. Paths given on the command line
    (``--data-root``, ``--set data.root=…``) are not touched here: they are relative to the
    current folder, as paths on a command line are.
    """
    for section, key in RECIPE_PATH_FIELDS:
        part = data.get(section)
        if isinstance(part, dict) and isinstance(part.get(key), str) and part[key]:
            value = os.path.expanduser(part[key])
            if not os.path.isabs(value):
                value = os.path.normpath(os.path.join(str(folder), value))
            part[key] = value


def yaml_error_line(error: "yaml.YAMLError") -> str:
    """One line for a YAML error: where (line, column) and what; Python tags get a plain reason."""
    mark = getattr(error, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(error, "problem", None) or str(error)
    if "python/" in problem:
        problem += " (recipes are plain YAML: Python object tags are not allowed)"
    return where + " ".join(problem.split())


def load_recipe(name: Optional[PathLike] = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Load a recipe file (a path or a name; ``None`` → ``default``) and apply ``key=value`` overrides.

    Overriding ``data.name`` with another data set drops the recipe's ``data.kwargs`` (they
    belong to the data set they were written for); ``data.kwargs`` overrides given with it apply.
    """
    data = read_recipe(find_recipe("default" if name is None else name))
    _apply_override_items(data, overrides)
    return config_from_dict(data)


def _apply_override_items(data: Dict[str, Any], overrides: Sequence[str]) -> None:
    """Apply ``key=value`` overrides to a recipe dict; a new ``data.name`` resets ``data.kwargs`` (see above)."""
    section = data.get("data") if isinstance(data.get("data"), dict) else {}
    before = section.get("name", DataConfig.name)
    parsed = [parse_override(item) for item in overrides]
    for key, value in parsed:
        set_by_path(data, key, value)
    keys = {key for key, _ in parsed}
    if "ops" in keys and data.get("arms") and "arms" not in keys:
        names = ", ".join(str(arm.get("name")) for arm in data["arms"])
        raise ValueError(f"ops: the recipe {data.get('name')!r} trains its arms ({names}), each with its own ops, so "
                         "--set ops=… would change nothing (and an arm without ops of its own would take them); "
                         "add --set arms=[] to train these ops alone")
    section = data.get("data") if isinstance(data.get("data"), dict) else {}
    if _same_dataset(section.get("name", DataConfig.name), before):
        return
    if not any(key == "data" for key, _ in parsed):
        section["kwargs"] = {}
        for key, value in parsed:  # only the kwargs given with the new name
            if key == "data.kwargs" or key.startswith("data.kwargs."):
                set_by_path(data, key, value)


def _same_dataset(a: Any, b: Any) -> bool:
    """Whether two data set spellings name the same set (``salient-shapes`` is ``salient_shapes``)."""
    if a == b:
        return True
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    from .data import canonical_name
    try:
        return canonical_name(a) == canonical_name(b)
    except ValueError:
        return False


def parse_override(item: str) -> Tuple[str, Any]:
    """``"optim.lr=0.05"`` → ``("optim.lr", 0.05)``; the value is parsed as YAML."""
    if not isinstance(item, str) or "=" not in item:
        raise ValueError(f"an override must look like key=value (e.g. optim.lr=0.05), got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ValueError(f"an override needs a key before '=', got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ValueError(f"cannot parse the value of override {key!r}: {yaml_error_line(error)}") from None
    return key, value


def set_by_path(data: Dict[str, Any], key: str, value: Any) -> None:
    """Set ``data[a][b]… = value`` for ``key = "a.b…"``, checking each part against the schema.

    A numeric part indexes a list (``arms.1.set``). Keys inside free-form mappings
    (``data.kwargs``, ``model.kwargs``, op specs) are not checked here; the typed check of the
    value happens when the dict becomes a config.
    """
    parts = key.split(".")
    if any(not part for part in parts):
        raise ValueError(f"override key {key!r} has an empty part")
    cls = TrainConfig
    node: Any = data
    for depth, part in enumerate(parts):
        prefix = ".".join(parts[:depth])
        prefix = prefix + "." if prefix else ""
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ValueError(f"{prefix}{part}: {prefix.rstrip('.')} is a list of {len(node)}; "
                                 f"use an index 0..{len(node) - 1}")
            index = int(part)
            item_type = cls
            if last:
                node[index] = value
                return
            node = node[index]
            cls = item_type
            continue
        if cls is not None:
            names = [f.name for f in dataclasses.fields(cls)]
            if part not in names:
                raise _unknown_key(part, names, prefix, cls)
            tp = _hints(cls)[part]
            if typing.get_origin(tp) in (list, List):
                (item,) = typing.get_args(tp) or (Any,)
                cls = item if dataclasses.is_dataclass(item) else None
            else:
                cls = tp if dataclasses.is_dataclass(tp) else None
        if last:
            node[part] = value
            return
        child = node.get(part)
        if not isinstance(child, (dict, list)):
            child = {}
            node[part] = child
        node = child


def apply_overrides(config: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """A new config: ``config`` with ``key=value`` overrides applied and re-validated (as :func:`load_recipe`)."""
    data = config_to_dict(config)
    _apply_override_items(data, overrides)
    return config_from_dict(data)


def expand_arms(config: TrainConfig, only: Optional[Sequence[str]] = None) -> List[Tuple[str, TrainConfig]]:
    """One ``(arm name, config)`` per arm (``ops`` and ``set`` applied, ``arms`` cleared).

    A config without arms gives itself under the name ``""``. ``only`` picks arms by name.
    """
    if not config.arms:
        if only:
            raise ValueError(f"arm(s) {list(only)} requested but the recipe {config.name!r} has no arms")
        return [("", config)]
    names = [arm.name for arm in config.arms]
    if only:
        missing = [name for name in only if name not in names]
        if missing:
            import difflib
            hints = [h for name in missing for h in difflib.get_close_matches(name, names, n=1)]
            raise ValueError(f"unknown arm(s) {missing}"
                             + (f" (did you mean {', '.join(repr(h) for h in hints)}?)" if hints else "")
                             + f"; the recipe's arms are: {', '.join(names)}")
    result = []
    for arm in config.arms:
        if only and arm.name not in only:
            continue
        data = config_to_dict(config)
        data["arms"] = []
        if arm.ops:
            data["ops"] = copy.deepcopy(arm.ops)
        for key, value in arm.set.items():
            if key.split(".")[0] in ("arms", "name", "output_dir"):
                raise ValueError(f"arms[{arm.name}].set may not change {key!r}")
            set_by_path(data, key, value)
        data["name"] = f"{config.name}/{arm.name}"
        result.append((arm.name, config_from_dict(data)))
    return result


# --------------------------------------------------------------------------- the op registry

OP_MODULES = ("keepmix.keep", "keepmix.mix", "keepmix.erase", "keepmix.mixers", "keepmix.optmix",
              "keepmix.compose", "keepmix.policies", "keepmix.convert")

#: recipe names for common settings of one class: name -> (class name, default kwargs)
OP_PRESETS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "guided_sr": ("GuidedMixup", {"saliency": "spectral"}),
    "guided_ap": ("GuidedMixup", {"saliency": "gradient"}),
}


def _normal(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def op_registry() -> Dict[str, type]:
    """Every concrete :class:`Op` subclass found now in :data:`OP_MODULES`, keyed by class name.

    Modules that do not exist (yet) are skipped; a module that exists but fails to import raises.
    """
    registry: Dict[str, type] = {}
    for module_name in OP_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and module_name.startswith(error.name):
                continue
            raise
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, Op) and not inspect.isabstract(obj) \
                    and obj.__module__.startswith("keepmix.") and not obj.__name__.startswith("_"):
                registry.setdefault(obj.__name__, obj)
    return registry


def op_names() -> List[str]:
    """Recipe names of every registered op (snake_case class names) and presets."""
    return sorted({_snake(n) for n in op_registry()} | set(OP_PRESETS))


def resolve_op(name: str) -> Tuple[type, Dict[str, Any]]:
    """``(class, preset kwargs)`` for a recipe op name (case, '_' and '-' do not matter)."""
    if not isinstance(name, str):
        raise TypeError(f"op name must be a string, got {name!r}")
    key = _normal(name)
    registry = op_registry()
    for preset, (cls_name, kwargs) in OP_PRESETS.items():
        if _normal(preset) == key and cls_name in registry:
            return registry[cls_name], dict(kwargs)
    for cls_name, cls in registry.items():
        if _normal(cls_name) == key:
            return cls, {}
    missing = [m for m in OP_MODULES if importlib.util.find_spec(m) is None]
    note = f" (modules not available: {', '.join(missing)})" if missing else ""
    hint = difflib.get_close_matches(key, [_normal(n) for n in op_names()], n=1)
    close = [n for n in op_names() if hint and _normal(n) == hint[0]]
    suggestion = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown op {name!r}{suggestion}; available ops: {', '.join(op_names())}{note}")


# --------------------------------------------------------------------------- building ops


@dataclass
class BuildContext:
    """What op construction may need from the run.

    ``early_head``: a zero-argument callable returning the (shared) early head; called only when
    an op asks for ``saliency: early_head``. ``mean``/``std``: the normalisation, used to wrap
    model saliency for ops that run on un-normalised images. ``device``: where generators live.
    ``memory``: a zero-argument callable returning the run's :class:`keepmix.memory.SaliencyMemory`
    (``saliency: memory``, ``pairing: memory``); without one such ops get the ``memory_fallback``
    source, which is what a memory nothing was written to yet gives.
    """

    model: Optional[nn.Module] = None
    num_classes: Optional[int] = None
    early_head: Optional[Callable[[], nn.Module]] = None
    seed: int = 0
    device: Union[str, torch.device] = "cpu"
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None
    generators: Dict[str, torch.Generator] = field(default_factory=dict)
    memory: Optional[Callable[[], Any]] = None
    memory_fallback: str = "model"


def op_space(op) -> str:
    """``"raw"`` for ops that work on un-normalised pixels (image-level policies), else ``"normalized"``.

    An op may declare ``input_space``; otherwise ops from ``keepmix.policies`` are raw, and a
    wrapper (``SelectivePaste``, ``Compose``…) is raw when anything it wraps is.
    """
    declared = getattr(op, "input_space", None)
    if declared in ("raw", "normalized"):
        return declared
    if type(op).__module__.startswith("keepmix.policies"):
        return "raw"
    for inner in _inner_ops(op):
        if op_space(inner) == "raw":
            return "raw"
    return "normalized"


def _inner_ops(op) -> List[Any]:
    inner = []
    for value in vars(op).values():
        if isinstance(value, Op):
            inner.append(value)
        elif isinstance(value, (list, tuple)):
            inner.extend(v for v in value if isinstance(v, Op))
    return inner


def _is_spec(value) -> bool:
    return isinstance(value, dict) and isinstance(value.get("name"), str)


def _op_seed(seed: int, path: str) -> int:
    """A stable 63-bit seed per (run seed, op path): FNV-1a of the path mixed with the seed."""
    h = 0xcbf29ce484222325
    for byte in f"{seed}:{path}".encode():
        h = ((h ^ byte) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def _raw_space_class(cls) -> bool:
    return getattr(cls, "input_space", None) == "raw" or cls.__module__.startswith("keepmix.policies")


def _saliency_value(value, spec: Dict[str, Any], ctx: BuildContext, raw: bool, path: str):
    """Resolve ``saliency: model | early_head | memory`` (model saliency wrapped for raw-space ops)."""
    if value == "memory":
        return _memory_source(spec, ctx, raw, path)
    if value not in ("model", "early_head"):
        return value
    if value == "model":
        if ctx.model is None:
            raise ValueError(f"{path}: saliency 'model' needs a model to build the op with")
        source = ctx.model
    else:
        if ctx.early_head is None:
            raise ValueError(f"{path}: saliency 'early_head' needs a model with an early head")
        source = ctx.early_head()
    if not raw:
        return source
    if ctx.mean is None or ctx.std is None:
        raise ValueError(f"{path}: a raw-space op with model saliency needs the normalisation mean/std")
    scale = spec.get("scale", spec.get("saliency_scale", 1.0))
    return NormalizedInput(source, ctx.mean, ctx.std, reduce="max", scale=scale)


def _memory_source(spec: Dict[str, Any], ctx: BuildContext, raw: bool, path: str):
    """``saliency: memory``: a :class:`keepmix.memory.MemorySaliency` of the run's memory with its fallback."""
    from .memory import MemorySaliency, UniformSaliency
    fallback = None if ctx.memory_fallback == "uniform" else _saliency_value(ctx.memory_fallback, spec, ctx, raw,
                                                                           path + " (memory fallback)")
    if ctx.memory is None:  # no memory to read (keepmix show): what an unwritten memory gives
        return fallback if fallback is not None else UniformSaliency()
    scale = spec.get("scale", spec.get("saliency_scale", 1.0))
    return MemorySaliency(ctx.memory(), fallback, scale=scale if isinstance(fallback, nn.Module) else 1.0)


def build_op(spec: Dict[str, Any], ctx: BuildContext, path: str = "ops[0]"):
    """Build one op from its recipe mapping (see the module docstring for the resolution rules)."""
    check_op_spec(spec, path)
    cls, kwargs = resolve_op(spec["name"])
    kwargs.update({k: v for k, v in spec.items() if k != "name"})
    signature = inspect.signature(cls.__init__)
    params = signature.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in kwargs if k not in params and not takes_any]
    if unknown:
        accepted = [p for p in params if p not in ("self",)]
        raise ValueError(f"{path}: {cls.__name__} has no argument(s) {unknown}; it accepts: {', '.join(accepted)}")
    nested_raw = False
    for key, value in list(kwargs.items()):
        if _is_spec(value):
            kwargs[key] = build_op(value, ctx, f"{path}.{key}")
            nested_raw = nested_raw or op_space(kwargs[key]) == "raw"
        elif isinstance(value, list) and value and all(_is_spec(v) for v in value):
            kwargs[key] = [build_op(v, ctx, f"{path}.{key}[{i}]") for i, v in enumerate(value)]
            nested_raw = nested_raw or any(op_space(op) == "raw" for op in kwargs[key])
    raw = _raw_space_class(cls) or nested_raw
    for key in list(kwargs):
        if key in ("model", "teacher") and kwargs[key] == "model":
            if ctx.model is None:
                raise ValueError(f"{path}: {key} 'model' needs the model being trained")
            kwargs[key] = ctx.model
        elif isinstance(kwargs[key], dict) and isinstance(kwargs[key].get("model"), str) and "name" not in kwargs[key]:
            kwargs[key] = build_frozen_model(kwargs[key], ctx, f"{path}.{key}")
    if "saliency" in params and "saliency" not in kwargs and params["saliency"].default is None \
            and ctx.model is not None:
        kwargs["saliency"] = "model"  # Keep ops default to the saliency of the model being trained
    if "saliency" in kwargs:
        kwargs["saliency"] = _saliency_value(kwargs["saliency"], spec, ctx, raw, path)
    if kwargs.get("pairing") == "memory":  # greedy pairing on the memory's maps
        from .memory import MemoryPairing
        source = _memory_source(spec, ctx, raw, path)
        kwargs["pairing"] = MemoryPairing(source) if ctx.memory is not None else "greedy"
    if "model" in params and "model" not in kwargs and ctx.model is not None:
        kwargs["model"] = ctx.model
    if "num_classes" in params and "num_classes" not in kwargs and ctx.num_classes is not None:
        kwargs["num_classes"] = ctx.num_classes
    if "generator" in params and "generator" not in kwargs:
        device = torch.device(ctx.device)
        generator = torch.Generator(device=device)
        generator.manual_seed(_op_seed(ctx.seed, path))
        ctx.generators[path] = generator
        kwargs["generator"] = generator
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{path} ({cls.__name__}): {error}") from error


def build_frozen_model(spec: Dict[str, Any], ctx: BuildContext, path: str) -> nn.Module:
    """A frozen auxiliary network (Attentive CutMix's teacher) from ``{model, num_classes, kwargs, pretrained}``.

    ``num_classes`` defaults to the run's; ``pretrained`` is a local state_dict path, and is
    required: an untrained teacher attends at random, so a missing or null ``pretrained`` is a
    ValueError naming the field. ``pretrained: untrained`` builds the random network anyway, with
    a warning (for smoke tests). The network is put in eval mode with ``requires_grad`` off, on
    the run's device.
    """
    unknown = set(spec) - {"model", "num_classes", "kwargs", "pretrained"}
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; a network is given by "
                         "{model, num_classes, kwargs, pretrained}")
    from .models import build_model
    num_classes = spec.get("num_classes", ctx.num_classes)
    if num_classes is None:
        raise ValueError(f"{path}: num_classes is needed to build {spec['model']!r}")
    pretrained = spec.get("pretrained")
    if not pretrained:
        raise ValueError(f"{path}.pretrained: a frozen {spec['model']!r} needs trained weights (a local "
                         "state_dict path); an untrained network attends at random. Write "
                         "'pretrained: untrained' to use one anyway")
    network = build_model(spec["model"], num_classes, **(spec.get("kwargs") or {}))
    if pretrained == "untrained":
        warnings.warn(f"{path}: the frozen {spec['model']!r} is untrained (pretrained: untrained); "
                      "its attention carries no information", UserWarning, stacklevel=2)
    else:
        load_pretrained(network, pretrained)
    network.eval().requires_grad_(False)
    return network.to(ctx.device)


def build_ops(specs: Sequence[Dict[str, Any]], ctx: BuildContext, prefix: str = "ops") -> List[Any]:
    """Build the ops of a recipe in order; ``ctx.generators`` collects every op generator by path."""
    return [build_op(spec, ctx, f"{prefix}[{i}]") for i, spec in enumerate(specs)]


def uses_memory(specs: Sequence[Dict[str, Any]]) -> bool:
    """Whether any op (nested ones included) reads the saliency memory (``saliency: memory``, ``pairing: memory``)."""
    def visit(value) -> bool:
        if isinstance(value, dict):
            return value.get("saliency") == "memory" or value.get("pairing") == "memory" or \
                any(visit(v) for v in value.values())
        if isinstance(value, list):
            return any(visit(v) for v in value)
        return False
    return visit(list(specs))


def memory_reduce(specs: Sequence[Dict[str, Any]]) -> str:
    """``memory.reduce: auto``: ``rms`` (Guided-AP's form) when a GuidedMixup reads the memory, else ``max``."""
    def visit(value) -> bool:
        if isinstance(value, dict):
            if value.get("saliency") == "memory" and isinstance(value.get("name"), str):
                try:
                    cls, _ = resolve_op(value["name"])
                except ValueError:
                    cls = None
                if cls is not None and cls.__name__ == "GuidedMixup":
                    return True
            return any(visit(v) for v in value.values())
        if isinstance(value, list):
            return any(visit(v) for v in value)
        return False
    return "rms" if visit(list(specs)) else "max"


def uses_early_head(specs: Sequence[Dict[str, Any]]) -> bool:
    """Whether any op (nested ones included) asks for ``saliency: early_head``."""
    def visit(value) -> bool:
        if isinstance(value, dict):
            return value.get("saliency") == "early_head" or any(visit(v) for v in value.values())
        if isinstance(value, list):
            return any(visit(v) for v in value)
        return False
    return visit(list(specs))


# --------------------------------------------------------------------------- models


def build_model_from_config(config: ModelConfig, num_classes: int) -> nn.Module:
    """The model of a recipe, with ``pretrained`` weights loaded when given."""
    from .models import build_model
    model = build_model(config.name, num_classes, **config.kwargs)
    if config.pretrained:
        load_pretrained(model, config.pretrained)
    return model


def load_pretrained(model: nn.Module, path: PathLike) -> List[str]:
    """Load a local state_dict into ``model``; returns the keys skipped for a shape mismatch.

    Accepts a bare state_dict or a keepmix checkpoint (its ``model`` entry). Entries whose shape
    differs (the classifier of another class count) are skipped; missing or unexpected keys
    otherwise raise ``ValueError``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained: no such file {str(path)!r} (a local state_dict is expected)")
    with open(path, "rb") as handle:
        framed = handle.read(32).startswith(b"KEEPMIX-CHECKPOINT")
    if framed:  # a keepmix checkpoint: verified and read by the engine's loader
        from .engine.checkpoint import load_checkpoint
        state = load_checkpoint(path)
    else:  # a plain torch.save file: weights_only too, refused naming the file if it needs more
        from .engine.checkpoint import load_weights_file
        state = load_weights_file(path)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    adapt = getattr(model, "adapt_state_dict", None)
    if callable(adapt):  # a wrapper (timm:NAME) given its inner network's weights
        state = adapt(state)
    own = model.state_dict()
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    state = {k: v for k, v in state.items() if k not in skipped}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in skipped]
    if missing or result.unexpected_keys:
        raise ValueError(f"model.pretrained {str(path)!r} does not match {type(model).__name__}: "
                         f"missing {missing[:5]}, unexpected {list(result.unexpected_keys)[:5]}")
    return skipped


__all__ = [
    "AMP_MODES", "ArmConfig", "BuildContext", "DataConfig", "ModelConfig", "OP_MODULES",
    "OP_PRESETS", "OptimConfig", "SCHEDULES", "SemiConfig", "TrainConfig", "apply_overrides", "build_model_from_config",
    "build_op", "build_ops", "config_from_dict", "config_to_dict", "config_to_yaml", "expand_arms",
    "find_recipe", "list_recipes", "load_pretrained", "load_recipe", "op_names", "op_registry", "op_space",
    "parse_override", "read_recipe", "recipe_dirs", "resolve_op", "set_by_path", "uses_early_head",
]
