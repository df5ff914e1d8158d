"""The keepmix command line, each command in a subprocess on tiny settings."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

TINY_RECIPE = """\
name: tiny
progress: false
tensorboard: false
data: {name: salient_shapes, kwargs: {n_per_class: 6, num_classes: 3, image_size: 16, object_size: 5}}
model: {name: resnet_small}
optim: {epochs: 2, batch_size: 6, lr: 0.05}
arms:
  - {name: cutout, ops: [{name: cutout, length: 6}]}
  - {name: keep_cutout, ops: [{name: keep_cutout, size: 6, saliency: model}]}
"""


def keepmix(*args, cwd, check=True, timeout=240):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "keepmix", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)
    if check:
        assert done.returncode == 0, f"keepmix {' '.join(map(str, args))} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny two-arm recipe stopped after epoch 1, then resumed to the end through the CLI."""
    root = tmp_path_factory.mktemp("cli")
    recipe = root / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    first = keepmix("train", recipe, "--output-dir", root / "runs", "--stop-after-epoch", "1", cwd=root)
    second = keepmix("train", "--resume", root / "runs" / "tiny", cwd=root)
    return root, first, second


@pytest.mark.slow
def test_train_runs_every_arm_and_resume_finishes_them(trained):
    root, first, second = trained
    run = root / "runs" / "tiny"
    for arm in ("cutout", "keep_cutout"):
        assert {"config.yaml", "metrics.csv", "checkpoint.pt", "curves.png"} <= {p.name for p in (run / arm).iterdir()}
        rows = list(csv.DictReader(open(run / arm / "metrics.csv")))
        assert [r["epoch"] for r in rows] == ["1", "2"]
    assert "keep_cutout.saliency_kept" in rows[0]
    assert (run / "summary.csv").is_file() and (run / "curves.png").is_file() and (run / "recipe.yaml").is_file()
    # the side-by-side summary names both arms with their accuracies and file paths
    for out in (first.stdout, second.stdout):
        assert "cutout" in out and "keep_cutout" in out and "metrics.csv" in out and "top-1" in out
    summary = {r["arm"]: r for r in csv.DictReader(open(run / "summary.csv"))}
    final = list(csv.DictReader(open(run / "keep_cutout" / "metrics.csv")))[-1]
    assert float(summary["keep_cutout"]["val_top1"]) == pytest.approx(float(final["val_top1"]))
    assert summary["keep_cutout"]["epochs"] == "2"


@pytest.mark.slow
def test_eval_reproduces_the_runs_final_accuracy(trained):
    root, _, _ = trained
    arm = root / "runs" / "tiny" / "keep_cutout"
    done = keepmix("eval", "--checkpoint", arm / "checkpoint.pt", "--json", cwd=root)
    metrics = json.loads(done.stdout.strip().splitlines()[-1])
    final = list(csv.DictReader(open(arm / "metrics.csv")))[-1]
    assert metrics["top1"] == pytest.approx(float(final["val_top1"]))
    assert metrics["top5"] == pytest.approx(float(final["val_top5"]))
    assert metrics["loss"] == pytest.approx(float(final["val_loss"]), rel=1e-5)
    assert metrics["epoch"] == 2 and metrics["count"] == 18


@pytest.mark.slow
def test_show_writes_a_grid_with_a_column_per_op(tmp_path, trained):
    import matplotlib.image
    root, _, _ = trained
    checkpoint = root / "runs" / "tiny" / "keep_cutout" / "checkpoint.pt"
    out = tmp_path / "grid.png"
    done = keepmix("show", "--checkpoint", checkpoint, "--rows", "3", "--out", out,
                   "--op", "cutout", "--op", "{name: keep_cutout, size: 6, saliency: model}", "--op", "guided_sr",
                   cwd=tmp_path)
    assert str(out) in done.stdout
    image = matplotlib.image.imread(out)
    # 5 columns (original, saliency, three ops) by 3 rows of 1.4-inch cells at 120 dpi, plus the title band
    assert image.shape[1] == round(5 * 1.4 * 120)
    assert image.shape[0] == round((3 * 1.4 + 0.4) * 120)


@pytest.mark.slow
def test_plot_list_and_bench_help(tmp_path, trained):
    root, _, _ = trained
    run = root / "runs" / "tiny"
    out = tmp_path / "both.png"
    assert "wrote" in keepmix("plot", run / "cutout", run / "keep_cutout", "--out", out, cwd=tmp_path).stdout
    assert out.is_file() and out.stat().st_size > 1000
    ops = keepmix("list", "ops", cwd=tmp_path).stdout.split()
    assert {"cutout", "keep_cutout", "selective_paste", "guided_sr", "guided_ap", "auto_augment"} <= set(ops)
    bench = keepmix("bench", "--help", cwd=tmp_path)
    assert "--batch-sizes" in bench.stdout


# the argument handling below runs in-process (no training, no subprocess needed)


def test_bad_override_exits_with_a_message_naming_the_key(capsys):
    from keepmix.cli import main
    assert main(["train", "--set", "optim.lrr=0.1", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "optim.lrr" in err and "did you mean 'optim.lr'" in err


def test_print_config_shows_typed_overrides_of_the_default_recipe(capsys):
    import yaml
    from keepmix.cli import main
    assert main(["train", "--set", "optim.lr=0.02", "--epochs", "3", "--name", "1e-3", "--print-config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["optim"]["lr"] == 0.02 and config["optim"]["epochs"] == 3
    assert config["name"] == "1e-3"   # flag values stay strings where the field is a string
    assert [arm["name"] for arm in config["arms"]] == ["cutout", "keep_cutout", "keep_cutout_random"]
    assert config["data"]["name"] == "salient_shapes"


def test_list_datasets_and_models_in_process(capsys):
    from keepmix.cli import main
    assert main(["list", "models"]) == 0
    assert "resnet_small" in capsys.readouterr().out.split()
    assert main(["list", "recipes"]) == 0
    recipes = capsys.readouterr().out.split()
    assert "default" in recipes and "keepaugment/t1_cutout_resnet18" in recipes
