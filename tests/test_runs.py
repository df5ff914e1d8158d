"""Runs that are safe to share and hard to break: every fault is injected and the test checks that
nothing ran, nothing was lost, and the one-line message names what is wrong.

Faults: a checkpoint whose pickle runs code (every command that opens one), byte flips and
truncation, a refused resume, a second writer and a dead writer's lock, a failed save and stale
temporary files, a full disk (file-size limit in a subprocess), bad output paths, Python tags in a
recipe, bad ops under --print-config, a run refused before training, another data set's kwargs.
The distributed faults (a stopped rank, BatchNorm drift) are in test_train.py with the DDP run.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from keepmix.cli import main
from keepmix.engine import checkpoint as checkpoint_module
from keepmix.engine.checkpoint import (PREVIOUS_NAME, CheckpointError, CheckpointFallbackWarning, RunLock,
                                       RunLockedError, encode_checkpoint, load_checkpoint, save_checkpoint)
from keepmix.recipes import config_from_dict, load_recipe
from keepmix.train import Trainer, load_split

REPO = Path(__file__).resolve().parents[1]

TINY_RECIPE = """\
name: tiny
progress: false
tensorboard: false
data: {name: salient_shapes, kwargs: {n_per_class: 4, num_classes: 3, image_size: 16, object_size: 5}}
model: {name: resnet_small}
optim: {epochs: 2, batch_size: 6, lr: 0.05}
arms:
  - {name: cutout, ops: [{name: cutout, length: 6}]}
  - {name: keep_cutout, ops: [{name: keep_cutout, size: 6, saliency: model}]}
"""


def tiny_config(tmp_path, **changes):
    config = {"name": "t", "output_dir": str(tmp_path), "progress": False, "tensorboard": False,
              "data": {"name": "salient_shapes", "kwargs": {"n_per_class": 4, "num_classes": 3, "image_size": 16,
                                                            "object_size": 5}},
              "model": {"name": "resnet_small"}, "optim": {"epochs": 2, "batch_size": 6, "lr": 0.05}}
    config.update(changes)
    return config_from_dict(config)


def snapshot(folder: Path):
    """Every file under ``folder``: relative path -> bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def params(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """The tiny two-arm recipe trained for one of its two epochs (in process, through the CLI)."""
    root = tmp_path_factory.mktemp("runs")
    recipe = root / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    assert main(["train", str(recipe), "--output-dir", str(root / "out"), "--stop-after-epoch", "1", "--quiet"]) == 0
    return root / "out" / "tiny"


def copy_run(run: Path, where: Path) -> Path:
    import shutil
    target = where / "tiny"
    shutil.copytree(run, target)
    return target


# --------------------------------------------------------------------------- 1. opening a run runs nothing


class _RunsCode:
    """Unpickling this calls os.system (what a malicious shared checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("framing", ["torch.save", "keepmix header"])
@pytest.mark.parametrize("command", ["eval", "show", "train --resume", "train --resume with recipe"])
def test_a_checkpoint_that_runs_code_is_refused_by_every_command(tmp_path, capsys, framing, command):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    payload = {"format": "keepmix-checkpoint", "version": 2, "epoch": 1, "model": _RunsCode(marker)}
    path = run / "checkpoint.pt"
    if framing == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(encode_checkpoint(payload))  # a valid checksum does not make it safe
    if command == "eval":
        argv = ["eval", "--checkpoint", str(path)]
    elif command == "show":
        argv = ["show", "--checkpoint", str(path), "--out", str(tmp_path / "grid.png")]
    else:
        argv = ["train", "--resume", str(run)]
        if command.endswith("recipe"):
            (run / "recipe.yaml").write_text(TINY_RECIPE.split("arms:")[0])
    assert main(argv) == 2
    line = one_line_error(capsys)
    assert str(path) in line and "refused" in line and "posix.system" in line
    assert not marker.exists()
    assert not (tmp_path / "grid.png").exists()


@pytest.mark.parametrize("where", ["model.pretrained", "teacher.pretrained"])
def test_pretrained_weights_that_run_code_are_refused_naming_the_file(tmp_path, capsys, where):
    """Weights files (plain torch.save, no keepmix header) are opened as checkpoints are: nothing runs, and
    the one-line refusal names the file and what it asked for (not PyTorch's advice to retry unsafely)."""
    marker = tmp_path / "pwned"
    weights = tmp_path / "weights.pt"
    torch.save({"stem.weight": _RunsCode(marker)}, weights)
    recipe = tmp_path / "tiny.yaml"
    if where == "model.pretrained":
        recipe.write_text(TINY_RECIPE.replace("model: {name: resnet_small}",
                                              f"model: {{name: resnet_small, pretrained: {weights}}}"))
    else:
        teacher = f"{{model: resnet_small, num_classes: 3, pretrained: {weights}}}"
        recipe.write_text(TINY_RECIPE.split("arms:")[0]
                          + f"ops: [{{name: attentive_cut_mix, teacher: {teacher}, top_k: 2, grid: 2}}]\n")
    out = tmp_path / "out"
    assert main(["train", str(recipe), "--output-dir", str(out)]) == 2
    line = one_line_error(capsys)
    assert str(weights) in line and "refused" in line and "posix.system" in line, line
    assert "weights_only" not in line
    assert not marker.exists() and not out.exists()


# --------------------------------------------------------------------------- 2. refused resume, one writer


def test_a_refused_resume_leaves_every_file_byte_identical(stopped_run, tmp_path, capsys):
    run = copy_run(stopped_run, tmp_path)
    before = snapshot(run)
    assert main(["train", "--resume", str(run), "--set", "optim.lr=0.07"]) == 2
    line = one_line_error(capsys)
    assert "optim.lr" in line and "another config" in line and "checkpoint.pt" in line
    assert snapshot(run) == before
    # the original command still resumes (nothing in the folder was rewritten with the rejected config)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    for arm in ("cutout", "keep_cutout"):
        assert load_checkpoint(run / arm)["epoch"] == 2
    assert "0.07" not in (run / "recipe.yaml").read_text()


def test_a_resume_with_another_recipe_is_refused_and_changes_nothing(stopped_run, tmp_path, capsys):
    """The reported sequence: one resume tried with another recipe, then the documented command."""
    run = copy_run(stopped_run, tmp_path)
    other = tmp_path / "other.yaml"
    other.write_text(TINY_RECIPE.replace("length: 6", "length: 4"))
    before = snapshot(run)
    # the other recipe's own run folder is this one (same name): refused, naming what differs
    assert main(["train", str(other), "--output-dir", str(tmp_path), "--resume", "--quiet"]) == 2
    line = one_line_error(capsys)
    assert "ops" in line and "checkpoint.pt" in line, line
    assert snapshot(run) == before
    # a recipe and a run folder together: refused (the recipe would be silently ignored)
    assert main(["train", str(other), "--resume", str(run), "--quiet"]) == 2
    line = one_line_error(capsys)
    assert "not both" in line and str(other) in line, line
    assert snapshot(run) == before
    # the documented command still resumes, with the run's own settings
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    for arm in ("cutout", "keep_cutout"):
        assert load_checkpoint(run / arm)["epoch"] == 2
    assert load_checkpoint(run / "cutout")["config"]["ops"] == [{"name": "cutout", "length": 6}]


def _hold_lock_in_child(folder: Path):
    """Fork a process that takes the folder's lock and waits; returns its pid once it holds the lock."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            RunLock(folder).acquire()
            os.write(ready_w, b"1")
            signal.pause()
        finally:
            os._exit(0)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"1"
    os.close(ready_r)
    return pid


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_second_writer_gets_one_line_and_a_dead_writers_lock_is_taken_over(stopped_run, tmp_path, capsys):
    run = copy_run(stopped_run, tmp_path)
    pid = _hold_lock_in_child(run)
    try:
        before = snapshot(run)
        assert main(["train", "--resume", str(run), "--quiet"]) == 2
        line = one_line_error(capsys)
        assert line == (f"keepmix train: error: run folder {run} is in use by another keepmix process (pid {pid}, "
                        f"lock {run / '.keepmix.lock'}); wait for it to finish or stop it")
        assert snapshot(run) == before
        with pytest.raises(RunLockedError):
            RunLock(run / ".").acquire()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert (run / ".keepmix.lock").read_text().strip() == str(pid)    # the dead writer's lock file is still there
    assert main(["train", "--resume", str(run), "--quiet"]) == 0       # ... and is taken over
    assert load_checkpoint(run / "keep_cutout")["epoch"] == 2
    assert not (run / ".keepmix.lock").exists()


# --------------------------------------------------------------------------- 3. damaged checkpoints


def test_flipped_bytes_and_truncation_are_refused_naming_the_file(tmp_path):
    weights = torch.randn(64, 64)
    path = save_checkpoint({"format": "keepmix-checkpoint", "weights": weights}, tmp_path / "checkpoint.pt")
    good = path.read_bytes()
    middle = len(good) // 2
    flipped = bytearray(good)
    flipped[middle:middle + 64] = bytes(255 - b for b in flipped[middle:middle + 64])
    path.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="SHA-256") as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path}: damaged checkpoint") and info.value.reason == "damaged"
    path.write_bytes(good[:2 * len(good) // 3])
    with pytest.raises(CheckpointError, match="truncated") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    path.write_bytes(good)
    assert torch.equal(load_checkpoint(path)["weights"], weights)


@pytest.mark.slow
def test_a_damaged_checkpoint_falls_back_to_the_previous_one_and_loses_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    straight = Trainer(tiny_config(tmp_path), run_dir=run, quiet=True)
    straight.fit()
    final = params(straight)
    assert load_checkpoint(run)["epoch"] == 2 and load_checkpoint(run / PREVIOUS_NAME)["epoch"] == 1
    data = bytearray((run / "checkpoint.pt").read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    (run / "checkpoint.pt").write_bytes(bytes(data))
    # opening it for evaluation is refused, naming the file and the previous checkpoint
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt")]) == 2
    line = one_line_error(capsys)
    assert str(run / "checkpoint.pt") in line and "damaged" in line and str(run / PREVIOUS_NAME) in line
    # resuming the folder falls back to epoch 1 with a warning and ends bit-identical to the run that never broke
    with pytest.warns(CheckpointFallbackWarning, match="checkpoint.prev.pt"):
        resumed = Trainer(tiny_config(tmp_path), run_dir=run, resume=run, quiet=True)
    assert resumed.epoch == 1 and resumed.resumed_from == run / PREVIOUS_NAME
    resumed.fit()
    assert all(torch.equal(final[k], v) for k, v in params(resumed).items())
    # the damaged file was not promoted to checkpoint.prev.pt: the good epoch-1 file is still there
    assert load_checkpoint(run)["epoch"] == 2 and load_checkpoint(run / PREVIOUS_NAME)["epoch"] == 1


def test_a_failed_save_removes_its_temp_file_and_keeps_both_checkpoints(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"format": "keepmix-checkpoint", "epoch": 1}, path)
    save_checkpoint({"format": "keepmix-checkpoint", "epoch": 2}, path)
    before = snapshot(tmp_path)

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.os, "fsync", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device") as info:
        save_checkpoint({"format": "keepmix-checkpoint", "epoch": 3}, path)
    monkeypatch.undo()
    assert str(path) in str(info.value) and info.value.reason == "write"
    assert snapshot(tmp_path) == before                                  # no temp file, nothing replaced
    assert load_checkpoint(path)["epoch"] == 2 and load_checkpoint(tmp_path / PREVIOUS_NAME)["epoch"] == 1


def test_stale_temp_files_of_a_killed_run_are_removed_at_the_next_start(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    stale = [run / ".checkpoint.pt.tmp4242", run / ".metrics.csv.tmp4242", run / ".checkpoint.prev.pt.tmp77"]
    for path in stale:
        path.write_bytes(b"half a file")
    (run / "notes.tmp1").write_text("not ours")
    Trainer(tiny_config(tmp_path, optim={"epochs": 1, "batch_size": 6}), run_dir=run, quiet=True).fit()
    assert not any(path.exists() for path in stale)
    assert (run / "notes.tmp1").exists() and (run / "checkpoint.pt").is_file()


# --------------------------------------------------------------------------- 4. errors before any work


@pytest.mark.slow
def test_a_full_disk_is_refused_before_the_first_epoch_naming_the_folder(tmp_path):
    import resource
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE.replace("name: tiny", "name: full"))
    out = tmp_path / "out"

    def file_size_limit():  # a disk that takes no file over 100 kB (a checkpoint is ~0.4 MB)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-m", "keepmix", "train", str(recipe), "--output-dir", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
                          preexec_fn=file_size_limit)
    assert done.returncode == 2, done.stdout + done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1, done.stderr
    assert err[0].startswith(f"keepmix train: error: run folder {out / 'full'} cannot hold a checkpoint")
    assert "File too large" in err[0]
    assert "epoch" not in done.stdout                                   # no epoch's work was done
    assert not out.exists()                                             # no folder, no probe or temp file left


def test_an_output_dir_that_cannot_hold_a_folder_is_one_line(tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["train", str(recipe), "--output-dir", str(blocker / "runs")]) == 2
    assert one_line_error(capsys) == (f"keepmix train: error: cannot create run folder {blocker / 'runs' / 'tiny'}: "
                                      f"{blocker} is a file, not a folder")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "read-only"
        locked.mkdir(mode=0o500)
        assert main(["train", str(recipe), "--output-dir", str(locked / "runs")]) == 2
        assert f"{locked} is not writable" in one_line_error(capsys)


def test_a_recipe_with_a_python_tag_is_one_line_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"name: evil\nseed: !!python/object/apply:os.system ['touch {marker}']\n")
    assert main(["train", str(recipe), "--print-config"]) == 2
    line = one_line_error(capsys)
    assert str(recipe) in line and "line 2" in line and "python/object/apply:os.system" in line
    assert not marker.exists()


@pytest.mark.parametrize("op, words", [("{name: keep_cutoot, size: 6}", ["ops[0]", "unknown op 'keep_cutoot'"]),
                                       ("{name: keep_cutout, size: -5}", ["ops[0]", "KeepCutout", "-5"]),
                                       ("{name: cutout, lenght: 6}", ["ops[0]", "lenght"])])
def test_print_config_builds_the_ops(tmp_path, capsys, op, words):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\nops: [{op}]\n")
    assert main(["train", str(recipe), "--print-config"]) == 2
    line = one_line_error(capsys)
    assert all(word in line for word in words), line


@pytest.mark.parametrize("change", ["--set=optim.batch_size=1000", "--set=arms.1.ops.0.size=-5"])
def test_a_run_refused_before_training_leaves_no_folder(tmp_path, capsys, change):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    out = tmp_path / "out"
    assert main(["train", str(recipe), "--output-dir", str(out), change]) == 2
    assert one_line_error(capsys)
    assert not out.exists()


def test_another_data_set_does_not_get_the_recipes_data_kwargs(tmp_path, capsys):
    import yaml
    assert main(["train", "--data", "cifar10", "--print-config"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)["data"]
    assert data["name"] == "cifar10" and data["kwargs"] == {}
    config = load_recipe("default", ["data.name=cifar10", f"data.root={tmp_path}"])
    assert config.data.kwargs == {}
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 files"):   # gets as far as looking for the files
        load_split(config.data, "test")
    kept = load_recipe("default", ["data.name=cifar100", "data.kwargs.label_type=coarse"])
    assert kept.data.kwargs == {"label_type": "coarse"}                 # kwargs given with the new name stay
    same = load_recipe("default", ["data.name=salient_shapes"])
    assert same.data.kwargs == load_recipe("default").data.kwargs        # same data set: its kwargs stay


def test_a_version_1_checkpoint_still_loads_without_running_code(tmp_path):
    import numpy as np
    state = np.random.get_state()
    torch.save({"format": "keepmix-checkpoint", "version": 1, "numpy": state, "w": torch.ones(3)},
               tmp_path / "old.pt")
    payload = load_checkpoint(tmp_path / "old.pt")   # bare torch.save zip: NumPy arrays allowed, nothing else
    assert payload["numpy"][0] == "MT19937" and np.array_equal(payload["numpy"][1], state[1])
