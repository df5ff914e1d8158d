"""Failure kinds from public bug reports of augmentation libraries, replayed on keepmix.

Each test starts from the reported input and then covers the whole kind: every op it could reach.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from keepmix import (Cutout, GuidedMixup, KeepCutMix, KeepCutout, KeepRandomErasing, RandomErasing, SaliencyMix,
                     SelectivePaste)
from keepmix.convert import Normalize
from keepmix.erase import GridMask
from keepmix.saliency import NormalizedInput, gradient


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _confident_model(channels=3, classes=10, bias=15.0, seed=0):
    """The reported model: a class bias of 15, so p(y) ≈ 1 − 3e-6 and CE's gradient is tiny."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))
    with torch.no_grad():
        model[-1].bias.zero_()
        model[-1].bias[3] = bias
    return model.eval()


# --------------------------------------------------------------------------- autocast and half precision


@pytest.mark.parametrize("reduce", ["rms", "max"])
def test_gradient_saliency_ignores_the_callers_autocast_and_the_models_precision(reduce):
    """Reported: under autocast(float16) or on a .half() model, gradient(..., reduce='rms') of a confident
    model returned exactly 0 for every image (8×3×16×16, bias 15, labels = that class)."""
    model = _confident_model()
    x = torch.randn(8, 3, 16, 16, generator=_gen(1))
    y = torch.full((8,), 3)
    reference = gradient(model, x, y, reduce=reduce)
    assert bool((reference.flatten(1).amax(dim=1) > 0).all())
    for dtype in (torch.float16, torch.bfloat16):
        with torch.autocast("cpu", dtype=dtype):
            under = gradient(model, x, y, reduce=reduce)
        assert torch.equal(under, reference), dtype                  # the pass runs outside the caller's autocast
    half = gradient(_confident_model().half(), x, y, reduce=reduce)
    assert half.dtype == torch.float32
    # float16 rounding, not underflow: each image's scale within 2 %, the maps' shape kept
    ratio = (half.flatten(1).sum(dim=1) / reference.flatten(1).sum(dim=1))
    assert bool(((ratio - 1).abs() < 2e-2).all()), ratio
    assert float(torch.corrcoef(torch.stack([half.flatten(), reference.flatten()]))[0, 1]) > 0.999


def test_gradient_saliency_rms_is_exact_for_any_margin():
    """At margins 15, 60 and 80 nats the CE input gradient is ~1e-6…1e-35: compare with float64 autograd
    seeded with ∂CE/∂ℓ written stably (p_k at k ≠ y, −Σ_{k≠y} p_k at y; autograd of cross_entropy itself
    rounds p_y − 1 to 0 beyond ~37 nats even in float64)."""
    for bias in (15.0, 60.0, 80.0):
        model = _confident_model(bias=bias).double()
        x = torch.randn(4, 3, 8, 8, generator=_gen(2), dtype=torch.float64)
        y = torch.full((4,), 3)
        x_req = x.clone().requires_grad_(True)
        logits = model(x_req)
        p = logits.softmax(dim=1)
        others = p.clone()
        others[:, 3] = 0
        seed = others.clone()
        seed[:, 3] = -others.sum(dim=1)
        (g,) = torch.autograd.grad(logits, x_req, grad_outputs=seed)
        expected = g.pow(2).mean(dim=1).sqrt()
        maps = gradient(model, x, y, reduce="rms")
        assert float(expected.max()) > 0
        torch.testing.assert_close(maps.double(), expected, rtol=1e-5, atol=0)


def test_guided_ap_under_fp16_autocast_does_not_degenerate_to_a_constant_mask():
    model = _confident_model()
    x = torch.randn(8, 3, 16, 16, generator=_gen(3))
    y = torch.full((8,), 3)
    with torch.autocast("cpu", dtype=torch.float16):
        out, soft = GuidedMixup(10, saliency="gradient", model=model, mix_prob=1.0, generator=_gen(4))(x, y)
    ref, soft_ref = GuidedMixup(10, saliency="gradient", model=model, mix_prob=1.0, generator=_gen(4))(x, y)
    assert torch.equal(out, ref) and torch.equal(soft, soft_ref)
    # the mask follows the saliency: no image is the constant 50/50 blend of itself and any other
    halves = (x.unsqueeze(1) + x.unsqueeze(0)) / 2                   # [i, j] = (x_i + x_j) / 2
    distance = (out.unsqueeze(1) - halves).abs().amax(dim=(2, 3, 4))
    distance.fill_diagonal_(float("inf"))
    assert float(distance.min()) > 0.05


# --------------------------------------------------------------------------- scale of the maps


OPS_WITH_MAPS = {
    "keep_cutout": lambda g: KeepCutout(6, generator=g),
    "keep_cutout_clip": lambda g: KeepCutout(6, clip=True, generator=g),
    "keep_random_erasing": lambda g: KeepRandomErasing(p=1.0, generator=g),
    "keep_cut_mix": lambda g: KeepCutMix(5, generator=g),
    "keep_cut_mix_clip": lambda g: KeepCutMix(5, clip=True, generator=g),
    "selective_paste": lambda g: SelectivePaste(lambda im: 1 - im, 6, generator=g),
    "guided_mixup": lambda g: GuidedMixup(5, saliency=None, mix_prob=1.0, generator=g),
    "guided_mixup_random_pairs": lambda g: GuidedMixup(5, saliency=None, pairing="random", mix_prob=1.0, generator=g),
    "saliency_mix": lambda g: SaliencyMix(5, saliency=None, generator=g),
    "saliency_mix_greedy": lambda g: SaliencyMix(5, saliency=None, pairing="greedy", generator=g),
}


@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(sorted(OPS_WITH_MAPS)), exponent=st.integers(-110, 127), seed=st.integers(0, 1000))
def test_every_op_is_invariant_to_the_scale_of_its_maps(name, exponent, seed):
    """Reported: normalize_sum(s·1e-12) differed from normalize_sum(s) by 0.91 in L1, so Guided-AP maps of
    confident images flattened into plain mixup. Any positive rescaling (here 2^k, exact in float32) of the
    maps leaves every op's output unchanged — up to 2^127 (maps near float32's top overflowed the window sums:
    other boxes, or an IndexError with clip=True), and down to 2^-110."""
    g = _gen(seed)
    x = torch.rand(6, 3, 12, 12, generator=g)
    y = torch.arange(6) % 5
    maps = torch.rand(6, 12, 12, generator=g) ** 4
    scale = math.ldexp(1.0, exponent)
    out_a, t_a = OPS_WITH_MAPS[name](_gen(seed + 1))(x, y, saliency_maps=maps)
    out_b, t_b = OPS_WITH_MAPS[name](_gen(seed + 1))(x, y, saliency_maps=maps * scale)
    torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(t_a, t_b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(OPS_WITH_MAPS))
@pytest.mark.parametrize("exponent", [126, 127])
def test_maps_at_the_top_of_the_float_range_select_as_at_scale_one(name, exponent):
    """The reported inputs of the top of the range, pinned (the property test above may not draw them)."""
    g = _gen(11)
    x = torch.rand(6, 3, 12, 12, generator=g)
    y = torch.arange(6) % 5
    maps = torch.rand(6, 12, 12, generator=g) ** 4
    out_a, t_a = OPS_WITH_MAPS[name](_gen(12))(x, y, saliency_maps=maps)
    out_b, t_b = OPS_WITH_MAPS[name](_gen(12))(x, y, saliency_maps=maps * math.ldexp(1.0, exponent))
    torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(t_a, t_b, rtol=1e-5, atol=1e-6)


def test_guided_mixup_on_tiny_maps_is_not_plain_mixup():
    """The reported consequence: maps of scale 1e-12 must still guide the mask."""
    x = torch.rand(4, 3, 16, 16, generator=_gen(5))
    y = torch.arange(4)
    maps = torch.rand(4, 16, 16, generator=_gen(6)) ** 4
    a = GuidedMixup(4, saliency=None, mix_prob=1.0, generator=_gen(7))(x, y, saliency_maps=maps)[0]
    b = GuidedMixup(4, saliency=None, mix_prob=1.0, generator=_gen(7))(x, y, saliency_maps=maps * 1e-12)[0]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- per-channel fills


FILL_OPS = {
    "cutout": lambda v: Cutout(8, value=v),
    "random_erasing": lambda v: RandomErasing(p=1.0, value=v),
    "grid_mask": lambda v: GridMask((4, 8), value=v, p=1.0),
    "keep_cutout": lambda v: KeepCutout(8, value=v, saliency="spectral"),
    "keep_random_erasing": lambda v: KeepRandomErasing(p=1.0, value=v, saliency="spectral"),
}


@pytest.mark.parametrize("name", sorted(FILL_OPS))
@pytest.mark.parametrize("channels", [1, 4])
def test_per_channel_fill_with_the_wrong_channel_count_is_a_value_error(name, channels):
    """Reported: Cutout(8, value=(0.1, 0.2, 0.3)) on 4×1×16×16 returned 4×3×16×16; on 4 channels a bare
    broadcasting error."""
    x = torch.rand(4, channels, 16, 16)
    with pytest.raises(ValueError, match=rf"value has 3 per-channel values but the images have {channels} channel"):
        FILL_OPS[name]((0.1, 0.2, 0.3))(x, torch.arange(4))


@pytest.mark.parametrize("name", sorted(FILL_OPS))
def test_per_channel_fill_is_written_per_channel(name):
    x = torch.full((6, 3, 16, 16), 0.5)
    out, _ = FILL_OPS[name]((0.1, 0.2, 0.3))(x, torch.arange(6))
    assert out.shape == x.shape
    changed = (out != x).any(dim=1)
    assert bool(changed.any())
    for c, v in enumerate((0.1, 0.2, 0.3)):
        assert torch.allclose(out[:, c][changed], torch.tensor(v))


# --------------------------------------------------------------------------- normalisation channel counts


def test_normalized_input_refuses_a_channel_mismatch_like_normalize():
    """Reported: NormalizedInput(model, mean3, std3) broadcast a 1-channel batch to a fake RGB copy."""
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)
    source = NormalizedInput(lambda im, t: im.mean(dim=1), mean, std)
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="1 channel but mean/std have 3"):
        source(x)
    with pytest.raises(ValueError, match="1 channel but mean/std have 3"):
        Normalize(mean, std)(x)
    with pytest.raises(ValueError, match="same number of channels"):
        NormalizedInput(lambda im, t: im.mean(dim=1), (0.5, 0.5), (0.2,) * 3)
    single = NormalizedInput(lambda im, t: im.mean(dim=1), (0.5,), (0.25,))      # one value serves every channel
    torch.testing.assert_close(single(torch.full((2, 3, 4, 4), 0.75)), torch.ones(2, 4, 4))


# --------------------------------------------------------------------------- inference mode


def test_gradient_ops_work_on_images_made_under_inference_mode():
    """Reported: images created under torch.inference_mode() made KeepCutout(8, saliency=model) and Guided-AP
    raise a PyTorch internal error. They work, inside and outside inference mode, with the same maps."""
    model = _confident_model(bias=0.0)
    with torch.inference_mode():
        x = torch.randn(4, 3, 16, 16, generator=_gen(8))
    y = torch.tensor([0, 1, 2, 3])
    plain = x.clone()
    expected = gradient(model, plain, y)
    torch.testing.assert_close(gradient(model, x, y), expected)
    with torch.inference_mode():
        torch.testing.assert_close(gradient(model, x, y).clone(), expected)
    for scale in (1.0, 0.5):
        out, _ = KeepCutout(8, saliency=model, scale=scale, generator=_gen(9))(x, y)
        ref, _ = KeepCutout(8, saliency=model, scale=scale, generator=_gen(9))(plain, y)
        assert torch.equal(out, ref)
    out, soft = GuidedMixup(4, saliency="gradient", model=model, mix_prob=1.0, generator=_gen(10))(x, y)
    ref, soft_ref = GuidedMixup(4, saliency="gradient", model=model, mix_prob=1.0, generator=_gen(10))(plain, y)
    assert torch.equal(out, ref) and torch.equal(soft, soft_ref)


@pytest.mark.parametrize("name", sorted(OPS_WITH_MAPS))
def test_float64_maps_beyond_float32s_range_select_as_at_scale_one(name):
    """Found in review: float64 maps of ~7e300 passed the finiteness check, then became inf in the cast to
    float32 (KeepCutout(clip=True): IndexError; the other Keep ops: other boxes). They now reach float32
    through an exact power-of-two rescale."""
    g = _gen(21)
    x = torch.rand(6, 3, 12, 12, generator=g)
    y = torch.arange(6) % 5
    maps = torch.rand(6, 12, 12, generator=g, dtype=torch.float64) ** 4
    out_a, t_a = OPS_WITH_MAPS[name](_gen(22))(x, y, saliency_maps=maps)
    out_b, t_b = OPS_WITH_MAPS[name](_gen(22))(x, y, saliency_maps=maps * 7e300)
    torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(t_a, t_b, rtol=1e-5, atol=1e-6)


def test_guided_mixup_names_its_own_saliency_strings():
    """From a new user's trial: GuidedMixup(saliency='grad') listed only 'spectral' and 'random'."""
    with pytest.raises(ValueError, match="'spectral' \\(Guided-SR\\), 'gradient' \\(Guided-AP, with model=\\) or "
                                         "'random'.*got 'grad'"):
        GuidedMixup(10, saliency="grad")
