"""The streaming path in the engine: `keepmix train imagefolder` on a folder of JPEGs, the ImageNet recipes (built,
printed and smoke-run on a tiny generated ImageFolder), exact mid-epoch resume, linear learning-rate scaling,
two gloo ranks under torchrun (each sample once per epoch, metrics reduced over ranks), and saliency passes on
the unwrapped model inside DDP (no gradient all-reduce, buffers untouched)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from keepmix.recipes import OptimConfig, config_from_dict, expand_arms, load_recipe
from keepmix.train import Distributed, Trainer, evaluate, learning_rate, load_checkpoint, prepare_data

PIL = pytest.importorskip("PIL.Image")
REPO = Path(__file__).resolve().parents[1]
DDP_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


def jpeg_folder(root: Path, train_per_class: int = 6, val_per_class: int = 2, classes=("ant", "bee", "cat"),
                seed: int = 0) -> Path:
    """ROOT/{train,val}/<class>/*.jpg: smooth random images of assorted sizes (30–70 px a side)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                h, w = (int(v) for v in rng.integers(30, 70, 2))
                base = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3)).astype(np.uint8)
                image = PIL.fromarray(base).resize((w, h), PIL.Resampling.BILINEAR)
                image.save(folder / f"{name}_{k}.jpg", quality=90)
    return root


def rows(path: Path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------- learning-rate scaling


def test_lr_and_min_lr_scale_linearly_with_the_global_batch():
    base = dict(lr=0.1, min_lr=0.01, epochs=2, schedule="cosine", base_batch_size=256)
    assert learning_rate(0, 10, OptimConfig(batch_size=1024, **base)) == pytest.approx(0.4)
    assert learning_rate(19, 10, OptimConfig(batch_size=1024, **base)) == pytest.approx(
        0.04 + 0.36 * 0.5 * (1 + np.cos(np.pi * 19 / 20)))
    assert learning_rate(0, 10, OptimConfig(batch_size=64, schedule="constant", lr=0.1, base_batch_size=256)) == \
        pytest.approx(0.025)
    assert learning_rate(0, 10, OptimConfig(batch_size=1024, schedule="constant", lr=0.1)) == 0.1   # no rule set
    with pytest.raises(ValueError, match="base_batch_size"):
        config_from_dict({"optim": {"base_batch_size": 0}}).validate()


# --------------------------------------------------------------------------- keepmix train imagefolder


@pytest.mark.slow
def test_imagefolder_recipe_trains_streaming_from_jpegs_and_evaluates(tmp_path, capsys):
    from keepmix.cli import main
    root = jpeg_folder(tmp_path / "photos")
    out = tmp_path / "runs"
    code = main(["train", "imagefolder", "--data-root", str(root), "--epochs", "1", "--batch-size", "6",
                 "--max-steps", "2", "--output-dir", str(out), "--set", "data.image_size=32",
                 "--set", "data.eval_resize=36", "--set", "data.workers=2", "--set", "optim.warmup_epochs=0",
                 "--quiet"])
    assert code == 0
    run_dir = out / "imagefolder" / "keep_cutmix"
    history = rows(run_dir / "metrics.csv")
    assert len(history) == 1 and history[0]["step"] == "2"
    assert 0 < float(history[0]["keep_cut_mix.lam"]) <= 1                # the keepmix op ran on every batch
    checkpoint = load_checkpoint(run_dir)
    assert checkpoint["config"]["data"]["loader"] == "stream" and checkpoint["config"]["data"]["crop"] == "resized"
    assert checkpoint["ranks"][0]["loader"]["batch_index"] == 2          # the stream's position is checkpointed
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run_dir), "--json", "--device", "cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["count"] == 6 and metrics["loss"] == pytest.approx(float(history[0]["val_loss"]), rel=1e-6)


def test_a_folder_without_val_is_told_about_val_fraction(tmp_path, capsys):
    from keepmix.cli import main
    root = jpeg_folder(tmp_path / "photos", train_per_class=2, val_per_class=0)
    (root / "val").rename(tmp_path / "elsewhere")
    assert main(["train", "imagefolder", "--data-root", str(root), "--print-config"]) == 0
    capsys.readouterr()
    assert main(["train", "imagefolder", "--data-root", str(root), "--output-dir", str(tmp_path / "runs")]) == 2
    assert "--set data.val_fraction=0.1" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_file_backed_sets_choose_their_loader_by_size(tmp_path):
    from keepmix.engine.streaming import resolve_loader
    root = jpeg_folder(tmp_path / "photos", train_per_class=2, val_per_class=1)
    spec = config_from_dict({"data": {"name": "imagefolder", "root": str(root), "eval_split": "val",
                                      "image_size": 32}}).data
    assert resolve_loader(spec) == "memory"                            # 6 · 3 · 32² bytes: fits
    spec.memory_limit_gb = 6 * 3 * 32 * 32 / 2 ** 30 * 0.99
    assert resolve_loader(spec) == "stream"
    spec.memory_limit_gb, spec.crop = 4.0, "resized"
    assert resolve_loader(spec) == "stream"                            # random-resized crops need the workers
    assert resolve_loader(config_from_dict({"data": {"name": "cifar10"}}).data) == "memory"


# --------------------------------------------------------------------------- exact resume


def stream_config(tmp_path, root, workers, **changes):
    config = {"name": "s", "output_dir": str(tmp_path), "progress": False, "tensorboard": False,
              "data": {"name": "imagefolder", "root": str(root), "eval_split": "val", "loader": "stream",
                       "image_size": 24, "eval_resize": 28, "workers": workers, "crop_scale": [0.25, 1.0]},
              "model": {"name": "resnet_small"}, "max_steps_per_epoch": 2,
              "optim": {"epochs": 2, "batch_size": 6, "lr": 0.05},
              "ops": [{"name": "keep_cutout", "size": 8, "saliency": "memory"}, {"name": "guided_sr", "mix_prob": 1.0}]}
    config.update(changes)
    return config_from_dict(config)


@pytest.mark.slow
def test_stop_mid_epoch_and_resume_is_bit_identical_to_an_uninterrupted_stream_run(tmp_path):
    """18 images, batch 6: 3 batches per loader epoch, 2 steps per training epoch — epoch 1 stops inside the loader's
    epoch 0, epoch 2 finishes it and starts the loader's epoch 1. Resumed with another number of workers, the run
    ends bit-identical to the one that never stopped (model, saliency memory, every metric)."""
    root = jpeg_folder(tmp_path / "photos")
    straight = Trainer(stream_config(tmp_path, root, 2), run_dir=tmp_path / "straight", quiet=True)
    straight.fit()
    first = Trainer(stream_config(tmp_path, root, 0), run_dir=tmp_path / "resumed", quiet=True)
    first.fit(stop_after_epoch=1)
    state = load_checkpoint(tmp_path / "resumed")["ranks"][0]["loader"]
    assert (state["epoch"], state["batch_index"]) == (0, 2)               # mid-epoch
    resumed = Trainer(stream_config(tmp_path, root, 1), run_dir=tmp_path / "resumed", resume=tmp_path / "resumed",
                      quiet=True)
    resumed.fit()
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(straight.memory.maps, resumed.memory.maps)
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]
    assert [r["val_loss"] for r in straight.history] == [r["val_loss"] for r in resumed.history]


# --------------------------------------------------------------------------- the ImageNet recipes


def test_imagenet_recipes_carry_the_papers_settings():
    keep = dict(expand_arms(load_recipe("keepaugment/t6_imagenet_resnet50")))
    assert set(keep) == {"autoaugment", "keep_autoaugment", "keep_autoaugment_low_res", "keep_autoaugment_early_loss",
                         "cutmix", "keep_cutmix", "keep_cutmix_low_res", "keep_cutmix_early_loss"}
    c = keep["keep_cutmix_low_res"]
    assert (c.model.name, c.optim.epochs, c.optim.batch_size, c.optim.base_batch_size, c.optim.lr) == \
        ("resnet50", 300, 256, 256, 0.1)
    assert (c.optim.milestones, c.optim.weight_decay) == ([75, 150, 225], 1e-4)
    assert (c.data.name, c.data.loader, c.data.crop, c.data.image_size, c.data.eval_resize) == \
        ("imagenet", "stream", "resized", 224, 256)
    assert c.data.crop_scale == [0.08, 1.0] and c.data.crop_ratio == pytest.approx([3 / 4, 4 / 3])
    assert c.ops[0]["scale"] == 0.5 and c.ops[0]["tau"] == 0.6
    paste = keep["keep_autoaugment"].ops[0]
    assert paste["size"] == 40 and paste["transform"] == {"name": "auto_augment", "policy": "imagenet"}
    assert keep["keep_cutmix_early_loss"].ops[0]["saliency"] == "early_head" and c.early_head_weight == 0.3
    assert load_recipe("keepaugment/t6_imagenet_resnet101").model.name == "resnet101"
    guided = dict(expand_arms(load_recipe("guidedmixup/t5_imagenet_resnet50")))
    g = guided["guided_ap"]
    assert (g.model.name, g.optim.epochs, g.data.name, g.data.crop) == ("resnet50", 100, "imagenet", "resized")
    assert guided["augmix"].jsd_weight == 12.0
    fgvc = load_recipe("guidedmixup/t3_cub_resnet50")
    assert (fgvc.data.loader, fgvc.data.crop, fgvc.data.image_size) == ("stream", "resized", 224)


@pytest.mark.parametrize("recipe", ["keepaugment/t6_imagenet_resnet50", "keepaugment/t6_imagenet_resnet101",
                                    "guidedmixup/t5_imagenet_resnet50", "imagefolder"])
def test_scale_recipes_print_their_config(recipe, capsys):
    from keepmix.cli import main
    assert main(["train", recipe, "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "loader: stream" in text and "crop: resized" in text


@pytest.mark.slow
def test_imagenet_recipes_smoke_run_on_a_tiny_imagefolder(tmp_path):
    from keepmix.cli import main
    root = jpeg_folder(tmp_path / "imagenet", train_per_class=3, val_per_class=1)
    small = ["--epochs", "1", "--max-steps", "1", "--batch-size", "4", "--output-dir", str(tmp_path / "runs"),
             "--set", "data.image_size=64", "--set", "data.eval_resize=73", "--set", "data.workers=1", "--quiet"]
    # the recipe as it is (ResNet-50) for one arm; the policy + early-head and Guided-AP paths on a ResNet-18
    assert main(["train", "keepaugment/t6_imagenet_resnet50", "--data-root", str(root), "--arm", "keep_cutmix_low_res",
                 *small]) == 0
    assert main(["train", "keepaugment/t6_imagenet_resnet50", "--data-root", str(root), "--model", "resnet18",
                 "--arm", "keep_autoaugment_early_loss", "--name", "t6_resnet18", *small]) == 0
    assert main(["train", "guidedmixup/t5_imagenet_resnet50", "--data-root", str(root), "--model", "resnet18",
                 "--arm", "guided_ap", "--name", "t5_resnet18", *small]) == 0
    for arm in ("keepaugment/t6_imagenet_resnet50/keep_cutmix_low_res", "t6_resnet18/keep_autoaugment_early_loss",
                "t5_resnet18/guided_ap"):
        history = rows(tmp_path / "runs" / arm / "metrics.csv")
        assert len(history) == 1 and float(history[0]["val_top1"]) >= 0


# --------------------------------------------------------------------------- two ranks


STREAM_DDP_RECIPE = """name: ddp
progress: false
tensorboard: false
data: {{name: imagefolder, root: {root}, eval_split: val, loader: stream, image_size: 16, eval_resize: 18, workers: 1}}
model: {{name: resnet_small}}
optim: {{epochs: 2, batch_size: 8, lr: 0.05}}
ops: [{{name: keep_cutout, size: 4, saliency: memory}}]
"""


@pytest.mark.slow
def test_two_gloo_ranks_stream_each_sample_once_per_epoch_and_reduce_the_metrics(tmp_path):
    """24 images, global batch 8 on 2 ranks: 3 steps of 4 images per rank. After epoch 1 the all-gathered memory
    holds all 24 samples and 24 reads fell back: the 24 reads were 24 distinct samples, each read by one rank
    once. The evaluation printed by the job (sums over the ranks' shares) is that of the saved model."""
    root = jpeg_folder(tmp_path / "photos", train_per_class=8, val_per_class=3)
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(STREAM_DDP_RECIPE.format(root=root))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "keepmix.cli",
               "train", str(recipe), "--output-dir", str(tmp_path / "runs")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=DDP_ENV, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    history = rows(tmp_path / "runs" / "ddp" / "metrics.csv")
    assert [r["step"] for r in history] == ["3", "6"]
    assert float(history[0]["memory.written"]) == 1.0
    assert float(history[0]["memory.fallback_count"]) == 24.0            # summed over both ranks
    assert float(history[1]["memory.fallback_count"]) == 0.0             # every sample was written in epoch 1
    checkpoint = load_checkpoint(tmp_path / "runs" / "ddp")
    assert [r["loader"]["rank"] for r in checkpoint["ranks"]] == [0, 1]
    config = config_from_dict(checkpoint["config"])
    data = prepare_data(config, torch.device("cpu"), Distributed(), raw=False)
    from keepmix.models import build_model
    model = build_model("resnet_small", 3)
    model.load_state_dict(checkpoint["model"])
    metrics = evaluate(model, data.eval_batches(), device=torch.device("cpu"))
    assert metrics["count"] == 9
    assert metrics["loss"] == pytest.approx(float(history[-1]["val_loss"]), rel=1e-6)
    assert metrics["top1"] == pytest.approx(float(history[-1]["val_top1"]))


SALIENCY_IN_DDP = r'''
import json, os, sys
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from keepmix.models import build_model
from keepmix.saliency import EarlyHead, gradient
from keepmix import KeepCutout, GuidedMixup

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = build_model("resnet_small", 3)
head = EarlyHead(model, 3)
net = DistributedDataParallel(model)
calls = []
def counting(state, bucket):
    calls.append(1)
    return allreduce_hook(state, bucket)
net.register_comm_hook(None, counting)
g = torch.Generator().manual_seed(rank)
x, y = torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 3, (4,), generator=g)

def ddp_step():
    net(x).logsumexp(1).mean().backward()

def saliency_passes():
    gradient(model, x, y)
    gradient(model, x, y, scale=0.5)
    head.saliency(x, y)
    KeepCutout(8, saliency=model)(x, y)
    GuidedMixup(3, saliency="gradient", model=model, mix_prob=1.0)(x, y)

report = {}
buffers = {k: v.clone() for k, v in model.named_buffers()}
saliency_passes()                               # before any DDP step
report["calls_before"] = len(calls)
report["grads_before"] = sum(p.grad is not None for p in model.parameters())
report["buffers_before"] = all(torch.equal(v, dict(model.named_buffers())[k]) for k, v in buffers.items())
ddp_step()
after_step = len(calls)
grads = [p.grad.clone() for p in model.parameters()]
buffers = {k: v.clone() for k, v in model.named_buffers()}
saliency_passes()                               # between two DDP steps, as in the engine
report["calls_step"] = after_step
report["calls_between"] = len(calls) - after_step
report["grads_between"] = all(torch.equal(a, p.grad) for a, p in zip(grads, model.parameters()))
report["buffers_between"] = all(torch.equal(v, dict(model.named_buffers())[k]) for k, v in buffers.items())
model.zero_grad(set_to_none=True)
ddp_step()                                      # DDP still works: its reducer expected nothing from the passes
report["calls_second"] = len(calls) - after_step
flat = torch.cat([p.grad.flatten() for p in model.parameters()])
others = [torch.zeros_like(flat) for _ in range(2)]
dist.all_gather(others, flat)
report["grads_equal_over_ranks"] = torch.equal(others[0], others[1])
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as handle:
    json.dump(report, handle)
dist.barrier()              # no rank leaves while its peer still has a collective in flight (gloo aborts otherwise)
del net                     # the reducer's pending work goes before the group does
dist.destroy_process_group()
'''


@pytest.mark.slow
def test_saliency_passes_on_the_unwrapped_model_inside_ddp_do_not_all_reduce_or_touch_buffers(tmp_path):
    script = tmp_path / "saliency_in_ddp.py"
    script.write_text(SALIENCY_IN_DDP)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", str(script),
               str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=DDP_ENV, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    for rank in range(2):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["calls_before"] == 0 and report["calls_between"] == 0, report   # no gradient all-reduce
        assert report["grads_before"] == 0 and report["grads_between"], report         # parameter grads untouched
        assert report["buffers_before"] and report["buffers_between"], report          # BN statistics untouched
        assert report["calls_step"] > 0 and report["calls_second"] == report["calls_step"], report
        assert report["grads_equal_over_ranks"], report
