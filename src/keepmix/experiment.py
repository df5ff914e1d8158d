"""Rerun a paper's table: arms × paired seeds, then means, intervals, paired differences and a verdict.

``keepmix experiment NAME`` (or :func:`run_experiment`) trains every arm of a table recipe once per
seed, in this process or ``--jobs N`` at a time in worker processes. Arms of one seed share that seed, so they see the same data order and start from the same
initial weights: a *paired* design, where the seed-to-seed spread (±3 points on small CIFAR subsets)
cancels out of the differences. A finished run (its ``result.json``) is skipped, so an interrupted
grid resumes where it stopped.

Writes under ``OUT/NAME/``:

* ``results.csv`` — one row per run (arm, seed, top-1, top-5, loss, epochs, seconds, run folder);
* ``summary.md`` — per arm n, mean, standard deviation and the 95 % t-interval of the mean; per
  comparison the paired difference with its 95 % t-interval, the paper's difference for the same
  cell, and a verdict: **holds** (the interval excludes 0 on the paper's side), **contradicted**
  (it excludes 0 on the other side) or **inconclusive** (it contains 0, there is one seed, or every
  seed gave the same difference); without a paper number, **a better** / **b better** / inconclusive.
  Overrides given with ``--set`` are listed under the protocol. Rerunning a grid with other settings
  into the same folder is refused (a finished run would otherwise be reused as the new one).

The tables, their comparisons, the papers' numbers and the reduced protocols are in
``recipes/_experiments.yaml``. ``scale="reduced"`` applies a table's ``reduced`` overrides (a small
model, fewer epochs, a data subset: ≲ 1 hour on 2 CPU cores, stated in the summary);
``scale="paper"`` runs the recipe as published.

A table with ``corruptions: SPEC`` (``keepmix eval --corruptions`` syntax, :mod:`keepmix.robustness`) evaluates
each finished run under those corruptions (seed 0, on the run's evaluation set) and adds ``clean_error`` and
``corruption_error`` (GuidedMixup's mean corruption error, %) to its row; ``metrics`` lists the metrics the
summary reports and compares (default ``[val_top1]``; the first one is the table's headline). ``paper`` and a
comparison's ``paper`` are then keyed by metric (``{corruption_error: {...}, clean_error: {...}}``).

Interval: with n paired differences d_s, mean d̄ and standard deviation s_d, the 95 % interval is
d̄ ± t₀.₉₇₅,ₙ₋₁ · s_d / √n (Student's t; exact quantiles for n ≤ 30, then 1.96).
"""

from __future__ import annotations

import csv
import json
import math
import numbers
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import yaml

#: two-sided 95 % quantiles of Student's t, by degrees of freedom
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
        29: 2.045, 30: 2.042}

RESULT_FIELDS = ["arm", "seed", "val_top1", "val_top5", "val_loss", "train_top1", "epochs", "seconds", "run_dir"]
#: columns a corruption table adds (keepmix.robustness), written only when a row has them
CORRUPTION_FIELDS = ["clean_error", "corruption_error"]
#: metric → (column heading, lower is better)
METRICS = {"val_top1": ("top-1 %", False), "clean_error": ("clean error %", True),
           "corruption_error": ("corruption error %", True)}


def t_quantile(df: int) -> float:
    """t₀.₉₇₅ with ``df`` degrees of freedom (1.96 beyond 30)."""
    return T975.get(df, 1.96) if df >= 1 else float("nan")


@dataclass
class Interval:
    """Mean, standard deviation, n and the 95 % t-interval of a sample."""
    mean: float
    sd: float
    n: int
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Interval":
        values = [float(v) for v in values]
        n = len(values)
        if n == 0:
            raise ValueError("an interval needs at least one value")
        mean = statistics.fmean(values)
        if n == 1:
            return cls(mean, float("nan"), 1, float("nan"), float("nan"))
        sd = statistics.stdev(values)
        half = t_quantile(n - 1) * sd / math.sqrt(n)
        return cls(mean, sd, n, mean - half, mean + half)


def verdict(interval: Interval, paper_difference: Optional[float], *, lower_is_better: bool = False) -> str:
    """holds / contradicted / inconclusive for a paired difference against the paper's sign.

    Without a paper difference there is no claim: the verdict says which arm the interval favours ("a
    better" / "b better": higher accuracy, or lower error with ``lower_is_better``) or "inconclusive" — so a
    null control that beats its baseline reads as what it is, not as a claim that "holds". A zero-width
    interval (every seed the same difference, possible with few seeds and coarse accuracies) is
    inconclusive.
    """
    if interval.n < 2 or math.isnan(interval.low):
        return "inconclusive (one seed)"
    if interval.sd == 0.0:  # every seed gave the same difference: a zero-width interval is no evidence
        return "inconclusive (no spread over seeds)"
    if interval.low <= 0.0 <= interval.high:
        return "inconclusive"
    if paper_difference is None:  # no claim to hold: name the direction the interval shows
        better = (interval.low > 0) != lower_is_better
        return "a better" if better else "b better"
    sign = 1.0 if paper_difference >= 0 else -1.0
    agrees = (interval.low > 0) == (sign > 0)
    return "holds" if agrees else "contradicted"


@dataclass
class Comparison:
    """Arm ``a`` against arm ``b`` (difference a − b); ``paper``: the paper's a − b, if it has one — a number
    (for the table's first metric) or a dict keyed by metric."""
    a: str
    b: str
    paper: Optional[Any] = None


@dataclass
class Table:
    """One experiment: a recipe, extra arms, comparisons, the papers' numbers and the reduced protocol."""
    name: str
    recipe: str
    description: str = ""
    arms: Optional[List[str]] = None
    extra_arms: List[Dict[str, Any]] = field(default_factory=list)
    comparisons: List[Comparison] = field(default_factory=list)
    paper: Dict[str, float] = field(default_factory=dict)
    reduced: Dict[str, Any] = field(default_factory=dict)
    reduced_note: str = ""
    corruptions: Optional[str] = None
    metrics: List[str] = field(default_factory=lambda: ["val_top1"])

    def __post_init__(self):
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise ValueError(f"experiment {self.name}: metrics must be among {', '.join(METRICS)}, got {self.metrics}")
        if any(m in CORRUPTION_FIELDS for m in self.metrics) and not self.corruptions:
            raise ValueError(f"experiment {self.name}: metrics {self.metrics} need corruptions: SPEC")
        if self.corruptions is not None:  # checked here, not after the first run has trained
            from .robustness import parse_corruptions
            try:
                items = parse_corruptions(self.corruptions)
            except ValueError as error:
                raise ValueError(f"experiment {self.name}: corruptions: {error}") from None
            if any(item.kind == "files" for item in items):
                raise ValueError(f"experiment {self.name}: corruptions: {self.corruptions!r} reads published files, "
                                 "which an experiment has no folder for; list on-the-fly items (noise, replace, "
                                 "ImageNet-C types) and evaluate the runs with keepmix eval --corruptions SET "
                                 "--corruptions-root DIR")


def experiments_file() -> Path:
    """``recipes/_experiments.yaml`` (found like a recipe; the '_' keeps it out of the recipe list)."""
    from .recipes import find_recipe
    return find_recipe("_experiments")


def load_tables(path: Optional[Path] = None) -> Dict[str, Table]:
    """Every table of ``recipes/_experiments.yaml`` by name."""
    path = Path(path) if path is not None else experiments_file()
    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle) or {}
    tables = {}
    for name, spec in raw.items():
        spec = dict(spec)
        comparisons = [Comparison(**c) for c in spec.pop("comparisons", [])]
        tables[name] = Table(name=name, comparisons=comparisons, **spec)
    return tables


def _flatten(prefix: str, value: Any) -> List[str]:
    """``{"optim": {"epochs": 3}}`` → ``["optim.epochs=3"]`` (the ``--set`` form; YAML values)."""
    if isinstance(value, dict):
        out: List[str] = []
        for key, inner in value.items():
            out += _flatten(f"{prefix}.{key}" if prefix else key, inner)
        return out
    return [f"{prefix}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"]


def plan(table: Table, seeds: Sequence[int], scale: str = "reduced", overrides: Sequence[str] = ()
         ) -> List[Tuple[str, int, Any]]:
    """The grid: (arm, seed, TrainConfig) for every arm and seed, arms paired by seed."""
    from .recipes import apply_overrides, expand_arms, load_recipe
    if scale not in ("reduced", "paper"):
        raise ValueError(f"scale must be 'reduced' or 'paper', got {scale!r}")
    config = load_recipe(table.recipe)
    if table.extra_arms:
        from .recipes import config_from_dict, config_to_dict
        data = config_to_dict(config)
        data["arms"] = list(data.get("arms") or []) + [dict(arm) for arm in table.extra_arms]
        config = config_from_dict(data)
    sets = list(_flatten("", table.reduced)) if scale == "reduced" else []
    config = apply_overrides(config, [*sets, *overrides])
    grid = []
    for seed in seeds:
        seeded = apply_overrides(config, [f"seed={int(seed)}"])
        for arm, arm_config in expand_arms(seeded, table.arms):
            grid.append((arm, int(seed), arm_config))
    return grid


def run_experiment(table: Table, seeds: Sequence[int], out: Path, *, scale: str = "reduced",
                   overrides: Sequence[str] = (), progress: bool = True,
                   train: Optional[Callable[[Any, Path], Dict[str, Any]]] = None, jobs: int = 1
                   ) -> List[Dict[str, Any]]:
    """Train the grid (skipping finished runs), write ``results.csv`` and ``summary.md``; returns the rows.

    ``jobs > 1`` trains that many runs at once, each in its own process (``spawn``; each process gets
    ``cpu_count // jobs`` torch threads, at least one). The runs are the same runs: each is seeded from its
    own config, so the grid, the pairing and the files are those of ``jobs=1``; only the order in which
    runs finish differs (the rows keep the grid's order). A run that fails stops the dispatch of new
    runs; the runs in flight finish and are recorded, every finished run keeps its ``result.json``
    (skipped on the rerun), and the first error is raised. ``train``
    must then be a module-level function (it is pickled into the workers).
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int):
        raise TypeError(f"jobs must be an int, got {type(jobs).__name__}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    seeds = list(seeds)
    if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) for s in seeds):
        raise TypeError(f"seeds must be ints, got {seeds}")
    if not seeds:  # an empty grid would overwrite results.csv and summary.md with nothing
        raise ValueError("seeds must list at least one seed, got none")
    if len(set(seeds)) != len(seeds):  # two runs would train into one folder (at once, with jobs)
        raise ValueError(f"seeds must be distinct, got {seeds}")
    if table.corruptions:  # the optional package of ImageNet-C items: before any run trains
        from .robustness import parse_corruptions
        if any(item.kind == "imagenet_c" for item in parse_corruptions(table.corruptions)):
            from .corruptions import _imagecorruptions
            _imagecorruptions()
    out = Path(out) / table.name
    grid = plan(table, seeds, scale, overrides)
    train = train or _train_one
    cells = [(arm, seed, config, out / arm / f"seed{seed}") for arm, seed, config in grid]
    for _, _, config, folder in cells:  # a finished or started run must be the run this grid asks for
        _check_same_run(folder, config)
    rows: Dict[int, Dict[str, Any]] = {}
    todo = []
    for position, (arm, seed, config, folder) in enumerate(cells):
        done = folder / "result.json"
        if done.is_file():
            row = json.loads(done.read_text(encoding="utf-8"))
            if row.get("train_top1") is None:  # a run recorded before the field existed
                row["train_top1"] = _last_train_accuracy(folder / "metrics.csv")
            if table.corruptions and (row.get("corruption_error") is None  # trained before its corruption eval
                                      or row.get("corruptions") != table.corruptions):  # or under another SPEC
                row = _record(arm, seed, folder, _with_corruptions(table, folder, row))
            rows[position] = row
        else:
            todo.append(position)
    bar = _progress(len(grid), table.name) if progress else None
    if bar is not None and rows:
        bar.update(len(rows))
    if jobs == 1 or len(todo) <= 1:
        for position in todo:
            arm, seed, config, folder = cells[position]
            rows[position] = _record(arm, seed, folder, _with_corruptions(table, folder, train(config, folder)))
            if bar is not None:
                bar.update(1)
    else:
        import concurrent.futures as futures
        import multiprocessing
        import os
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with futures.ProcessPoolExecutor(max_workers=min(jobs, len(todo)),
                                         mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_worker_threads, initargs=(threads,)) as pool:
            running = {pool.submit(train, cells[p][2], cells[p][3]): p for p in todo}
            failure: Optional[BaseException] = None
            try:
                for future in futures.as_completed(running):
                    if future.cancelled():
                        continue
                    error = future.exception()
                    if error is not None:
                        if failure is None:  # stop dispatching; the runs in flight still finish and count
                            failure = error
                            for other in running:
                                other.cancel()
                        continue
                    position = running[future]
                    arm, seed, _, folder = cells[position]
                    rows[position] = _record(arm, seed, folder, _with_corruptions(table, folder, future.result()))
                    if bar is not None:
                        bar.update(1)
            except BaseException:  # Ctrl-C: nothing new starts; finished runs already have their result.json
                for future in running:
                    future.cancel()
                raise
            if failure is not None:
                raise failure
    if bar is not None:
        bar.close()
    ordered = [rows[p] for p in sorted(rows)]
    write_results(out / "results.csv", ordered)
    (out / "summary.md").write_text(summarize(table, ordered, scale, seeds, overrides), encoding="utf-8")
    return ordered


def _check_same_run(folder: Path, config) -> None:
    """Refuse to reuse a run folder trained with other settings (``--set`` changed since it ran).

    Compares the folder's ``config.yaml`` with the grid's config by
    :func:`keepmix.train.config_differences` (runtime fields such as ``data.root`` may differ). A folder
    without ``config.yaml`` (not started, or a stand-in ``train``) passes.
    """
    saved = folder / "config.yaml"
    if not saved.is_file():
        return
    from .recipes import config_from_dict
    from .train import config_differences
    with open(saved, encoding="utf-8") as handle:
        previous = config_from_dict(yaml.safe_load(handle) or {})
    changed = config_differences(previous, config)
    if changed:
        shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
        raise ValueError(f"{folder} was trained with other settings ({shown} differ from this grid's); its "
                         "result would be reused as if it were this run's. Write the grid elsewhere (--out) or "
                         "delete that folder to retrain it")


def _worker_threads(threads: int) -> None:
    """A ``--jobs`` worker's torch thread count (the cores shared out among the workers)."""
    import torch
    torch.set_num_threads(threads)


def _record(arm: str, seed: int, folder: Path, summary: Dict[str, Any]) -> Dict[str, Any]:
    """One finished run's row, written atomically to its ``result.json`` (what resume skips on)."""
    row = {"arm": arm, "seed": seed, **{k: summary.get(k) for k in RESULT_FIELDS[2:-1]}, "run_dir": str(folder),
           **{k: summary[k] for k in CORRUPTION_FIELDS + ["corruptions"] if summary.get(k) is not None}}
    if row.get("train_top1") is None:
        row["train_top1"] = _last_train_accuracy(summary.get("metrics"))
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / "result.json"
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(row), encoding="utf-8")
    tmp.replace(done)
    return row


def _with_corruptions(table: Table, folder: Path, summary: Dict[str, Any]) -> Dict[str, Any]:
    """``summary`` plus the run's clean and corruption errors when the table has ``corruptions``, and the SPEC
    they were measured under (a row measured under another SPEC is measured again on the rerun)."""
    if not table.corruptions:
        return summary
    from .robustness import evaluate_run
    result = evaluate_run(folder, table.corruptions, device="cpu", seed=0)
    return {**summary, "clean_error": result["clean_error"], "corruption_error": result["corruption_error"],
            "corruptions": table.corruptions}


def _last_train_accuracy(metrics) -> Optional[float]:
    """The final epoch's training accuracy (%) from a run's metrics.csv, if there is one."""
    if not metrics or not Path(metrics).is_file():
        return None
    from .viz import read_metrics
    rows = read_metrics(metrics)
    value = rows[-1].get("train_acc") if rows else None
    return None if value is None else float(value)


def _train_one(config, folder: Path) -> Dict[str, Any]:
    """Train one run; a run interrupted mid-way continues from its checkpoint (exact resume)."""
    from .train import Trainer
    checkpoint = folder / "checkpoint.pt"
    return Trainer(config, run_dir=folder, quiet=True, resume=checkpoint if checkpoint.is_file() else None).fit()


def _progress(total: int, name: str):
    import sys
    from tqdm import tqdm
    return tqdm(total=total, desc=name, unit="run", disable=not sys.stderr.isatty())


def write_results(path: Path, rows: Sequence[Dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = RESULT_FIELDS + [k for k in CORRUPTION_FIELDS if any(row.get(k) is not None for row in rows)]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k) for k in fields})


def _by_arm(rows: Sequence[Dict[str, Any]], metric: str = "val_top1") -> Dict[str, Dict[int, float]]:
    out: Dict[str, Dict[int, float]] = {}
    for row in rows:
        if row.get(metric) is not None:
            out.setdefault(row["arm"], {})[int(row["seed"])] = float(row[metric])
    return out


def _paper(value: Any, metric: str, first: bool) -> Optional[float]:
    """The paper's number for ``metric``: a dict keyed by metric, or a plain number meaning the first metric."""
    if isinstance(value, dict):
        return value.get(metric)
    return value if first else None


def paired(rows: Sequence[Dict[str, Any]], a: str, b: str, metric: str = "val_top1") -> List[float]:
    """a − b of ``metric`` (top-1 by default) for every seed both arms finished (the pairing)."""
    arms = _by_arm(rows, metric)
    common = sorted(set(arms.get(a, {})) & set(arms.get(b, {})))
    return [arms[a][s] - arms[b][s] for s in common]


def summarize(table: Table, rows: Sequence[Dict[str, Any]], scale: str, seeds: Sequence[int],
              overrides: Sequence[str] = ()) -> str:
    """The Markdown summary: the protocol, per-arm intervals, paired comparisons with verdicts."""
    lines = [f"# {table.name}", "", table.description, "",
             f"Recipe `{table.recipe}`, scale **{scale}**, seeds {', '.join(map(str, seeds))} (arms paired by seed)."]
    if scale == "reduced" and table.reduced_note:
        lines += ["", f"Reduced protocol: {table.reduced_note}"]
    runtime = {"data.root"}  # where the data lives does not change the protocol
    changed = [o for o in overrides if o.split("=", 1)[0].strip() not in runtime]
    if changed:
        lines += ["", "**Overrides** (applied on top of the protocol above, which they change): "
                  + ", ".join(f"`{o}`" for o in changed)]
    if table.corruptions:
        lines += ["", f"Corruptions: `{table.corruptions}` (keepmix eval --corruptions; seed 0, on each run's "
                      "evaluation set; corruption error = mean over corruptions of the top-1 error, %)."]
    for position, metric in enumerate(table.metrics):
        heading, lower = METRICS[metric]
        first = position == 0
        arms = _by_arm(rows, metric)
        if metric != "val_top1" or len(table.metrics) > 1:
            lines += ["", f"## {heading[:-2] if heading.endswith(' %') else heading}"]
        lines += ["", f"| arm | n | mean {heading} | sd | 95 % CI | paper % |", "|---|---|---|---|---|---|"]
        for arm, values in arms.items():
            iv = Interval.of(list(values.values()))
            paper = (table.paper.get(metric) or {}).get(arm) if isinstance(table.paper.get(metric), dict) \
                else (table.paper.get(arm) if first else None)
            ci = "–" if iv.n < 2 else f"{iv.low:.2f} … {iv.high:.2f}"
            sd = "–" if iv.n < 2 else f"{iv.sd:.2f}"
            lines.append(f"| {arm} | {iv.n} | {iv.mean:.2f} | {sd} | {ci} | {'' if paper is None else paper} |")
        if table.comparisons:
            lines += ["", "| comparison | n | mean difference (points) | 95 % CI | paper difference | verdict |",
                      "|---|---|---|---|---|---|"]
            for c in table.comparisons:
                expected = _paper(c.paper, metric, first)
                diffs = paired(rows, c.a, c.b, metric)
                if not diffs:
                    lines.append(f"| {c.a} − {c.b} | 0 | – | – | {expected if expected is not None else ''} | not run |")
                    continue
                iv = Interval.of(diffs)
                ci = "–" if iv.n < 2 else f"{iv.low:+.2f} … {iv.high:+.2f}"
                paper = "" if expected is None else f"{expected:+.2f}"
                lines.append(f"| {c.a} − {c.b} | {iv.n} | {iv.mean:+.2f} | {ci} | {paper} | "
                             f"{verdict(iv, expected, lower_is_better=lower)} |")
    lines += ["", "Intervals: mean ± t₀.₉₇₅,ₙ₋₁·sd/√n over seeds (Student's t). Verdict: *holds* when the paired "
              "interval excludes 0 on the paper's side, *contradicted* when it excludes 0 on the other side, "
              "*inconclusive* otherwise (also with one seed, or when every seed gave the same difference); "
              "without a paper number, *a better* / *b better* name the arm the interval favours.", ""]
    return "\n".join(lines)


def main_args(name: str, seeds: int, scale: str, out: str, overrides: Sequence[str], progress: bool = True,
              jobs: int = 1) -> int:
    """``keepmix experiment NAME --seeds N``: run the table's grid and print the summary."""
    tables = load_tables()
    if name not in tables:
        import difflib
        hint = difflib.get_close_matches(name, list(tables), n=3)
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(sorted(tables))}"
                         + (f" (did you mean {', '.join(hint)}?)" if hint else ""))
    table = tables[name]
    run_experiment(table, list(range(seeds)), Path(out), scale=scale, overrides=overrides, progress=progress,
                   jobs=jobs)
    print((Path(out) / table.name / "summary.md").read_text(encoding="utf-8"))
    return 0
