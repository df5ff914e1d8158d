"""GuidedMixup's Table 2 rebuilt: each mixer's cost as a share of a training step, beside the paper's figures.

In one process, on the same batches (B×3×32×32, B = 16, 32, 64; 100 classes) and the same device, for the
CIFAR ResNet-18 and the PreAct-ResNet-18:

* the reference is one training step without augmentation (forward, cross-entropy, backward, SGD step);
* each mixer is timed on the same batch with the model it needs (the one being trained) and reported
  as ``100 · mixer time / step time`` — the "+%" of GuidedMixup's Table 2, whose overhead is the
  training time added by the augmentation over training without it.

Mixers: Mixup, CutMix, SaliencyMix (spectral-residual saliency: keepmix's batched stand-in for the
OpenCV saliency of the paper's SaliencyMix), Guided-SR (greedy), SnapMix, PuzzleMix, Co-Mixup, Guided-AP
(greedy). Every mixer mixes every image of every timed batch (``prob=1``, ``mix_prob=1``): the figures
are the cost of a mixed batch. GuidedMixup mixes a batch with probability 0.5 (SR) / 0.8 (AP) during
training, so its expected share of training time is that fraction of its figure. PuzzleMix draws its
block grid per batch from {2, 4, 8, 16} blocks per side: its figure is the mean over the four grids (the
expected cost of a batch), measured grid by grid.

Times are medians of repeated runs after warm-up, with a device synchronisation around each run on
accelerators. PuzzleMix's and Co-Mixup's graph cuts run on the CPU whatever the device (SciPy).

Run: ``python benchmarks/mixer_overhead.py`` (``--help`` for options; ``--markdown`` prints the README table).
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .benchmark import measure, training_step
from .mix import GuidedMixup
from .mixers import CutMix, Mixup, SaliencyMix, SnapMix
from .models import preact_resnet18, resnet18_cifar

#: GuidedMixup Table 2, augmentation overhead (+% of training time without augmentation), B = 16 / 32 / 64
PAPER_OVERHEAD: Dict[str, Tuple[float, float, float]] = {
    "Mixup": (0.9, 0.6, 0.4),
    "CutMix": (1.5, 1.0, 0.6),
    "SaliencyMix": (353.3, 701.8, 923.3),
    "Guided-SR": (7.7, 7.1, 7.0),
    "SnapMix": (67.4, 64.9, 60.2),
    "PuzzleMix": (138.5, 139.9, 134.1),
    "Co-Mixup": (292.1, 490.2, 716.6),
    "Guided-AP": (89.2, 83.0, 77.5),
}
PAPER_BATCHES = (16, 32, 64)
#: keepmix's targets at batch 64 (% of a training step), issue 8
TARGETS = {"PuzzleMix": 140.0, "Guided-SR": 2.0}
MODELS = {"resnet18": ("CIFAR ResNet-18", resnet18_cifar), "preact_resnet18": ("PreAct-ResNet-18", preact_resnet18)}
PUZZLE_BLOCKS = (2, 4, 8, 16)


def mixers(model: torch.nn.Module, num_classes: int, device) -> Dict[str, List[Callable]]:
    """Every mixer of the table as a list of ``(x, y) -> ...`` calls whose mean time is its cost."""
    from .optmix import CoMixup, PuzzleMix

    def gen():
        return torch.Generator(device=device).manual_seed(0)

    k = num_classes
    return {
        "Mixup": [Mixup(k, generator=gen())],
        "CutMix": [CutMix(k, generator=gen())],
        "SaliencyMix": [SaliencyMix(k, saliency="spectral", generator=gen())],
        "Guided-SR": [GuidedMixup(k, pairing="greedy", mix_prob=1.0, generator=gen())],
        "SnapMix": [SnapMix(model, k, generator=gen())],
        "PuzzleMix": [PuzzleMix(model, k, block_counts=(g,), generator=gen()) for g in PUZZLE_BLOCKS],
        "Co-Mixup": [CoMixup(model, k, generator=gen())],
        "Guided-AP": [GuidedMixup(k, saliency="gradient", model=model, pairing="greedy", mix_prob=1.0,
                                  generator=gen())],
    }


def run(batch_sizes: Sequence[int] = PAPER_BATCHES, models: Sequence[str] = tuple(MODELS), device: Optional[str] = None,
        repeats: int = 10, warmup: int = 3, num_classes: int = 100, image_size: int = 32, seed: int = 0,
        only: Optional[Sequence[str]] = None) -> Dict[str, Dict[int, Dict[str, float]]]:
    """``{model label: {batch: {mixer: % of a step, "step_s": seconds}}}``."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    results: Dict[str, Dict[int, Dict[str, float]]] = {}
    for key in models:
        label, factory = MODELS[key]
        torch.manual_seed(seed)
        model = factory(num_classes).to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
        table = mixers(model, num_classes, dev)
        if only:
            table = {name: calls for name, calls in table.items() if name in only}
        results[label] = {}
        for batch in batch_sizes:
            g = torch.Generator(device="cpu").manual_seed(seed + batch)
            x = torch.randn(batch, 3, image_size, image_size, generator=g).to(dev)
            y = torch.randint(0, num_classes, (batch,), generator=g).to(dev)
            step_s = measure(training_step(model, opt, x, y), dev, repeats, warmup)
            row = {"step_s": step_s}
            for name, calls in table.items():
                seconds = statistics.fmean(measure(lambda c=c: c(x, y), dev, repeats, warmup) for c in calls)
                row[name] = 100.0 * seconds / step_s
            results[label][batch] = row
    return results


def _paper(name: str, batch: int) -> str:
    if name in PAPER_OVERHEAD and batch in PAPER_BATCHES:
        return f"{PAPER_OVERHEAD[name][PAPER_BATCHES.index(batch)]:g}"
    return "-"


def format_table(results: Dict[str, Dict[int, Dict[str, float]]], device: str, markdown: bool = False) -> str:
    """One table per model: ours (+% of a step) beside GuidedMixup Table 2 (+% of training time)."""
    lines: List[str] = []
    for label, by_batch in results.items():
        batches = sorted(by_batch)
        names = [k for k in by_batch[batches[0]] if k != "step_s"]
        if markdown:
            lines.append(f"**{label}** ({device}; training step: "
                         + ", ".join(f"{by_batch[b]['step_s'] * 1e3:.1f} ms at B={b}" for b in batches) + ")")
            lines.append("")
            lines.append("| mixer (+% of a training step) | " + " | ".join(f"keepmix B={b}" for b in batches)
                         + " | " + " | ".join(f"paper B={b}" for b in batches) + " |")
            lines.append("| --- " * (1 + 2 * len(batches)) + "|")
            for name in names:
                lines.append(f"| {name} | " + " | ".join(f"{by_batch[b][name]:.1f}" for b in batches) + " | "
                             + " | ".join(_paper(name, b) for b in batches) + " |")
            lines.append("")
            continue
        width = max(len(n) for n in names) + 2
        lines.append(f"{label} on {device}: +% = 100 · mixer time / training step (fwd+bwd+SGD) on the same batch; "
                     f"paper = GuidedMixup Table 2")
        lines.append("mixer".ljust(width) + "".join(f"B={b:<9d}" for b in batches)
                     + "".join(f"paper@{b:<7d}" for b in batches) + "target@64")
        lines.append("step (ms)".ljust(width) + "".join(f"{by_batch[b]['step_s'] * 1e3:<11.1f}" for b in batches))
        for name in names:
            cells = "".join(f"{by_batch[b][name]:<11.1f}" for b in batches)
            paper = "".join(f"{_paper(name, b):<13s}" for b in batches)
            verdict = ""
            if name in TARGETS and 64 in by_batch:
                verdict = f"<= {TARGETS[name]:g}  {'ok' if by_batch[64][name] <= TARGETS[name] else 'MISSED'}"
            lines.append(name.ljust(width) + cells + paper + verdict)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


#: the benchmark's mixer names → the arm names of the GuidedMixup recipes (recipes/guidedmixup/_mixup_arms.yaml)
ARM_NAMES = {"Mixup": "mixup", "CutMix": "cutmix", "SaliencyMix": "saliencymix", "Guided-SR": "guided_sr",
             "SnapMix": "snapmix", "PuzzleMix": "puzzle_mix", "Co-Mixup": "co_mixup", "Guided-AP": "guided_ap"}


def write_overheads(results: Dict[str, Dict[int, Dict[str, float]]], path, batch: Optional[int] = None) -> Path:
    """``arm,overhead_percent`` rows for ``keepmix plot --overhead`` (GuidedMixup Figure 3's x axis).

    Taken from the first model of ``results`` at ``batch`` (default: its largest batch); each value is the
    mixer's time on a mixed batch in % of a training step, as in the table, and ``vanilla`` (no mixing) is 0.
    """
    label = next(iter(results))
    by_batch = results[label]
    batch = max(by_batch) if batch is None else batch
    if batch not in by_batch:
        raise ValueError(f"batch must be one of the measured batch sizes {sorted(by_batch)}, got {batch}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["arm", "overhead_percent", "model", "batch"])
        writer.writerow(["vanilla", "0.0", label, batch])
        for name, value in by_batch[batch].items():
            if name != "step_s":
                writer.writerow([ARM_NAMES.get(name, name), f"{value:.3f}", label, batch])
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="mixer_overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(PAPER_BATCHES))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--mixers", nargs="+", default=None, choices=list(PAPER_OVERHEAD),
                        help="time only these mixers (default: all eight)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1… (default: cuda if available)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables (for the README)")
    parser.add_argument("--csv", metavar="PATH", help="also write arm,overhead_percent (the first model, largest "
                                                       "batch) for keepmix plot --overhead")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    results = run(args.batch_sizes, args.models, device, args.repeats, args.warmup, only=args.mixers)
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else \
        f"CPU, {torch.get_num_threads()} threads"
    print(format_table(results, name, markdown=args.markdown), end="")
    if args.csv:
        print(f"wrote {write_overheads(results, args.csv)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
