"""Throughput benchmark: images per second of every policy, region op and mixer, batched vs a per-image loop.

For each batch shape B×C×H×W (default 256×3×32×32 and 64×3×224×224) and each op,
one process on one device measures

* **batched** — ``op(x, y)`` on the whole batch: B / t_batched images per second;
* **loop** — the same op class called image by image in a Python loop, the way
  per-sample augmentation code (a ``Dataset.__getitem__`` transform) applies it:
  ``op(x[i:i+1], y[i:i+1])`` for each image. A mixer returns a batch of one
  unchanged, so for mixers the loop calls the op on 2-image batches
  ``x[2k:2k+2]`` (disjoint pairs, so each call yields two mixed images and is
  counted as two) — the cheapest per-sample way to mix that still does the work;
* **speed-up** = batched images/s ÷ loop images/s.

The loop runs on the first ``loop_images`` images only (default 64; even for
mixers) and is reported as images per second, so it measures per-image
throughput without spending minutes on 224-px batches on a CPU.

Inputs, as each op expects them: the policies (AutoAugment, RandAugment,
TrivialAugmentWide, AugMix and their Keep variants) get raw uint8 images; the
region ops and mixers get float32 normalised images. Saliency needs no trained
model: the Keep ops get precomputed spectral-residual maps (``saliency_maps=``,
computed once outside the timing — in training they come from the model being
trained), SaliencyMix and GuidedMixup compute spectral-residual saliency
themselves (GuidedMixup-SR, greedy pairing, mixing every batch). SnapMix,
AttentiveCutMix and ManifoldMixup need a network: they use
:func:`keepmix.models.resnet_small` (randomly initialised, eval mode) at every
size, and their figures include its forward pass — SnapMix's CAM pass,
AttentiveCutMix's teacher pass, and for ManifoldMixup one no-grad forward after
the op, because that is where its hidden-layer mixing happens.

Times are medians over ``repeats`` runs after ``warmup`` runs, with a device
synchronisation around each run on accelerators (:func:`keepmix.benchmark.measure`).
Input checks (one finiteness read-back per call) stay on, as in default use.

Run: ``python benchmarks/policies.py`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import policies as pol
from .benchmark import measure
from .erase import Cutout, GridMask, RandomErasing
from .keep import (KeepAugMix, KeepAutoAugment, KeepCutMix, KeepCutout, KeepRandAugment, KeepRandomErasing,
                   KeepTrivialAugment)
from .mix import GuidedMixup
from .mixers import AttentiveCutMix, CutMix, ManifoldMixup, Mixup, SaliencyMix, SnapMix
from .models import resnet_small
from .saliency import spectral_residual

DEFAULT_SIZES: Tuple[Tuple[int, int, int, int], ...] = ((256, 3, 32, 32), (64, 3, 224, 224))

#: how each group is fed and looped: input kind, images per loop call
GROUPS = {"policy": ("uint8", 1), "region": ("float", 1), "mixer": ("float", 2)}

# One op call: (images, targets, precomputed saliency maps) -> anything.
Call = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], object]


@dataclass(frozen=True)
class _Setting:
    """What an op builder may use: the image size, the device, a seeded generator, the model, K."""

    height: int
    width: int
    device: torch.device
    generator: torch.Generator
    model: Optional[torch.nn.Module]
    num_classes: int

    @property
    def cut_side(self) -> int:
        """Cut window side: H/2 (Cutout's 16 on CIFAR)."""
        return max(1, min(self.height, self.width) // 2)

    @property
    def paste_side(self) -> int:
        """Selective-paste window side: H/2 capped at 40 (KeepAugment: 16 on CIFAR, 40 on ImageNet)."""
        return min(self.cut_side, 40)

    @property
    def autoaugment_policy(self) -> str:
        return "cifar10" if max(self.height, self.width) <= 64 else "imagenet"


def _plain(op) -> Call:
    return lambda x, y, maps: op(x, y)


def _with_maps(op) -> Call:
    return lambda x, y, maps: op(x, y, saliency_maps=maps)


def _manifold(s: _Setting) -> Call:
    op = ManifoldMixup(s.model, s.num_classes, generator=s.generator)

    def call(x, y, maps):
        mixed, soft = op(x, y)
        with torch.no_grad():
            s.model(mixed)  # the armed hook mixes the chosen hidden layer here (and disarms itself)
        return soft

    return call


@dataclass(frozen=True)
class OpSpec:
    """A benchmarked op: its name, group (``"policy"``, ``"region"``, ``"mixer"``) and builder."""

    name: str
    group: str
    build: Callable[[_Setting], Call]
    needs_model: bool = False


OPS: Dict[str, OpSpec] = {spec.name: spec for spec in (
    OpSpec("AutoAugment", "policy",
           lambda s: _plain(pol.AutoAugment(s.autoaugment_policy, generator=s.generator))),
    OpSpec("RandAugment", "policy", lambda s: _plain(pol.RandAugment(generator=s.generator))),
    OpSpec("TrivialAugmentWide", "policy", lambda s: _plain(pol.TrivialAugmentWide(generator=s.generator))),
    OpSpec("AugMix", "policy", lambda s: _plain(pol.AugMix(generator=s.generator))),
    OpSpec("KeepAutoAugment", "policy", lambda s: _with_maps(
        KeepAutoAugment(s.paste_side, policy=s.autoaugment_policy, generator=s.generator))),
    OpSpec("KeepRandAugment", "policy", lambda s: _with_maps(KeepRandAugment(s.paste_side, generator=s.generator))),
    OpSpec("KeepTrivialAugment", "policy",
           lambda s: _with_maps(KeepTrivialAugment(s.paste_side, generator=s.generator))),
    OpSpec("KeepAugMix", "policy", lambda s: _with_maps(KeepAugMix(s.paste_side, generator=s.generator))),
    OpSpec("Cutout", "region", lambda s: _plain(Cutout(s.cut_side, generator=s.generator))),
    OpSpec("RandomErasing", "region", lambda s: _plain(RandomErasing(p=1.0, generator=s.generator))),
    # d from 3H/7 to H: the paper's [96, 224] at 224 px
    OpSpec("GridMask", "region", lambda s: _plain(
        GridMask((max(1, 3 * s.height // 7), s.height), p=1.0, generator=s.generator))),
    OpSpec("KeepCutout", "region", lambda s: _with_maps(KeepCutout(s.cut_side, generator=s.generator))),
    OpSpec("KeepRandomErasing", "region", lambda s: _with_maps(KeepRandomErasing(p=1.0, generator=s.generator))),
    OpSpec("Mixup", "mixer", lambda s: _plain(Mixup(s.num_classes, generator=s.generator))),
    OpSpec("CutMix", "mixer", lambda s: _plain(CutMix(s.num_classes, generator=s.generator))),
    OpSpec("SaliencyMix", "mixer", lambda s: _plain(SaliencyMix(s.num_classes, generator=s.generator))),
    OpSpec("GuidedMixup", "mixer",
           lambda s: _plain(GuidedMixup(s.num_classes, "spectral", mix_prob=1.0, generator=s.generator))),
    OpSpec("KeepCutMix", "mixer", lambda s: _with_maps(KeepCutMix(s.num_classes, generator=s.generator))),
    OpSpec("SnapMix", "mixer", lambda s: _plain(SnapMix(s.model, s.num_classes, generator=s.generator)), True),
    OpSpec("AttentiveCutMix", "mixer",
           lambda s: _plain(AttentiveCutMix(s.model, s.num_classes, generator=s.generator)), True),
    OpSpec("ManifoldMixup", "mixer", _manifold, True),
)}

NOTES = {
    "KeepAutoAugment": "precomputed spectral maps",
    "KeepRandAugment": "precomputed spectral maps",
    "KeepTrivialAugment": "precomputed spectral maps",
    "KeepAugMix": "precomputed spectral maps",
    "KeepCutout": "precomputed spectral maps",
    "KeepRandomErasing": "precomputed spectral maps",
    "KeepCutMix": "precomputed spectral maps",
    "SaliencyMix": "spectral saliency inside",
    "GuidedMixup": "GuidedMixup-SR, greedy, mix_prob 1",
    "SnapMix": "incl. resnet_small CAM pass",
    "AttentiveCutMix": "incl. resnet_small teacher pass",
    "ManifoldMixup": "incl. one resnet_small forward",
}


def _check_shape(size, name: str = "sizes") -> Tuple[int, int, int, int]:
    try:
        shape = tuple(size)
    except TypeError:
        raise TypeError(f"{name} must hold (B, C, H, W) tuples, got {size!r}") from None
    if len(shape) != 4 or any(isinstance(v, bool) or not isinstance(v, int) for v in shape):
        raise TypeError(f"{name} must hold (B, C, H, W) tuples of ints, got {size!r}")
    batch, channels, height, width = shape
    if batch < 2 or channels != 3 or height < 1 or width < 1:
        raise ValueError(f"{name} entries need B >= 2 (mixers pair images), C = 3 (the policies are RGB) "
                         f"and H, W >= 1, got {shape}")
    return shape


def _check_count(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _select(ops: Optional[Sequence[str]]) -> List[OpSpec]:
    if ops is None:
        return list(OPS.values())
    if isinstance(ops, str):
        raise TypeError("ops must be a sequence of op names, not a single string")
    unknown = [name for name in ops if name not in OPS]
    if unknown or not ops:
        raise ValueError(f"ops must name at least one of {', '.join(OPS)}; unknown: {unknown}")
    return [OPS[name] for name in dict.fromkeys(ops)]


def _loop(call: Call, x: torch.Tensor, y: torch.Tensor, maps: torch.Tensor, count: int, step: int) -> None:
    """The per-sample reference: the op on ``step`` images at a time (1, or 2 for mixers)."""
    for start in range(0, count, step):
        stop = start + step
        call(x[start:stop], y[start:stop], maps[start:stop])


def run(sizes: Sequence[Sequence[int]] = DEFAULT_SIZES, ops: Optional[Sequence[str]] = None,
        device: Optional[str] = None, repeats: int = 5, warmup: int = 2, loop_images: Optional[int] = 64,
        num_classes: int = 10, seed: int = 0,
        progress: Optional[Callable[[Dict[str, object]], None]] = None) -> List[Dict[str, object]]:
    """Measure batched and per-image-loop throughput of ``ops`` (default: all of :data:`OPS`) for each size.

    Args:
        sizes: batch shapes (B, 3, H, W), B ≥ 2.
        ops: names from :data:`OPS`, or None for all.
        device: ``"cpu"``, ``"cuda"``… (default: cuda if available).
        repeats, warmup: timed runs (median) and untimed runs before them.
        loop_images: images the loop reference runs on (the first ones; rounded down
            to even, at least 2, for mixers); None for the whole batch.
        num_classes: K of the random class-index targets.
        progress: called with each row as soon as it is measured.

    Returns one row per (size, op): ``{"op", "group", "size" (B, C, H, W), "batched_ips",
    "loop_ips", "speedup", "loop_images", "note"}`` with images per second as floats.
    """
    shapes = [_check_shape(size) for size in sizes]
    if not shapes:
        raise ValueError("sizes must hold at least one (B, C, H, W) shape")
    specs = _select(ops)
    repeats = _check_count(repeats, "repeats", 1)
    warmup = _check_count(warmup, "warmup", 0)
    if loop_images is not None:
        loop_images = _check_count(loop_images, "loop_images", 1)
    num_classes = _check_count(num_classes, "num_classes", 1)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = None
    if any(spec.needs_model for spec in specs):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = resnet_small(num_classes).to(dev).eval()
    rows: List[Dict[str, object]] = []
    for shape in shapes:
        batch, _, height, width = shape
        data_gen = torch.Generator(device=dev).manual_seed(seed)
        raw = torch.randint(0, 256, shape, generator=data_gen, device=dev, dtype=torch.uint8)
        normalised = (raw.float() / 255.0 - 0.5) / 0.25  # roughly zero mean, unit variance
        targets = torch.randint(0, num_classes, (batch,), generator=data_gen, device=dev)
        maps = spectral_residual(raw)  # the Keep ops' precomputed saliency, outside the timing
        for spec in specs:
            kind, step = GROUPS[spec.group]
            x = raw if kind == "uint8" else normalised
            setting = _Setting(height, width, dev, torch.Generator(device=dev).manual_seed(seed), model, num_classes)
            call = spec.build(setting)
            count = batch if loop_images is None else min(batch, loop_images)
            count = max(step, count - count % step)
            batched_s = measure(lambda: call(x, targets, maps), dev, repeats, warmup)
            loop_s = measure(lambda: _loop(call, x, targets, maps, count, step), dev, repeats, warmup)
            batched_ips = batch / batched_s
            loop_ips = count / loop_s
            row = {"op": spec.name, "group": spec.group, "size": shape, "batched_ips": batched_ips,
                   "loop_ips": loop_ips, "speedup": batched_ips / loop_ips, "loop_images": count,
                   "note": NOTES.get(spec.name, "")}
            rows.append(row)
            if progress is not None:
                progress(row)
    return rows


def _size_text(shape: Sequence[int]) -> str:
    return "×".join(str(v) for v in shape)


def format_table(rows: Sequence[Dict[str, object]], device: str) -> str:
    """The rows as a text table: op, group, size, batched img/s, loop img/s, speed-up, note."""
    header = ("op", "group", "size", "batched img/s", "loop img/s", "speed-up", "note")
    cells = [(str(r["op"]), str(r["group"]), _size_text(r["size"]), f"{r['batched_ips']:.1f}",
              f"{r['loop_ips']:.1f}", f"{r['speedup']:.1f}×", str(r["note"])) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]
    numeric = {3, 4, 5}

    def line(values):
        return "  ".join(v.rjust(w) if i in numeric else v.ljust(w)
                         for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    loop_counts = sorted({int(r["loop_images"]) for r in rows})
    lines = [f"device: {device}",
             "batched = op on the whole batch; loop = the same op on one image at a time "
             "(mixers: on disjoint 2-image batches), "
             f"over the first {', '.join(map(str, loop_counts)) or '-'} images; speed-up = batched / loop",
             "policies on uint8 images, region ops and mixers on float32 normalised images",
             line(header), line(["-" * w for w in widths])]
    lines += [line(c) for c in cells]
    return "\n".join(lines)


def _parse_size(text: str) -> Tuple[int, int, int, int]:
    parts = re.split(r"[x×,]", text.strip().lower())
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 256x3x32x32, got {text!r}") from None
    try:
        return _check_shape(shape, "size")
    except (TypeError, ValueError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def device_name(device: str) -> str:
    """A readable name of the device: the GPU's name, or the CPU with its thread count."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{dev.type} ({torch.get_num_threads()} threads)"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/policies.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=_parse_size, nargs="+", default=list(DEFAULT_SIZES),
                        metavar="BxCxHxW", help="batch shapes (default: 256x3x32x32 64x3x224x224)")
    parser.add_argument("--ops", nargs="+", choices=list(OPS), default=None, metavar="OP",
                        help=f"ops to measure (default: all): {', '.join(OPS)}")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1… (default: cuda if available)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported (5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing (2)")
    parser.add_argument("--loop-images", type=int, default=64,
                        help="images the per-image loop runs on, the first ones (64; 0 = the whole batch)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="print only the final table")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def report(row):
        print(f"  measured {row['op']} {_size_text(row['size'])}: {row['batched_ips']:.1f} vs "
              f"{row['loop_ips']:.1f} img/s", file=sys.stderr, flush=True)

    rows = run(args.sizes, args.ops, device, args.repeats, args.warmup, args.loop_images or None,
               seed=args.seed, progress=None if args.quiet else report)
    print(format_table(rows, device_name(device)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
