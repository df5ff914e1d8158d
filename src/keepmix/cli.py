"""The ``keepmix`` command line: train, eval, show, bench, plot, list.

.. code-block:: text

    keepmix train [RECIPE] [--set key=value ...] [--arm NAME ...] [--resume [DIR]] [flags]
    keepmix eval  --checkpoint PATH [--data NAME] [--data-root DIR] [--split test]
    keepmix eval  --checkpoint PATH --corruptions noise,replace|cifar100-c [--baseline RUN] [--corruptions-root DIR]
    keepmix show  [RECIPE] [--checkpoint PATH] [--op SPEC ...] [--rows 6] [--out show.png]
    keepmix bench [benchmark options]
    keepmix plot  RUN_DIR [RUN_DIR ...] [--out curves.png]
    keepmix list  [recipes|ops|models|datasets]
    keepmix --version

``keepmix train`` with no argument runs ``recipes/default.yaml``: Cutout against KeepCutout (and
its null control) on the embedded SalientShapes data, same seed, and prints the accuracies side by
side. ``keepmix`` alone prints the help. Ctrl-C stops a training run with one line saying how to
resume it (exit status 130).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

#: shortcut flags of ``keepmix train`` and the config keys they set
TRAIN_FLAGS = {
    "epochs": "optim.epochs", "batch_size": "optim.batch_size", "lr": "optim.lr", "seed": "seed",
    "device": "device", "amp": "amp", "name": "name", "output_dir": "output_dir", "data": "data.name",
    "data_root": "data.root", "model": "model.name", "max_steps": "max_steps_per_epoch",
    "dist_timeout": "dist_timeout",
}


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a recipe (default: Cutout vs KeepCutout, its null control and its "
                       "saliency-memory arm)",
                       description="Train a YAML recipe; every arm of a comparison recipe runs in turn.")
    p.add_argument("recipe", nargs="?", default=None, help="recipe file or name (default: 'default')")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set optim.lr=0.05 (repeatable; values parsed as YAML)")
    p.add_argument("--arm", dest="arms", action="append", default=None, metavar="NAME",
                   help="run only this arm of a comparison recipe (repeatable)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"])
    p.add_argument("--name", help="run name (folder under the output dir)")
    p.add_argument("--output-dir", help="where run folders go (default runs/)")
    p.add_argument("--data", help="data set name")
    p.add_argument("--data-root", help="data folder")
    p.add_argument("--model", help="model name")
    p.add_argument("--max-steps", type=int, help="cap on steps per epoch (smoke runs)")
    p.add_argument("--dist-timeout", type=float, metavar="SECONDS",
                   help="under torchrun: how long a collective may wait for the other ranks (default 600)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="DIR",
                   help="continue from the checkpoints: of this run folder or checkpoint, or (no value) of the "
                        "recipe's own run folder (a damaged checkpoint.pt falls back to checkpoint.prev.pt)")
    p.add_argument("--stop-after-epoch", type=int, default=None, metavar="K",
                   help="stop once K epochs are done (resume later with --resume)")
    p.add_argument("--no-progress", action="store_true",
                   help="no tqdm bars (they are only drawn when stderr is a terminal anyway)")
    p.add_argument("--quiet", action="store_true",
                   help="no bars and no per-epoch lines on stdout (they still go to RUN/train.log); the summary "
                        "table is printed")
    p.add_argument("--print-config", action="store_true",
                   help="check the config (building its ops) and print it as YAML; train nothing")


def _positive_int(text: str) -> int:
    """argparse type of a count: an int >= 1 (0 would silently mean 'the default')."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {value}")
    return value


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint: top-1, top-5, loss (or top-1 error under --corruptions)",
                       description="Evaluate a run's checkpoint on its evaluation set (or --split / --data), or under "
                                   "corruptions (--corruptions SPEC: errors per corruption and severity, the "
                                   "corruption error, and with --baseline RUN the mCE and relative mCE).")
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt or a run folder")
    p.add_argument("--data", help="data set name (default: the one the run trained on)")
    p.add_argument("--data-root", help="data folder")
    p.add_argument("--split", default=None,
                   help="evaluate this whole split (default: the run's own evaluation set — its eval split, or "
                        "held-out part, and data.eval_size subset — the set its printed accuracies are on)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override data fields of the run's config, e.g. --set data.eval_size=1000")
    p.add_argument("--batch-size", type=_positive_int, default=None, metavar="N",
                   help="evaluation batch size (default: the run's data.eval_batch_size, else optim.batch_size)")
    p.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda, cuda:1, …")
    p.add_argument("--json", action="store_true", help="print the metrics (with --corruptions: the result) as JSON")
    p.add_argument("--corruptions", metavar="SPEC", default=None,
                   help="top-1 error under corruptions instead: comma-separated noise[=σ], replace[=p] (on the fly, "
                        "seeded), cifar10-c / cifar100-c (the published files, --corruptions-root), imagenet-c or "
                        "one ImageNet-C type[=severity] (needs keepmix[corruptions]); writes corruptions_*.json/.csv "
                        "into the run folder (keepmix.robustness)")
    p.add_argument("--baseline", metavar="RUN", default=None,
                   help="with --corruptions: a clean baseline run (checkpoint or folder) for mCE and relative mCE")
    p.add_argument("--corruptions-root", metavar="DIR", default=None,
                   help="folder holding CIFAR-10-C/ or CIFAR-100-C/ (or that folder)")
    p.add_argument("--corruption-seed", type=int, default=0, metavar="N",
                   help="seed of the on-the-fly corruptions (default 0)")


def _add_show(sub) -> None:
    p = sub.add_parser("show", help="PNG grid of one batch: original, saliency map, each op's output")
    p.add_argument("recipe", nargs="?", default=None, help="recipe whose ops are shown (default: 'default')")
    p.add_argument("--checkpoint", help="a trained run (its model gives the saliency; its config the ops)")
    p.add_argument("--op", dest="ops", action="append", default=None, metavar="SPEC",
                   help="an op to show: a name or a YAML mapping like '{name: keep_cutout, size: 12}' (repeatable)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--rows", type=int, default=6, help="images (rows) in the grid")
    p.add_argument("--split", default=None, help="split the images come from (default: the training split)")
    p.add_argument("--data", help="data set name (default: the recipe's or run's)")
    p.add_argument("--data-root", help="data folder (default: the recipe's data.root, relative to the recipe file)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="show.png", help="PNG file to write")


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="the overhead benchmark (ops as a ratio of a training step)", add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER)


def _add_experiment(sub) -> None:
    p = sub.add_parser("experiment", help="rerun a paper's table: arms × paired seeds, intervals and verdicts",
                       description="Train every arm of a table (recipes/_experiments.yaml) for each seed, then write "
                                   "results.csv and summary.md (means, 95% intervals, paired differences, the "
                                   "paper's number, a verdict). Finished runs are skipped: rerun to resume.")
    p.add_argument("name", help="the experiment (keepmix list experiments)")
    p.add_argument("--seeds", type=_positive_int, default=5, help="paired seeds 0…N−1 (default 5)")
    p.add_argument("--scale", choices=["reduced", "paper"], default="reduced",
                   help="reduced: the table's small protocol for 2 CPU cores (default); paper: as published")
    p.add_argument("--out", default="runs/experiments",
                   help="where the experiment folder goes (default runs/experiments; another folder for a grid with "
                        "other --set values)")
    p.add_argument("--jobs", type=_positive_int, default=1, metavar="N",
                   help="train N runs at once in worker processes (default 1: in this process); the cores are "
                        "shared out among them")
    p.add_argument("--data-root", help="data folder (overrides the protocol's data.root)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a recipe override for every run of the grid (as for train; e.g. --set data.name=salient_shapes "
                        "--set optim.epochs=1); listed in summary.md")


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="plot training curves of runs, or an experiment's figures, to PNG")
    p.add_argument("runs", nargs="*", help="run folders (or metrics.csv files)")
    p.add_argument("--sweep", metavar="RESULTS", help="an experiment's results.csv: accuracy against the number "
                   "ending each arm's name (KeepAugment Figures 2 and 3)")
    p.add_argument("--parameter", default="parameter", help="x-axis label of --sweep (e.g. 'cut length')")
    p.add_argument("--unit", default="", help="x-axis unit of --sweep (e.g. px)")
    p.add_argument("--overhead", metavar="RESULTS", help="an experiment's results.csv: accuracy against "
                   "overhead (GuidedMixup Figure 3), with --overheads")
    p.add_argument("--overheads", metavar="CSV", help="arm,overhead_percent rows (from the benchmarks)")
    p.add_argument("--out", default=None,
                   help="PNG file (default: one run → its own curves.png, redrawn; several runs → "
                        "curves_A_vs_B….png in the current folder, so no run's own plot is overwritten)")


def _add_list(sub) -> None:
    p = sub.add_parser("list", help="list recipes, ops, models, data sets or experiments, one per line with a "
                       "description")
    p.add_argument("what", nargs="?", default="recipes",
                   choices=["recipes", "ops", "models", "datasets", "experiments"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keepmix", allow_abbrev=False,
                                     description="Saliency-guided data augmentation: "
                                     "train, evaluate and inspect KeepAugment and GuidedMixup recipes.",
                                     epilog="Start with 'keepmix train' (the default comparison on embedded data); "
                                            "'keepmix COMMAND --help' describes each command.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_train, _add_eval, _add_show, _add_bench, _add_experiment, _add_plot, _add_list):
        add(sub)
    for command in sub.choices.values():  # '--data' must not be taken for '--data-root' (experiment has no --data)
        command.allow_abbrev = False
    return parser


def _version() -> str:
    from . import __version__
    import torch
    return f"keepmix {__version__} (torch {torch.__version__}, Python {sys.version.split()[0]})"


# --------------------------------------------------------------------------- commands


def _train_overrides(args) -> List[str]:
    overrides = []
    for flag, key in TRAIN_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value) if not isinstance(value, str) else _yaml_str(value)}")
    overrides.extend(args.overrides)
    if args.no_progress or args.quiet:
        overrides.append("progress=false")
    return overrides


def _yaml_str(value: str) -> str:
    return json.dumps(value)  # JSON strings are YAML strings: keeps "1e-3"-like names as text


def cmd_train(args) -> int:
    from .engine.checkpoint import CheckpointFallbackWarning
    from .recipes import apply_overrides, config_from_dict, load_recipe
    from .train import Trainer, load_checkpoint, run
    overrides = _train_overrides(args)
    if isinstance(args.resume, str):
        if args.recipe is not None:  # it would be ignored: the run continues with the settings it recorded
            raise ValueError(f"give a recipe or --resume DIR, not both: --resume {args.resume} continues with the "
                             f"settings recorded in that run, so {args.recipe!r} would be ignored (change a "
                             "runtime setting with --set; `keepmix train RECIPE --resume` resumes the recipe's "
                             "own run folder)")
        target = Path(args.resume)
        recipe_file = target / "recipe.yaml" if target.is_dir() else None
        if recipe_file is not None and recipe_file.is_file():
            config = load_recipe(recipe_file, overrides)
            if args.print_config:
                return _print_config(config, args.arms)
            run(config, arms=args.arms, resume=True, run_dir=target, quiet=args.quiet,
                stop_after_epoch=args.stop_after_epoch)
            return 0
        with warnings.catch_warnings():  # the trainer says it when it loads the checkpoint
            warnings.simplefilter("ignore", CheckpointFallbackWarning)
            payload = load_checkpoint(target, fallback=True)
        config = apply_overrides(config_from_dict(payload["config"]), overrides)
        if args.print_config:
            return _print_config(config)
        run_dir = target if target.is_dir() else target.parent
        trainer = Trainer(config, run_dir=run_dir, resume=target, quiet=args.quiet)
        try:
            summary = trainer.fit(stop_after_epoch=args.stop_after_epoch)
        except KeyboardInterrupt:
            from .train import TrainingInterrupted
            raise TrainingInterrupted(run_dir) from None
        from .train import format_summary
        if trainer.job.is_main:
            print(format_summary([summary]), flush=True)
        return 0
    config = load_recipe(args.recipe, overrides)
    if args.print_config:
        return _print_config(config, args.arms)
    run(config, arms=args.arms, resume=bool(args.resume), quiet=args.quiet, stop_after_epoch=args.stop_after_epoch)
    return 0


def _print_config(config, arms=None) -> int:
    from .recipes import config_to_yaml, expand_arms
    from .train import validate_build
    if arms:  # the arm names are checked as a run would check them
        expand_arms(config, arms)
    validate_build(config)
    print(config_to_yaml(config), end="")
    return 0


def cmd_eval(args) -> int:
    if args.corruptions is not None:
        return _eval_corruptions(args)
    if args.baseline is not None:
        raise ValueError("--baseline needs --corruptions (it is the reference of the relative corruption error)")
    from .recipes import apply_overrides, config_from_dict
    from .train import Distributed, _eval_batches, evaluate, load_checkpoint, load_sets, load_split, resolve_device
    from .data import normalize
    payload = load_checkpoint(args.checkpoint)
    config = config_from_dict(payload["config"])
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.name={_yaml_str(args.data)}")
    if args.data_root:
        overrides.append(f"data.root={_yaml_str(args.data_root)}")
    config = apply_overrides(config, overrides)
    device = resolve_device(args.device, Distributed())
    from .engine.streaming import eval_stream, resolve_loader
    batch_size = args.batch_size or config.data.eval_batch_size or config.optim.batch_size
    streamed = resolve_loader(config.data) == "stream"  # a streamed run: workers resize and centre-crop, as it did
    if streamed:
        from .train import _subset
        batches, count, split_size, loaded = eval_stream(config, args.split, device, batch_size, _subset)
        if args.split is None and config.data.val_fraction is not None:
            split, which = config.data.train_split, f"held out ({config.data.val_fraction:g}) of the " \
                f"{config.data.train_split} split, the run's evaluation set"
        elif args.split is None:
            split = config.data.eval_split
            which = "the run's evaluation set" + (f", {count} of its {split_size}" if count < split_size
                                                  else f", all {split_size}")
        else:
            split, which = args.split, f"the whole split, all {split_size}"
        subset = "run" if args.split is None else "all"
    elif args.split is None:  # the run's own evaluation set (its split, held-out part and size)
        cache: dict = {}
        _, _, images, labels, loaded = load_sets(config.data, cache, eval_only=True)
        split_size = max(int(entry[0].shape[0]) for entry in cache.values())
        if config.data.val_fraction is not None:
            split = config.data.train_split
            which = f"held out ({config.data.val_fraction:g}) of the {split} split, the run's evaluation set"
        else:
            split = config.data.eval_split
            which = "the run's evaluation set" + (f", {images.shape[0]} of its {split_size}"
                                                   if images.shape[0] < split_size else f", all {split_size}")
        subset = "run"
    else:
        split = args.split
        images, labels, loaded = load_split(config.data, split)
        split_size = int(images.shape[0])
        which = f"the whole split, all {split_size}"
        subset = "all"
    if loaded.num_classes != payload["num_classes"]:
        raise ValueError(f"the checkpoint has {payload['num_classes']} classes, "
                         f"{config.data.name} has {loaded.num_classes}")
    from .models import build_model
    model = build_model(config.model.name, payload["num_classes"], **config.model.kwargs)
    model.load_state_dict(payload["model"])
    model.to(device)
    mean, std = tuple(payload["mean"]), tuple(payload["std"])
    if not streamed:
        batches = _eval_batches(images.to(device), labels.to(device), batch_size, lambda x: normalize(x, mean, std),
                                Distributed())
    metrics = evaluate(model, batches(), device=device, amp=config.amp if device.type == "cuda" else "none")
    metrics["count"] = int(metrics["count"])  # a number of images
    metrics.update({"checkpoint": str(args.checkpoint), "data": config.data.name, "split": split,
                    "subset": subset, "split_size": split_size, "epoch": payload["epoch"]})
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{config.data.name} {split} split ({which}): {int(metrics['count'])} images, epoch {payload['epoch']}: "
              f"top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  loss {metrics['loss']:.4f}")
    return 0


def _eval_corruptions(args) -> int:
    from .robustness import evaluate_run, format_table
    result = evaluate_run(args.checkpoint, args.corruptions, baseline=args.baseline, data=args.data,
                          data_root=args.data_root, split=args.split, files_root=args.corruptions_root,
                          overrides=args.overrides, batch_size=args.batch_size, device=args.device,
                          seed=args.corruption_seed)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['data']} ({result['split']}, {result['count']} images, epoch {result['epoch']}), "
              f"corruptions {args.corruptions}, seed {args.corruption_seed}: top-1 error %")
        print(format_table(result["rows"], result["clean_error"], result))
        print("wrote " + ", ".join(result["files"]))
    return 0


def _parse_op(text: str):
    import yaml
    value = yaml.safe_load(text)
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return value
    raise SystemExit(f"error: --op must be an op name or a mapping with a name, got {text!r}")


def cmd_show(args) -> int:
    import torch
    from .recipes import (BuildContext, apply_overrides, build_model_from_config, build_ops, config_from_dict,
                          load_recipe, uses_early_head)
    from .saliency import EarlyHead, gradient
    from .train import Augmentation, load_checkpoint, load_split, op_display_names, _spec_has_policy
    from .data import normalize
    from .viz import save_grid

    payload = None
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.name={_yaml_str(args.data)}")
    if args.data_root:
        overrides.append(f"data.root={_yaml_str(args.data_root)}")
    if args.checkpoint:
        payload = load_checkpoint(args.checkpoint)
        config = apply_overrides(config_from_dict(payload["config"]), overrides)
    else:
        config = load_recipe(args.recipe, overrides)
    labels_by_spec = {}  # the arm an op comes from names its column ("keep_cutout_random", not "keep_cutout_2")
    if args.ops:
        specs = [_parse_op(text) for text in args.ops]
    else:
        specs = []
        for arm_name, candidates in [(None, list(config.ops))] + [(arm.name, arm.ops) for arm in config.arms]:
            for candidate in candidates:
                if candidate not in specs:
                    specs.append(candidate)
                    if arm_name and len(candidates) == 1:
                        labels_by_spec[len(specs) - 1] = arm_name
    if not specs:
        raise SystemExit("error: no ops to show: the recipe has none; pass --op NAME")
    if args.rows < 1:
        raise SystemExit("error: --rows must be >= 1")
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    images, labels, loaded = load_split(config.data, args.split or config.data.train_split)
    pick = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(args.seed))[:args.rows]
    raw = images[pick].to(device).float() / 255.0
    labels = labels[pick].to(device)
    mean, std = tuple(loaded.mean), tuple(loaded.std)
    model = build_model_from_config(config.model, loaded.num_classes).to(device)
    head = None
    if payload is not None:
        model.load_state_dict(payload["model"])
    if uses_early_head(specs) or (payload is not None and payload.get("early_head") is not None):
        head = EarlyHead(model, loaded.num_classes, weight=config.early_head_weight).to(device)
        if payload is not None and payload.get("early_head") is not None:
            head.load_state_dict(payload["early_head"])
    model.eval()
    inputs = normalize(raw, mean, std)
    maps = gradient(model, inputs, labels)
    state = "trained" if payload is not None else "untrained"
    columns = [("original", raw), (f"saliency ({state} model)", maps)]
    names = [labels_by_spec.get(i, name) for i, name in enumerate(op_display_names(specs))]
    for index, (spec, name) in enumerate(zip(specs, names)):
        ctx = BuildContext(model=model, num_classes=loaded.num_classes, early_head=lambda: head, seed=args.seed,
                           device=device, mean=mean, std=std)
        ops = build_ops([spec], ctx, prefix=f"op{index}")
        needs_raw = _spec_has_policy(spec)
        pipeline = Augmentation(ops, [name], (lambda x: normalize(x, mean, std)) if needs_raw else (lambda x: x))
        out, _ = pipeline(raw.clone() if needs_raw else inputs.clone(), labels)
        columns.append((name, out.float() * torch.tensor(std, device=device).view(1, -1, 1, 1)
                        + torch.tensor(mean, device=device).view(1, -1, 1, 1)))
    path = save_grid(columns, args.out, row_labels=[loaded.class_names[int(k)] for k in labels.cpu()],
                     title=f"{config.data.name}: {config.model.name} ({state})")
    if payload is None and any(s.get("saliency") in ("model", "early_head", "gradient") for s in specs):
        print("note: no --checkpoint, so saliency comes from an untrained model", file=sys.stderr)
    print(f"wrote {path}")
    return 0


def cmd_bench(args) -> int:
    argv = [a for a in args.args if a != "--"]
    try:
        benchmark = importlib.import_module("keepmix.benchmark")
    except ImportError:
        benchmark = None
    if benchmark is not None and callable(getattr(benchmark, "main", None)):
        return int(benchmark.main(argv) or 0)
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "overhead.py"
    if script.is_file():
        return subprocess.call([sys.executable, str(script), *argv])
    print("error: the overhead benchmark is not available in this installation "
          "(keepmix.benchmark is missing and there is no benchmarks/overhead.py)", file=sys.stderr)
    return 2


def cmd_experiment(args) -> int:
    from .experiment import main_args
    overrides = list(args.overrides) + ([f"data.root={args.data_root}"] if args.data_root else [])
    return main_args(args.name, args.seeds, args.scale, args.out, overrides, jobs=args.jobs)


def cmd_plot(args) -> int:
    from .viz import plot_curves, plot_overhead, plot_sweep, read_metrics, read_results
    if args.sweep or args.overhead:
        source = Path(args.sweep or args.overhead)
        if not source.is_file():
            raise FileNotFoundError(f"no results.csv at {source}")
        out = Path(args.out) if args.out else source.with_name("sweep.png" if args.sweep else "overhead.png")
        if args.sweep:
            plot_sweep(read_results(source), out, parameter=args.parameter, unit=args.unit, title=source.parent.name)
        else:
            if not args.overheads:
                raise ValueError("--overhead needs --overheads CSV (arm,overhead_percent)")
            with open(args.overheads, newline="", encoding="utf-8") as handle:
                overheads = {row["arm"]: float(row["overhead_percent"]) for row in csv.DictReader(handle)}
            plot_overhead(read_results(source), overheads, out, title=source.parent.name)
        print(f"wrote {out}")
        return 0
    if not args.runs:
        raise ValueError("give run folders, or --sweep / --overhead with an experiment's results.csv")
    folders, tables = [], []
    for item in args.runs:
        path = Path(item)
        csv_path = path / "metrics.csv" if path.is_dir() else path
        if not csv_path.is_file():
            raise FileNotFoundError(f"no metrics.csv at {csv_path}")
        folders.append(csv_path.parent)
        tables.append(read_metrics(csv_path))
    labels = _run_labels(folders)
    if args.out:
        out = Path(args.out)
    elif len(folders) == 1:
        out = folders[0] / "curves.png"  # the run's own plot, redrawn from its metrics
    else:  # never overwrite a run's own curves.png with a comparison
        out = Path("curves_" + "_vs_".join(re.sub(r"[^A-Za-z0-9_.-]+", "-", label) for label in labels) + ".png")
    plot_curves(dict(zip(labels, tables)) if len(tables) > 1 else tables[0], out)
    print(f"wrote {out}")
    return 0


def _run_labels(folders: List[Path]) -> List[str]:
    """Legend labels of run folders: their names, with parent folders added until they differ."""
    depth = 1
    while True:
        labels = ["/".join(folder.resolve().parts[-depth:]) for folder in folders]
        if len(set(labels)) == len(labels) or depth >= max(len(f.resolve().parts) for f in folders):
            return labels
        depth += 1


def list_items(what: str) -> List[tuple]:
    """``(name, one-line description)`` of every recipe, op, model or data set."""
    if what == "recipes":
        from .recipes import find_recipe, list_recipes, read_recipe
        items = []
        for name in list_recipes():
            try:
                text = str(read_recipe(find_recipe(name)).get("description") or "")
            except (OSError, ValueError, TypeError) as error:  # a broken recipe still lists, with its problem
                text = f"(cannot be read: {' '.join(str(error).split())})"
            items.append((name, text))
        return items
    if what == "ops":
        from .recipes import OP_PRESETS, op_names, resolve_op
        items = []
        for name in op_names():
            cls, preset = resolve_op(name)
            text = _first_line(cls.__doc__)
            if name in OP_PRESETS:
                text = f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in preset.items())}): " + text
            items.append((name, text))
        return items
    if what == "experiments":
        from .experiment import load_tables
        return [(name, " ".join(table.description.split())) for name, table in load_tables().items()]
    if what == "models":
        from .models import MODELS
        return [(name, _first_line(MODELS[name].__doc__)) for name in sorted(MODELS)]
    from .data import DESCRIPTIONS, available_datasets
    return [(name, DESCRIPTIONS.get(name, "")) for name in available_datasets()]


def _first_line(text: Optional[str]) -> str:
    """The first line of a docstring, without reST markup."""
    for line in (text or "").strip().splitlines():
        if line.strip():
            line = re.sub(r":\w+:`~?([^`]+)`", lambda m: m.group(1).split(".")[-1], line.strip())
            return line.replace("``", "").rstrip(".")
    return ""


def cmd_list(args) -> int:
    items = list_items(args.what)
    width = max(len(name) for name, _ in items) + 2
    print("\n".join(f"{name:<{width}}{text}".rstrip() for name, text in items))
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "show": cmd_show, "bench": cmd_bench, "experiment": cmd_experiment,
            "plot": cmd_plot, "list": cmd_list}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``keepmix`` console script (and ``python -m keepmix``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:  # a bare 'keepmix' explains itself; it never starts a run
        parser.print_help()
        return 0
    if argv[0] == "bench":  # everything after 'bench' belongs to the benchmark's own parser
        return cmd_bench(argparse.Namespace(args=argv[1:]))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    clean = False
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            code = COMMANDS[args.command](args)
        clean = code == 0
        return code
    except KeyboardInterrupt as interrupt:
        print(_interrupted_line(args.command, getattr(interrupt, "run_dir", None)), file=sys.stderr, flush=True)
        return 130
    except BrokenPipeError:  # 'keepmix list ops | head': the reader left; nothing to report
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except (ValueError, TypeError, OSError, RuntimeError) as error:
        if os.environ.get("KEEPMIX_DEBUG"):
            raise
        print(f"keepmix {args.command}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    finally:
        _leave_process_group(clean)


def _interrupted_line(command: str, run_dir: Optional[Path]) -> str:
    """The one line Ctrl-C prints: how to resume, when the run folder holds something to resume."""
    if command == "experiment":
        return ("keepmix experiment: interrupted; finished runs are kept and a started one resumes from its "
                "checkpoint: rerun the same command to continue")
    if run_dir is None:
        return f"keepmix {command}: interrupted"
    run_dir = Path(run_dir)
    saved = run_dir.is_dir() and ((run_dir / "recipe.yaml").is_file()
                                  or any(run_dir.glob("checkpoint*.pt")) or any(run_dir.glob("*/checkpoint*.pt")))
    if not saved:
        return f"keepmix {command}: interrupted before anything was saved in {run_dir}; nothing to resume"
    return f"keepmix {command}: interrupted; resume with: keepmix train --resume {shlex.quote(str(run_dir))}"


_default_showwarning = warnings.showwarning


_SHOWN_WARNINGS: set = set()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings raised by keepmix (its own classes, or any class warned from keepmix's code: a short warm-up) as
    one ``keepmix: warning:`` line, each text once per command; others as Python prints them."""
    ours = getattr(category, "__module__", "").startswith("keepmix.") or \
        Path(str(filename)).resolve().is_relative_to(Path(__file__).resolve().parent)
    if ours:
        text = str(message)
        if text not in _SHOWN_WARNINGS:
            _SHOWN_WARNINGS.add(text)
            print(f"keepmix: warning: {text}", file=file or sys.stderr, flush=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


def _leave_process_group(clean: bool = False) -> None:
    """Stop the heartbeat and close the torchrun process group a training command joined (if any); a command that
    succeeded meets its peers at a barrier first (see :func:`keepmix.engine.distributed.shutdown_distributed`)."""
    if "keepmix.engine.distributed" in sys.modules:
        from .engine.distributed import shutdown_distributed
        shutdown_distributed(clean)


if __name__ == "__main__":  # torchrun -m keepmix.cli train ...
    raise SystemExit(main())
