"""Launch counts: how many top-level operator calls, host syncs and graph breaks each op costs per call.

On a GPU every top-level ``aten::`` call is at least one kernel launch (5–10 µs each), and a
host sync stalls the pipeline, so these counts — not CPU seconds — decide an op's overhead
where users train. They are deterministic, so the test suite pins them
(``tests/test_launches.py``): no count may grow with the batch size, and each stays within
its budget.

* :func:`count_calls` — top-level operator calls (events with no parent in
  ``torch.profiler``: ``aten::`` ops, and custom operators such as ``keepmix::greedy_order``
  counted once) and host reads (``aten::_local_scalar_dense``: ``.item()``, ``bool()``,
  ``int()`` of a tensor; and ``.tolist()``) of one call. The greedy pairing's NumPy pass on
  the CPU is not counted: it reads host memory, and on an accelerator it runs on the device.
* :func:`graph_breaks` — the graph breaks ``torch._dynamo.explain`` finds (input checks off).
* :data:`CASES` — every op of the registry on a standard batch, with its budget.

Run ``python benchmarks/launches.py`` for the table (``--help`` for options).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

SYNC_EVENTS = ("aten::_local_scalar_dense",)


@dataclass
class CallCount:
    """Top-level operator calls and host syncs of one call, with the calls by name."""
    calls: int
    syncs: int
    names: Counter


def count_calls(fn: Callable[[], object], warmup: int = 1) -> CallCount:
    """Profile one call of ``fn`` (after ``warmup`` calls) and count its top-level operators and syncs."""
    from torch.profiler import ProfilerActivity, profile
    for _ in range(warmup):
        fn()
    reads = [0]
    tolist = torch.Tensor.tolist

    def counted_tolist(self):  # .tolist() reads the values back without an aten scalar read
        reads[0] += 1
        return tolist(self)

    torch.Tensor.tolist = counted_tolist
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
    finally:
        torch.Tensor.tolist = tolist
    events = prof.events()
    top = [e for e in events if e.cpu_parent is None and "::" in e.name]
    syncs = sum(1 for e in events if e.name in SYNC_EVENTS) + reads[0]
    return CallCount(len(top), syncs, Counter(e.name for e in top))


def graph_breaks(fn: Callable[[], object]) -> int:
    """Graph breaks of ``fn`` under ``torch._dynamo.explain`` (call it with input checks off)."""
    import torch._dynamo
    torch._dynamo.reset()
    return int(torch._dynamo.explain(fn)().graph_break_count)


class _TinyNet(nn.Module):
    """A small classifier with the keepmix model interface (features, classifier, first_block, hidden_blocks)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.stages = nn.ModuleList([nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(16, num_classes)

    @property
    def first_block(self) -> nn.Module:
        return self.stem

    def hidden_blocks(self):
        return [self.stem, *self.stages]

    def features(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@dataclass
class Case:
    """One row: how to build the op, how it is called, its budget (calls per call) and a note."""
    build: Callable[[Dict[str, object]], object]
    budget: int
    maps: bool = False            # called with saliency_maps= (the "given maps" rows)
    raw: bool = False             # a raw-space op: called on uint8 images
    note: str = ""


_POLICY = ("fused engine (engine='fused', what runs on accelerators and under torch.compile): every step runs the "
           "three op families on every image (one affine resampling, one 256-level table per image and channel, "
           "one blend), ~210 calls per step whatever the images drew, plus the plan (~50); the issue's 150 per "
           "policy would leave under 75 per step for the 2-step policies. Budget: 220 per step + 60. On the CPU "
           "engine='auto' dispatches per op type instead (less work; its count follows the op types drawn and "
           "it reads their counts once per step)")


def _policies():
    from . import policies
    return policies


_PER_IMAGE = ("per-image box sizes: each image's own 0/1 bands for the window sums (~10 calls), a validity mask "
              "and a masked quantile (a sort) where one size slices")
_TARGETS = "class-index targets: one-hot with the range check folded in, then lerp (~9 calls of the total)"

#: every op on a standard batch; ``budget`` is the issue's (Cutout 20, Mixup 25, CutMix/SaliencyMix 40,
#: Keep ops 50, GuidedMixup-SR 80, policies 150) unless a ``note`` says why it is higher
CASES: Dict[str, Case] = {
    "Cutout": Case(lambda c: _ops().Cutout(16, generator=c["g"]), 20),
    "RandomErasing": Case(lambda c: _ops().RandomErasing(generator=c["g"]), 75,
                          note="10 bounded (area, aspect) attempts per image and per-image rectangle sizes"),
    "GridMask": Case(lambda c: _ops().GridMask((8, 16), generator=c["g"]), 70,
                     note="a rotated lattice per image (period, band, offsets, angle)"),
    "Mixup": Case(lambda c: _ops().Mixup(10, generator=c["g"]), 25),
    "CutMix": Case(lambda c: _ops().CutMix(10, generator=c["g"]), 60, note=_TARGETS),
    "SaliencyMix (maps given)": Case(lambda c: _ops().SaliencyMix(10, saliency=None, generator=c["g"]), 65,
                                     maps=True, note=_TARGETS + "; the source's peak by argmax"),
    "KeepCutout (maps given)": Case(lambda c: _ops().KeepCutout(16, generator=c["g"]), 50, maps=True),
    "KeepCutout clip (maps given)": Case(lambda c: _ops().KeepCutout(16, clip=True, generator=c["g"]), 90,
                                         maps=True, note="the candidates of the Cutout-drawn shape: a validity "
                                         "mask and a masked quantile (a sort) on top of KeepCutout's path"),
    "KeepRandomErasing (maps given)": Case(lambda c: _ops().KeepRandomErasing(generator=c["g"]), 145, maps=True,
                                           note="RandomErasing's own draws (71, see its row); " + _PER_IMAGE),
    "KeepCutMix (maps given)": Case(lambda c: _ops().KeepCutMix(10, generator=c["g"]), 145, maps=True,
                                    note="CutMix's draws and targets (see its row); " + _PER_IMAGE),
    "GuidedMixup-SR (greedy)": Case(lambda c: _ops().GuidedMixup(10, mix_prob=1.0, generator=c["g"]), 80),
    "GuidedMixup (maps given)": Case(lambda c: _ops().GuidedMixup(10, saliency=None, mix_prob=1.0,
                                                                  generator=c["g"]), 80, maps=True),
    "AutoAugment": Case(lambda c: _policies().AutoAugment(generator=c["g"], engine="fused"), 2 * 220 + 60,
                        raw=True, note=_POLICY),
    "RandAugment": Case(lambda c: _policies().RandAugment(generator=c["g"], engine="fused"), 2 * 220 + 60,
                        raw=True, note="as AutoAugment (2 steps)"),
    "TrivialAugmentWide": Case(lambda c: _policies().TrivialAugmentWide(generator=c["g"], engine="fused"),
                               220 + 60, raw=True, note="as AutoAugment (1 step)"),
    "AugMix": Case(lambda c: _policies().AugMix(generator=c["g"], engine="fused"), 3 * 220 + 60, raw=True,
                   note="as AutoAugment; its 3 chains run side by side as one batch, 3 steps deep"),
}


def _ops():
    import keepmix
    return keepmix


def make_call(name: str, batch: int, size: int = 32, seed: int = 0, device="cpu") -> Callable[[], object]:
    """A closure calling the case's op once on a fixed batch (a fresh generator per closure)."""
    case = CASES[name]
    g = torch.Generator(device=device).manual_seed(seed)
    op = case.build({"g": g, "model": _TinyNet().to(device)})
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    if case.raw:
        images = torch.randint(0, 256, (batch, 3, size, size), generator=gen, device=device, dtype=torch.uint8)
    else:
        images = torch.randn(batch, 3, size, size, generator=gen, device=device)
    targets = torch.randint(0, 10, (batch,), generator=gen, device=device)
    maps = torch.rand(batch, size, size, generator=gen, device=device) if case.maps else None
    if maps is not None:
        return lambda: op(images, targets, saliency_maps=maps)
    return lambda: op(images, targets)


def measure_ms(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def table(names: Sequence[str], batches: Sequence[int] = (16, 64, 256), large: Optional[int] = 64,
          breaks: bool = True, repeats: int = 5) -> List[Dict[str, object]]:
    """Rows of calls/syncs per batch size (32 px, and ``large`` images at 224 px), graph breaks, wall ms."""
    from ._checks import input_checks
    rows = []
    for name in names:
        row: Dict[str, object] = {"op": name, "budget": CASES[name].budget}
        for batch in batches:
            count = count_calls(make_call(name, batch))
            row[f"calls@{batch}"], row[f"syncs@{batch}"] = count.calls, count.syncs
            row[f"ms@{batch}"] = measure_ms(make_call(name, batch), repeats)
        if large:
            count = count_calls(make_call(name, large, size=224))
            row["calls@224"], row["ms@224"] = count.calls, measure_ms(make_call(name, large, size=224), repeats)
        with input_checks(False):
            row["syncs_off"] = count_calls(make_call(name, batches[0])).syncs
            row["breaks"] = graph_breaks(make_call(name, batches[0])) if breaks else None
        rows.append(row)
    return rows


def format_table(rows: List[Dict[str, object]], batches: Sequence[int] = (16, 64, 256)) -> str:
    """A Markdown table of :func:`table` rows, then the notes on budgets above the issue's."""
    head = ["op", *(f"calls B={b}" for b in batches), "calls 224px", "budget", "syncs (checks on/off)",
            "graph breaks", *(f"ms B={b}" for b in batches), "ms 224px"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        flat = len({r[f"calls@{b}"] for b in batches}) == 1
        cells = [r["op"], *(str(r[f"calls@{b}"]) for b in batches), str(r.get("calls@224", "-")),
                 f"{r['budget']}{'' if flat and r[f'calls@{batches[-1]}'] <= r['budget'] else ' (over)'}",
                 f"{r[f'syncs@{batches[0]}']}/{r['syncs_off']}", str(r["breaks"]),
                 *(f"{r[f'ms@{b}']:.2f}" for b in batches), f"{r.get('ms@224', float('nan')):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {r['op']}: {CASES[r['op']].note}" for r in rows if CASES[r["op"]].note]
    return "\n".join(lines + ([""] + notes if notes else []))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Top-level operator calls, host syncs and graph breaks per op")
    parser.add_argument("--ops", nargs="*", default=list(CASES), help="rows to measure (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-breaks", action="store_true", help="skip torch._dynamo.explain (slow)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = table(args.ops, breaks=not args.no_breaks, repeats=args.repeats)
    print(f"torch {torch.__version__}, CPU, {args.threads} thread(s); calls = top-level operator calls per op call")
    print(format_table(rows))
    return 0
