"""Ops are nn.Modules (issue 13): Sequential, .to(), printing, single C×H×W images — and a model an op
uses is never its submodule (not in its state_dict, not moved or switched by it)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import keepmix
from keepmix import (AttentiveCutMix, Compose, CutMix, Cutout, GuidedMixup, KeepCutMix, KeepCutout,
                     KeepRandomErasing, ManifoldMixup, Mixup, RandomApply, SaliencyMix, SelectivePaste, SnapMix)
from keepmix.policies import RandAugment


def gen(seed):
    return torch.Generator().manual_seed(seed)


def model_holding_ops(net):
    head = keepmix.EarlyHead(net, 5)
    return {
        "KeepCutout(model)": KeepCutout(4, saliency=net),
        "KeepCutout(early head)": KeepCutout(4, saliency=head),
        "KeepRandomErasing": KeepRandomErasing(p=1.0, saliency=net),
        "KeepCutMix": KeepCutMix(5, saliency=net),
        "SelectivePaste": SelectivePaste(RandAugment(), 4, saliency=keepmix.NormalizedInput(net, (0.5,) * 3,
                                                                                           (0.25,) * 3)),
        "SaliencyMix(model)": SaliencyMix(5, saliency=net),
        "GuidedMixup-AP": GuidedMixup(5, saliency="gradient", model=net),
        "SnapMix": SnapMix(net, 5),
        "AttentiveCutMix": AttentiveCutMix(net, 5, grid=2, top_k=1),
        "ManifoldMixup": ManifoldMixup(net, 5, layers=(0, 1)),
        "RandomApply(KeepCutout)": RandomApply(KeepCutout(4, saliency=net), p=0.5),
        "Compose": Compose([Cutout(4), KeepCutout(4, saliency=net)]),
    }


def test_every_public_op_is_a_module_that_prints_its_arguments():
    ops = [Cutout(8, value=0.5), Mixup(10, alpha=0.4), RandAugment(num_ops=1)]
    for op in ops:
        assert isinstance(op, nn.Module)
    assert repr(Cutout(8, value=0.5)).startswith("Cutout(") and "value=0.5" in repr(Cutout(8, value=0.5))
    assert "alpha=0.4" in repr(Mixup(10, alpha=0.4))
    seq = nn.Sequential(Cutout(8), Mixup(10))
    text = repr(seq)
    assert "(0): Cutout(" in text and "(1): Mixup(" in text


def test_ops_holding_a_model_have_an_empty_state_dict_and_do_not_move_it(make_tiny_net):
    net = make_tiny_net()
    reference = {k: v.clone() for k, v in net.state_dict().items()}
    for name, op in model_holding_ops(net).items():
        assert isinstance(op, nn.Module), name
        assert op.state_dict() == {}, name
        assert list(op.parameters()) == [] and list(op.children()) == [], name
        op.to(torch.float64)                     # .to() of the op leaves the model where and as it is
        assert all(p.dtype == torch.float32 for p in net.parameters()), name
        net.train()
        op.eval()                                # and so do .train()/.eval()
        assert net.training, name
        op.train()
    net.eval()
    for op in model_holding_ops(net).values():
        op.train()
    assert not net.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, reference[key])
    # the reference is still there and used
    op = KeepCutout(4, saliency=net)
    assert op.saliency.model is net


def test_module_apply_of_an_enclosing_module_reaches_the_op(make_tiny_net):
    net = make_tiny_net()
    seen = []
    wrapper = nn.Sequential(Cutout(4), KeepCutout(4, saliency=net))
    assert wrapper.apply(lambda m: seen.append(type(m).__name__)) is wrapper
    assert seen == ["Cutout", "KeepCutout", "Sequential"]   # the model held by KeepCutout is not a child


def test_sequential_chains_ops_on_images_and_on_the_pair():
    x = torch.rand(6, 3, 12, 12)
    y = torch.arange(6) % 3
    a, b = Cutout(4, generator=gen(1)), Cutout(3, generator=gen(2))
    out, targets = nn.Sequential(a, b)(x)
    a2, b2 = Cutout(4, generator=gen(1)), Cutout(3, generator=gen(2))
    expected, _ = b2(*a2(x))
    assert targets is None and torch.equal(out, expected)
    # the pair as one argument: mixers work inside Sequential too
    mixed, soft = nn.Sequential(Cutout(4, generator=gen(3)), Mixup(3, generator=gen(4)))((x, y))
    ref_x, ref_y = Mixup(3, generator=gen(4))(*Cutout(4, generator=gen(3))(x, y))
    assert torch.equal(mixed, ref_x) and torch.equal(soft, ref_y) and soft.shape == (6, 3)
    # keepmix.Compose is the same chain
    cx, cy = Compose([Cutout(4, generator=gen(3)), Mixup(3, generator=gen(4))])(x, y)
    assert torch.equal(cx, ref_x) and torch.equal(cy, ref_y)
    with pytest.raises(TypeError, match="pair"):
        Cutout(4)((x, y), y)
    with pytest.raises(TypeError, match="pair"):
        Cutout(4)((x, y, y))


@pytest.mark.parametrize("make", [lambda: Cutout(5, generator=gen(0)),
                                  lambda: keepmix.RandomErasing(p=1.0, generator=gen(0)),
                                  lambda: RandAugment(generator=gen(0)),
                                  lambda: KeepCutout(5, saliency="spectral", generator=gen(0))])
def test_label_preserving_ops_take_a_single_chw_image(make):
    image = torch.rand(3, 16, 16)
    single = make()(image)
    batch, _ = make()(image.unsqueeze(0))
    assert single.shape == (3, 16, 16) and torch.equal(single, batch[0])
    label = 2
    out, same = make()(image, label)
    assert same is label and torch.equal(out, batch[0])
    tensor_label = torch.tensor(1)
    out, same = make()((image, tensor_label))
    assert same is tensor_label and out.shape == (3, 16, 16)
    # uint8 stays uint8, C×H×W in torchvision's per-image pipelines
    pixels = (torch.rand(3, 16, 16) * 255).to(torch.uint8)
    assert make()(pixels).dtype == torch.uint8


def test_single_image_with_gradient_saliency_uses_its_label(make_tiny_net):
    net = make_tiny_net()
    image = torch.randn(3, 12, 12)
    out, label = KeepCutout(4, saliency=net, generator=gen(5))(image, 3)
    ref, _ = KeepCutout(4, saliency=net, generator=gen(5))(image.unsqueeze(0), torch.tensor([3]))
    assert label == 3 and torch.equal(out, ref[0])
    with pytest.raises(ValueError, match="one class index"):
        KeepCutout(4, saliency=net)(image, torch.tensor([1, 2]))


def test_mixers_need_a_batch():
    """From a new user's trial: a single image got only "images must have 4 dimensions"."""
    from keepmix import GuidedMixup
    with pytest.raises(ValueError, match=r"GuidedMixup mixes images of a batch: .*add a batch dimension: images\[None\]"):
        GuidedMixup(3)(torch.rand(3, 8, 8), torch.tensor(1))
    with pytest.raises(ValueError, match="Mixup mixes images of a batch: images must be B×C×H×W"):
        Mixup(3)(torch.rand(3, 8, 8), 1)
    with pytest.raises(ValueError, match="CutMix mixes images of a batch: images must be B×C×H×W"):
        CutMix(3)(torch.rand(3, 8, 8), torch.tensor(1))
    with pytest.raises(ValueError, match="4 dimensions"):  # other shapes: the batch check's own message
        Mixup(3)(torch.rand(8, 8), torch.tensor(1))
