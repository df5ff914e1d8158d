"""Keep variants of the image-level policies (SelectivePaste presets) and the Normalize op."""

import pytest
import torch

import keepmix
from keepmix import policies
from keepmix.regions import quantile_threshold, sample_windows, window_scores

PRESETS = [
    (keepmix.KeepAutoAugment, policies.AutoAugment, {}),
    (keepmix.KeepRandAugment, policies.RandAugment, {"num_ops": 2, "magnitude": 9}),
    (keepmix.KeepTrivialAugment, policies.TrivialAugmentWide, {}),
    (keepmix.KeepAugMix, policies.AugMix, {}),
]


def _maps(batch, h, w, seed=3):
    return torch.rand(batch, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("keep_cls,policy_cls,kwargs", PRESETS)
def test_keep_policy_is_policy_plus_paste_of_a_high_saliency_window(keep_cls, policy_cls, kwargs):
    x = torch.randint(0, 256, (6, 3, 12, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6)
    maps = _maps(6, 12, 10)
    out, targets = keep_cls(4, 0.6, generator=torch.Generator().manual_seed(7), **kwargs)(x, y, saliency_maps=maps)
    assert targets is y and out.dtype == torch.uint8 and out.shape == x.shape

    # replay: the op draws its window first, then the policy draws from the same generator
    g = torch.Generator().manual_seed(7)
    policy = policy_cls(generator=g, **kwargs)
    scores = window_scores(maps, 4)
    thr = quantile_threshold(scores, 0.6)
    picked = sample_windows(scores, thr, below=False, generator=g)
    expected = policy(x, y)[0]
    for b in range(6):
        t, l_ = int(picked.top[b]), int(picked.left[b])
        assert scores[b, t, l_] > thr[b]
        window = (slice(None), slice(t, t + 4), slice(l_, l_ + 4))
        assert torch.equal(out[b][window], x[b][window])
        outside = torch.ones(12, 10, dtype=torch.bool)
        outside[t:t + 4, l_:l_ + 4] = False
        assert torch.equal(out[b][:, outside], expected[b][:, outside])


def test_keep_policy_with_model_saliency_normalises_for_the_model():
    from keepmix.models import resnet18_cifar
    model = resnet18_cifar(5)
    source = keepmix.NormalizedInput(model, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    seen = {}

    def keep_input(module, inputs, output):
        seen.setdefault("input", inputs[0].detach())

    hook = model.stem.register_forward_hook(keep_input)
    keepmix.KeepRandAugment(8, saliency=source)(x, torch.arange(3))
    hook.remove()
    assert torch.allclose(seen["input"], (x.float() / 255 - 0.5) / 0.25)


def test_normalize_op():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    out, t = keepmix.Normalize((0.1, 0.2, 0.3), (0.5, 0.5, 0.25))(x, None)
    mean = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 0.5, 0.25]).view(1, 3, 1, 1)
    assert t is None and out.dtype == torch.float32
    assert torch.allclose(out, (x.float() / 255 - mean) / std)
    xf = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    assert torch.allclose(keepmix.Normalize((0.1, 0.2, 0.3), (0.5, 0.5, 0.25))(xf)[0], ((xf - mean) / std).float())
    with pytest.raises(ValueError, match="std"):
        keepmix.Normalize((0.0,), (0.0,))
    with pytest.raises(ValueError, match="channels"):
        keepmix.Normalize((0.1, 0.2), (1.0, 1.0))(x)


def test_guided_aug_setting_composes_augmix_normalize_and_guided_ap():
    from keepmix.models import resnet18_cifar
    model = resnet18_cifar(4)
    pipeline = keepmix.Compose([policies.AugMix(generator=torch.Generator().manual_seed(1)),
                                keepmix.Normalize((0.5,) * 3, (0.25,) * 3),
                                keepmix.GuidedMixup(4, saliency="gradient", model=model, mix_prob=1.0)])
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    out, soft = pipeline(x, torch.arange(4))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.allclose(soft.sum(1), torch.ones(4))


@pytest.mark.parametrize("name", ["keep_auto_augment", "keep_rand_augment", "keep_trivial_augment", "keep_aug_mix"])
def test_recipe_presets_run_on_raw_pixels_with_normalised_model_saliency(name):
    from keepmix.models import resnet18_cifar
    from keepmix.recipes import BuildContext, build_op, op_space
    from keepmix.saliency import NormalizedInput
    from keepmix.train import _spec_has_policy
    ctx = BuildContext(model=resnet18_cifar(4), num_classes=4, mean=(0.5,) * 3, std=(0.25,) * 3)
    op = build_op({"name": name}, ctx)
    assert op_space(op) == "raw" and _spec_has_policy({"name": name})
    assert isinstance(op.saliency, NormalizedInput)  # the model sees normalised images
