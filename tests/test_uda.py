"""UDA (semi-supervised): TSA schedules and losses against their formulas and hand computations, gradients
through the strong view only, the labelled split, a 2-epoch run whose logged losses match a hand computation
from the logits it trained on, exact resume, KeepRandAugment without labels, and config errors by field."""

from __future__ import annotations

import csv
import math
import re

import pytest
import torch
import torch.nn.functional as F

from keepmix.engine.semi import SemiTrainer, labeled_split
from keepmix.keep import KeepRandAugment
from keepmix.losses import TSA_SCHEDULES, tsa_cross_entropy, tsa_mask, tsa_threshold, uda_consistency
from keepmix.recipes import apply_overrides, config_from_dict
from keepmix.saliency import NormalizedInput, gradient
from keepmix.train import Trainer

from test_saliency import _assert_same, _snapshot
from test_train import tiny_config

# --------------------------------------------------------------------------- TSA threshold


@pytest.mark.parametrize("schedule, step, expected", [
    # K = 10, T = 100: η = α·(1 − 1/10) + 1/10
    ("linear", 0, 0.1), ("linear", 25, 0.25 * 0.9 + 0.1), ("linear", 100, 1.0),
    ("log", 0, 0.1), ("log", 20, (1 - math.exp(-1.0)) * 0.9 + 0.1), ("log", 100, (1 - math.exp(-5.0)) * 0.9 + 0.1),
    ("exp", 0, math.exp(-5.0) * 0.9 + 0.1), ("exp", 80, math.exp(-1.0) * 0.9 + 0.1), ("exp", 100, 1.0),
    ("none", 0, 1.0), ("none", 50, 1.0),
])
def test_tsa_threshold_matches_the_schedules(schedule, step, expected):
    assert tsa_threshold(step, 100, 10, schedule) == pytest.approx(expected, rel=1e-12)


def test_tsa_threshold_hand_values_and_shape():
    assert tsa_threshold(25, 100, 10, "linear") == pytest.approx(0.325)
    assert tsa_threshold(20, 100, 10, "log") == pytest.approx(0.66890850, rel=1e-7)
    assert tsa_threshold(80, 100, 10, "exp") == pytest.approx(0.43109150, rel=1e-7)
    assert tsa_threshold(150, 100, 10, "linear") == 1.0               # beyond T counts as T
    assert tsa_threshold(3, 10, 1, "log") == 1.0                      # one class: 1/K = 1
    for schedule in TSA_SCHEDULES:                                    # η rises from 1/K towards 1
        values = [tsa_threshold(t, 50, 4, schedule) for t in range(51)]
        assert all(a <= b for a, b in zip(values, values[1:])), schedule
        assert 0.25 <= values[0] and values[-1] <= 1.0
    # log releases the signal early, exp late
    assert tsa_threshold(10, 100, 10, "log") > tsa_threshold(10, 100, 10, "linear") > tsa_threshold(10, 100, 10, "exp")


@pytest.mark.parametrize("kwargs, name", [
    ({"step": -1}, "step"), ({"step": 1.5}, "step"), ({"total": 0}, "total"), ({"num_classes": 0}, "num_classes"),
    ({"schedule": "cosine"}, "schedule"),
])
def test_tsa_threshold_errors_name_the_argument(kwargs, name):
    args = {"step": 1, "total": 10, "num_classes": 10, "schedule": "linear", **kwargs}
    with pytest.raises(ValueError, match=name):
        tsa_threshold(**args)


# --------------------------------------------------------------------------- TSA cross-entropy

LOGITS = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
TARGETS = torch.tensor([0, 1, 1])
# probability of the true class: e²/(e² + 2) = 0.78699, 1/3, e³/(e³ + 2) = 0.90944


def test_tsa_mask_and_cross_entropy_by_hand():
    assert tsa_mask(LOGITS, TARGETS, 0.5).tolist() == [False, True, False]
    assert tsa_mask(LOGITS, TARGETS, 0.8).tolist() == [True, True, False]
    loss, kept = tsa_cross_entropy(LOGITS, TARGETS, 0.5)                # only row 1: CE = log 3
    assert loss.item() == pytest.approx(math.log(3.0), rel=1e-6) and kept.item() == pytest.approx(1 / 3)
    loss, kept = tsa_cross_entropy(LOGITS, TARGETS, 0.8)                # rows 0 and 1, mean over the kept
    p0 = math.exp(2) / (math.exp(2) + 2)
    assert loss.item() == pytest.approx((-math.log(p0) + math.log(3.0)) / 2, rel=1e-6)
    assert loss.item() == pytest.approx(0.669080, rel=1e-5) and kept.item() == pytest.approx(2 / 3)
    loss, kept = tsa_cross_entropy(LOGITS, TARGETS, 1.0)                # η = 1: plain cross-entropy
    assert loss.item() == pytest.approx(F.cross_entropy(LOGITS, TARGETS).item(), rel=1e-6) and kept.item() == 1.0
    loss, _ = tsa_cross_entropy(LOGITS, TARGETS, 1.0, label_smoothing=0.1)
    assert loss.item() == pytest.approx(F.cross_entropy(LOGITS, TARGETS, label_smoothing=0.1).item(), rel=1e-6)


def test_tsa_cross_entropy_that_keeps_nothing_is_zero_with_zero_gradient():
    logits = LOGITS.clone().requires_grad_(True)
    loss, kept = tsa_cross_entropy(logits, TARGETS, 0.05)               # every p > 1/K > 0.05
    assert loss.item() == 0.0 and kept.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_tsa_cross_entropy_errors():
    with pytest.raises(TypeError, match="targets"):
        tsa_cross_entropy(LOGITS, TARGETS.float(), 0.5)
    with pytest.raises(ValueError, match="targets"):
        tsa_cross_entropy(LOGITS, TARGETS[:2], 0.5)
    with pytest.raises(ValueError, match="threshold"):
        tsa_cross_entropy(LOGITS, TARGETS, 1.5)
    with pytest.raises(ValueError, match="logits"):
        tsa_cross_entropy(LOGITS[0], TARGETS, 0.5)
    with pytest.raises(ValueError, match="class indices"):
        tsa_cross_entropy(LOGITS, torch.tensor([0, 1, 3]), 0.5)


# --------------------------------------------------------------------------- consistency

WEAK = torch.tensor([[2.0, 0.0, 0.0], [0.5, 0.0, 0.0]])
STRONG = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])


def _hand_consistency(weak, strong, temperature, threshold):
    """UDA's term written out with Python floats: softmax, sharpening, mask, KL, mean over the batch."""
    total, masked = 0.0, 0
    for zw, zs in zip(weak.tolist(), strong.tolist()):
        p = [math.exp(v) / sum(math.exp(u) for u in zw) for v in zw]
        q = [math.exp(v / temperature) / sum(math.exp(u / temperature) for u in zw) for v in zw]
        ps = [math.exp(v) / sum(math.exp(u) for u in zs) for v in zs]
        if max(p) > threshold:
            masked += 1
            total += sum(qk * (math.log(qk) - math.log(pk)) for qk, pk in zip(q, ps))
    return total / len(weak), masked / len(weak)


def test_consistency_by_hand():
    # row 0: p = softmax(2, 0, 0), max 0.787 > 0.6 → in; q = softmax(4, 0, 0) = (0.96466, 0.01767, 0.01767);
    #        log softmax(1, 1, 0) = (−0.86201, −0.86201, −1.86201); KL = 0.79685 − 0.05608 − 0.03841 = 0.70236
    # row 1: p = softmax(0.5, 0, 0), max 0.452 ≤ 0.6 → out.   Loss = 0.70236 / 2, mask ratio 1/2.
    loss, mask = uda_consistency(WEAK, STRONG, temperature=0.5, threshold=0.6)
    assert loss.item() == pytest.approx(0.35118, abs=2e-5) and mask.item() == 0.5
    assert loss.item() == pytest.approx(_hand_consistency(WEAK, STRONG, 0.5, 0.6)[0], rel=1e-6)
    for temperature, threshold in [(0.4, 0.8), (1.0, 0.0), (0.4, 0.4), (2.0, 0.3)]:
        weak, strong = torch.randn(5, 4) * 2, torch.randn(5, 4) * 2
        expected, ratio = _hand_consistency(weak, strong, temperature, threshold)
        loss, mask = uda_consistency(weak, strong, temperature, threshold)
        assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-7) and mask.item() == pytest.approx(ratio)


def test_consistency_without_sharpening_or_mask_is_kl_divergence():
    weak, strong = torch.randn(6, 5), torch.randn(6, 5)
    loss, mask = uda_consistency(weak, strong, temperature=1.0, threshold=0.0)
    expected = F.kl_div(F.log_softmax(strong, 1), F.softmax(weak, 1), reduction="batchmean")
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and mask.item() == 1.0


def test_gradient_flows_only_through_the_strong_view():
    weak = (torch.randn(4, 3) * 2).requires_grad_(True)
    strong = torch.randn(4, 3).requires_grad_(True)
    loss, mask = uda_consistency(weak, strong, temperature=0.4, threshold=0.5)
    loss.backward()
    assert weak.grad is None                                             # the target is a constant
    # ∂/∂z_s KL(q ‖ softmax(z_s)) = softmax(z_s) − q, per masked row, divided by B
    keep = (weak.detach().softmax(1).amax(1) > 0.5).float().view(-1, 1)
    expected = (strong.detach().softmax(1) - (weak.detach() / 0.4).softmax(1)) * keep / 4
    assert torch.allclose(strong.grad, expected, atol=1e-6)


def test_consistency_degenerate_inputs_stay_finite():
    weak = torch.tensor([[1e4, 0.0, -1e4], [0.0, 0.0, 0.0]])
    strong = torch.tensor([[-1e4, 0.0, 1e4], [0.0, 0.0, 0.0]]).requires_grad_(True)
    loss, mask = uda_consistency(weak, strong, temperature=0.01, threshold=1.0)   # the mask keeps nothing
    assert loss.item() == 0.0 and mask.item() == 0.0
    loss.backward()
    assert torch.equal(strong.grad, torch.zeros_like(strong))
    loss, _ = uda_consistency(weak, strong.detach(), temperature=0.01, threshold=0.5)
    assert torch.isfinite(loss) and loss.item() > 0


def test_consistency_errors_name_the_argument():
    with pytest.raises(ValueError, match="same shape"):
        uda_consistency(WEAK, STRONG[:1])
    with pytest.raises(ValueError, match="temperature"):
        uda_consistency(WEAK, STRONG, temperature=0.0)
    with pytest.raises(ValueError, match="threshold"):
        uda_consistency(WEAK, STRONG, threshold=1.5)
    with pytest.raises(TypeError, match="logits_weak"):
        uda_consistency(WEAK.long(), STRONG)
    with pytest.raises(ValueError, match="logits_strong"):
        uda_consistency(WEAK, STRONG[0])


# --------------------------------------------------------------------------- the labelled split


def test_labeled_split_is_class_balanced_seeded_and_the_rest_is_unlabelled():
    labels = torch.arange(3).repeat_interleave(torch.tensor([10, 7, 12]))
    labelled, unlabelled = labeled_split(labels, 6, 3, seed=4)
    assert torch.bincount(labels[labelled], minlength=3).tolist() == [2, 2, 2]
    assert sorted(torch.cat([labelled, unlabelled]).tolist()) == list(range(29))
    assert torch.equal(labelled, labeled_split(labels, 6, 3, seed=4)[0])
    assert any(not torch.equal(labelled, labeled_split(labels, 6, 3, seed=s)[0]) for s in range(5, 9))
    with pytest.raises(ValueError, match="semi.labels"):
        labeled_split(labels, 7, 3, seed=0)                              # not a multiple of K
    with pytest.raises(ValueError, match="semi.labels"):
        labeled_split(labels, 24, 3, seed=0)                             # class 1 has 7 < 8
    with pytest.raises(ValueError, match="semi.labels"):
        labeled_split(labels, 30, 3, seed=0)                             # nothing left unlabelled


# --------------------------------------------------------------------------- a run


def semi_config(tmp_path, ops=None, **semi):
    """SalientShapes 16 px, 3 classes × 8 images: 6 labelled (batch 3), 18 unlabelled (batch 6): 3 steps an epoch."""
    return tiny_config(tmp_path, data={"kwargs": {"n_per_class": 8, "num_classes": 3, "image_size": 16,
                                                  "object_size": 5}},
                       optim={"batch_size": 3, "epochs": 2, "lr": 0.05},
                       semi={"labels": 6, "unlabeled_ratio": 2, "temperature": 0.4, "threshold": 0.4,
                             "tsa": "linear", "weight": 1.0, **semi},
                       ops=ops if ops is not None else [{"name": "rand_augment", "num_ops": 2, "magnitude": 9}])


def _metrics(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
@pytest.mark.parametrize("strong", ["rand_augment", "keep_rand_augment"])
def test_two_epoch_run_logs_the_hand_computed_losses(tmp_path, strong):
    ops = [{"name": strong, "num_ops": 2, "magnitude": 9}]
    if strong == "keep_rand_augment":
        ops[0].update(size=8, tau=0.6, scale=0.5, saliency="model")
    config = semi_config(tmp_path, ops=ops)
    trainer = Trainer(config, quiet=True)
    assert isinstance(trainer, SemiTrainer) and trainer.steps_per_epoch == 3
    b, u = 3, 6
    seen = []  # the logits of every training forward (labelled | weak | strong); saliency passes have B = u
    trainer.model.register_forward_hook(
        lambda module, inputs, output: seen.append(output.detach().clone()) if output.shape[0] == b + 2 * u else None)
    labels_seen = []
    step = trainer.train_step

    def recording_step(labeled, unlabeled, geometry=None):
        labels_seen.append(labeled[1].clone())
        return step(labeled, unlabeled, geometry)
    trainer.train_step = recording_step
    trainer.fit()
    rows = _metrics(tmp_path / config.name / "metrics.csv")
    assert len(rows) == 2 and len(seen) == 6
    total = 2 * 3
    for epoch, row in enumerate(rows):
        cons, mask, sup, kept = [], [], [], []
        for s in range(epoch * 3, epoch * 3 + 3):
            logits, y = seen[s], labels_seen[s]
            c, m = _hand_consistency(logits[b:b + u], logits[b + u:], 0.4, 0.4)
            cons.append(c), mask.append(m)
            eta = (s / total) * (1 - 1 / 3) + 1 / 3                     # linear TSA, K = 3, T = 6
            p = logits[:b].softmax(1)[torch.arange(b), y]
            keep = p <= eta
            ce = -logits[:b].log_softmax(1)[torch.arange(b), y]
            sup.append(float((ce * keep).sum() / max(1, int(keep.sum())))), kept.append(float(keep.float().mean()))
        assert float(row["train_consistency"]) == pytest.approx(sum(cons) / 3, rel=1e-5, abs=1e-7)
        assert float(row["train_mask"]) == pytest.approx(sum(mask) / 3, rel=1e-6)
        assert float(row["train_sup"]) == pytest.approx(sum(sup) / 3, rel=1e-5)
        assert float(row["train_tsa"]) == pytest.approx(sum(kept) / 3, rel=1e-6)
        assert float(row["train_loss"]) == pytest.approx(sum(sup) / 3 + sum(cons) / 3, rel=1e-5)
        assert float(row["tsa_threshold"]) == pytest.approx((epoch * 3 + 2) / total * (2 / 3) + 1 / 3)
    assert sum(float(r["train_consistency"]) for r in rows) > 0             # the strong view did act
    if strong == "keep_rand_augment":
        assert "keep_rand_augment.saliency_kept" in rows[0]


@pytest.mark.slow
def test_semi_run_resumes_exactly(tmp_path):
    straight = Trainer(semi_config(tmp_path / "a"), quiet=True)
    straight.fit()
    first = Trainer(semi_config(tmp_path / "b"), quiet=True)
    first.fit(stop_after_epoch=1)
    resumed = Trainer(semi_config(tmp_path / "b"), quiet=True, resume=first.run_dir)
    resumed.fit()
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert [r["train_consistency"] for r in straight.history] == [r["train_consistency"] for r in resumed.history]


# --------------------------------------------------------------------------- KeepRandAugment without labels


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_keep_rand_augment_without_labels_leaves_the_model_untouched(make_tiny_net, mode):
    net = make_tiny_net(num_classes=5)
    net.stem[0].weight.requires_grad_(False)
    if mode == "train":
        net.train()
    elif mode == "eval":
        net.eval()
    else:
        net.train()
        net.block1.eval()
    for index, p in enumerate(net.parameters()):                          # gradients a step left behind
        p.grad = torch.full_like(p, 0.01 * (index + 1))
    grads = [p.grad.clone() for p in net.parameters()]
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    op = KeepRandAugment(size=8, saliency=NormalizedInput(net, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
                         generator=torch.Generator().manual_seed(0))
    before = _snapshot({"net": net})
    out, targets = op(images, None)
    assert targets is None and out.shape == images.shape
    _assert_same(before, _snapshot({"net": net}))                         # parameters, buffers, modes, flags
    assert all(torch.equal(p.grad, g) for p, g in zip(net.parameters(), grads))


def test_keep_rand_augment_without_labels_uses_the_predicted_class(make_tiny_net):
    net = make_tiny_net(num_classes=5).eval()
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    source = NormalizedInput(net, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    with torch.no_grad():
        predicted = net(source.normalize(images)).argmax(1)
    assert torch.equal(source(images, None), gradient(net, source.normalize(images), predicted))
    unlabelled, _ = KeepRandAugment(size=8, saliency=source, generator=torch.Generator().manual_seed(1))(images, None)
    labelled, _ = KeepRandAugment(size=8, saliency=source, generator=torch.Generator().manual_seed(1))(images, predicted)
    assert torch.equal(unlabelled, labelled)
    other = (predicted + 1) % 5                                          # another class gives other maps
    assert not torch.equal(source(images, None), gradient(net, source.normalize(images), other))


# --------------------------------------------------------------------------- config errors


@pytest.mark.parametrize("change, field", [
    ({"semi": {"labels": 0}}, "semi.labels"),
    ({"semi": {"labels": 30, "unlabeled_ratio": 0}}, "semi.unlabeled_ratio"),
    ({"semi": {"labels": 30, "weight": -1.0}}, "semi.weight"),
    ({"semi": {"labels": 30, "temperature": 0.0}}, "semi.temperature"),
    ({"semi": {"labels": 30, "threshold": 1.5}}, "semi.threshold"),
    ({"semi": {"labels": 30, "tsa": "cosine"}}, "semi.tsa"),
    ({"semi": {"labels": 30}, "jsd_weight": 12.0}, "jsd_weight"),
    ({"semi": {"labels": 30}, "early_head": True}, "early_head"),
    ({"semi": {"labels": 30}, "ops": [{"name": "keep_cutout", "saliency": "early_head"}]}, "early_head"),
    ({"semi": {"labels": 30}, "ops": [{"name": "keep_cutout", "saliency": "memory"}]}, "ops"),
    ({"semi": {"labels": 30}, "data": {"loader": "stream"}}, "data.loader"),
    ({"semi": {"labels": 30}, "ops": [{"name": "rand_augment"}, {"name": "mixup"}]}, "ops[1] mixes labels"),
])
def test_config_errors_name_the_field(change, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        config_from_dict(change)


def test_semi_off_by_default_and_build_errors_name_the_field(tmp_path):
    assert not config_from_dict({}).semi.enabled and not isinstance(Trainer(tiny_config(tmp_path), quiet=True),
                                                                    SemiTrainer)
    with pytest.raises(ValueError, match="semi.labels"):                  # 7 labels for 3 classes
        Trainer(semi_config(tmp_path, labels=7), quiet=True)
    with pytest.raises(ValueError, match="semi.labels"):                  # 24 images: none left unlabelled
        Trainer(semi_config(tmp_path, labels=24), quiet=True)
    with pytest.raises(ValueError, match="semi.labels"):                  # 3 labels give no batch of 4
        Trainer(apply_overrides(semi_config(tmp_path, labels=3), ["optim.batch_size=4"]), quiet=True)
    with pytest.raises(ValueError, match="semi.unlabeled_ratio"):         # 21 unlabelled, no batch of 8 × 3
        Trainer(apply_overrides(semi_config(tmp_path, labels=3), ["optim.batch_size=3", "semi.unlabeled_ratio=8"]),
                quiet=True)
    with pytest.raises(ValueError, match="mixes labels"):
        Trainer(semi_config(tmp_path, ops=[{"name": "mixup"}]), quiet=True)
    with pytest.raises(ValueError, match="data"):
        from keepmix.train import prepare_data, Distributed
        config = semi_config(tmp_path)
        SemiTrainer(config, quiet=True, data=prepare_data(config, torch.device("cpu"), Distributed(), raw=True))
