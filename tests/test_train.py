"""The training engine: schedule, metrics, one step against a hand-made SGD step, op statistics, checkpoints,
exact resume, the pipeline order, sharding, and a two-process gloo run through torchrun."""

from __future__ import annotations

import copy
import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from keepmix.erase import Cutout
from keepmix.policies import AutoAugment
from keepmix.recipes import OptimConfig, config_from_dict
from keepmix.train import (Augmentation, Distributed, OpStats, ShardedLoader, Trainer, _take, evaluate,
                           learning_rate, load_checkpoint, save_checkpoint, topk_correct)

REPO = Path(__file__).resolve().parents[1]


def tiny_config(tmp_path, **changes):
    """SalientShapes at 16 px with 3 classes, ResNet-small, 2 epochs of 2 steps of 6 images."""
    data = {"name": "salient_shapes", "kwargs": {"n_per_class": 4, "num_classes": 3, "image_size": 16,
                                                 "object_size": 5}}
    config = {"name": "t", "output_dir": str(tmp_path), "progress": False, "tensorboard": False, "data": data,
              "model": {"name": "resnet_small"}, "optim": {"epochs": 2, "batch_size": 6, "lr": 0.05}}
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config_from_dict(config)


# --------------------------------------------------------------------------- schedule


def test_learning_rate_warmup_then_cosine():
    optim = OptimConfig(epochs=4, lr=0.4, schedule="cosine", warmup_epochs=1, min_lr=0.0)
    steps = 10  # W = 10 warm-up steps, T = 40
    assert learning_rate(0, steps, optim) == pytest.approx(0.04)
    assert learning_rate(9, steps, optim) == pytest.approx(0.4)
    assert learning_rate(10, steps, optim) == pytest.approx(0.4)             # t = 0
    assert learning_rate(25, steps, optim) == pytest.approx(0.2)             # t = 1/2
    assert learning_rate(35, steps, optim) == pytest.approx(0.2 * (1 + math.cos(math.pi * 25 / 30)))


def test_learning_rate_multistep_and_constant():
    optim = OptimConfig(epochs=10, lr=0.1, schedule="multistep", milestones=[3, 6], gamma=0.5)
    assert [learning_rate(e * 5, 5, optim) for e in (0, 2, 3, 5, 6, 9)] == \
        pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    assert learning_rate(17, 5, OptimConfig(schedule="constant", lr=0.3)) == 0.3


def test_cosine_reaches_min_lr_at_the_end():
    optim = OptimConfig(epochs=2, lr=1.0, schedule="cosine", min_lr=0.1)
    assert learning_rate(0, 50, optim) == pytest.approx(1.0)
    assert learning_rate(99, 50, optim) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))


# --------------------------------------------------------------------------- metrics


def test_topk_correct_by_hand():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    # top-1: only sample 0; top-2: 0 and 1 (label 2 is 2nd for sample 1); k=5 is capped at 3 classes: all
    assert topk_correct(logits, labels, (1, 2, 5)).tolist() == [1.0, 2.0, 3.0]


class _Fixed(nn.Module):
    """Logits = a fixed linear map of the mean pixel per channel (no parameters to train)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, -1.0]]), requires_grad=False)

    def forward(self, x):
        return x.mean(dim=(2, 3)) @ self.weight.t()


def test_evaluate_matches_cross_entropy_and_accuracy_by_hand():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(7, 3, 4, 4, generator=generator)
    labels = torch.randint(0, 2, (7,), generator=generator)
    model = _Fixed().train()
    batches = [(images[:3], labels[:3]), (images[3:], labels[3:])]
    metrics = evaluate(model, batches, device=torch.device("cpu"))
    logits = model(images)
    assert metrics["loss"] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-6)
    assert metrics["top1"] == pytest.approx(100.0 * float((logits.argmax(1) == labels).float().mean()))
    assert metrics["top5"] == 100.0 and metrics["count"] == 7
    assert model.training  # the mode is restored


def test_op_stats_average_floats_and_rates_and_skip_integers():
    stats = OpStats()
    stats.add("keep", {"fallback": torch.tensor([True, False, False]), "lam": torch.tensor([0.5, 1.0, 0.0]),
                       "centres": torch.tensor([[1, 2]] * 3)})
    stats.add("keep", {"fallback": torch.tensor([True]), "lam": torch.tensor([0.5])})
    summary = stats.summary(Distributed(), torch.device("cpu"))
    assert summary == pytest.approx({"keep.fallback": 0.5, "keep.fallback_count": 2.0, "keep.lam": 0.5})


# --------------------------------------------------------------------------- pipeline


class _Recorder:
    """A label-preserving op that records what it saw and adds a constant."""

    def __init__(self, add, space):
        self.add, self.input_space, self.seen = add, space, []
        self.last_stats = {"seen": torch.tensor([1.0])}

    def __call__(self, images, targets):
        self.seen.append(images.clone())
        return images + self.add, targets


def test_augmentation_runs_raw_ops_then_normalises_then_the_rest():
    raw, late = _Recorder(0.25, "raw"), _Recorder(1.0, "normalized")
    pipeline = Augmentation([raw, late], ["raw", "late"], lambda x: (x - 0.5) / 0.25)
    images = torch.full((1, 3, 2, 2), 0.5)
    out, _ = pipeline(images, torch.tensor([0]))
    assert torch.equal(raw.seen[0], images)
    assert torch.allclose(late.seen[0], torch.full_like(images, 1.0))          # ((0.5 + 0.25) − 0.5) / 0.25
    assert torch.allclose(out, torch.full_like(images, 2.0))
    assert set(pipeline.stats.sums) == {"raw.seen", "late.seen"}


def test_augmentation_rejects_a_policy_after_a_normalised_op():
    with pytest.raises(ValueError, match="must come before"):
        Augmentation([Cutout(2), AutoAugment()], ["cutout", "auto_augment"], lambda x: x)


# --------------------------------------------------------------------------- loaders


class _CountingLoader:
    def __init__(self, length):
        self.length, self.served = length, 0

    def __len__(self):
        return self.length

    def __iter__(self):
        for _ in range(self.length):
            self.served += 1
            yield self.served


def test_take_walks_on_through_epochs():
    loader = _CountingLoader(3)
    assert list(_take(loader, 2)) == [1, 2]
    assert list(_take(loader, 4)) == [3, 4, 5, 6]
    with pytest.raises(ValueError, match="no batch"):
        list(_take(_CountingLoader(0), 1))


def test_sharded_loader_splits_each_global_batch_between_ranks():
    from keepmix.data import DeviceLoader
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    labels = torch.arange(10)

    def loader():
        return DeviceLoader(images, labels, batch_size=2, generator=torch.Generator().manual_seed(3), augment=False)

    ranks = [ShardedLoader(loader(), r, 2) for r in range(2)]
    assert len(ranks[0]) == 2  # 10 samples, global batches of 4, the rest dropped
    epochs = [[labels_b for _, labels_b in _take(shard, 4)] for shard in ranks]
    order = [loader().epoch_order(e) for e in (0, 1)]
    for b in range(4):
        epoch, g = divmod(b, 2)
        union = torch.cat([epochs[0][b], epochs[1][b]])
        assert torch.equal(union, order[epoch][4 * g:4 * g + 4])
    state = ranks[1].state_dict()
    fresh = ShardedLoader(loader(), 1, 2)
    fresh.load_state_dict(state)
    assert fresh.epoch == ranks[1].epoch and fresh.batch_index == ranks[1].batch_index


# --------------------------------------------------------------------------- checkpoints


def test_save_checkpoint_is_atomic_and_load_checks_the_format(tmp_path):
    path = save_checkpoint({"format": "keepmix-checkpoint", "x": torch.ones(2)}, tmp_path / "run" / "checkpoint.pt")
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]  # no temporary left behind
    assert torch.equal(load_checkpoint(tmp_path / "run")["x"], torch.ones(2))
    torch.save({"y": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a keepmix checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing")


# --------------------------------------------------------------------------- the step


def test_train_step_is_one_sgd_step_on_the_cross_entropy(tmp_path):
    config = tiny_config(tmp_path, optim={"epochs": 1, "lr": 0.1, "momentum": 0.9, "nesterov": True,
                                          "weight_decay": 1e-3}, label_smoothing=0.1)
    trainer = Trainer(config, run_dir=tmp_path / "run", quiet=True)
    images, labels = next(iter(trainer.data.train))
    reference = copy.deepcopy(trainer.model)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    sums = trainer.train_step(images, labels)
    logits = reference(images)
    loss = F.cross_entropy(logits, labels, label_smoothing=0.1)
    loss.backward()
    optimizer.step()
    for (name, a), b in zip(trainer.model.named_parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert float(sums[0]) == pytest.approx(float(loss.detach()) * labels.shape[0], rel=1e-5)
    assert float(sums[1]) == float((logits.argmax(1) == labels).sum()) and float(sums[2]) == labels.shape[0]
    assert trainer.step == 1


def test_early_head_loss_trains_the_head(tmp_path):
    config = tiny_config(tmp_path, ops=[{"name": "keep_cutout", "size": 4, "saliency": "early_head"}],
                         optim={"epochs": 1})
    trainer = Trainer(config, run_dir=tmp_path / "run", quiet=True)
    assert trainer.early_head is not None
    assert any(p is q for p in trainer.optimizer.param_groups[0]["params"] for q in trainer.early_head.parameters())
    before = [p.clone() for p in trainer.early_head.parameters()]
    images, labels = next(iter(trainer.data.train))
    trainer.train_step(images, labels)
    assert all(not torch.equal(a, b) for a, b in zip(before, trainer.early_head.parameters()))


@pytest.mark.slow
def test_jsd_step_runs_clean_and_two_views(tmp_path):
    config = tiny_config(tmp_path, ops=[{"name": "aug_mix", "width": 2}], jsd_weight=12.0, optim={"epochs": 1})
    trainer = Trainer(config, run_dir=tmp_path / "run", quiet=True)
    seen = []
    trainer.model.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    images, labels = next(iter(trainer.data.train))
    sums = trainer.train_step(images, labels)
    assert seen == [3 * labels.shape[0]] and torch.isfinite(sums).all()


# --------------------------------------------------------------------------- runs and resume


def _params(trainer):
    return {**{f"model.{k}": v for k, v in trainer.model.state_dict().items()},
            **({f"head.{k}": v for k, v in trainer.early_head.state_dict().items()} if trainer.early_head else {})}


@pytest.mark.slow
def test_resume_after_an_epoch_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    # every source of randomness in play: the loader (order, crop, flip), an op generator with model
    # saliency, the early head, a mixer's pairing, warm-up + cosine schedule and momentum
    ops = [{"name": "keep_cutout", "size": 6, "saliency": "early_head"}, {"name": "guided_sr"}]
    changes = dict(ops=ops, optim={"warmup_epochs": 0.5}, max_steps_per_epoch=2)
    straight = Trainer(tiny_config(tmp_path, **changes), run_dir=tmp_path / "a", quiet=True)
    straight.fit()
    first = Trainer(tiny_config(tmp_path, **changes), run_dir=tmp_path / "b", quiet=True)
    first.fit(stop_after_epoch=1)
    assert first.epoch == 1 and load_checkpoint(tmp_path / "b")["epoch"] == 1
    resumed = Trainer(tiny_config(tmp_path, **changes), run_dir=tmp_path / "b", resume=tmp_path / "b", quiet=True)
    assert resumed.epoch == 1 and resumed.step == 2
    resumed.fit()
    a, b = _params(straight), _params(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for key in ("momentum_buffer",):
        for sa, sb in zip(straight.optimizer.state.values(), resumed.optimizer.state.values()):
            assert torch.equal(sa[key], sb[key])
    drop_time = [{k: v for k, v in row.items() if k != "time"} for row in straight.history]
    assert drop_time == [{k: v for k, v in row.items() if k != "time"} for row in resumed.history]
    # what a run leaves behind
    run_dir = tmp_path / "b"
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "metrics.csv", "checkpoint.pt", "curves.png"}
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"] and [r["step"] for r in rows] == ["2", "4"]
    for column in ("lr", "train_loss", "train_acc", "val_loss", "val_top1", "val_top5", "time",
                   "keep_cutout.fallback", "keep_cutout.fallback_count", "keep_cutout.saliency_kept",
                   "guided_sr.lam", "guided_sr.mixed", "guided_sr.saliency_kept"):
        assert column in rows[0], column
    assert 0.0 <= float(rows[1]["keep_cutout.saliency_kept"]) <= 1.0


@pytest.mark.slow
def test_resume_with_other_ops_is_refused(tmp_path):
    first = Trainer(tiny_config(tmp_path, optim={"epochs": 1}, ops=[{"name": "cutout", "length": 4}]),
                    run_dir=tmp_path / "a", quiet=True)
    first.fit()
    with pytest.raises(ValueError, match=r"another config \(ops differ\)"):
        Trainer(tiny_config(tmp_path, optim={"epochs": 1}, ops=[{"name": "mixup"}]), run_dir=tmp_path / "a",
                resume=tmp_path / "a", quiet=True)


# --------------------------------------------------------------------------- distributed


DDP_RECIPE = (
    "name: ddp\nprogress: false\ntensorboard: false\n"
    "data: {name: salient_shapes, kwargs: {n_per_class: 8, num_classes: 3, image_size: 16, object_size: 5}}\n"
    "model: {name: resnet_small}\noptim: {epochs: EPOCHS, batch_size: 8, lr: 0.05}\n"
    "ops: [{name: keep_cutout, size: 4, saliency: model}, {name: guided_sr, mix_prob: 1.0}]\n")


def torchrun(tmp_path, *args, epochs=1):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(DDP_RECIPE.replace("EPOCHS", str(epochs)))
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "keepmix.cli",
            "train", str(recipe), "--output-dir", str(tmp_path / "runs"), *args]


DDP_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One epoch of the tiny recipe on two gloo ranks under torchrun."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    done = subprocess.run(torchrun(tmp_path), capture_output=True, text=True, timeout=180, env=DDP_ENV, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    return tmp_path / "runs" / "ddp", done


@pytest.mark.slow
def test_two_processes_with_gloo_train_one_epoch_through_torchrun(ddp_run):
    run_dir, done = ddp_run
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert len(rows) == 1
    # 24 images, global batch 8 → 3 steps of 4 images per rank; metrics count both ranks' samples
    assert rows[0]["step"] == "3"
    assert float(rows[0]["guided_sr.mixed_count"]) == 6.0   # one draw per step per rank, mix_prob 1
    checkpoint = load_checkpoint(run_dir)
    assert checkpoint["world_size"] == 2 and len(checkpoint["ranks"]) == 2
    assert checkpoint["ranks"][0]["rng"]["generators"].keys() == checkpoint["ranks"][1]["rng"]["generators"].keys()
    assert "top-1" in done.stdout


@pytest.mark.slow
def test_ddp_reported_evaluation_is_that_of_the_saved_checkpoint(ddp_run, capsys):
    # each rank updates its BatchNorm statistics from its own shard; without syncing them the ranks
    # evaluate different models and the checkpoint (rank 0's) is a third one
    import json
    from keepmix.cli import main
    run_dir, _ = ddp_run
    final = list(csv.DictReader(open(run_dir / "metrics.csv")))[-1]
    assert main(["eval", "--checkpoint", str(run_dir / "checkpoint.pt"), "--json", "--device", "cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["count"] == 24
    assert metrics["loss"] == pytest.approx(float(final["val_loss"]), rel=1e-6)
    assert metrics["top1"] == pytest.approx(float(final["val_top1"]))


def _worker_pid(tag: str, rank: int) -> int:
    """The pid of the torchrun worker of ``rank`` whose environment carries ``tag``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"KEEPMIX_TEST_TAG={tag}".encode() in environ and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no worker of rank {rank} found")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker through /proc")
def test_a_stopped_rank_fails_the_job_within_the_timeout_naming_it(tmp_path):
    import queue
    import signal
    import threading
    import time
    import uuid
    tag = uuid.uuid4().hex
    env = {**DDP_ENV, "KEEPMIX_TEST_TAG": tag}
    process = subprocess.Popen(torchrun(tmp_path, "--dist-timeout", "3", epochs=200), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    seen, stopped_at, worker, deadline = [], None, None, time.monotonic() + 150
    try:
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            seen.append(line)
            if stopped_at is None and "epoch 1/200" in line:
                worker = _worker_pid(tag, 1)
                os.kill(worker, signal.SIGSTOP)
                stopped_at = time.monotonic()
            if "keepmix train: error" in line:
                break
        waited = time.monotonic() - stopped_at if stopped_at is not None else None
    finally:
        if worker is not None:
            os.kill(worker, signal.SIGKILL)
        process.kill()
        process.wait(timeout=60)
    error = [line for line in seen if "keepmix train: error" in line]
    assert stopped_at is not None and error, "".join(seen[-30:])
    assert waited < 30, waited
    assert "rank 0 of 2: a collective operation did not complete within dist_timeout=3 s" in error[0]
    assert "rank 1 stopped responding" in error[0]


def test_bf16_autocast_and_channels_last_step_on_cpu(tmp_path):
    config = tiny_config(tmp_path, amp="bf16", channels_last=True, optim={"epochs": 1},
                         ops=[{"name": "keep_cutout", "size": 4, "saliency": "model"}])
    trainer = Trainer(config, run_dir=tmp_path / "run", quiet=True)
    seen = []
    trainer.model.register_forward_hook(lambda m, i, o: seen.append((i[0].is_contiguous(
        memory_format=torch.channels_last), o.dtype)))
    before = [p.clone() for p in trainer.model.parameters()]
    images, labels = next(iter(trainer.data.train))
    sums = trainer.train_step(images, labels)
    assert torch.isfinite(sums).all()
    assert seen[-1] == (True, torch.bfloat16)             # the training forward ran in bf16 on channels_last input
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    with pytest.raises(ValueError, match="fp16"):
        Trainer(tiny_config(tmp_path, amp="fp16"), run_dir=tmp_path / "r2", quiet=True)
