"""Corruption evaluation of a trained run: ``keepmix eval --corruptions SPEC``.

SPEC is a comma-separated list of items, each ``NAME`` or ``NAME=VALUE``:

==========================  =====================================================================
item                        corrupted images
==========================  =====================================================================
``noise[=σ]``               the run's evaluation set + Gaussian noise (:func:`keepmix.corruptions.gaussian_noise`,
                            σ on the 0–1 scale, default 0.1)
``replace[=p]``             the run's evaluation set, a share p of each image's pixels replaced by another
                            image's (:func:`keepmix.corruptions.replace_pixels`, default 0.5)
``cifar10-c``, ``cifar100-c``  the published files (every corruption present × 5 severities;
                            :mod:`keepmix.data.cifar_c`; folder from ``--corruptions-root``)
``imagenet-c``              the run's evaluation set under the 15 ImageNet-C types × severities 1–5
                            (``imagecorruptions`` package, optional extra ``keepmix[corruptions]``)
``<type>[=s]``              one ImageNet-C type (e.g. ``fog``, ``jpeg_compression``) at severity s (default 1–5)
==========================  =====================================================================

Repeating an item with other values (``noise=0.05,noise=0.1``) gives it several levels ("severities").
A file set goes with on-the-fly items only (its corruptions are named like the ImageNet-C types and the
other set's).

**What is reported** (all in %, on the images of each item, top-1 error ``E = 100 − top-1 accuracy``):

* ``E_{c,s}`` per corruption c and severity (or level) s, and the clean error ``E_clean`` on the run's
  evaluation set;
* the **corruption error** ``CE = (1/|C|) Σ_c (1/S_c) Σ_s E_{c,s}`` — GuidedMixup's "Corruption Err"
  (Kang & Kim, AAAI 2023, §5.5 and Table 4: "CIFAR-100-C consists of 19 different corruptions … we measure
  the average test error"; with every severity of a corruption weighted equally, as the per-corruption
  error over all five severities of the files is, since each severity holds the same N images);
* with a baseline run (``--baseline RUN``, evaluated on the very same corrupted images), per corruption the
  **CE ratio** ``Σ_s E_{c,s} / Σ_s E^base_{c,s}`` and the **relative CE**
  ``Σ_s (E_{c,s} − E_clean) / Σ_s (E^base_{c,s} − E^base_clean)``, and their means over c, ×100:
  the **mCE** and the **relative mCE** of Hendrycks & Dietterich (ICLR 2019, §4), used by AugMix (Hendrycks
  et al., ICLR 2020), with the baseline run in AlexNet's place. A corruption whose baseline denominator is
  ≤ 0 (the baseline not degraded by it) has no relative CE (``null``); the means are over the others and
  say how many they cover. ``E_clean`` is measured on the run's evaluation set (``--split`` for another):
  with the published files, whose images are the whole test split corrupted, pass ``--split test`` so the
  relative CE compares errors on the same images (a run evaluated on a held-out part or an ``eval_size``
  subset would otherwise mix two sets).

On-the-fly corruptions are seeded (``--corruption-seed``, default 0): item k draws from a CPU
``torch.Generator`` seeded with ``derive_seed(seed, crc32(name), round(value·10⁶))``, so an item's images do
not depend on which other items are listed; for a given batch size the corrupted images are bit-identical
run to run and between the run and its baseline. Results go to ``corruptions_<tag>.json`` and ``.csv`` in the
run folder (tag: the items, e.g. ``noise-replace``).
"""

from __future__ import annotations

import csv
import json
import math
import numbers
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .corruptions import IMAGENET_C_TYPES, NOISE_STD, ON_THE_FLY, REPLACE_FRACTION, gaussian_noise, imagenet_c, \
    replace_pixels

FILE_SETS = ("cifar10-c", "cifar100-c")


@dataclass(frozen=True)
class Item:
    """One parsed SPEC item: ``kind`` ∈ {noise, replace, files, imagenet_c}; ``name``; ``value`` (σ, p or severity)."""
    kind: str
    name: str
    value: Optional[float] = None


def parse_corruptions(spec: str) -> List[Item]:
    """Parse ``--corruptions`` (see the module docstring). Raises ValueError naming the bad item."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"--corruptions must name at least one corruption, got {spec!r}")
    items: List[Item] = []
    for raw in spec.split(","):
        text = raw.strip()
        if not text:
            raise ValueError(f"--corruptions has an empty item in {spec!r}")
        name, equals, value_text = text.partition("=")
        name = name.strip().lower()
        if equals and not value_text.strip():  # 'noise=' is a typo, not the default strength
            raise ValueError(f"--corruptions item {text!r}: no value after '=' (leave out '=' for the default)")
        if name not in FILE_SETS + ("imagenet-c",):
            name = name.replace("-", "_")  # jpeg-compression → jpeg_compression
        value: Optional[float] = None
        if value_text.strip():
            try:
                value = float(value_text)
            except ValueError:
                raise ValueError(f"--corruptions item {text!r}: {value_text!r} is not a number") from None
            if not math.isfinite(value):
                raise ValueError(f"--corruptions item {text!r}: the value must be finite")
        if name in ON_THE_FLY:
            default = ON_THE_FLY[name][2]
            value = default if value is None else value
            if name == "noise" and value < 0:
                raise ValueError(f"--corruptions item {text!r}: σ must be >= 0")
            if name == "replace" and not 0 <= value <= 1:
                raise ValueError(f"--corruptions item {text!r}: the replaced share must be in [0, 1]")
            items.append(Item(name, name, value))
        elif name in FILE_SETS:
            if value is not None:
                raise ValueError(f"--corruptions item {text!r}: {name} takes no value (all its severities are used)")
            items.append(Item("files", name))
        elif name == "imagenet-c":
            if value is not None:
                raise ValueError(f"--corruptions item {text!r}: imagenet-c takes no value (use TYPE=SEVERITY)")
            items += [Item("imagenet_c", t, float(s)) for t in IMAGENET_C_TYPES for s in range(1, 6)]
        elif name in IMAGENET_C_TYPES:
            if value is not None and (value != int(value) or not 1 <= value <= 5):
                raise ValueError(f"--corruptions item {text!r}: the severity must be an integer 1–5")
            levels = [value] if value is not None else [1.0, 2.0, 3.0, 4.0, 5.0]
            items += [Item("imagenet_c", name, float(s)) for s in levels]
        else:
            import difflib
            known = list(ON_THE_FLY) + list(FILE_SETS) + ["imagenet-c"] + list(IMAGENET_C_TYPES)
            hint = difflib.get_close_matches(name, known, n=2)
            raise ValueError(f"--corruptions: unknown corruption {name!r}; known: {', '.join(known)}"
                             + (f" (did you mean {', '.join(hint)}?)" if hint else ""))
    if len(set(items)) != len(items):
        raise ValueError(f"--corruptions lists an item twice: {spec!r}")
    file_sets = sorted({item.name for item in items if item.kind == "files"})
    if file_sets and (len(file_sets) > 1 or any(item.kind == "imagenet_c" for item in items)):
        # their rows would share corruption names (fog, gaussian_noise, …) and be averaged together
        others = file_sets[1:] if len(file_sets) > 1 else sorted({i.name for i in items if i.kind == "imagenet_c"})
        raise ValueError(f"--corruptions: {file_sets[0]} names its corruptions like {', '.join(others)}; "
                         f"evaluate them in separate runs of keepmix eval")
    return items


def spec_tag(items: Sequence[Item]) -> str:
    """File-name tag of a SPEC: its distinct names joined by '-' (``noise-replace``, ``cifar100-c``), plus a
    CRC-32 of the items and values when a strength is not the default (``noise-1c2d3e4f`` for ``noise=0.2``),
    so that evaluations at other strengths do not overwrite each other's files."""
    names: List[str] = []
    for item in items:
        if item.name not in names:
            names.append(item.name)
    tag = "-".join(names) if len(names) <= 4 else f"{names[0]}-and-{len(names) - 1}-more"
    defaults = all(item.value is None or (item.name in ON_THE_FLY and item.value == ON_THE_FLY[item.name][2])
                   for item in items if item.kind != "imagenet_c")
    if not defaults or len(names) > 4:  # other strengths (or a long list) write their own files
        canonical = ",".join(f"{item.name}={item.value!r}" for item in items)
        tag += f"-{zlib.crc32(canonical.encode()):08x}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", tag)


def item_seed(seed: int, item: Item) -> int:
    """The seed of an on-the-fly item's generator: ``derive_seed(seed, crc32(name), round(value·10⁶))``."""
    from .data.loader import derive_seed
    return derive_seed(int(seed), zlib.crc32(item.name.encode()), int(round((item.value or 0.0) * 1e6)))


# --------------------------------------------------------------------------- counting errors

@torch.no_grad()
def count_errors(model: torch.nn.Module, batches: Iterator[Tuple[torch.Tensor, torch.Tensor]],
                 normalize: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                 amp: str = "none") -> Tuple[int, int]:
    """(misclassified, total) of ``model`` (eval mode, restored after) over raw-pixel batches.

    One host read at the end: the count is accumulated on the device.
    """
    from .train import autocast_context
    was_training = model.training
    model.eval()
    wrong = torch.zeros((), dtype=torch.int64, device=device)
    total = 0
    try:
        for images, labels in batches:
            images, labels = images.to(device), labels.to(device)
            with autocast_context(device, amp):
                logits = model(normalize(images))
            wrong += logits.float().argmax(dim=1).ne(labels).sum()
            total += int(labels.shape[0])
    finally:
        model.train(was_training)
    return int(wrong), total


def _error(wrong: int, total: int) -> float:
    if total == 0:
        raise ValueError("no images to evaluate")
    return 100.0 * wrong / total


def _slices(n: int, batch_size: int) -> Iterator[Tuple[int, int]]:
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


def corruption_rows(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, items: Sequence[Item], *,
                    normalize: Callable[[torch.Tensor], torch.Tensor], device: torch.device, batch_size: int = 256,
                    seed: int = 0, amp: str = "none", files_root: Optional[str] = None,
                    num_classes: Optional[int] = None) -> List[Dict[str, Any]]:
    """Top-1 error of ``model`` per corruption and severity: one row ``{corruption, severity, value, error,
    count, source}`` per (c, s).

    ``images``/``labels``: the clean evaluation set (uint8 or 0–1 float N×C×H×W; int64 N), kept where
    they are (batches move to ``device``). ``files`` items read their own images and labels from
    ``files_root``. Severity of an on-the-fly item: its rank among the values of that name (1, 2, …); the
    rows of a corruption come in the order of their severities, its first item's place among the others.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise TypeError(f"images must be an N×C×H×W tensor, got {getattr(images, 'shape', type(images).__name__)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise TypeError(f"images must be uint8 (0–255) or floating point (0–1), got {images.dtype}")
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.is_floating_point() \
            or labels.dtype == torch.bool:
        raise TypeError(f"labels must be a 1-d integer tensor, got "
                        f"{getattr(labels, 'dtype', type(labels).__name__)} {tuple(getattr(labels, 'shape', ()))}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must hold one label per image ({images.shape[0]}), got {labels.shape[0]}")
    rows: List[Dict[str, Any]] = []
    levels: Dict[str, List[float]] = {}
    for item in items:
        if item.kind in ON_THE_FLY:
            levels.setdefault(item.name, []).append(float(item.value))
    for item in items:
        if item.kind == "files":
            rows += _file_rows(model, item.name, files_root, normalize, device, batch_size, amp, num_classes)
            continue
        n = int(images.shape[0])
        if item.kind in ON_THE_FLY:
            generator = torch.Generator().manual_seed(item_seed(seed, item))
            order = None
            if item.kind == "replace":  # one random shift over the whole set: every image meets another
                if n < 2:
                    raise ValueError("replace needs an evaluation set of at least 2 images")
                shift = int(torch.randint(1, n, (1,), generator=generator))
                order = torch.remainder(torch.arange(n) + shift, n)

            def batches(item=item, generator=generator, order=order):
                for start, stop in _slices(n, batch_size):
                    x = images[start:stop].to(device)
                    if item.kind == "noise":
                        x = gaussian_noise(x, item.value, generator)
                    else:
                        x = replace_pixels(x, item.value, generator, source=images[order[start:stop]].to(device))
                    yield x, labels[start:stop]
            wrong, total = count_errors(model, batches(), normalize, device, amp)
            ranked = sorted(levels[item.name])
            rows.append({"corruption": item.name, "severity": ranked.index(float(item.value)) + 1,
                         "value": item.value, "error": _error(wrong, total), "count": total, "source": "on the fly"})
        else:  # imagenet_c
            def batches(item=item):
                for index, (start, stop) in enumerate(_slices(n, batch_size)):
                    x = imagenet_c(images[start:stop], item.name, int(item.value),
                                   seed=item_seed(seed, item) % (2 ** 32) ^ index)
                    yield x, labels[start:stop]
            wrong, total = count_errors(model, batches(), normalize, device, amp)
            rows.append({"corruption": item.name, "severity": int(item.value), "value": item.value,
                         "error": _error(wrong, total), "count": total, "source": "imagecorruptions"})
    first = {}
    for row in rows:
        first.setdefault(row["corruption"], len(first))
    # each corruption's rows by severity (noise=0.2,noise=0.05 lists σ 0.05 first: its severity 1)
    return sorted(rows, key=lambda row: (first[row["corruption"]], row["severity"]))


def _file_rows(model, name: str, root: Optional[str], normalize, device, batch_size: int, amp: str,
               num_classes: Optional[int]) -> List[Dict[str, Any]]:
    from .data.cifar_c import load_cifar_c
    if root is None:
        raise ValueError(f"{name} needs the folder of its files: pass --corruptions-root DIR (a folder holding "
                         f"{'CIFAR-10-C' if name == 'cifar10-c' else 'CIFAR-100-C'}/, or that folder)")
    data = load_cifar_c(root, name)
    if num_classes is not None and data.num_classes != num_classes:
        raise ValueError(f"{name} has {data.num_classes} classes but the model has {num_classes}")
    rows = []
    for corruption in data.corruptions:
        stacked = data.images(corruption)  # 5×N×3×H×W uint8
        for severity in range(1, data.severities + 1):
            block = stacked[severity - 1]

            def batches(block=block):
                for start, stop in _slices(block.shape[0], batch_size):
                    yield block[start:stop], data.labels[start:stop]
            wrong, total = count_errors(model, batches(), normalize, device, amp)
            rows.append({"corruption": corruption, "severity": severity, "value": None,
                         "error": _error(wrong, total), "count": total, "source": name})
    return rows


# --------------------------------------------------------------------------- summaries

def per_corruption(rows: Sequence[Dict[str, Any]]) -> Dict[str, List[float]]:
    """Corruption → its errors over severities (in row order)."""
    out: Dict[str, List[float]] = {}
    for row in rows:
        out.setdefault(row["corruption"], []).append(float(row["error"]))
    return out


def corruption_error(rows: Sequence[Dict[str, Any]]) -> float:
    """``CE = (1/|C|) Σ_c mean_s E_{c,s}`` — GuidedMixup's "Corruption Err" (module docstring)."""
    by = per_corruption(rows)
    if not by:
        raise ValueError("no corruption rows")
    return sum(sum(v) / len(v) for v in by.values()) / len(by)


def relative_summary(rows: Sequence[Dict[str, Any]], clean: float, base_rows: Sequence[Dict[str, Any]],
                     base_clean: float) -> Dict[str, Any]:
    """mCE and relative mCE against a baseline (Hendrycks & Dietterich 2019; module docstring).

    Returns ``{"per_corruption": {c: {"ce": …, "relative_ce": …}}, "mce": …, "relative_mce": …,
    "relative_count": …}``; ratios ×100; ``None`` where a denominator is ≤ 0.
    """
    mine, base = per_corruption(rows), per_corruption(base_rows)
    if set(mine) != set(base) or any(len(mine[c]) != len(base[c]) for c in mine):
        raise ValueError("the baseline was evaluated on other corruptions or severities")
    table: Dict[str, Dict[str, Optional[float]]] = {}
    for c in mine:
        num, den = sum(mine[c]), sum(base[c])
        rel_num = sum(e - clean for e in mine[c])
        rel_den = sum(e - base_clean for e in base[c])
        table[c] = {"ce": 100.0 * num / den if den > 0 else None,
                    "relative_ce": 100.0 * rel_num / rel_den if rel_den > 0 else None}
    ces = [v["ce"] for v in table.values() if v["ce"] is not None]
    rels = [v["relative_ce"] for v in table.values() if v["relative_ce"] is not None]
    return {"per_corruption": table, "mce": sum(ces) / len(ces) if ces else None,
            "mce_count": len(ces), "relative_mce": sum(rels) / len(rels) if rels else None,
            "relative_count": len(rels)}


def format_table(rows: Sequence[Dict[str, Any]], clean: float, result: Dict[str, Any]) -> str:
    """A plain-text table: one line per corruption, its errors per severity and their mean."""
    by = per_corruption(rows)
    values: Dict[str, List[Any]] = {}
    for row in rows:
        values.setdefault(row["corruption"], []).append(row["value"])
    width = max(len("corruption"), max(len(c) for c in by))
    most = max(len(v) for v in by.values())
    head = f"{'corruption':<{width}}  " + "  ".join(f"{'s' + str(s):>6}" for s in range(1, most + 1)) + "    mean"
    relative = result.get("relative")
    if relative:
        head += f"  {'CE/base':>7}  {'rel.CE':>7}"
    lines = [head]
    for c, errors in by.items():
        label = c
        cells = "  ".join(f"{e:6.2f}" for e in errors) + "        " * (most - len(errors))
        line = f"{label:<{width}}  {cells}  {sum(errors) / len(errors):6.2f}"
        if relative:
            entry = relative["per_corruption"][c]
            line += "  " + (f"{'–':>7}" if entry["ce"] is None else f"{entry['ce']:7.1f}") + \
                    "  " + (f"{'–':>7}" if entry["relative_ce"] is None else f"{entry['relative_ce']:7.1f}")
        lines.append(line)
    for c, vals in values.items():
        if vals[0] is not None:
            lines.append(f"  {c}: levels s1… = {', '.join(f'{v:g}' for v in vals)}"
                         f" ({'σ, 0–1 scale' if c == 'noise' else 'replaced share' if c == 'replace' else 'severity'})")
    plural = "corruption" if len(by) == 1 else "corruptions"
    lines.append(f"clean error {clean:.2f} %   corruption error (mean over {len(by)} {plural} of the mean over "
                 f"severities) {result['corruption_error']:.2f} %")
    if relative:
        mce = "–" if relative["mce"] is None else f"{relative['mce']:.1f} %"
        rel = "–" if relative["relative_mce"] is None else f"{relative['relative_mce']:.1f} %"
        lines.append(f"against the baseline (clean error {result['baseline']['clean_error']:.2f} %, corruption error "
                     f"{result['baseline']['corruption_error']:.2f} %): mCE {mce} over {relative['mce_count']}, "
                     f"relative mCE {rel} over {relative['relative_count']} corruptions"
                     + (" (none raised the baseline's error above its clean error, so relative CE is undefined)"
                        if relative["relative_count"] == 0 else ""))
    return "\n".join(lines)


# --------------------------------------------------------------------------- a run, end to end

def _run_folder(checkpoint) -> Path:
    path = Path(checkpoint)
    return path if path.is_dir() else path.parent


def _model(payload, config, device: torch.device) -> torch.nn.Module:
    from .models import build_model
    model = build_model(config.model.name, payload["num_classes"], **config.model.kwargs)
    model.load_state_dict(payload["model"])
    return model.to(device)


def _model_and_eval_set(checkpoint, *, data: Optional[str], data_root: Optional[str], split: Optional[str],
                        overrides: Sequence[str], device: torch.device):
    from .recipes import apply_overrides, config_from_dict
    from .train import load_checkpoint, load_sets, load_split
    payload = load_checkpoint(checkpoint)
    config = config_from_dict(payload["config"])
    sets = list(overrides)
    if data:
        sets.append(f"data.name={json.dumps(data)}")
    if data_root:
        sets.append(f"data.root={json.dumps(str(data_root))}")
    config = apply_overrides(config, sets)
    if split is None:
        _, _, images, labels, loaded = load_sets(config.data, {}, eval_only=True)
    else:
        images, labels, loaded = load_split(config.data, split)
    if loaded.num_classes != payload["num_classes"]:
        raise ValueError(f"the checkpoint has {payload['num_classes']} classes, {config.data.name} has "
                         f"{loaded.num_classes}")
    model = _model(payload, config, device)
    mean, std = tuple(payload["mean"]), tuple(payload["std"])
    return model, images, labels, mean, std, config, payload


def _check_items(items: Sequence[Item], files_root: Optional[str], num_classes: int) -> None:
    """What the items need, checked before any image is evaluated: the published files (their folder,
    layout and class count) and the ``imagecorruptions`` package."""
    from .corruptions import _imagecorruptions
    from .data.cifar_c import load_cifar_c
    for item in items:
        if item.kind == "files":
            if files_root is None:
                raise ValueError(f"{item.name} needs the folder of its files: pass --corruptions-root DIR (a folder "
                                 f"holding {'CIFAR-10-C' if item.name == 'cifar10-c' else 'CIFAR-100-C'}/, or that "
                                 f"folder)")
            loaded = load_cifar_c(files_root, item.name)
            if loaded.num_classes != num_classes:
                raise ValueError(f"{item.name} has {loaded.num_classes} classes but the model has {num_classes}")
    if any(item.kind == "imagenet_c" for item in items):
        _imagecorruptions()


def evaluate_run(checkpoint, corruptions: str, *, baseline=None, data: Optional[str] = None,
                 data_root: Optional[str] = None, split: Optional[str] = None, files_root: Optional[str] = None,
                 overrides: Sequence[str] = (), batch_size: Optional[int] = None, device: str = "auto",
                 seed: int = 0, write: bool = True) -> Dict[str, Any]:
    """Evaluate a run (and optionally a baseline run) under SPEC; write ``corruptions_<tag>.json/.csv``.

    Returns the result dict: ``rows``, ``clean_error``, ``corruption_error``, ``relative`` (with a
    baseline), ``baseline`` (its clean and corruption errors and rows), the protocol (items, seed, batch
    size, evaluation set) and ``files`` (what was written).

    The baseline contributes its model only (its weights, normalisation and architecture): it is evaluated on
    *this* run's evaluation set, in this run's batches, under the same seeds — the very same corrupted images —
    and must have this run's number of classes. What the items need (``--corruptions-root`` and its files,
    the ``imagecorruptions`` package) is checked before any image is evaluated.

    Raises:
        ValueError: a bad SPEC, ``batch_size`` not a positive int, a baseline of another class count, files
            missing or of another class count (naming them).
        ImportError: ImageNet-C items without the ``imagecorruptions`` package
            (:class:`keepmix.corruptions.MissingPackageError`, also a ``RuntimeError``).
    """
    from .data import normalize as normalize_fn
    from .recipes import config_from_dict
    from .train import Distributed, load_checkpoint, resolve_device
    items = parse_corruptions(corruptions)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int (or None: the run's evaluation batch size), "
                         f"got {batch_size!r}")
    dev = resolve_device(device, Distributed())
    model, images, labels, mean, std, config, payload = _model_and_eval_set(
        checkpoint, data=data, data_root=data_root, split=split, overrides=overrides, device=dev)
    size = batch_size or config.data.eval_batch_size or config.optim.batch_size
    base = None
    if baseline is not None:  # its model only: it is evaluated on this run's images, labels and batches
        base_payload = load_checkpoint(baseline)
        if base_payload["num_classes"] != payload["num_classes"]:
            raise ValueError(f"baseline {baseline} has {base_payload['num_classes']} classes, the run has "
                             f"{payload['num_classes']}: a baseline must classify the run's evaluation set")
        base = (_model(base_payload, config_from_dict(base_payload["config"]), dev), base_payload)
    _check_items(items, files_root, payload["num_classes"])

    def measure(net, weights, run_config) -> Tuple[float, List[Dict[str, Any]]]:
        mean, std = tuple(weights["mean"]), tuple(weights["std"])
        norm = (lambda x: normalize_fn(x, mean, std))
        amp = run_config.amp if dev.type == "cuda" else "none"

        def clean_batches():
            for start, stop in _slices(int(images.shape[0]), size):
                yield images[start:stop], labels[start:stop]
        wrong, total = count_errors(net, clean_batches(), norm, dev, amp)
        rows = corruption_rows(net, images, labels, items, normalize=norm, device=dev, batch_size=size, seed=seed,
                               amp=amp, files_root=files_root, num_classes=weights["num_classes"])
        return _error(wrong, total), rows

    clean, rows = measure(model, payload, config)
    info = {"data": config.data.name, "split": split or "the run's evaluation set", "count": int(images.shape[0]),
            "batch_size": size, "epoch": payload["epoch"]}
    result: Dict[str, Any] = {"checkpoint": str(checkpoint), "corruptions": corruptions,
                              "items": [item.__dict__ for item in items], "seed": seed, **info,
                              "clean_error": clean, "corruption_error": corruption_error(rows), "rows": rows,
                              "defaults": {"noise_std": NOISE_STD, "replace_fraction": REPLACE_FRACTION}}
    if base is not None:
        base_model, base_payload = base
        base_clean, base_rows = measure(base_model, base_payload, config_from_dict(base_payload["config"]))
        result["baseline"] = {"checkpoint": str(baseline), "clean_error": base_clean,
                              "corruption_error": corruption_error(base_rows), "rows": base_rows}
        result["relative"] = relative_summary(rows, clean, base_rows, base_clean)
    if write:
        folder = _run_folder(checkpoint)
        tag = spec_tag(items)
        json_path, csv_path = folder / f"corruptions_{tag}.json", folder / f"corruptions_{tag}.csv"
        result["files"] = [str(json_path), str(csv_path)]
        tmp = json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
        tmp.replace(json_path)
        with open(csv_path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["corruption", "severity", "value", "error", "count", "source",
                                                        "baseline_error"])
            writer.writeheader()
            base = result.get("baseline", {}).get("rows")
            for index, row in enumerate(rows):
                writer.writerow({**row, "baseline_error": None if base is None else base[index]["error"]})
    return result
