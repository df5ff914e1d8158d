"""Pictures of what the ops do and of how training went (matplotlib, Agg backend; PNG files).

* :func:`save_grid` — one row per image of a batch, one column per view (the original, its
  saliency map, each op's output), in the manner of KeepAugment's Figure 1.
* :func:`plot_curves` — loss and accuracy per epoch for one run or several runs side by side
  (the arms of a comparison).

Image tensors are B×C×H×W: uint8 (0–255) or float; float images are un-normalised with the given
``mean``/``std`` (x·std + mean) and clipped to [0, 1]. Saliency maps B×H×W are scaled per image to
[0, 1] (a flat map shows as black) and drawn with a colour map.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

PathLike = Union[str, os.PathLike]


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=True)  # files only; never a display
    import matplotlib.pyplot as plt
    return plt


def to_display(images: torch.Tensor, mean: Optional[Sequence[float]] = None,
               std: Optional[Sequence[float]] = None) -> torch.Tensor:
    """B×C×H×W (uint8 or normalised float) → float32 B×H×W×C in [0, 1] on the CPU (C = 1 or 3).

    uint8 is divided by 255; float is mapped back by x·std + mean when ``mean``/``std`` are
    given, then clipped to [0, 1].
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a B×C×H×W tensor, got {getattr(images, 'shape', type(images))}")
    x = images.detach().cpu()
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    else:
        x = x.float()
        if mean is not None and std is not None:
            m = torch.tensor([float(v) for v in mean]).view(1, -1, 1, 1)
            s = torch.tensor([float(v) for v in std]).view(1, -1, 1, 1)
            x = x * s + m
    if x.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels to be shown, got {x.shape[1]}")
    return x.clamp(0.0, 1.0).permute(0, 2, 3, 1).contiguous()


def scale_maps(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min–max scaling to [0, 1] (B×H×W float32, CPU); a constant map becomes 0."""
    if not isinstance(maps, torch.Tensor) or maps.ndim != 3:
        raise ValueError(f"maps must be a B×H×W tensor, got {getattr(maps, 'shape', type(maps))}")
    m = maps.detach().cpu().float()
    low = m.amin(dim=(1, 2), keepdim=True)
    span = m.amax(dim=(1, 2), keepdim=True) - low
    return torch.where(span > 0, (m - low) / span.clamp_min(1e-30), torch.zeros_like(m))


Column = Tuple[str, torch.Tensor]


def save_grid(columns: Sequence[Column], path: PathLike, *, mean: Optional[Sequence[float]] = None,
              std: Optional[Sequence[float]] = None, row_labels: Optional[Sequence[str]] = None,
              cell_inches: float = 1.4, dpi: int = 120, title: Optional[str] = None) -> Path:
    """Write a PNG grid: column j shows ``columns[j] = (title, tensor)`` for every row (image).

    Tensors are images B×C×H×W or saliency maps B×H×W (drawn with the ``inferno`` colour map);
    all columns must hold the same number B of rows. Returns the path written.
    """
    if not columns:
        raise ValueError("columns must hold at least one (title, tensor) pair")
    rows = None
    prepared = []
    for name, tensor in columns:
        if not isinstance(tensor, torch.Tensor) or tensor.ndim not in (3, 4):
            raise ValueError(f"column {name!r} must be images B×C×H×W or maps B×H×W")
        if rows is None:
            rows = tensor.shape[0]
        elif tensor.shape[0] != rows:
            raise ValueError(f"column {name!r} has {tensor.shape[0]} rows, expected {rows}")
        prepared.append((name, scale_maps(tensor) if tensor.ndim == 3 else to_display(tensor, mean, std)))
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"row_labels must have {rows} entries, got {len(row_labels)}")
    plt = _pyplot()
    cols = len(prepared)
    figure, axes = plt.subplots(rows, cols, figsize=(cell_inches * cols, cell_inches * rows + (0.4 if title else 0)),
                                squeeze=False)
    for j, (name, data) in enumerate(prepared):
        for i in range(rows):
            ax = axes[i][j]
            if data.ndim == 3:
                ax.imshow(data[i].numpy(), cmap="inferno", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                picture = data[i].numpy()
                ax.imshow(picture[..., 0] if picture.shape[-1] == 1 else picture,
                          cmap="gray" if picture.shape[-1] == 1 else None, vmin=0.0, vmax=1.0,
                          interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=8)
            if j == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[i], fontsize=7)
    if title:
        figure.suptitle(title, fontsize=9)
    return _save(figure, path, dpi)


# --------------------------------------------------------------------------- training curves


def read_metrics(path: PathLike) -> List[Dict[str, float]]:
    """Rows of a ``metrics.csv`` as dicts of floats (empty cells become NaN)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            parsed = {}
            for key, value in row.items():
                try:
                    parsed[key] = float(value) if value not in ("", None) else math.nan
                except ValueError:
                    parsed[key] = math.nan
            rows.append(parsed)
    return rows


def _series(rows: Sequence[Mapping[str, float]], key: str) -> Tuple[List[float], List[float]]:
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            xs.append(float(row["epoch"]))
            ys.append(float(value))
    return xs, ys


#: how train and eval curves are drawn (and keyed in the legend)
TRAIN_STYLE = {"linestyle": (0, (5, 2)), "marker": "s", "markerfacecolor": "none", "linewidth": 1.2}
EVAL_STYLE = {"linestyle": "-", "marker": "o", "linewidth": 1.8}


def plot_curves(runs: Union[Sequence[Mapping[str, float]], Mapping[str, Sequence[Mapping[str, float]]]],
                path: PathLike, *, title: Optional[str] = None, dpi: int = 110) -> Path:
    """Loss (train and eval) and accuracy (train and eval top-1) per epoch, to a PNG.

    ``runs`` is one run's metric rows (dicts with ``epoch``, ``train_loss``, ``train_acc``,
    ``val_loss``, ``val_top1``) or a mapping ``label → rows`` to overlay several runs; train
    curves are dashed with hollow squares, eval curves solid with dots, and the legend keys both
    styles ("train (dashed)", "eval (solid)") apart from the run colours. Accuracies are in percent.
    """
    if isinstance(runs, Mapping):
        labelled = list(runs.items())
    else:
        labelled = [("", list(runs))]
    if not labelled or all(len(rows) == 0 for _, rows in labelled):
        raise ValueError("plot_curves needs at least one metrics row")
    plt = _pyplot()
    from matplotlib.lines import Line2D
    figure, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0", "C1", "C2", "C3"])
    drawn = {loss_ax: set(), acc_ax: set()}
    for index, (label, rows) in enumerate(labelled):
        colour = colours[index % len(colours)]
        for ax, key, kind in ((loss_ax, "train_loss", "train"), (loss_ax, "val_loss", "eval"),
                              (acc_ax, "train_acc", "train"), (acc_ax, "val_top1", "eval")):
            xs, ys = _series(rows, key)
            if xs:
                style = dict(TRAIN_STYLE if kind == "train" else EVAL_STYLE)
                if len(xs) >= 30:
                    style["marker"] = None
                ax.plot(xs, ys, color=colour, markersize=3, **style)
                drawn[ax].add(kind)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("accuracy (%)")
    # the legend keys the two things apart: line style = train (dashed, hollow squares) or eval (solid,
    # dots), drawn in gray with long handles; colour = the run (when there are several)
    for ax, eval_name in ((loss_ax, "eval"), (acc_ax, "eval top-1")):
        ax.grid(alpha=0.3)
        handles, names = [], []
        for kind, name in (("train", "train (dashed)"), ("eval", f"{eval_name} (solid)")):
            if kind in drawn[ax]:
                handles.append(Line2D([], [], color="0.3", markersize=4, **(TRAIN_STYLE if kind == "train"
                                                                            else EVAL_STYLE)))
                names.append(name)
        if len(labelled) > 1 or labelled[0][0]:
            for index, (label, _) in enumerate(labelled):
                handles.append(Line2D([], [], color=colours[index % len(colours)], linewidth=4))
                names.append(label)
        if handles:
            ax.legend(handles, names, fontsize=7, handlelength=4)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path, dpi)


def _mean_ci(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and the half-width of its 95 % t-interval (0 for a single value)."""
    from .experiment import Interval
    iv = Interval.of(values)
    return iv.mean, (0.0 if iv.n < 2 else (iv.high - iv.low) / 2)


def read_results(path: PathLike) -> List[Dict[str, object]]:
    """The rows of an experiment's ``results.csv`` (numbers as floats; empty cells stay ``""``).

    Raises:
        ValueError: no ``arm`` column, or a cell that is not a number (naming its line and column).
    """
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is not None and "arm" not in reader.fieldnames:
            raise ValueError(f"{path} is not an experiment's results.csv: no 'arm' column "
                             f"(columns: {', '.join(reader.fieldnames)})")
        for row in reader:
            out: Dict[str, object] = {}
            for key, value in row.items():
                if key in ("arm", "run_dir") or value in ("", None):
                    out[key] = value
                    continue
                try:
                    out[key] = float(value)
                except (TypeError, ValueError):
                    raise ValueError(f"{path} line {reader.line_num}: column {key!r} of arm {row.get('arm')!r} "
                                     f"must be a number, got {value!r}") from None
            rows.append(out)
    return rows


#: ``<method>_<number>``: the trailing number (an int, a decimal or an exponent: 16, 0.6, 1e-3) is the x value
_SWEEP_ARM = r"(.+)_(-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)"


def _test_accuracy(row: Mapping[str, object]) -> float:
    """A row's ``val_top1`` as a float; ValueError naming the arm when it is missing or not a number."""
    value = row.get("val_top1")
    try:
        if value in (None, ""):
            raise ValueError
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seed = row.get("seed")
        seed = int(seed) if isinstance(seed, float) and seed.is_integer() else seed
        raise ValueError(f"arm {row.get('arm')!r} (seed {seed}) has no test accuracy (val_top1), "
                         f"got {value!r}") from None


def sweep_groups(results: Sequence[Mapping[str, object]]) -> Dict[str, Dict[float, Dict[str, List[float]]]]:
    """``method → x → {"test": [...], "train": [...]}`` from arms named ``<method>_<number>``."""
    import re as _re
    groups: Dict[str, Dict[float, Dict[str, List[float]]]] = {}
    for row in results:
        match = _re.fullmatch(_SWEEP_ARM, str(row["arm"]))
        if not match:
            continue
        cell = groups.setdefault(match.group(1), {}).setdefault(float(match.group(2)), {"test": [], "train": []})
        cell["test"].append(_test_accuracy(row))
        if row.get("train_top1") not in (None, ""):
            cell["train"].append(float(row["train_top1"]))
    return groups


def plot_sweep(results: Sequence[Mapping[str, object]], path: PathLike, *, parameter: str = "value",
               unit: str = "", title: Optional[str] = None, dpi: int = 110) -> Path:
    """Accuracy against a swept parameter, one line per method, mean ± 95 % interval over seeds.

    Arms are named ``<method>_<value>`` (``keep_cutout_16``, ``keep_cutout_random_16``,
    ``keep_cutout_tau_0.6``): the trailing number is the x value, everything before it the method. Test
    accuracy (solid, dots) and, where the rows carry it, final training accuracy (dashed, hollow squares) —
    KeepAugment's Figures 2 and 3. An arm whose name ends in no number (``cutout`` in a τ sweep) is a
    *baseline*: a horizontal dotted line at its mean test accuracy with its 95 % band shaded, the dash line
    of KeepAugment's Figure 3.
    """
    groups = sweep_groups(results)
    if not groups:
        raise ValueError("no arm is named <method>_<number>: nothing to plot against a parameter")
    baselines = sweep_baselines(results)
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(6, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0", "C1", "C2", "C3"])
    for index, (method, cells) in enumerate(sorted(groups.items())):
        xs = sorted(cells)
        colour = colours[index % len(colours)]
        for kind, style in (("test", EVAL_STYLE), ("train", TRAIN_STYLE)):
            points = [(x, *_mean_ci(cells[x][kind])) for x in xs if cells[x][kind]]
            if points:
                ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                            color=colour, capsize=3, markersize=4, label=f"{method} ({kind})", **style)
    for index, (arm, values) in enumerate(sorted(baselines.items())):
        colour = colours[(len(groups) + index) % len(colours)]
        mean, half = _mean_ci(values)
        ax.axhline(mean, color=colour, linestyle=":", linewidth=1.5, label=f"{arm} (test, baseline)")
        if half > 0:
            ax.axhspan(mean - half, mean + half, color=colour, alpha=0.12, linewidth=0)
    return _finish_accuracy_plot(figure, ax, f"{parameter}{f' ({unit})' if unit else ''}", title, path, dpi)


def sweep_baselines(results: Sequence[Mapping[str, object]]) -> Dict[str, List[float]]:
    """``arm → test accuracies`` of the arms whose name ends in no number (a sweep's baselines)."""
    import re as _re
    baselines: Dict[str, List[float]] = {}
    for row in results:
        if not _re.fullmatch(_SWEEP_ARM, str(row["arm"])):
            baselines.setdefault(str(row["arm"]), []).append(_test_accuracy(row))
    return baselines


def plot_overhead(results: Sequence[Mapping[str, object]], overhead: Mapping[str, float], path: PathLike, *,
                  title: Optional[str] = None, dpi: int = 110) -> Path:
    """Accuracy against augmentation overhead (GuidedMixup's Figure 3): one point per method, the
    overhead in % of a training step on the x axis, top-1 mean ± 95 % interval over seeds on the y axis.
    ``overhead`` maps an arm to its measured overhead (%); arms without one are left out."""
    cells: Dict[str, List[float]] = {}
    for row in results:
        if row["arm"] in overhead:
            cells.setdefault(str(row["arm"]), []).append(float(row["val_top1"]))
    if not cells:
        raise ValueError("no arm of the results has an overhead")
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(6, 4))
    for arm, values in sorted(cells.items()):
        mean, half = _mean_ci(values)
        ax.errorbar([overhead[arm]], [mean], yerr=[half], fmt="o", capsize=3, label=arm)
        ax.annotate(arm, (overhead[arm], mean), textcoords="offset points", xytext=(4, 4), fontsize=7)
    return _finish_accuracy_plot(figure, ax, "augmentation overhead (% of a training step)", title, path, dpi)


def _finish_accuracy_plot(figure, ax, xlabel: str, title: Optional[str], path: PathLike, dpi: int) -> Path:
    """Axis labels (accuracy in %), grid, legend and title of the experiment figures; then save."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(figure, path, dpi)


__all__ = ["plot_curves", "plot_overhead", "plot_sweep", "read_metrics", "read_results", "save_grid", "scale_maps",
           "to_display"]


def _save(figure, path, dpi: int) -> Path:
    """Lay out, write (creating the folder) and close a figure."""
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    _pyplot().close(figure)
    return path
