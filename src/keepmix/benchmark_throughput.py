"""Input-pipeline throughput: the streaming path (DataLoader workers) against the in-memory path, on JPEGs.

The benchmark writes its own ImageFolder of JPEGs (``--images`` images of ``--size`` px, 10 classes,
smooth random content at JPEG quality 90) and measures, in one process:

* **loader only** — images/s delivered by each path, batches finished on ``--device`` (normalised
  float32, as the training step receives them), after ``--warmup`` batches (worker start-up excluded):

  - stream: :class:`keepmix.data.StreamLoader`, ``--workers`` worker processes decoding the JPEGs with
    Pillow and taking random-resized crops at ``--crop`` px with flips (what ``data.loader: stream``
    does);
  - in memory: :class:`keepmix.data.DeviceLoader` over the set decoded once at ``--crop`` px (the
    decode time is reported separately), pad-and-crop (``--crop``/14 px) and flip on the device;

* **in a training loop** — ``--steps`` SGD steps of ``--model`` (forward, cross-entropy, backward)
  fed by each path: the median step time and the *input share*, the part of the step spent waiting
  for the next batch (``next(loader)`` until the batch is on the device), with a device
  synchronisation around each timing on CUDA.

Run: ``python benchmarks/throughput.py`` (defaults: 2 000 images at 256 px, crops at 224, batch 64,
2 workers, ResNet-18); ``--folder DIR`` keeps (or reuses) the generated images.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["write_jpeg_folder", "run", "format_table", "main"]

NUM_CLASSES = 10
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def write_jpeg_folder(root: Path, images: int, size: int, seed: int = 0) -> Path:
    """``root/train/class_k/*.jpg``: ``images`` JPEGs of ``size`` × ``size`` px (skipped when already complete)."""
    from PIL import Image
    root = Path(root)
    marker = root / f".complete-{images}-{size}-{seed}"
    if marker.exists():
        return root
    rng = np.random.default_rng(seed)
    for k in range(images):
        folder = root / "train" / f"class_{k % NUM_CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (size // 16 + 2, size // 16 + 2, 3)).astype(np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
        image.save(folder / f"{k:05d}.jpg", quality=90)
    marker.touch()
    return root


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cycle(loader) -> Iterator:
    """Batches of ``loader`` without end (a new epoch when one runs out)."""
    while True:
        produced = False
        for batch in loader:
            produced = True
            yield batch
        if not produced:
            raise ValueError("the loader yields no batch: fewer images than one batch")


def _loader_rate(loader, device: torch.device, batches: int, warmup: int) -> float:
    """Images per second the loader delivers, ``batches`` timed after ``warmup``."""
    stream = _cycle(loader)
    for _ in range(warmup):
        next(stream)
    _sync(device)
    start = time.perf_counter()
    count = 0
    for _ in range(batches):
        images, _ = next(stream)
        count += images.shape[0]
    _sync(device)
    return count / (time.perf_counter() - start)


def _training_share(loader, model: torch.nn.Module, device: torch.device, steps: int, warmup: int
                    ) -> Dict[str, float]:
    """Median step time and the share of the steps' time spent waiting for input."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    stream = _cycle(loader)
    waits, totals = [], []
    for index in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        images, labels = next(stream)
        _sync(device)
        got = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        _sync(device)
        end = time.perf_counter()
        if index >= warmup:
            waits.append(got - start)
            totals.append(end - start)
    return {"step_s": statistics.median(totals), "wait_s": statistics.median(waits),
            "input_share": sum(waits) / sum(totals)}


def run(folder: Path, *, images: int = 2000, size: int = 256, crop: int = 224, batch_size: int = 64,
        workers: int = 2, batches: int = 20, warmup: int = 3, steps: int = 10, model: Optional[str] = "resnet18",
        device: str = "cpu", seed: int = 0) -> Dict[str, Dict[str, float]]:
    """Measure both paths on the ImageFolder in ``folder`` (written there first); see the module docstring."""
    from .data import (DeviceLoader, SampleTransform, StreamDataset, StreamLoader, image_folder)
    dev = torch.device(device)
    write_jpeg_folder(folder, images, size, seed)
    files = image_folder(folder, "train")
    results: Dict[str, Dict[str, float]] = {}

    stream = StreamLoader(StreamDataset(files, SampleTransform("resized", crop)), batch_size, device=dev, seed=seed,
                          num_workers=workers, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    results["stream"] = {"images_per_s": _loader_rate(stream, dev, batches, warmup)}

    start = time.perf_counter()
    decoded, labels = image_folder(folder, "train", image_size=crop).to_tensors()
    decode_s = time.perf_counter() - start
    memory = DeviceLoader(decoded, labels, batch_size=batch_size, drop_last=True,
                          generator=torch.Generator().manual_seed(seed), device=dev, mean=IMAGENET_MEAN,
                          std=IMAGENET_STD, crop_padding=max(1, crop // 14), flip=True)
    results["memory"] = {"images_per_s": _loader_rate(memory, dev, batches, warmup), "decode_s": decode_s,
                         "decode_images_per_s": len(files) / decode_s}

    if model:
        from .models import build_model
        for name, loader in (("stream", stream), ("memory", memory)):
            torch.manual_seed(seed)
            net = build_model(model, NUM_CLASSES).to(dev)
            results[name].update(_training_share(loader, net, dev, steps, min(warmup, 2)))
    results["setup"] = {"images": float(len(files)), "size": float(size), "crop": float(crop),
                        "batch_size": float(batch_size), "workers": float(workers)}
    return results


def format_table(results: Dict[str, Dict[str, float]], device: str, model: Optional[str]) -> str:
    setup = results["setup"]
    lines = [f"device: {device}; {int(setup['images'])} JPEGs of {int(setup['size'])} px, "
             f"crops of {int(setup['crop'])} px, batch {int(setup['batch_size'])}"
             + (f"; training step: {model}" if model else ""),
             "| path | images/s (loader only) | step (s) | input wait (s/step) | input share of the step |",
             "|---|---|---|---|---|"]
    names = {"stream": f"stream ({int(setup['workers'])} workers, random-resized crops)",
             "memory": "in memory (DeviceLoader, pad-crop + flip on the device)"}
    for key in ("stream", "memory"):
        row = results[key]
        step = f"{row['step_s']:.3f}" if "step_s" in row else "-"
        wait = f"{row['wait_s']:.4f}" if "wait_s" in row else "-"
        share = f"{100 * row['input_share']:.1f} %" if "input_share" in row else "-"
        lines.append(f"| {names[key]} | {row['images_per_s']:.1f} | {step} | {wait} | {share} |")
    memory = results["memory"]
    lines.append(f"in-memory path: decoding the set once took {memory['decode_s']:.1f} s "
                 f"({memory['decode_images_per_s']:.1f} images/s, one process)")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/throughput.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="JPEGs to write (default 2000)")
    parser.add_argument("--size", type=int, default=256, help="their side in px (default 256)")
    parser.add_argument("--crop", type=int, default=224, help="training crop in px (default 224)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="stream worker processes (default 2)")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per loader")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first (worker start-up)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per path")
    parser.add_argument("--model", default="resnet18", help="model of the training loop ('none': loaders only)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads of the main process")
    parser.add_argument("--folder", default=None, help="keep (or reuse) the generated images here")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"device {args.device}: not measured (no CUDA device here)")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    model = None if args.model.lower() == "none" else args.model
    folder = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="keepmix-throughput-"))
    try:
        results = run(folder, images=args.images, size=args.size, crop=args.crop, batch_size=args.batch_size,
                      workers=args.workers, batches=args.batches, warmup=args.warmup, steps=args.steps, model=model,
                      device=args.device)
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else \
        f"cpu ({cpus} CPUs, {torch.get_num_threads()} torch threads)"
    print(format_table(results, name, model))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
