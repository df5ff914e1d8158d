"""Rerun the commands whose numbers the README quotes, and rewrite those README blocks.

    python tools/readme_numbers.py            # train the default recipe for seeds 0, 1, 2, rewrite README.md
    python tools/readme_numbers.py --reuse    # rewrite from the finished runs under runs/readme/ only
    python tools/readme_numbers.py --launches # rewrite only the operator-call table (deterministic, ~1 min)
    python tools/readme_numbers.py --boxes    # rewrite only the box-family table (deterministic, seconds)
    python tools/readme_numbers.py --policies # rewrite only the policies' batched-vs-loop table (~1 min, timed)

Each seed is `OMP_NUM_THREADS=2 keepmix train --set seed=S --set name=readme/default_seedS` (2 torch threads:
another count gives other numbers; all four arms of the default recipe: Cutout, KeepCutout, KeepCutout with
random maps, KeepCutout with the saliency memory). The block between the
``<!-- numbers:default -->`` markers is replaced by: seed 0's printed table (what `make train` prints),
every seed's top-1 per arm, mean ± standard deviation, and the paired differences with a 95 % t-interval
(seeds pair the arms: the same data order and initialisation). A README number the commands no longer
print is a bug: rerun this script after changing a default, a recipe or an op.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- numbers:default -->", "<!-- /numbers:default -->"
ARMS = ("cutout", "keep_cutout", "keep_cutout_random", "keep_cutout_memory")
#: torch threads of the training runs (the README says so: another count gives other last bits, other numbers)
THREADS = 2
PAIRS = (("keep_cutout", "cutout"), ("keep_cutout_random", "cutout"), ("keep_cutout", "keep_cutout_random"),
         ("keep_cutout_memory", "keep_cutout"))
#: two-sided 95 % quantiles of Student's t for 1…10 degrees of freedom
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def run_dir(seed: int) -> Path:
    return ROOT / "runs" / "readme" / f"default_seed{seed}"


def command(seed: int) -> str:
    return f"keepmix train --set seed={seed} --set name=readme/default_seed{seed}"


def train(seed: int) -> str:
    """Run one seed (replacing an earlier run of it); returns what the command printed."""
    folder = run_dir(seed)
    if folder.exists():
        import shutil
        shutil.rmtree(folder)
    args = [sys.executable, "-m", "keepmix", "train", "--set", f"seed={seed}", "--set",
            f"name=readme/default_seed{seed}", "--quiet"]
    # CPU results are bit-identical for a seed only at one thread count (float sums in another order)
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True, env=env)
    (folder / "printed.txt").write_text(done.stdout, encoding="utf-8")
    return done.stdout


def read_top1(seed: int) -> dict:
    with open(run_dir(seed) / "summary.csv", newline="", encoding="utf-8") as handle:
        return {row["arm"]: float(row["val_top1"]) for row in csv.DictReader(handle)}


def printed_table(seed: int) -> str:
    text = (run_dir(seed) / "printed.txt").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines[:2 + len(ARMS)])


def interval(values):
    """mean, standard deviation and the half-width of the 95 % t-interval of the mean."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    sd = statistics.stdev(values)
    return mean, sd, T975.get(len(values) - 1, 1.96) * sd / math.sqrt(len(values))


def render(seeds) -> str:
    results = {seed: read_top1(seed) for seed in seeds}
    out = [BEGIN, "", "`make train` (seed 0) prints (the time column depends on the machine):", "", "```",
           printed_table(seeds[0]), "```", "",
           f"Top-1 % on the 1 000 test images over {len(seeds)} seeds (the arms of a seed share data order and "
           "initialisation):", "",
           "| seed | " + " | ".join(ARMS) + " | command |", "|---|" + "---|" * (len(ARMS) + 1)]
    for seed in seeds:
        cells = " | ".join(f"{results[seed][a]:.2f}" for a in ARMS)
        out.append(f"| {seed} | {cells} | `{command(seed)}` |")
    stats = [interval([results[s][a] for s in seeds]) for a in ARMS]
    out.append("| mean ± sd | " + " | ".join(f"{m:.2f} ± {sd:.2f}" for m, sd, _ in stats) + " | |")
    out += ["", "Paired differences (percentage points; mean, standard deviation, 95 % t-interval over seeds):", ""]
    for a, b in PAIRS:
        mean, sd, half = interval([results[s][a] - results[s][b] for s in seeds])
        out.append(f"- {a} − {b}: {mean:+.2f} ± {sd:.2f} (95 % CI {mean - half:+.2f} … {mean + half:+.2f})")
    wins = {pair: sum(results[s][pair[0]] > results[s][pair[1]] for s in seeds) for pair in PAIRS}
    keep_ci = interval([results[s]["keep_cutout"] - results[s]["cutout"] for s in seeds])
    null_mean = interval([results[s]["keep_cutout_random"] - results[s]["cutout"] for s in seeds])[0]
    verdict = ("holds: the interval excludes 0" if keep_ci[0] - keep_ci[2] > 0 else
               "inconclusive at 95 %: the interval includes 0")
    out += ["", f"Reading: KeepCutout beat Cutout on {wins[PAIRS[0]]} of {len(seeds)} seeds and its null control on "
                f"{wins[PAIRS[2]]} of {len(seeds)}; the null control beat Cutout on {wins[PAIRS[1]]} of {len(seeds)} "
                f"(mean {null_mean:+.2f} points). The claim that KeepCutout beats Cutout here: {verdict}. "
                f"KeepCutout reading the saliency memory beat fresh-saliency KeepCutout on {wins[PAIRS[3]]} of "
                f"{len(seeds)} seeds.",
            "", "Written by `python tools/readme_numbers.py` from the runs it made.", "", END]
    return "\n".join(out)


LAUNCH_BEGIN, LAUNCH_END = "<!-- numbers:launches -->", "<!-- /numbers:launches -->"
LAUNCH_BATCHES = (16, 64, 256)


def render_launches() -> str:
    """Operator calls per op call at B = 16/64/256 (32 px) and 64 at 224 px, host reads with checks on
    and off, graph breaks under fullgraph tracing — all deterministic — from keepmix.launches."""
    sys.path.insert(0, str(ROOT / "src"))
    import torch
    from keepmix.launches import CASES, format_table, table
    torch.set_num_threads(1)
    rows = table(list(CASES), batches=LAUNCH_BATCHES, repeats=1)
    lines = [LAUNCH_BEGIN, "", f"torch {torch.__version__}, CPU; `python benchmarks/launches.py` prints it with "
             "wall times (written here without them: they depend on the machine).", ""]
    head = ["op", *(f"calls B={b}" for b in LAUNCH_BATCHES), "calls 224 px", "budget", "host reads on/off",
            "graph breaks"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["op"], *(str(r[f"calls@{b}"]) for b in LAUNCH_BATCHES),
                                        str(r["calls@224"]), str(r["budget"]),
                                        f"{r[f'syncs@{LAUNCH_BATCHES[0]}']}/{r['syncs_off']}",
                                        str(r["breaks"])]) + " |")
    lines += ["", "Budgets above the issue's, and why:", ""]
    lines += [f"- {name}: {case.note}" for name, case in CASES.items() if case.note]
    lines += ["", "Written by `python tools/readme_numbers.py --launches`.", "", LAUNCH_END]
    return "\n".join(lines)


BOX_BEGIN, BOX_END = "<!-- numbers:boxes -->", "<!-- /numbers:boxes -->"


def box_family_rows(n: int = 20000, side: int = 32, seed: int = 0):
    """Mean erased share of a side×side image (%) on information-free maps, for Cutout, the old
    clipped-box rule (clipped boxes scored by their raw sum: a border box scores low because it is
    small), KeepCutout(clip=True) now, and the full-window family. Deterministic (seeded)."""
    sys.path.insert(0, str(ROOT / "src"))
    import torch
    from keepmix import Cutout, KeepCutout
    from keepmix.regions import box_masks, centred_window_scores, quantile_threshold, sample_windows

    def erased(out, x):
        return 100.0 * float((out != x).any(dim=1).float().mean())

    def old_rule(maps, length, g):  # the rule before the fix, rebuilt from its definition
        scores = centred_window_scores(maps, length)
        picked = sample_windows(scores, quantile_threshold(scores, 0.6), True, g)
        mask = box_masks(picked.top - length // 2, picked.left - length // 2, length, length, maps.shape[-2:])
        return 100.0 * float(mask.float().mean())

    x = torch.full((n, 1, side, side), 0.5)
    maps = {"constant": torch.ones(n, side, side),
            "i.i.d. noise": torch.rand(n, side, side, generator=torch.Generator().manual_seed(seed))}
    rows = []
    for name, m in maps.items():
        g = lambda k: torch.Generator().manual_seed(seed + k)  # noqa: E731
        rows.append((name, erased(Cutout(20, generator=g(1))(x)[0], x), old_rule(m, 20, g(2)),
                     erased(KeepCutout(20, clip=True, generator=g(3))(x, None, saliency_maps=m)[0], x),
                     erased(Cutout(16, generator=g(4))(x)[0], x),
                     erased(Cutout(16, inside=True, generator=g(5))(x)[0], x),
                     erased(KeepCutout(16, generator=g(6))(x, None, saliency_maps=m)[0], x)))
    return rows


def render_boxes() -> str:
    rows = box_family_rows()
    lines = [BOX_BEGIN, "", "Mean share of a 32×32 image erased (%), 20 000 images, on maps with no information:", "",
             "| map | Cutout 20 | old KeepCutout rule, clipped 20 | KeepCutout(clip=True) 20 | Cutout 16 | "
             "Cutout(inside=True) 16 | KeepCutout 16 (full windows) |", "|---|---|---|---|---|---|---|"]
    for name, *values in rows:
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    lines += ["", "Written by `python tools/readme_numbers.py --boxes` (the old rule rebuilt from its definition: "
              "clipped boxes scored by their raw sum).", "", BOX_END]
    return "\n".join(lines)


def rewrite(readme: Path, block: str, begin: str = BEGIN, end: str = END) -> None:
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{readme}: no {begin} … {end} block to rewrite")
    readme.write_text(pattern.sub(lambda _: block, text), encoding="utf-8")


POLICY_BEGIN, POLICY_END = "<!-- numbers:policies -->", "<!-- /numbers:policies -->"
POLICY_OPS = ("AutoAugment", "RandAugment", "TrivialAugmentWide", "AugMix",
              "KeepAutoAugment", "KeepRandAugment", "KeepTrivialAugment", "KeepAugMix")
#: the speed issue's targets: batched / per-image loop of the same op, by image side
POLICY_TARGETS = {32: 4.0, 224: 1.0}


def render_policies() -> str:
    """Batched vs per-image-loop throughput of the policies (CPU, one thread, both sizes), from
    keepmix.benchmark_policies, with the verdict of each row against the speed targets."""
    sys.path.insert(0, str(ROOT / "src"))
    import torch
    from keepmix.benchmark_policies import device_name, format_table, run
    torch.set_num_threads(1)
    rows = run(sizes=[(256, 3, 32, 32), (64, 3, 224, 224)], ops=POLICY_OPS, device="cpu")
    missed = [f"{r['op']} at {r['size'][2]} px ({r['speedup']:.1f}×)" for r in rows
              if r["speedup"] < POLICY_TARGETS[r["size"][2]]]
    verdict = ("every row meets its target" if not missed else "missed: " + ", ".join(missed))
    command = "python benchmarks/policies.py --ops " + " ".join(POLICY_OPS) + " --threads 1"
    lines = [POLICY_BEGIN, f"`{command}` printed (torch {torch.__version__}):", "", "```",
             format_table(rows, device_name("cpu")), "```", "",
             f"Targets: batched ≥ 4× the loop at 32 px, ≥ 1× at 224 px — {verdict}. "
             "Written by `python tools/readme_numbers.py --policies`.", "", POLICY_END]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--reuse", action="store_true", help="do not train; use the finished runs")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--launches", action="store_true", help="rewrite only the operator-call table")
    parser.add_argument("--boxes", action="store_true", help="rewrite only the box-family table (seconds)")
    parser.add_argument("--policies", action="store_true",
                        help="rewrite only the policies' batched-vs-loop table (about a minute; time it alone)")
    args = parser.parse_args(argv)
    if args.policies:
        block = render_policies()
        rewrite(args.readme, block, POLICY_BEGIN, POLICY_END)
        print(block)
        return 0
    if args.boxes:
        block = render_boxes()
        rewrite(args.readme, block, BOX_BEGIN, BOX_END)
        print(block)
        return 0
    if args.launches:
        block = render_launches()
        rewrite(args.readme, block, LAUNCH_BEGIN, LAUNCH_END)
        print(block)
        return 0
    if not args.reuse:
        for seed in args.seeds:
            print(f"training seed {seed}: {command(seed)}", flush=True)
            train(seed)
    block = render(args.seeds)
    rewrite(args.readme, block)
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
