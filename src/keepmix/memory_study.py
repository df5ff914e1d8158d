"""Evidence for the saliency memory (:mod:`keepmix.memory`): fidelity and staleness on SalientShapes.

Two experiments, each a set of ordinary training runs of a recipe's arms (the default recipe:
SalientShapes, ResNet-small, cut length 20) with measurements taken inside the training step:

* **fidelity** (``python benchmarks/memory_study.py fidelity --seeds 0 1 2``): arms ``cutout``,
  ``keep_cutout`` (fresh gradient saliency every step) and ``keep_cutout_memory`` (the memory,
  fresh saliency as the first epoch's fallback), each seed. SalientShapes knows every glyph's
  pixels; through each batch's geometry the glyph mask is carried to the batch's grid and the
  share of glyph pixels the op removed (pixels it changed) is averaged per epoch
  (``study.glyph_removed``; images whose glyph is cropped out of view do not count). Reported
  per arm: the share removed over the epochs after the first (the memory arm reads the memory
  only from epoch 2), the final training accuracy and evaluation top-1, mean ± sd over seeds,
  and the paired memory − fresh differences. The issue's criteria: the memory arm removes no
  more than fresh + 5 points, and its accuracy is within the seed noise of the fresh arm.
* **staleness** (``python benchmarks/memory_study.py staleness --seeds 0 1 2``): the
  ``keep_cutout_memory`` arm; after every epoch a fixed probe set of training images (their
  clean, stored form) gets fresh gradient saliency from the current model — the maps KeepCutout
  would compute itself (same ``reduce``, eval-mode BatchNorm) — and each probe's memory map is
  compared with it by Spearman rank correlation over pixels (``study.rank_memory``, mean over
  probes; ``study.rank_fresh_drift``: fresh maps of this epoch against those of the previous
  epoch, the drift of saliency itself; ``study.rank_written_now``: the map a write would give now —
  the cross-entropy's input gradient of the clean image — against the fresh map, the ceiling of a
  memory with no staleness, since the memory stores the training loss's gradient, not the label
  logit's). Plotted per epoch (mean over seeds, band = the probes' inter-quartile range) to
  ``staleness.png``.

Everything a run writes goes under ``--out`` (``runs/memory_study`` by default): one run folder
per seed and arm (``metrics.csv`` carries the ``study.*`` columns) plus ``fidelity.csv`` /
``fidelity.md`` or ``staleness.csv`` / ``staleness.png``. ``--set key=value`` overrides the recipe
(``--set optim.epochs=5``), ``--epochs`` too.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from .recipes import apply_overrides, config_from_dict, config_to_dict, expand_arms, load_recipe
from .train import Trainer

FIDELITY_ARMS = ("cutout", "keep_cutout", "keep_cutout_memory")
MEMORY_ARM = "keep_cutout_memory"


def masks_on_grid(masks: torch.Tensor, geometry) -> torch.Tensor:
    """Source masks N×H×W (bool) carried to a batch's grid through its geometry: bool B×h×w (nearest pixel)."""
    from .data import output_to_source
    y, x = output_to_source(geometry)
    rows = masks.index_select(0, geometry.index.to(masks.device))
    height, width = rows.shape[-2:]
    yi, xi = y.round().long(), x.round().long()
    inside = ((yi >= 0) & (yi < height)).unsqueeze(2) & ((xi >= 0) & (xi < width)).unsqueeze(1)
    yi, xi = yi.clamp(0, height - 1), xi.clamp(0, width - 1)
    picked = rows.gather(1, yi.unsqueeze(-1).expand(-1, -1, width))
    picked = picked.gather(2, xi.unsqueeze(1).expand(-1, yi.shape[1], -1))
    return picked & inside


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's ρ between maps a[i] and b[i] over pixels (B×H×W each; ties broken by position): float32 (B,)."""
    def ranks(maps):
        flat = maps.flatten(1).float()
        return flat.argsort(dim=1).argsort(dim=1).float()
    ra, rb = ranks(a), ranks(b)
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp_min(1e-12)


def loss_gradient_maps(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, reduce: str) -> torch.Tensor:
    """The map a memory write would give for clean ``images`` now: the cross-entropy's input gradient, channel-
    reduced (:func:`keepmix.memory.gradient_map`), the model in eval mode and left as found."""
    from .memory import gradient_map
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = images.detach().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(model(x).float(), labels)
            (grad,) = torch.autograd.grad(loss, x)
    finally:
        model.train(was_training)
    return gradient_map(grad, reduce)


class StudyTrainer(Trainer):
    """A :class:`~keepmix.train.Trainer` that measures, inside the steps, the glyph pixels its ops remove
    and, after each epoch, how its saliency memory compares with fresh saliency (``study.*`` columns)."""

    def __init__(self, config, *, masks: torch.Tensor, probe: int = 256, **kwargs):
        super().__init__(config, **kwargs)
        self.masks = masks.to(self.device)
        self.augment.track_own = True        # the ops' removed pixels, in every arm
        self.probe = probe
        self._previous_fresh: Optional[torch.Tensor] = None
        self._sums = torch.zeros(2, device=self.device)

    def train_step(self, images, labels, geometry=None):
        sums = super().train_step(images, labels, geometry)
        if geometry is not None:
            glyph = masks_on_grid(self.masks, geometry).float()
            own = self.augment.last_own
            removed = torch.zeros_like(glyph) if own is None else (own < 0.5).float()
            area = glyph.sum(dim=(1, 2))
            share = (glyph * removed).sum(dim=(1, 2)) / area.clamp_min(1.0)
            visible = (area > 0).float()
            self._sums += torch.stack([(share * visible).sum(), visible.sum()])
        return sums

    def train_epoch(self) -> Dict[str, float]:
        self._sums = torch.zeros(2, device=self.device)
        row = super().train_epoch()
        removed, count = self._sums.tolist()
        row["study.glyph_removed"] = removed / count if count else math.nan
        if self.memory is not None and self.probe > 0:
            row.update(self._staleness())
        return row

    def _staleness(self) -> Dict[str, float]:
        from .saliency import gradient
        loader = getattr(self.data.train, "loader", self.data.train)
        count = min(self.probe, loader.num_samples)
        picked = torch.randperm(loader.num_samples, generator=torch.Generator().manual_seed(0))[:count]
        index = picked.to(self.device)
        # the stored images, unaugmented, as the model sees them
        images = self.data.normalize(torch.addcmul(loader._shift, loader.images.index_select(0, index).float(),
                                                   loader._scale))
        labels = loader.labels.index_select(0, index)
        fresh = gradient(self.model, images, labels, reduce=self.memory.reduce)
        stored = self.memory.read_source(index)
        if stored.shape[-2:] != fresh.shape[-2:]:
            stored = torch.nn.functional.interpolate(stored.unsqueeze(1), size=fresh.shape[-2:], mode="bilinear",
                                                     align_corners=False).squeeze(1)
        written = self.memory.written.index_select(0, index)
        rho = rank_correlation(stored, fresh)[written]
        out = {"study.rank_memory": float(rho.mean()) if rho.numel() else math.nan,
               "study.rank_memory_q1": float(rho.quantile(0.25)) if rho.numel() else math.nan,
               "study.rank_memory_q3": float(rho.quantile(0.75)) if rho.numel() else math.nan,
               "study.probe_age": float(self.memory.age(index)[written].float().mean()) if rho.numel() else math.nan}
        # what the memory would hold were it written now: the training loss's input gradient of the clean
        # image (cross-entropy, not the label logit; eval-mode BatchNorm) — the ceiling a memory without
        # any staleness could reach against the ops' fresh maps
        now = loss_gradient_maps(self.model, images, labels, self.memory.reduce)
        out["study.rank_written_now"] = float(rank_correlation(now, fresh).mean())
        if self._previous_fresh is not None:
            out["study.rank_fresh_drift"] = float(rank_correlation(fresh, self._previous_fresh).mean())
        self._previous_fresh = fresh
        return out


def _arm_configs(recipe: str, overrides: Sequence[str], epochs: Optional[int], arms: Sequence[str]):
    config = load_recipe(recipe, list(overrides))
    if epochs is not None:
        config = apply_overrides(config, [f"optim.epochs={epochs}"])
    expanded = dict(expand_arms(config))
    missing = [a for a in arms if a not in expanded]
    if missing:
        raise SystemExit(f"error: recipe {recipe!r} has no arm(s) {missing}; it has {sorted(expanded)}")
    return config, {a: expanded[a] for a in arms}


def _masks(config) -> torch.Tensor:
    from .train import load_sets
    images, _, _, _, loaded = load_sets(config.data)
    if getattr(loaded, "masks", None) is None:
        raise SystemExit(f"error: data set {config.data.name!r} has no object masks (use salient_shapes)")
    if images.shape[0] != loaded.masks.shape[0]:
        raise SystemExit("error: the study needs the whole training split (no train_size/fraction/val_fraction)")
    return loaded.masks


def train_arms(recipe: str, arms: Sequence[str], seeds: Sequence[int], out: Path, *, overrides: Sequence[str] = (),
               epochs: Optional[int] = None, probe: int = 256, quiet: bool = False) -> List[Dict[str, Any]]:
    """Train every (seed, arm) as a :class:`StudyTrainer` under ``out/seed_S/ARM``; their metrics rows."""
    results = []
    for seed in seeds:
        _, configs = _arm_configs(recipe, list(overrides) + [f"seed={seed}"], epochs, arms)
        masks = None
        for arm, config in configs.items():
            data = config_to_dict(config)
            data.update({"name": f"seed_{seed}/{arm}", "output_dir": str(out), "progress": False,
                         "tensorboard": False})
            config = config_from_dict(data)
            if masks is None:
                masks = _masks(config)
            trainer = StudyTrainer(config, masks=masks, probe=probe, run_dir=out / f"seed_{seed}" / arm, quiet=quiet)
            trainer.fit()
            results.append({"seed": seed, "arm": arm, "history": trainer.history})
    return results


def _mean_sd(values: Sequence[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.fmean(values):.2f} ± {sd:.2f}" if not math.isnan(sd) else f"{statistics.fmean(values):.2f}"


def fidelity_table(results: Sequence[Dict[str, Any]]) -> str:
    """The markdown table and verdict lines of the fidelity experiment."""
    per_arm: Dict[str, Dict[int, Dict[str, float]]] = {}
    for result in results:
        history = result["history"]
        later = [r["study.glyph_removed"] for r in history[1:]] or [history[0]["study.glyph_removed"]]
        final = history[-1]
        per_arm.setdefault(result["arm"], {})[result["seed"]] = {
            "removed": 100.0 * statistics.fmean(later), "train_acc": final["train_acc"],
            "top1": final.get("val_top1", math.nan)}
    lines = ["| arm | glyph pixels removed % (epochs ≥ 2) | train acc % | eval top-1 % | seeds |",
             "|---|---|---|---|---|"]
    for arm, seeds in per_arm.items():
        lines.append(f"| {arm} | {_mean_sd([s['removed'] for s in seeds.values()])} | "
                     f"{_mean_sd([s['train_acc'] for s in seeds.values()])} | "
                     f"{_mean_sd([s['top1'] for s in seeds.values()])} | {len(seeds)} |")
    fresh, memory = per_arm.get("keep_cutout"), per_arm.get(MEMORY_ARM)
    if fresh and memory:
        common = sorted(set(fresh) & set(memory))
        lines.append("")
        for key, label in (("removed", "glyph pixels removed (points)"), ("train_acc", "train acc (points)"),
                           ("top1", "eval top-1 (points)")):
            diffs = [memory[s][key] - fresh[s][key] for s in common]
            lines.append(f"memory − fresh, {label}: {_mean_sd(diffs)} (paired over {len(common)} seeds)")
        removed = statistics.fmean(memory[s]["removed"] - fresh[s]["removed"] for s in common)
        lines.append(f"criterion removed ≤ fresh + 5 points: {'holds' if removed <= 5.0 else 'fails'} "
                     f"({removed:+.2f})")
        top = [memory[s]["top1"] - fresh[s]["top1"] for s in common]
        noise = [statistics.stdev([fresh[s]["top1"] for s in common]) if len(common) > 1 else math.nan]
        lines.append(f"top-1 difference {statistics.fmean(top):+.2f} against the fresh arm's seed sd {noise[0]:.2f}")
    return "\n".join(lines)


def _write_rows(results: Sequence[Dict[str, Any]], path: Path) -> None:
    keys: List[str] = ["seed", "arm"]
    rows = []
    for result in results:
        for row in result["history"]:
            flat = {"seed": result["seed"], "arm": result["arm"], **row}
            rows.append(flat)
            keys.extend(k for k in flat if k not in keys)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def plot_staleness(results: Sequence[Dict[str, Any]], path: Path) -> Path:
    """Rank correlation of memory and fresh maps per epoch (mean over seeds; band: probes' IQR)."""
    from .viz import _pyplot
    plt = _pyplot()
    epochs = sorted({row["epoch"] for r in results for row in r["history"]})

    def series(key):
        values = []
        for epoch in epochs:
            found = [row[key] for r in results for row in r["history"]
                     if row["epoch"] == epoch and key in row and not math.isnan(row[key])]
            values.append(statistics.fmean(found) if found else math.nan)
        return values

    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(epochs, series("study.rank_memory"), marker="o", label="memory vs fresh (ops' maps)")
    axis.fill_between(epochs, series("study.rank_memory_q1"), series("study.rank_memory_q3"), alpha=0.2,
                      label="memory vs fresh, probes' IQR")
    axis.plot(epochs, series("study.rank_written_now"), marker="^", linestyle=":",
              label="written now (no staleness) vs fresh")
    axis.plot(epochs, series("study.rank_fresh_drift"), marker="s", linestyle="--",
              label="fresh vs fresh one epoch earlier")
    axis.set_xlabel("epoch")
    axis.set_ylabel("Spearman rank correlation over pixels")
    axis.set_title("Saliency memory staleness")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="memory_study", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", choices=("fidelity", "staleness"))
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--probe", type=int, default=256, help="probe images for the staleness measurement")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="runs/memory_study")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out) / args.experiment
    out.mkdir(parents=True, exist_ok=True)
    arms = FIDELITY_ARMS if args.experiment == "fidelity" else (MEMORY_ARM,)
    probe = args.probe if args.experiment == "staleness" else 0
    results = train_arms(args.recipe, arms, args.seeds, out, overrides=args.overrides, epochs=args.epochs,
                         probe=probe, quiet=args.quiet)
    _write_rows(results, out / f"{args.experiment}.csv")
    if args.experiment == "fidelity":
        table = fidelity_table(results)
        (out / "fidelity.md").write_text(table + "\n", encoding="utf-8")
        print(table)
    else:
        path = plot_staleness(results, out / "staleness.png")
        for row in results[0]["history"]:
            print(f"epoch {row['epoch']}: rank(memory, fresh) {row.get('study.rank_memory', math.nan):.3f}  "
                  f"rank(written now, fresh) {row.get('study.rank_written_now', math.nan):.3f}  "
                  f"rank(fresh, fresh one epoch earlier) {row.get('study.rank_fresh_drift', math.nan):.3f}  "
                  f"age {row.get('study.probe_age', math.nan):.2f}")
        print(f"wrote {path}")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
