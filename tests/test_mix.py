"""Mixing maths and GuidedMixup against the definition x̃ = M x_i + (1 − M) x_p, λ = mean(M)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from keepmix import GuidedMixup, input_checks
from keepmix.mix import guided_mask, mix_images, mix_targets
from keepmix.pairing import greedy_pairing, random_pairing, saliency_distance
from keepmix.saliency import gaussian_blur, gradient, spectral_residual


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _normalised(maps, blur=(7, 3.0)):
    """The maps GuidedMixup guides with: blurred, clamped, divided by the peak, ε added, summed to 1
    (the spec, in float64)."""
    s = gaussian_blur(maps.double(), *blur) if blur is not None else maps.double()
    s = s.clamp_min(0)
    s = s / s.amax(dim=(1, 2), keepdim=True).clamp_min(1e-300) + 1e-12     # scale-free: ε relative to the peak
    return s / s.sum(dim=(1, 2), keepdim=True)


def _expected_mix(images, targets, maps, partner, num_classes, blur=(7, 3.0)):
    s = _normalised(maps, blur)
    mask = s / (s + s[partner])
    x = images.double()
    mixed = mask.unsqueeze(1) * x + (1 - mask.unsqueeze(1)) * x[partner]
    lam = mask.mean(dim=(1, 2))
    y = F.one_hot(targets, num_classes).double()
    return mixed, lam.view(-1, 1) * y + (1 - lam.view(-1, 1)) * y[partner], lam, mask


# --------------------------------------------------------------------------- guided mask


def test_guided_mask_definition_and_complement():
    maps = torch.rand(5, 6, 4, generator=_gen(0)) + 0.01
    partner = torch.tensor([2, 0, 4, 1, 3])
    mask = guided_mask(maps, partner)
    assert mask.shape == (5, 6, 4) and mask.dtype == torch.float32
    expected = maps / (maps + maps[partner])
    np.testing.assert_allclose(mask.numpy(), expected.numpy(), rtol=1e-6)
    # the partner's share in image i is s_p / (s_i + s_p) = 1 − M_i
    share = maps[partner] / (maps + maps[partner])
    np.testing.assert_allclose((mask + share).numpy(), np.ones((5, 6, 4)), rtol=1e-6)
    assert torch.all((mask >= 0) & (mask <= 1))


def test_guided_mask_pair_swap_sums_to_one():
    maps = torch.rand(2, 7, 5, generator=_gen(1))
    partner = torch.tensor([1, 0])  # p(p(i)) = i
    mask = guided_mask(maps, partner)
    np.testing.assert_allclose((mask[0] + mask[1]).numpy(), np.ones((7, 5)), rtol=1e-6)


def test_guided_mask_zero_maps_are_defined():
    maps = torch.zeros(3, 4, 4)
    maps[0, 0, 0] = 1.0
    mask = guided_mask(maps, torch.tensor([1, 2, 0]))
    assert torch.isfinite(mask).all()
    assert mask[0, 0, 0] == 1.0 and mask[2, 0, 0] == 0.0
    assert torch.all(mask[1] == 0.5) and mask[0, 1, 1] == 0.5


# --------------------------------------------------------------------------- mix_images / mix_targets


def test_mix_images_per_pixel_and_per_image():
    g = _gen(2)
    x = torch.randn(3, 2, 4, 5, generator=g)
    partner = torch.tensor([1, 2, 0])
    ratio = torch.rand(3, 4, 5, generator=g)
    expected = ratio.unsqueeze(1) * x + (1 - ratio.unsqueeze(1)) * x[partner]
    np.testing.assert_allclose(mix_images(x, partner, ratio).numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    lam = torch.tensor([1.0, 0.0, 0.25])
    out = mix_images(x, partner, lam)
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], x[2])
    np.testing.assert_allclose(out[2].numpy(), (0.25 * x[2] + 0.75 * x[0]).numpy(), rtol=1e-5, atol=1e-6)


def test_mix_images_uint8_and_half():
    g = _gen(3)
    x = torch.randint(0, 256, (4, 3, 5, 5), generator=g, dtype=torch.uint8)
    partner = torch.tensor([3, 0, 1, 2])
    ratio = torch.rand(4, 5, 5, generator=g)
    out = mix_images(x, partner, ratio)
    assert out.dtype == torch.uint8
    expected = (ratio.unsqueeze(1).double() * x.double() + (1 - ratio.unsqueeze(1).double()) * x[partner].double())
    assert (out.double() - expected).abs().max() <= 0.5 + 1e-4
    for dtype in (torch.float16, torch.bfloat16):
        xh = torch.randn(4, 3, 5, 5, generator=g).to(dtype)
        outh = mix_images(xh, partner, ratio)
        assert outh.dtype == dtype and torch.isfinite(outh).all()
        reference = ratio.unsqueeze(1) * xh.float() + (1 - ratio.unsqueeze(1)) * xh[partner].float()
        np.testing.assert_allclose(outh.float().numpy(), reference.to(dtype).float().numpy(), rtol=1e-2, atol=1e-2)


def test_mix_targets():
    y = torch.tensor([0, 2, 1])
    partner = torch.tensor([1, 2, 0])
    lam = torch.tensor([0.7, 1.0, 0.0])
    out = mix_targets(y, partner, lam, 3)
    expected = torch.tensor([[0.7, 0.0, 0.3], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-7)
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.2, 0.3, 0.5]])
    out = mix_targets(soft, partner, lam)
    np.testing.assert_allclose(out.numpy(), (lam.view(-1, 1) * soft + (1 - lam.view(-1, 1)) * soft[partner]).numpy(),
                               atol=1e-7)
    np.testing.assert_allclose(out.sum(dim=1).numpy(), np.ones(3), rtol=1e-6)


# --------------------------------------------------------------------------- GuidedMixup


@pytest.mark.parametrize("size", [(12, 12), (7, 5), (31, 17)])
@pytest.mark.parametrize("pairing", ["greedy", "random"])
def test_guided_mixup_equals_definition(size, pairing):
    g = _gen(4)
    batch = 6
    x = torch.randn(batch, 3, *size, generator=g)
    y = torch.arange(batch)                        # one class per image: the targets name the partner
    maps = torch.rand(batch, *size, generator=g) ** 4
    mixer = GuidedMixup(batch, saliency=None, pairing=pairing, mix_prob=1.0, generator=_gen(10))
    out, soft = mixer(x, y, saliency_maps=maps)
    partner = (soft - 2 * torch.eye(batch)).argmax(dim=1)
    assert torch.all(partner != y) and len(set(partner.tolist())) == batch      # a derangement
    if pairing == "greedy":
        assert torch.equal(partner, greedy_pairing(saliency_distance(_normalised(maps).float())))
    expected, expected_soft, lam, mask = _expected_mix(x, y, maps, partner, batch)
    assert out.shape == x.shape and out.dtype == x.dtype
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    assert soft.dtype == torch.float32 and soft.shape == (batch, batch)
    np.testing.assert_allclose(soft.numpy(), expected_soft.numpy(), atol=1e-6)
    np.testing.assert_allclose(soft.sum(dim=1).numpy(), np.ones(batch), rtol=1e-6)
    np.testing.assert_allclose(mixer.last_stats["lam"].numpy(), lam.numpy(), rtol=1e-5)   # λ = mean(M)
    assert bool(mixer.last_stats["mixed"])
    np.testing.assert_allclose(mixer.last_stats["saliency_kept"].numpy(),
                               (mask * _normalised(maps)).sum(dim=(1, 2)).numpy(), rtol=1e-5)


def test_guided_mixup_guide_returns_mask_and_partner():
    maps = torch.rand(5, 8, 8, generator=_gen(5))
    x = torch.randn(5, 3, 8, 8, generator=_gen(6))
    partner, mask, normalised = GuidedMixup(3, saliency=None, blur=None).guide(x, None, maps)
    expected_partner = greedy_pairing(saliency_distance(_normalised(maps, None).float()))
    assert torch.equal(partner, expected_partner)
    np.testing.assert_allclose(normalised.numpy(), _normalised(maps, None).numpy(), rtol=1e-6)
    s = _normalised(maps, None)
    np.testing.assert_allclose(mask.numpy(), (s / (s + s[partner])).numpy(), rtol=1e-5)


def test_guided_mixup_greedy_really_mixes_with_the_greedy_partner():
    """Reconstruct, from the output alone, whom each image was mixed with: constant, distinct images."""
    batch, size = 8, (10, 10)
    values = torch.arange(1, batch + 1, dtype=torch.float32) * 10
    x = values.view(-1, 1, 1, 1).expand(batch, 3, *size).clone()
    y = torch.arange(batch)
    g = _gen(7)
    maps = torch.zeros(batch, *size)
    for b in range(batch):   # one bright blob per image at a random place: greedy ≠ a random cycle
        r, c = torch.randint(0, 8, (2,), generator=g).tolist()
        maps[b, r:r + 3, c:c + 3] = 1.0 + b
    greedy = greedy_pairing(saliency_distance(_normalised(maps).float()))
    s = _normalised(maps)
    for seed in range(6):
        mixer = GuidedMixup(batch, saliency=None, pairing="greedy", mix_prob=1.0, generator=_gen(seed))
        out, soft = mixer(x, y, saliency_maps=maps)
        used = []
        for i in range(batch):
            matches = []
            for j in range(batch):
                if j == i:
                    continue
                m = s[i] / (s[i] + s[j])
                candidate = m * values[i].double() + (1 - m) * values[j].double()
                if torch.allclose(out[i, 0].double(), candidate, rtol=1e-5, atol=1e-4):
                    matches.append(j)
            assert len(matches) == 1
            used.append(matches[0])
            # the targets name the same partner
            others = soft[i].clone()
            others[i] = -1
            assert int(others.argmax()) == matches[0]
        assert used == greedy.tolist()
    # and the random pairing would have been different
    assert not all(torch.equal(random_pairing(batch, _gen(seed)), greedy) for seed in range(6))


def test_guided_mixup_unmixed_batches():
    x = torch.randn(4, 3, 6, 6, generator=_gen(8))
    y = torch.tensor([0, 1, 2, 1])
    mixer = GuidedMixup(3, mix_prob=0.0, generator=_gen(0))
    out, soft = mixer(x, y)
    assert out is x
    assert torch.equal(soft, F.one_hot(y, 3).float())           # λ = 1, soft one-hot, no smoothing
    assert torch.equal(mixer.last_stats["lam"], torch.ones(4)) and not bool(mixer.last_stats["mixed"])
    one = GuidedMixup(3, mix_prob=1.0)
    out, soft = one(x[:1], y[:1])
    assert torch.equal(out, x[:1]) and torch.equal(soft, F.one_hot(y[:1], 3).float())
    # soft targets pass through as float32
    soft_in = torch.tensor([[0.2, 0.8, 0.0]]).double()
    assert torch.equal(one(x[:1], soft_in)[1], soft_in.float())


def test_guided_mixup_mix_probability():
    x = torch.randn(2, 1, 4, 4)
    y = torch.tensor([0, 1])
    maps = torch.rand(2, 4, 4)
    mixer = GuidedMixup(2, saliency=None, mix_prob=0.3, blur=None, generator=_gen(0))
    mixed = [mixer(x, y, saliency_maps=maps)[0] is not x for _ in range(300)]
    assert 60 < sum(mixed) < 120                                       # Binomial(300, 0.3): 90 ± 8
    always = GuidedMixup(2, saliency=None, mix_prob=1.0, blur=None, generator=_gen(0))
    assert all(always(x, y, saliency_maps=maps)[0] is not x for _ in range(20))
    assert GuidedMixup(2).mix_prob == 0.5                              # Guided-SR default
    assert GuidedMixup(2, saliency=None).mix_prob == 0.8


def test_guided_mixup_flat_and_constant_images():
    zeros = torch.zeros(4, 3, 9, 7)
    y = torch.tensor([0, 1, 2, 3])
    out, soft = GuidedMixup(4, mix_prob=1.0, generator=_gen(0))(zeros, y)
    assert torch.isfinite(out).all() and torch.isfinite(soft).all() and torch.all(out == 0)
    # constant images: spectral saliency is flat → M = 1/2 everywhere, λ = 1/2
    values = torch.tensor([1.0, 2.0, 4.0, 8.0])
    x = values.view(-1, 1, 1, 1).expand(4, 3, 9, 7).clone()
    mixer = GuidedMixup(4, mix_prob=1.0, generator=_gen(0))
    out, soft = mixer(x, y)
    np.testing.assert_allclose(mixer.last_stats["lam"].numpy(), np.full(4, 0.5), rtol=1e-5)
    partner = (soft - 0.5 * F.one_hot(y, 4)).argmax(dim=1)
    np.testing.assert_allclose(out[:, 0].numpy(), ((values + values[partner]) / 2).view(-1, 1, 1).expand(4, 9, 7)
                               .numpy(), rtol=1e-5)


def test_guided_mixup_spectral_dtypes():
    g = _gen(9)
    x8 = torch.randint(0, 256, (4, 3, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 0])
    out8, soft = GuidedMixup(3, mix_prob=1.0, generator=_gen(1))(x8, y)
    assert out8.dtype == torch.uint8 and soft.dtype == torch.float32
    reference, _ = GuidedMixup(3, mix_prob=1.0, generator=_gen(1))(x8.float(), y)
    assert (out8.float() - reference).abs().max() <= 0.5 + 1e-3
    for dtype in (torch.float16, torch.bfloat16):
        xh = (x8.float() / 255).to(dtype)
        outh, softh = GuidedMixup(3, mix_prob=1.0, generator=_gen(1))(xh, y)
        assert outh.dtype == dtype and torch.isfinite(outh).all() and torch.isfinite(softh).all()


def test_guided_mixup_gradient_saliency(make_tiny_net):
    net = make_tiny_net(num_classes=3).train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(4, 3, 8, 8, generator=_gen(11))
    y = torch.tensor([0, 1, 2, 1])
    mixer = GuidedMixup(3, saliency="gradient", model=net, mix_prob=1.0, generator=_gen(2))
    assert mixer.mix_prob == 1.0 and GuidedMixup(3, saliency="gradient", model=net).mix_prob == 0.8
    out, soft = mixer(x, y)
    maps = gradient(net, x, y, reduce="rms")                # Guided-AP: channel RMS of the CE gradient
    expected, _ = GuidedMixup(3, saliency=None, mix_prob=1.0, generator=_gen(2))(x, y, saliency_maps=maps)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(soft.sum(dim=1).numpy(), np.ones(4), rtol=1e-6)
    assert net.training and all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    with pytest.raises(TypeError, match="images"):
        mixer(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), y)


def test_guided_mixup_seeded():
    x = torch.randn(8, 3, 8, 8, generator=_gen(12))
    y = torch.arange(8)
    runs = [GuidedMixup(8, pairing="random", mix_prob=1.0, generator=_gen(s))(x, y) for s in (5, 5, 6)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][0], runs[2][0])


def test_guided_mixup_errors():
    x = torch.randn(2, 3, 6, 6)
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="mix_prob"):
        GuidedMixup(2, mix_prob=1.5)
    with pytest.raises(ValueError, match="blur"):
        GuidedMixup(2, blur=(4, 1.0))
    with pytest.raises(ValueError, match="blur"):
        GuidedMixup(2, blur=(7, 0.0))
    with pytest.raises(TypeError, match="blur"):
        GuidedMixup(2, blur=7)
    with pytest.raises(ValueError, match="pairing"):
        GuidedMixup(2, pairing="flip")
    with pytest.raises(ValueError, match="model"):
        GuidedMixup(2, saliency="gradient")
    with pytest.raises(ValueError, match="saliency"):
        GuidedMixup(2, saliency="gradcam")
    mixer = GuidedMixup(None, mix_prob=1.0)
    with pytest.raises(ValueError, match="targets"):
        mixer(x, None)
    with pytest.raises(ValueError, match="num_classes"):
        mixer(x, y)
    with pytest.raises(ValueError, match="images"):
        mixer(x[0], y)
    with pytest.raises(ValueError, match="targets"):
        mixer(x, torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="saliency_maps"):
        GuidedMixup(2, saliency=None, mix_prob=1.0)(x, y, saliency_maps=torch.rand(2, 5, 6))
    bad = x.clone()
    bad[1, 0, 0, 0] = float("nan")
    with input_checks(True):
        with pytest.raises(ValueError, match="images"):
            mixer(bad, y)


def test_spectral_default_source_is_spectral_residual():
    x = torch.randn(4, 3, 10, 10, generator=_gen(13))
    y = torch.tensor([0, 1, 2, 3])
    out, _ = GuidedMixup(4, mix_prob=1.0, generator=_gen(3))(x, y)
    expected, _ = GuidedMixup(4, saliency=None, mix_prob=1.0, generator=_gen(3))(
        x, y, saliency_maps=spectral_residual(x))
    assert torch.equal(out, expected)
