"""Compose, RandomApply and RandomChoice: semantics, per-sample selection, target harmonisation, seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from keepmix.compose import Compose, RandomApply, RandomChoice
from keepmix.erase import Cutout, RandomErasing
from keepmix.mixers import CutMix, Mixup
from keepmix.protocol import Op


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class AddConstant(Op):
    """A deterministic label-preserving op: x + c."""

    def __init__(self, c: float):
        super().__init__()
        self.c = c

    def apply(self, images, targets):
        self.last_stats = {"added": torch.tensor(self.c)}
        return images + self.c, targets


def batch(n: int = 16, k: int = 5, seed: int = 0):
    g = gen(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, k, (n,), generator=g)


# --------------------------------------------------------------------------- Compose


def test_compose_applies_ops_in_order_and_collects_stats():
    x, y = batch()
    times_two = lambda images, targets: (images * 2, targets)  # noqa: E731 - a protocol callable
    out, targets = Compose([AddConstant(1.0), times_two])(x, y)
    assert torch.allclose(out, (x + 1) * 2, atol=1e-6) and targets is y
    out, _ = Compose([times_two, AddConstant(1.0)])(x, y)
    assert torch.allclose(out, x * 2 + 1, atol=1e-6)
    op = Compose([AddConstant(1.0), lambda images, targets: images - 3.0])  # image-only callable
    out, targets = op(x, y)
    assert torch.allclose(out, x - 2.0, atol=1e-6) and targets is y
    assert set(op.last_stats) == {"0.added"}


def test_compose_with_a_mixer_equals_calling_the_ops_in_turn():
    x, y = batch()
    composed = Compose([Cutout(4, generator=gen(1)), CutMix(5, generator=gen(2))])
    out, soft = composed(x, y)
    ref_x, ref_y = Cutout(4, generator=gen(1))(x, y)
    ref_x, ref_y = CutMix(5, generator=gen(2))(ref_x, ref_y)
    assert torch.equal(out, ref_x) and torch.equal(soft, ref_y)
    assert composed.mixes_labels and "1.lam" in composed.last_stats and "0.centres" in composed.last_stats


# --------------------------------------------------------------------------- RandomApply


def test_random_apply_per_batch_frequency_and_clean_batches_get_soft_targets(chi2_pvalue):
    x, y = batch(4)
    op = RandomApply(Mixup(5, generator=gen(3)), p=0.3, generator=gen(4))
    applied = 0
    for _ in range(400):
        out, soft = op(x, y)
        assert soft.shape == (4, 5) and torch.allclose(soft.sum(1), torch.ones(4))  # always soft targets
        if bool(op.last_stats["applied"]):
            applied += 1
            assert not torch.equal(out, x)
        else:
            assert out is x and torch.equal(soft, F.one_hot(y, 5).float())
    assert chi2_pvalue([applied, 400 - applied], [120, 280]) > 1e-3


def test_random_apply_extremes_and_label_preserving_ops_keep_targets():
    x, y = batch()
    out, targets = RandomApply(AddConstant(1.0), p=1.0)(x, y)
    assert torch.allclose(out, x + 1) and targets is y
    out, targets = RandomApply(AddConstant(1.0), p=0.0)(x, y)
    assert out is x and targets is y
    out, targets = RandomApply(AddConstant(1.0), p=0.5, per_sample=True, generator=gen(5))(x, None)
    assert targets is None


def test_random_apply_per_sample_keeps_the_op_output_only_where_selected():
    x, y = batch(400)
    op = RandomApply(CutMix(5, generator=gen(6)), p=0.4, per_sample=True, generator=gen(7))
    out, soft = op(x, y)
    reference = CutMix(5, generator=gen(6))
    ref_x, ref_soft = reference(x, y)  # the op's own output on the full batch
    applied = op.last_stats["applied"]
    assert applied.shape == (400,)
    assert torch.equal(out[applied], ref_x[applied]) and torch.equal(out[~applied], x[~applied])
    assert torch.equal(soft[applied], ref_soft[applied])
    assert torch.equal(soft[~applied], F.one_hot(y[~applied], 5).float())
    assert abs(float(applied.float().mean()) - 0.4) < 4 * math.sqrt(0.24 / 400)
    assert torch.equal(op.last_stats["op.lam"], reference.last_stats["lam"])  # stats of the full-batch run


def test_random_apply_needs_num_classes_to_harmonise_class_indices():
    x, y = batch()
    op = RandomApply(lambda images, targets: (images, F.one_hot(targets, 5).float()), p=0.5, per_sample=True,
                     generator=gen(8))
    with pytest.raises(ValueError, match="num_classes"):
        op(x, y)
    op = RandomApply(lambda images, targets: (images, F.one_hot(targets, 5).float()), p=0.5, per_sample=True,
                     num_classes=5, generator=gen(8))
    _, soft = op(x, y)
    assert torch.equal(soft, F.one_hot(y, 5).float())


# --------------------------------------------------------------------------- RandomChoice


def test_random_choice_per_batch_follows_the_weights(chi2_pvalue):
    x, y = batch(2)
    op = RandomChoice([AddConstant(1.0), AddConstant(2.0), AddConstant(3.0)], weights=[1, 0, 3], generator=gen(9))
    counts = np.zeros(3)
    for _ in range(400):
        out, targets = op(x, y)
        k = int(op.last_stats["choice"])
        counts[k] += 1
        assert torch.allclose(out, x + (k + 1)) and targets is y
    assert counts[1] == 0
    assert chi2_pvalue(counts[[0, 2]], [100, 300]) > 1e-3


def test_random_choice_per_sample_each_image_gets_its_drawn_op_output(chi2_pvalue):
    """timm's Mixup/CutMix switching, per image, in one line; plus a label-preserving op harmonised to soft."""
    x, y = batch(400)
    op = RandomChoice([Mixup(5, 0.8, generator=gen(10)), CutMix(5, 1.0, generator=gen(11)),
                       RandomErasing(p=1.0, generator=gen(12))], weights=[2, 1, 1], per_sample=True,
                      generator=gen(13))
    out, soft = op(x, y)
    choice = op.last_stats["choice"]
    references = [Mixup(5, 0.8, generator=gen(10))(x, y), CutMix(5, 1.0, generator=gen(11))(x, y),
                  RandomErasing(p=1.0, generator=gen(12))(x, y)]
    for k, (ref_x, ref_y) in enumerate(references):
        picked = choice == k
        assert torch.equal(out[picked], ref_x[picked])
        expected_soft = ref_y if ref_y.ndim == 2 else F.one_hot(ref_y, 5).float()
        assert torch.equal(soft[picked], expected_soft[picked])
    assert soft.shape == (400, 5) and torch.allclose(soft.sum(1), torch.ones(400))
    assert chi2_pvalue(np.bincount(choice.numpy(), minlength=3), [200, 100, 100]) > 1e-3


def test_random_choice_label_preserving_members_return_targets_unchanged():
    x, y = batch()
    op = RandomChoice([AddConstant(1.0), AddConstant(-1.0)], per_sample=True, generator=gen(14))
    out, targets = op(x, y)
    assert targets is y
    sign = torch.where(op.last_stats["choice"] == 0, 1.0, -1.0).view(-1, 1, 1, 1)
    assert torch.allclose(out, x + sign)
    with pytest.raises(ValueError, match="mixes_labels"):
        RandomChoice([AddConstant(1.0), lambda images, targets: (images, targets.clone())], per_sample=True)(x, y)


def test_random_choice_per_batch_harmonises_when_a_member_mixes():
    x, y = batch()
    op = RandomChoice([AddConstant(0.0), Mixup(5, generator=gen(15))], weights=[1, 0], generator=gen(16))
    out, soft = op(x, y)
    assert torch.equal(soft, F.one_hot(y, 5).float()) and int(op.last_stats["choice"]) == 0


# --------------------------------------------------------------------------- seeds, nesting, errors


def pipeline(seed: int):
    return Compose([
        RandomChoice([Cutout(4, generator=gen(seed)), RandomErasing(generator=gen(seed + 1))], per_sample=True,
                     generator=gen(seed + 2)),
        RandomApply(RandomChoice([Mixup(5, generator=gen(seed + 3)), CutMix(5, generator=gen(seed + 4))],
                                 generator=gen(seed + 5)), p=0.5, per_sample=True, generator=gen(seed + 6)),
    ])


def test_nested_pipelines_are_seeded_bit_identically():
    x, y = batch(32)
    a, b, c = pipeline(0), pipeline(0), pipeline(100)
    for _ in range(3):
        out_a, soft_a = a(x, y)
        out_b, soft_b = b(x, y)
        out_c, soft_c = c(x, y)
        assert torch.equal(out_a, out_b) and torch.equal(soft_a, soft_b)
        assert not torch.equal(out_a, out_c)
    assert a.mixes_labels and soft_a.shape == (32, 5)


def test_uint8_flows_through_and_flags_are_combined():
    x = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 5, (8,))
    out, soft = pipeline(3)(x, y)
    assert out.dtype == torch.uint8 and soft.dtype == torch.float32
    assert not RandomApply(AddConstant(1.0)).mixes_labels and RandomApply(Mixup(5)).mixes_labels


@pytest.mark.parametrize("make, error", [
    (lambda: Compose([]), ValueError), (lambda: Compose(AddConstant(1.0)), TypeError),
    (lambda: Compose([AddConstant(1.0), 3]), TypeError),
    (lambda: RandomApply(AddConstant(1.0), p=1.5), ValueError), (lambda: RandomApply("op"), TypeError),
    (lambda: RandomApply(AddConstant(1.0), num_classes=0), ValueError),
    (lambda: RandomChoice([]), ValueError), (lambda: RandomChoice([AddConstant(1.0)], weights=[1, 2]), ValueError),
    (lambda: RandomChoice([AddConstant(1.0)] * 2, weights=[-1, 2]), ValueError),
    (lambda: RandomChoice([AddConstant(1.0)] * 2, weights=[0, 0]), ValueError),
    (lambda: RandomChoice([AddConstant(1.0)] * 2, weights=[1, float("nan")]), ValueError),
    (lambda: RandomChoice([AddConstant(1.0)] * 2, weights=["a", 1]), TypeError),
    (lambda: RandomChoice([AddConstant(1.0)], generator=1), TypeError),
])
def test_composition_arguments_are_checked(make, error):
    with pytest.raises(error):
        make()


def test_members_returning_the_wrong_shape_are_reported():
    x, y = batch()
    with pytest.raises(ValueError, match="shape"):
        Compose([lambda images, targets: (images[:, :1], targets)])(x, y)
    with pytest.raises(TypeError, match="return"):
        Compose([lambda images, targets: None])(x, y)
