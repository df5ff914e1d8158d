"""The README is what the program does (issue 13): every ```python block runs as written, after the README's
own setup block; each block uses only names it imports or defines itself or that the setup defines; every op
of the "Every op" table comes with ``from keepmix import *``; the documented install route and command-line
flags exist. (The default run's numbers are checked by test_readme_numbers.py.)"""

from __future__ import annotations

import argparse
import ast
import builtins
import re
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
SETUP_HEADING = "## The library in a training loop"
#: names the protocol line at the top stands for ("for any op, a batch of images and its targets")
PROTOCOL_NAMES = {"op", "images", "targets"}


def python_blocks():
    """``(line number, code)`` of every ```python block, in order."""
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", README, flags=re.S | re.M):
        blocks.append((README.count("\n", 0, match.start()) + 1, match.group(1)))
    return blocks


BLOCKS = python_blocks()
SETUP_AT = README.index(SETUP_HEADING)
SETUP = next(code for line, code in BLOCKS if README.count("\n", 0, SETUP_AT) < line)
SETUP_LINE = next(line for line, code in BLOCKS if code == SETUP)


def run_setup():
    namespace = {"__name__": "readme"}
    torch.manual_seed(0)
    exec(compile(SETUP, f"README.md:{SETUP_LINE}", "exec"), namespace)
    return namespace


def protocol_namespace():
    from keepmix import Cutout
    return {"__name__": "readme", "op": Cutout(8), "images": torch.rand(4, 3, 16, 16),
            "targets": torch.tensor([0, 1, 2, 3])}


def test_the_readme_has_its_blocks():
    assert len(BLOCKS) >= 10 and "build_model" in SETUP and "loader" in SETUP


@pytest.mark.parametrize("line,code", [pytest.param(line, code, id=f"line{line}",
                                                    marks=[pytest.mark.slow] if "PuzzleMix" in code else [])
                                       for line, code in BLOCKS if code != SETUP])
def test_every_python_block_runs_as_written(line, code, capsys):
    namespace = protocol_namespace() if line < SETUP_LINE else run_setup()
    exec(compile(code, f"README.md:{line}", "exec"), namespace)
    capsys.readouterr()


# --------------------------------------------------------------------------- names: imported, defined, or the setup's


def _stores(node) -> set:
    names = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, (ast.Store, ast.Del)):
            names.add(sub.id)
        elif isinstance(sub, (ast.Import, ast.ImportFrom)):
            for alias in sub.names:
                if alias.name == "*":
                    module = __import__(sub.module, fromlist=["*"])
                    names.update(getattr(module, "__all__", [n for n in vars(module) if not n.startswith("_")]))
                else:
                    names.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(sub, (ast.FunctionDef, ast.ClassDef)):
            names.add(sub.name)
        elif isinstance(sub, ast.arg):
            names.add(sub.arg)
    return names


def _loads(node) -> set:
    local = set()  # comprehension variables and lambda arguments
    for sub in ast.walk(node):
        if isinstance(sub, ast.comprehension):
            local |= _stores(sub.target)
        elif isinstance(sub, ast.Lambda):
            local |= {a.arg for a in sub.args.args}
    return {sub.id for sub in ast.walk(node)
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load)} - local


def free_names(code: str) -> set:
    """Names a block reads before it binds them (statement by statement; a for loop binds before its body)."""
    bound, free = set(vars(builtins)), set()

    def visit(statements):
        for statement in statements:
            if isinstance(statement, ast.For):
                free.update(_loads(statement.iter) - bound)
                bound.update(_stores(statement.target))
                visit(statement.body)
                visit(statement.orelse)
            else:
                free.update(_loads(statement) - bound)
                bound.update(_stores(statement))

    visit(ast.parse(code).body)
    return free


def test_blocks_use_only_names_they_import_or_the_setup_defines():
    assert free_names(SETUP) == set()
    provided = _stores(ast.parse(SETUP))
    for line, code in BLOCKS:
        if code == SETUP:
            continue
        allowed = PROTOCOL_NAMES if line < SETUP_LINE else provided
        missing = free_names(code) - allowed
        assert not missing, f"README.md:{line} uses {sorted(missing)} without importing or defining them"


# --------------------------------------------------------------------------- exports, install route, flags


def test_every_op_of_the_table_comes_with_star_import():
    import keepmix
    section = README[README.index("## Every op"):README.index("## The command line")]
    names = set()
    for row in section.splitlines():
        if row.startswith("| `"):
            names.update(re.findall(r"`([A-Z]\w+)`", row.split("|")[1]))
    assert {"AugMix", "GuidedMixup", "KeepCutout", "Compose", "Normalize"} <= names
    namespace = {}
    exec("from keepmix import *", namespace)
    assert names <= set(keepmix.__all__) and names <= set(namespace), sorted(names - set(namespace))
    assert all(hasattr(keepmix, name) for name in keepmix.__all__)


def test_the_install_route_names_the_cpu_build_and_matches_the_makefile():
    pin = re.search(r"^TORCH \?= (\S+)$", (REPO / "Makefile").read_text(), flags=re.M).group(1)
    assert f".venv/bin/pip install {pin}" in README
    assert "--index-url https://download.pytorch.org/whl/cpu" in README
    assert "TORCH_INDEX=https://download.pytorch.org/whl/cpu" in README
    assert "TORCH_INDEX" in (REPO / "Makefile").read_text()


def test_the_command_line_section_uses_existing_commands_and_flags():
    from keepmix.cli import build_parser
    parser = build_parser()
    commands = {action.dest: action for action in parser._actions if isinstance(action, argparse._SubParsersAction)}
    subparsers = commands["command"].choices
    section = README[README.index("## The command line"):README.index("## Runs and checkpoints")]
    block = section.split("```")[1]
    checked = 0
    for row in block.splitlines():
        words = row.split("#")[0].split()
        if len(words) < 2 or words[0] != "keepmix" or words[1] == "bench":
            continue
        sub = subparsers[words[1]]
        known = {option for action in sub._actions for option in action.option_strings}
        for word in words[2:]:
            flag = word.strip("[]").split("=")[0]
            if flag.startswith("--"):
                assert flag in known, f"README: keepmix {words[1]} has no {flag}"
                checked += 1
    assert checked >= 10


def test_the_training_at_scale_commands_use_existing_commands_flags_and_options():
    """Every ``keepmix …`` and ``torchrun … -m keepmix.cli …`` line of "Training at scale" (continuation lines
    joined) names a subcommand and flags the CLI has; the shard-writing and throughput commands' flags exist."""
    from keepmix.benchmark_throughput import main as throughput_main  # noqa: F401 - the benchmark's module exists
    from keepmix.cli import build_parser
    parser = build_parser()
    commands = {action.dest: action for action in parser._actions if isinstance(action, argparse._SubParsersAction)}
    subparsers = commands["command"].choices
    section = README[README.index("## Training at scale"):README.index("## Rerunning the papers' claims")]
    checked = 0
    for block in section.split("```")[1::2]:
        for row in block.replace("\\\n", " ").splitlines():
            words = row.split("#")[0].split()
            if "keepmix.cli" in words:
                words = ["keepmix"] + words[words.index("keepmix.cli") + 1:]
            if len(words) < 2 or words[0] != "keepmix":
                continue
            known = {option for action in subparsers[words[1]]._actions for option in action.option_strings}
            for word in words[2:]:
                flag = word.split("=")[0]
                if flag.startswith("--"):
                    assert flag in known, f"README: keepmix {words[1]} has no {flag}"
                    checked += 1
    assert checked >= 15
    for module, line in (("keepmix/data/shards.py", "python -m keepmix.data.shards"),
                         ("keepmix/benchmark_throughput.py", "python benchmarks/throughput.py")):
        source = (REPO / "src" / module).read_text(encoding="utf-8")
        rows = [r for r in section.splitlines() if r.startswith(line)]
        assert rows, line
        for flag in {w for r in rows for w in r.split() if w.startswith("--")}:
            assert f'"{flag}"' in source, f"README: {line} has no {flag}"


def test_the_eval_example_names_the_default_recipes_sets():
    from keepmix.recipes import load_recipe
    from keepmix.train import load_sets
    match = re.search(r"the run's evaluation set, (\d+) of\s+its (\d+)\)", README)
    whole = re.search(r"the whole split, all (\d+)\)", README)
    assert match and whole
    cache = {}
    _, _, images, _, _ = load_sets(load_recipe("default").data, cache, eval_only=True)
    split_size = max(int(entry[0].shape[0]) for entry in cache.values())
    assert (int(match.group(1)), int(match.group(2)), int(whole.group(1))) == (images.shape[0], split_size, split_size)
