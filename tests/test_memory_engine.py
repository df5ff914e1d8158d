"""The saliency memory in the training engine: written by the step's own backward with the parameters'
gradients bit-identical to a step without it, read by ``saliency: memory`` / ``pairing: memory`` ops with
fallback counts in the metrics, saved and resumed with the checkpoint, all-gathered under 2-rank DDP."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch

from keepmix.memory import MemoryPairing, MemorySaliency, SaliencyMemory
from keepmix.recipes import BuildContext, build_op, config_from_dict
from keepmix.train import Trainer, load_checkpoint

from test_train import DDP_ENV, tiny_config


def _first_batch(trainer):
    batch = next(iter(trainer.data.train))
    return batch[0], batch[1], batch.geometry


@pytest.mark.parametrize("ops,runtime", [([{"name": "cutout", "length": 6}], {}), ([{"name": "mixup"}], {}), ([], {}),
                                         ([{"name": "cutout", "length": 6}], {"amp": "bf16", "channels_last": True})])
def test_writing_the_memory_leaves_the_parameter_gradients_bit_identical(tmp_path, ops, runtime):
    config = tiny_config(tmp_path, ops=ops, optim={"epochs": 1}, **runtime)
    plain = Trainer(config, run_dir=tmp_path / "a", quiet=True)
    with_memory = Trainer(config, run_dir=tmp_path / "b", quiet=True)
    with_memory.memory = with_memory._make_memory(with_memory.data)
    with_memory.augment.track_own = True
    for trainer in (plain, with_memory):
        torch.manual_seed(11)  # the ops' draws from the global generator
        images, labels, geometry = _first_batch(trainer)
        trainer.train_step(images, labels, geometry)
    for (name, a), b in zip(plain.model.named_parameters(), with_memory.model.parameters()):
        assert torch.equal(a.grad, b.grad), name
        assert torch.equal(a, b), name
    assert int(with_memory.memory.written.sum()) == geometry.index.shape[0]
    assert with_memory.memory.written[geometry.index].all()


def test_memory_arm_trains_falls_back_in_the_first_epoch_only_and_logs_it(tmp_path):
    ops = [{"name": "keep_cutout", "size": 6, "clip": True, "saliency": "memory"}]
    config = tiny_config(tmp_path, ops=ops, optim={"epochs": 2}, data={"crop_padding": 2})
    trainer = Trainer(config, run_dir=tmp_path / "run", quiet=True)
    assert isinstance(trainer.augment.normalized[0][1].saliency, MemorySaliency)
    assert trainer.memory.reduce == "max" and trainer.memory.dtype == torch.float16
    trainer.fit()
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    # 12 images, batches of 6: epoch 1 reads nothing written yet; every sample is written by its end
    assert float(rows[0]["memory.fallback"]) == 1.0 and float(rows[0]["keep_cutout.memory_fallback"]) == 1.0
    assert float(rows[0]["memory.written"]) == 1.0
    assert float(rows[1]["memory.fallback"]) == 0.0 and float(rows[1]["keep_cutout.memory_fallback_count"]) == 0.0
    assert float(rows[1]["memory.age"]) == 1.0
    assert "keep_cutout.own" not in rows[0]


def test_guided_ap_reads_an_rms_memory_and_mixers_pair_on_it(tmp_path):
    ops = [{"name": "guided_ap", "saliency": "memory", "pairing": "greedy", "mix_prob": 1.0},
           {"name": "mixup", "pairing": "memory", "prob": 0.5}]
    config = tiny_config(tmp_path, ops=ops, optim={"epochs": 2}, memory={"fallback": "spectral", "scale": 0.5})
    trainer = Trainer(config, run_dir=tmp_path / "run", quiet=True)
    assert trainer.memory.reduce == "rms" and trainer.memory.resolution == (8, 8)
    mixup = trainer.augment.normalized[1][1]
    assert isinstance(mixup.pairing, MemoryPairing)
    trainer.fit()
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert float(rows[1]["guided_ap.memory_fallback"]) < 1.0
    assert 0.0 < float(rows[1]["memory.written"]) <= 1.0


@pytest.mark.slow
def test_resume_restores_the_memory_bit_identically(tmp_path):
    ops = [{"name": "keep_cutout", "size": 6, "saliency": "memory"}]
    changes = dict(ops=ops, optim={"epochs": 3}, max_steps_per_epoch=1)  # epochs walk on through the loader
    straight = Trainer(tiny_config(tmp_path, **changes), run_dir=tmp_path / "a", quiet=True)
    straight.fit()
    first = Trainer(tiny_config(tmp_path, **changes), run_dir=tmp_path / "b", quiet=True)
    first.fit(stop_after_epoch=1)
    assert load_checkpoint(tmp_path / "b")["memory"]["written"].sum() == 6
    resumed = Trainer(tiny_config(tmp_path, **changes), run_dir=tmp_path / "b", resume=tmp_path / "b", quiet=True)
    assert torch.equal(resumed.memory.maps, first.memory.maps) and torch.equal(resumed.memory._seen, first.memory._seen)
    resumed.fit()
    for key in ("maps", "written", "stamp"):
        assert torch.equal(getattr(straight.memory, key), getattr(resumed.memory, key)), key
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


def test_without_a_memory_the_ops_get_the_fallback_source():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 3))
    ctx = BuildContext(model=model, num_classes=3, memory_fallback="spectral")
    op = build_op({"name": "keep_cutout", "saliency": "memory"}, ctx)
    assert type(op.saliency).__name__ == "SpectralSaliency"          # what an unwritten memory gives
    mixer = build_op({"name": "mixup", "pairing": "memory"}, ctx)
    assert mixer.pairing == "greedy"
    memory = SaliencyMemory(4, (8, 8))
    ctx = BuildContext(model=model, num_classes=3, memory=lambda: memory, memory_fallback="model")
    op = build_op({"name": "keep_cutout", "saliency": "memory", "scale": 0.5}, ctx)
    assert isinstance(op.saliency, MemorySaliency) and op.saliency.fallback.scale == 0.5


def test_memory_section_is_checked():
    with pytest.raises(ValueError, match="memory.fallback"):
        config_from_dict({"memory": {"fallback": "fresh"}})
    with pytest.raises(ValueError, match="memory.scale"):
        config_from_dict({"memory": {"scale": 2}})


DDP_MEMORY_RECIPE = (
    "name: ddp\nprogress: false\ntensorboard: false\nmax_steps_per_epoch: 3\n"
    "data: {name: salient_shapes, kwargs: {n_per_class: 8, num_classes: 3, image_size: 16, object_size: 5}}\n"
    "model: {name: resnet_small}\noptim: {epochs: 2, batch_size: 8, lr: 0.05}\n"
    "memory: {fallback: uniform}\n"
    "ops: [{name: keep_cutout, size: 4, saliency: memory}]\n")


@pytest.mark.slow
def test_two_gloo_ranks_share_one_memory_through_torchrun(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(DDP_MEMORY_RECIPE)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m",
               "keepmix.cli", "train", str(recipe), "--output-dir", str(tmp_path / "runs")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=DDP_ENV, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = list(csv.DictReader(open(tmp_path / "runs" / "ddp" / "metrics.csv")))
    # 24 images, 3 global batches of 8: each rank writes its 4 per step and gathers the other's 4
    assert float(rows[0]["memory.written"]) == 1.0 and float(rows[0]["memory.fallback"]) == 1.0
    assert float(rows[1]["memory.fallback"]) == 0.0 and float(rows[1]["memory.fallback_count"]) == 0.0
    checkpoint = load_checkpoint(tmp_path / "runs" / "ddp")
    assert bool(checkpoint["memory"]["written"].all()) and bool(checkpoint["memory"]["seen"].all())
