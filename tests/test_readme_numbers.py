"""The README's default-run numbers: written by tools/readme_numbers.py, consistent with themselves and
with the default recipe (a hand edit of one number, or a recipe whose arms changed, fails here)."""

from __future__ import annotations

import csv
import importlib.util
import re
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("readme_numbers", ROOT / "tools" / "readme_numbers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _block():
    tool = _tool()
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(re.escape(tool.BEGIN) + "(.*?)" + re.escape(tool.END), text, re.S)
    assert match, "README.md has no numbers block"
    return tool, match.group(1)


def test_readme_block_arms_are_the_default_recipes():
    from keepmix.recipes import expand_arms, load_recipe
    tool, block = _block()
    assert [name for name, _ in expand_arms(load_recipe("default"))] == list(tool.ARMS)
    assert "| seed | " + " | ".join(tool.ARMS) + " | command |" in block, \
        "the README's default-run numbers predate the recipe's arms: rerun python tools/readme_numbers.py"


def test_the_runs_are_made_at_the_thread_count_the_readme_names(tmp_path, monkeypatch):
    """CPU training is bit-identical for a seed only at one torch thread count (seen: 1 and 2 threads differ
    from the first epoch of the default recipe), so the tool pins it and the README says which."""
    tool = _tool()
    seen = {}

    def fake_run(args, **kwargs):
        seen.update(kwargs)
        (tmp_path / "s0").mkdir(exist_ok=True)
        return type("Done", (), {"stdout": "printed\n"})()

    monkeypatch.setattr(tool, "run_dir", lambda seed: tmp_path / f"s{seed}")
    monkeypatch.setattr(tool.subprocess, "run", fake_run)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert tool.train(0) == "printed\n"
    assert seen["env"]["OMP_NUM_THREADS"] == str(tool.THREADS)
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    before = text.split(tool.BEGIN)[0]
    assert f"made with {tool.THREADS} torch threads" in before
    assert f"OMP_NUM_THREADS={tool.THREADS} keepmix train" in before


def test_readme_numbers_agree_with_their_own_rows():
    tool, block = _block()
    cells = r" \| ".join([r"([\d.]+)"] * len(tool.ARMS))
    rows = re.findall(rf"^\| (\d+) \| {cells} \| `(.*?)` \|$", block, re.M)
    assert len(rows) >= 3, "at least three seeds"
    seeds = [int(r[0]) for r in rows]
    values = {arm: [float(r[1 + k]) for r in rows] for k, arm in enumerate(tool.ARMS)}
    for (seed, *_, cmd) in rows:
        assert cmd == tool.command(int(seed))
    summary = re.search(r"^\| mean ± sd \| (.*) \| \|$", block, re.M).group(1).split(" | ")
    for arm, cell in zip(tool.ARMS, summary):
        mean, sd = (float(v) for v in cell.split(" ± "))
        assert abs(mean - statistics.fmean(values[arm])) < 0.006
        assert abs(sd - statistics.stdev(values[arm])) < 0.006
    for a, b in tool.PAIRS:
        line = re.search(rf"^- {a} − {b}: ([+-][\d.]+) ± ([\d.]+) \(95 % CI ([+-][\d.]+) … ([+-][\d.]+)\)$",
                         block, re.M)
        assert line, (a, b)
        diffs = [x - y for x, y in zip(values[a], values[b])]
        mean, sd, half = tool.interval(diffs)
        assert abs(float(line.group(1)) - mean) < 0.006 and abs(float(line.group(2)) - sd) < 0.006
        assert abs(float(line.group(3)) - (mean - half)) < 0.006
    # seed 0's printed table carries the same top-1 values as its row
    printed = block.split("```")[1]
    for arm in tool.ARMS:
        cell = re.search(rf"^{arm}\s+([\d.]+)", printed, re.M)
        assert cell and float(cell.group(1)) == values[arm][seeds.index(0)]


def test_render_from_runs(tmp_path, monkeypatch):
    """The tool's rendering on runs it did not make: per-seed rows, mean ± sd, paired t-intervals."""
    tool = _tool()
    monkeypatch.setattr(tool, "run_dir", lambda seed: tmp_path / f"s{seed}")
    top1 = {0: (80.0, 90.0, 79.0, 91.0), 1: (82.0, 94.0, 81.0, 93.0), 2: (84.0, 92.0, 80.0, 92.0)}
    for seed, values in top1.items():
        folder = tmp_path / f"s{seed}"
        folder.mkdir()
        with open(folder / "summary.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["arm", "val_top1"])
            for arm, v in zip(tool.ARMS, values):
                writer.writerow([arm, v])
        (folder / "printed.txt").write_text("arm top-1\n----\n" + "\n".join(
            f"{arm} {v:.2f}" for arm, v in zip(tool.ARMS, values)) + "\n\nmore\n")
    block = tool.render([0, 1, 2])
    assert "| 1 | 82.00 | 94.00 | 81.00 | 93.00 |" in block
    assert "| mean ± sd | 82.00 ± 2.00 | 92.00 ± 2.00 | 80.00 ± 1.00 | 92.00 ± 1.00 | |" in block
    assert "- keep_cutout_memory − keep_cutout: +0.00 ± 1.00" in block
    # keep − cutout: 10, 12, 8 → mean 10, sd 2, half-width 4.303·2/√3 = 4.97
    assert "- keep_cutout − cutout: +10.00 ± 2.00 (95 % CI +5.03 … +14.97)" in block
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{tool.BEGIN}\nSTALE\n{tool.END}\noutro\n")
    tool.rewrite(readme, block)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("\noutro\n") and "STALE" not in text
    with pytest.raises(SystemExit, match="no"):
        tool.rewrite(tmp_path / "s0" / "printed.txt", block)


@pytest.mark.slow
def test_readme_box_family_table_is_what_the_tool_computes_now():
    """The README's box-family numbers are deterministic: recompute them and compare the block."""
    tool = _tool()
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(re.escape(tool.BOX_BEGIN) + ".*?" + re.escape(tool.BOX_END), text, re.S)
    assert match, "README.md has no box-family block"
    assert match.group(0) == tool.render_boxes(), "rerun: python tools/readme_numbers.py --boxes"
    rows = {name: values for name, *values in tool.box_family_rows()}
    for values in rows.values():                    # the claims the README makes from it
        cutout, old, new = values[:3]
        assert abs(new - cutout) < 0.5 and cutout - old > 4.0     # fair now; the old rule erased less
        assert abs(values[4] - values[5]) < 0.5                   # full windows vs whole-box Cutout


def _overhead_rows(text):
    """{row name: (B=16, B=32, B=64)} of the verbatim `benchmarks/overhead.py` output under ## Overhead."""
    section = text[text.index("## Overhead"):]
    block = section[section.index("```\n") + 4:]
    block = block[:block.index("```")]
    rows = {}
    for line in block.splitlines():
        match = re.match(r"^(.*?)\s{2,}([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)", line)
        if match:
            rows[match.group(1).strip()] = match.groups()[1:]
    return rows


def test_the_memory_evidence_table_copies_the_overhead_run_it_names():
    """The saliency-memory evidence quotes rows of the Overhead run: every copied number and the summary
    sentence must be that run's (a rerun of the benchmark that updates one and not the other fails)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = _overhead_rows(text)
    evidence = text[text.index("## Saliency memory: evidence"):text.index("**Fidelity** — ")]
    copied = re.findall(r"^\| ([^|]+?) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|", evidence, re.M)
    assert len(copied) >= 6
    for name, *values in copied:
        assert rows[name] == tuple(values), name
    keep = rows["KeepCutout, saliency memory (read + write), end to end"][2]
    guided = rows["GuidedMixup-AP (greedy), saliency memory (read + write), end to end"][2]
    assert f"within the 0.05 target ({keep} and {guided})" in evidence
    assert float(keep) <= 0.05 and float(guided) <= 0.05
