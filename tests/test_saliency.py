"""Saliency maps against analytic gradients, autograd references and a NumPy spectral residual;
model state preserved by every saliency pass."""

from __future__ import annotations

import math
import copy

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
import torch
from torch import nn
import torch.nn.functional as F

from keepmix import input_checks
from keepmix.saliency import (EarlyHead, EarlyHeadSaliency, GradientSaliency, SpectralSaliency, as_source,
                              compute_maps, gaussian_blur, gaussian_kernel1d, gradient, normalize_sum,
                              spectral_residual)


class LinearNet(nn.Module):
    """logits = W · vec(x) + b: the input gradient of logit y is W_y, of the CE Σ_k (p_k − y_k) W_k."""

    def __init__(self, channels, height, width, classes, seed=0):
        super().__init__()
        self.shape = (channels, height, width)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.fc = nn.Linear(channels * height * width, classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _images(batch, channels, height, width, seed=0):
    return torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(seed))


def _weight_maps(net, rows):
    """Rows of K×(CHW) reshaped to B×C×H×W."""
    return rows.view(rows.shape[0], *net.shape)


# --------------------------------------------------------------------------- gradient saliency: analytic


def test_gradient_max_is_channel_max_of_label_row():
    net = LinearNet(3, 5, 4, classes=6)
    x = _images(4, 3, 5, 4)
    y = torch.tensor([0, 5, 2, 2])
    maps = gradient(net, x, y)
    expected = _weight_maps(net, net.fc.weight.detach()[y]).abs().amax(dim=1)
    assert maps.shape == (4, 5, 4) and maps.dtype == torch.float32
    np.testing.assert_allclose(maps.numpy(), expected.numpy(), rtol=1e-6, atol=1e-7)


def test_gradient_rms_is_channel_rms_of_cross_entropy_gradient():
    net = LinearNet(3, 4, 6, classes=5, seed=1)
    x = _images(3, 3, 4, 6, seed=1)
    y = torch.tensor([4, 0, 1])
    maps = gradient(net, x, y, reduce="rms")
    with torch.no_grad():
        p = torch.softmax(net(x), dim=1)
        g = (p - F.one_hot(y, 5).float()) @ net.fc.weight   # ∂CE/∂vec(x) per sample
    expected = _weight_maps(net, g).pow(2).mean(dim=1).sqrt()
    np.testing.assert_allclose(maps.numpy(), expected.numpy(), rtol=1e-5, atol=1e-7)


def test_gradient_soft_targets_and_predicted_class():
    net = LinearNet(2, 3, 3, classes=4, seed=2)
    x = _images(3, 2, 3, 3, seed=2)
    soft = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.1, 0.2, 0.3, 0.4]])
    expected = _weight_maps(net, soft @ net.fc.weight.detach()).abs().amax(dim=1)
    np.testing.assert_allclose(gradient(net, x, soft).numpy(), expected.numpy(), rtol=1e-5, atol=1e-7)
    # soft rms: Σ_k (p_k − t_k) W_k
    with torch.no_grad():
        g = (torch.softmax(net(x), 1) - soft) @ net.fc.weight
    np.testing.assert_allclose(gradient(net, x, soft, reduce="rms").numpy(),
                               _weight_maps(net, g).pow(2).mean(dim=1).sqrt().numpy(), rtol=1e-5, atol=1e-7)
    # no targets: the predicted class
    with torch.no_grad():
        predicted = net(x).argmax(dim=1)
    np.testing.assert_allclose(gradient(net, x).numpy(), gradient(net, x, predicted).numpy())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_gradient_other_float_dtypes(dtype):
    net = LinearNet(3, 4, 4, classes=3)
    x = _images(2, 3, 4, 4).to(dtype)
    y = torch.tensor([1, 2])
    maps = gradient(net, x, y, reduce="rms")
    assert maps.dtype == torch.float32 and torch.isfinite(maps).all()
    np.testing.assert_allclose(maps.numpy(), gradient(net, x.float(), y, reduce="rms").numpy(), rtol=1e-6)


def test_gradient_rejects_uint8_and_bad_arguments():
    net = LinearNet(3, 4, 4, classes=3)
    x = _images(2, 3, 4, 4)
    y = torch.tensor([0, 1])
    with pytest.raises(TypeError, match="images"):
        gradient(net, (x * 40).clamp(0, 255).to(torch.uint8), y)
    with pytest.raises(TypeError, match="model"):
        gradient(lambda z: z, x, y)
    with pytest.raises(ValueError, match="reduce"):
        gradient(net, x, y, reduce="mean")
    with pytest.raises(ValueError, match="bn"):
        gradient(net, x, y, bn="freeze")
    for scale in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="scale"):
            gradient(net, x, y, scale=scale)
    with pytest.raises(ValueError, match="targets"):
        gradient(net, x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="targets"):
        gradient(net, x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="images"):
        gradient(net, x[0], y)


# --------------------------------------------------------------------------- gradient saliency: autograd


def _autograd_map(model, x, y, reduce):
    x = x.clone().requires_grad_(True)
    logits = model(x)
    objective = logits.gather(1, y.view(-1, 1)).sum() if reduce == "max" else \
        F.cross_entropy(logits, y, reduction="sum")
    (g,) = torch.autograd.grad(objective, x)
    return g.abs().amax(dim=1) if reduce == "max" else g.pow(2).mean(dim=1).sqrt()


@pytest.mark.parametrize("size", [(8, 8), (7, 5), (31, 17)])
def test_gradient_low_resolution_at_full_shape(make_tiny_net, size):
    net = make_tiny_net()
    x = _images(3, 3, *size, seed=3)
    y = torch.tensor([0, 1, 4])
    maps = gradient(net, x, y, scale=0.5)
    assert maps.shape == (3, *size) and torch.isfinite(maps).all() and (maps >= 0).all()
    # reference: bicubic downsample, autograd at low resolution (eval mode), bilinear back to H×W
    small = F.interpolate(x, size=(round(size[0] * 0.5), round(size[1] * 0.5)), mode="bicubic",
                          align_corners=False)
    low = _autograd_map(copy.deepcopy(net).eval(), small, y, "max")
    expected = F.interpolate(low.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
    np.testing.assert_allclose(maps.numpy(), expected.numpy(), rtol=1e-5, atol=1e-7)


def test_gradient_eval_mode_is_per_image(make_tiny_net):
    net = make_tiny_net().train()
    x = _images(4, 3, 6, 6, seed=4)
    y = torch.tensor([0, 1, 2, 3])
    maps = gradient(net, x, y, bn="eval")
    reference = _autograd_map(copy.deepcopy(net).eval(), x, y, "max")
    np.testing.assert_allclose(maps.numpy(), reference.numpy(), rtol=1e-5, atol=1e-8)
    alone = gradient(net, x[2:3], y[2:3], bn="eval")
    np.testing.assert_allclose(maps[2:3].numpy(), alone.numpy(), rtol=1e-5, atol=1e-8)


def test_gradient_train_bn_uses_batch_statistics(make_tiny_net):
    net = make_tiny_net(dropout=0.0).train()
    x = _images(4, 3, 6, 6, seed=5)
    y = torch.tensor([3, 1, 2, 0])
    maps = gradient(net, x, y, reduce="rms", bn="train")
    reference = _autograd_map(copy.deepcopy(net).train(), x, y, "rms")
    np.testing.assert_allclose(maps.numpy(), reference.numpy(), rtol=1e-4, atol=1e-8)
    assert not np.allclose(maps.numpy(), gradient(net, x, y, reduce="rms", bn="eval").numpy(), rtol=1e-3)


# --------------------------------------------------------------------------- model state


def _snapshot(modules):
    state = {}
    for tag, module in modules.items():
        state[tag] = ({k: v.detach().clone() for k, v in module.state_dict().items()},
                      [(name, m.training) for name, m in module.named_modules()],
                      [(name, p.requires_grad) for name, p in module.named_parameters()])
    return state


def _assert_same(before, after):
    for tag in before:
        sd_before, modes_before, flags_before = before[tag]
        sd_after, modes_after, flags_after = after[tag]
        assert sd_before.keys() == sd_after.keys()
        for key in sd_before:
            assert sd_before[key].dtype == sd_after[key].dtype
            assert torch.equal(sd_before[key], sd_after[key]), f"{tag}.{key} changed"
        assert modes_before == modes_after, f"{tag}: training flags changed"
        assert flags_before == flags_after, f"{tag}: requires_grad changed"


PASSES = {
    "max": lambda net, head, x, y: gradient(net, x, y, reduce="max"),
    "rms": lambda net, head, x, y: gradient(net, x, y, reduce="rms"),
    "scale0.5": lambda net, head, x, y: gradient(net, x, y, scale=0.5),
    "bn_train_max": lambda net, head, x, y: gradient(net, x, y, bn="train"),
    "bn_train_rms_scale": lambda net, head, x, y: gradient(net, x, y, reduce="rms", scale=0.5, bn="train"),
    "source": lambda net, head, x, y: GradientSaliency(net, reduce="rms", bn="train")(x, y),
    "head_eval": lambda net, head, x, y: head.saliency(x, y),
    "head_train_rms": lambda net, head, x, y: head.saliency(x, y, reduce="rms", bn="train"),
    "head_scale": lambda net, head, x, y: EarlyHeadSaliency(head, scale=0.5, bn="train")(x, y),
}


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
@pytest.mark.parametrize("kind", list(PASSES))
def test_saliency_pass_leaves_model_as_found(make_tiny_net, mode, kind):
    net = make_tiny_net()
    head = EarlyHead(net, num_classes=5)
    net.stem[0].weight.requires_grad_(False)     # some frozen parameters
    net.classifier.bias.requires_grad_(False)
    head.fc.bias.requires_grad_(False)
    if mode == "train":
        net.train(), head.train()
    elif mode == "eval":
        net.eval(), head.eval()
    else:                                         # submodules in different modes
        net.train(), head.eval()
        net.block1.eval()
        net.drop.eval()
    x = _images(4, 3, 8, 8, seed=6)
    y = torch.tensor([0, 1, 2, 3])
    before = _snapshot({"net": net, "head": head})
    maps = PASSES[kind](net, head, x, y)
    assert maps.shape == (4, 8, 8) and torch.isfinite(maps).all()
    _assert_same(before, _snapshot({"net": net, "head": head}))
    assert all(p.grad is None for p in list(net.parameters()) + list(head.parameters()))
    head.remove()


# --------------------------------------------------------------------------- early head


def test_early_head_saliency_equals_manual_gradient(make_tiny_net):
    net = make_tiny_net().eval()
    head = EarlyHead(net, num_classes=3)
    assert head.fc.in_features == 4               # inferred from block1's BatchNorm
    x = _images(3, 3, 7, 9, seed=8)
    y = torch.tensor([2, 0, 1])
    for reduce in ("max", "rms"):
        xr = x.clone().requires_grad_(True)
        logits = head.fc(net.block1(net.stem(xr)).mean(dim=(2, 3)))
        objective = logits.gather(1, y.view(-1, 1)).sum() if reduce == "max" else \
            F.cross_entropy(logits, y, reduction="sum")
        (g,) = torch.autograd.grad(objective, xr)
        expected = g.abs().amax(dim=1) if reduce == "max" else g.pow(2).mean(dim=1).sqrt()
        np.testing.assert_allclose(head.saliency(x, y, reduce=reduce).numpy(), expected.numpy(), rtol=1e-5,
                                   atol=1e-9)
    head.remove()


def test_early_head_skips_the_rest_of_the_model(make_tiny_net):
    net = make_tiny_net()
    head = EarlyHead(net, num_classes=5, block="block1")
    calls = {"stem": 0, "block2": 0, "classifier": 0}
    handles = [getattr(net, name).register_forward_hook(lambda m, i, o, name=name: calls.__setitem__(
        name, calls[name] + 1)) for name in calls]
    x = _images(2, 3, 6, 6)
    head.saliency(x, torch.tensor([0, 1]))
    head.saliency(x, torch.tensor([0, 1]), scale=0.5, bn="train")
    head.block_features(x)
    assert calls == {"stem": 3, "block2": 0, "classifier": 0}
    net(x)
    assert calls == {"stem": 4, "block2": 1, "classifier": 1}
    for h in handles:
        h.remove()
    head.remove()


def test_early_head_loss_and_hook(make_tiny_net):
    net = make_tiny_net().eval()
    head = EarlyHead(net, num_classes=5)
    assert [p.shape for p in head.parameters()] == [head.fc.weight.shape, head.fc.bias.shape]
    x = _images(4, 3, 6, 6, seed=9)
    y = torch.tensor([0, 4, 2, 2])
    with pytest.raises(RuntimeError):
        head.loss(y)
    net(x)                                         # the hook keeps block1's output
    features = net.block1(net.stem(x))
    expected = 0.3 * F.cross_entropy(head.fc(features.mean(dim=(2, 3))), y)
    assert head.loss(y).item() == pytest.approx(expected.item(), rel=1e-6)
    net(x)
    soft = F.one_hot(y, 5).float()
    assert head.loss(soft).item() == pytest.approx(expected.item(), rel=1e-6)
    head.remove()
    net(x)
    with pytest.raises(RuntimeError):
        head.loss(y)                               # hook removed: nothing kept


def test_early_head_errors(make_tiny_net):
    net = make_tiny_net()
    with pytest.raises(ValueError, match="num_classes"):
        EarlyHead(net, num_classes=0)
    with pytest.raises(ValueError, match="block"):
        EarlyHead(net, num_classes=3, block=nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="block"):
        EarlyHead(nn.Sequential(nn.Conv2d(3, 3, 1)), num_classes=3)
    with pytest.raises(ValueError, match="weight"):
        EarlyHead(net, num_classes=3, weight=-1.0)
    head = EarlyHead(net, num_classes=3, block=net.block2, in_channels=8)
    with pytest.raises(TypeError, match="images"):
        head.saliency(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="scale"):
        head.saliency(_images(1, 3, 4, 4), scale=2.0)
    head.remove()


# --------------------------------------------------------------------------- spectral residual


def _np_gaussian_blur(maps, kernel_size=7, sigma=3.0):
    """Separable Gaussian blur, NumPy 'reflect' padding (= torch 'reflect'); 'edge' where a side is too short."""
    half = kernel_size // 2
    x = np.arange(kernel_size) - (kernel_size - 1) / 2
    taps = np.exp(-x ** 2 / (2 * sigma ** 2))
    taps /= taps.sum()
    out = np.asarray(maps, dtype=np.float64)
    for axis in (2, 1):
        mode = "reflect" if out.shape[axis] > half else "edge"
        pad = [(0, 0)] * 3
        pad[axis] = (half, half)
        padded = np.pad(out, pad, mode=mode)
        length = out.shape[axis]
        out = sum(taps[k] * np.take(padded, np.arange(k, k + length), axis=axis) for k in range(kernel_size))
    return out


def _np_box3(x):
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    height, width = x.shape[1:]
    return sum(padded[:, i:i + height, j:j + width] for i in range(3) for j in range(3)) / 9.0


def _np_spectral_residual(images, blur=True):
    x = np.asarray(images, dtype=np.float64)
    gray = 0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2] if x.shape[1] == 3 else x[:, 0]
    height, width = gray.shape[1:]
    resized = height > 128
    if resized:  # torch's bilinear resize for this step only
        gray = F.interpolate(torch.from_numpy(gray).unsqueeze(1), size=(128, 128), mode="bilinear",
                             align_corners=False).squeeze(1).numpy()
    spectrum = np.fft.fft2(gray)
    amplitude = np.sqrt(spectrum.real ** 2 + spectrum.imag ** 2 + 1e-10)
    log_amp = np.log(amplitude)
    residual = np.exp(log_amp - _np_box3(log_amp))
    saliency = np.abs(np.fft.ifft2(residual * spectrum / amplitude))
    if resized:
        saliency = F.interpolate(torch.from_numpy(saliency).unsqueeze(1), size=(height, width), mode="bilinear",
                                 align_corners=False).squeeze(1).numpy()
    return _np_gaussian_blur(saliency) if blur else saliency


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (2, 3, 7, 5), (1, 3, 31, 17), (2, 1, 12, 20), (1, 3, 130, 40)])
def test_spectral_residual_matches_numpy(shape):
    x = _images(*shape, seed=shape[2])
    maps = spectral_residual(x)
    reference = _np_spectral_residual(x.double().numpy())
    assert maps.shape == (shape[0], *shape[2:]) and maps.dtype == torch.float32
    np.testing.assert_allclose(maps.numpy(), reference, rtol=2e-4, atol=2e-4 * reference.max())
    # float64 input stays float64 and agrees to round-off
    maps64 = spectral_residual(x.double())
    assert maps64.dtype == torch.float64
    np.testing.assert_allclose(maps64.numpy(), reference, rtol=1e-9, atol=1e-12)


def test_spectral_residual_without_blur_and_max_size():
    x = _images(2, 3, 20, 16, seed=1)
    np.testing.assert_allclose(spectral_residual(x.double(), blur=None).numpy(),
                               _np_spectral_residual(x.double().numpy(), blur=False), rtol=1e-9, atol=1e-12)
    # max_size below H resizes to max_size × max_size and back
    small = spectral_residual(x, max_size=8, blur=None)
    gray = (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).double()
    gray8 = F.interpolate(gray.unsqueeze(1), size=(8, 8), mode="bilinear", align_corners=False).squeeze(1)
    spectrum = np.fft.fft2(gray8.numpy())
    amplitude = np.sqrt(np.abs(spectrum) ** 2 + 1e-10)
    s = np.abs(np.fft.ifft2(np.exp(np.log(amplitude) - _np_box3(np.log(amplitude))) * spectrum / amplitude))
    expected = F.interpolate(torch.from_numpy(s).unsqueeze(1), size=(20, 16), mode="bilinear",
                             align_corners=False).squeeze(1)
    np.testing.assert_allclose(small.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_spectral_residual_uint8_zero_and_scale_invariance():
    x = (torch.rand(2, 3, 16, 12, generator=torch.Generator().manual_seed(2)) * 255).round()
    as_uint8 = spectral_residual(x.to(torch.uint8))
    assert as_uint8.dtype == torch.float32
    np.testing.assert_allclose(as_uint8.numpy(), spectral_residual(x).numpy(), rtol=1e-6)
    # the residual does not depend on the intensity scale
    np.testing.assert_allclose(spectral_residual(x / 255).numpy(), spectral_residual(x).numpy(), rtol=1e-3,
                               atol=1e-5)
    zeros = spectral_residual(torch.zeros(2, 3, 9, 7))
    assert torch.isfinite(zeros).all() and torch.all(zeros == 0)
    for dtype in (torch.float16, torch.bfloat16):
        half = spectral_residual(x.to(dtype) / 255)
        assert half.dtype == torch.float32 and torch.isfinite(half).all()


def test_spectral_residual_errors():
    with pytest.raises(ValueError, match="images"):
        spectral_residual(torch.rand(2, 2, 8, 8))
    with pytest.raises(ValueError, match="images"):
        spectral_residual(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="max_size"):
        spectral_residual(torch.rand(1, 3, 8, 8), max_size=0)
    with input_checks(True):
        bad = torch.rand(1, 3, 8, 8)
        bad[0, 1, 2, 3] = float("inf")
        with pytest.raises(ValueError, match="images"):
            spectral_residual(bad)


# --------------------------------------------------------------------------- blur and normalisation


def test_gaussian_kernel_definition():
    taps = gaussian_kernel1d(7, 3.0, dtype=torch.float64)
    x = np.arange(7) - 3.0
    expected = np.exp(-x ** 2 / 18.0)
    np.testing.assert_allclose(taps.numpy(), expected / expected.sum(), rtol=1e-12)
    assert taps.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(2, 9, 8), (1, 31, 17), (2, 2, 2), (1, 10, 3), (1, 4, 40), (1, 1, 1),
                                   (1, 300, 5), (1, 3, 257)])  # the last two: the convolution path
def test_gaussian_blur_matches_numpy(shape):
    maps = torch.rand(*shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    blurred = gaussian_blur(maps, 7, 3.0)
    assert blurred.shape == maps.shape and blurred.dtype == torch.float64
    np.testing.assert_allclose(blurred.numpy(), _np_gaussian_blur(maps.numpy()), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gaussian_blur(maps, 3, 0.8).numpy(), _np_gaussian_blur(maps.numpy(), 3, 0.8),
                               rtol=1e-12, atol=1e-14)
    assert torch.equal(gaussian_blur(maps, 1, 1.0), maps)


def test_gaussian_blur_dtypes_and_errors():
    maps = torch.rand(2, 6, 6)
    assert gaussian_blur(maps.to(torch.bfloat16)).dtype == torch.bfloat16
    for k in (0, 4, -3, 2.0):
        with pytest.raises(ValueError, match="kernel_size"):
            gaussian_blur(maps, k, 1.0)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(maps, 3, 0.0)
    with pytest.raises(ValueError, match="maps"):
        gaussian_blur(maps[0])


def test_normalize_sum():
    maps = torch.rand(3, 5, 4, generator=torch.Generator().manual_seed(4))
    maps[1] = 0.0                                  # flat map → uniform
    maps[2, 0, 0] = -3.0                           # negative values are clamped to 0
    out = normalize_sum(maps)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.sum(dim=(1, 2)).numpy(), np.ones(3), rtol=1e-6)
    assert torch.all(out > 0)
    np.testing.assert_allclose(out[1].numpy(), np.full((5, 4), 1 / 20), rtol=1e-6)
    expected = maps[0].double() / maps[0].max() + 1e-12     # ŝ = s / max s, then ε relative to the peak
    np.testing.assert_allclose(out[0].numpy(), (expected / expected.sum()).numpy(), rtol=1e-6)
    assert out[2, 0, 0].item() < 1e-10
    with pytest.raises(ValueError, match="eps"):
        normalize_sum(maps, eps=0.0)


@settings(max_examples=40, deadline=None)
@given(exponent=st.floats(-37.0, 37.0), seed=st.integers(0, 2 ** 16))
def test_normalize_sum_is_scale_invariant(exponent, seed):
    """The reported input: s = rand⁴ rescaled by 1e-12 moved the result by 0.91 in L1. Any positive
    rescaling over float32's normal range leaves the result unchanged up to rounding."""
    s = torch.rand(4, 32, 32, generator=torch.Generator().manual_seed(seed)) ** 4
    scaled = s * 10.0 ** exponent
    assume(bool((scaled.amax(dim=(1, 2)) > torch.finfo(torch.float32).tiny * 1e7).all()))
    assume(bool(torch.isfinite(scaled).all()))
    diff = (normalize_sum(scaled) - normalize_sum(s)).abs().sum(dim=(1, 2))
    assert float(diff.max()) < 1e-5


def test_normalize_sum_reported_input():
    s = torch.rand(4, 32, 32, generator=torch.Generator().manual_seed(0)) ** 4
    assert float((normalize_sum(s * 1e-12) - normalize_sum(s)).abs().sum()) < 1e-5
    assert float((normalize_sum(s.double() * 1e-300) - normalize_sum(s)).abs().sum()) < 1e-5


# --------------------------------------------------------------------------- sources


def test_sources_dispatch_and_agree(make_tiny_net):
    net = make_tiny_net()
    head = EarlyHead(net, num_classes=5)
    x = _images(2, 3, 8, 8)
    y = torch.tensor([1, 3])
    assert isinstance(as_source("spectral"), SpectralSaliency)
    assert as_source(None) is None
    grad_source = as_source(net, reduce="rms", scale=0.5)
    assert isinstance(grad_source, GradientSaliency)
    np.testing.assert_allclose(grad_source(x, y).numpy(), gradient(net, x, y, reduce="rms", scale=0.5).numpy())
    head_source = as_source(head)
    assert isinstance(head_source, EarlyHeadSaliency)
    np.testing.assert_allclose(head_source(x, y).numpy(), head.saliency(x, y).numpy())
    np.testing.assert_allclose(SpectralSaliency()(x, y).numpy(), spectral_residual(x).numpy())
    custom = lambda images, targets: images.mean(dim=1)  # noqa: E731
    assert as_source(custom) is custom
    with pytest.raises(ValueError, match="saliency"):
        as_source("gradcam")
    with pytest.raises(TypeError, match="saliency"):
        as_source(3)
    with pytest.raises(TypeError, match="model"):
        GradientSaliency("net")
    with pytest.raises(TypeError, match="head"):
        EarlyHeadSaliency(net)
    head.remove()


def test_compute_maps_checks_maps():
    x = _images(2, 3, 6, 5)
    maps = torch.rand(2, 6, 5)
    assert torch.equal(compute_maps(None, x, None, maps, "Op"), maps)
    with pytest.raises(ValueError, match="saliency_maps"):
        compute_maps(None, x, None, torch.rand(2, 5, 6), "Op")
    with pytest.raises(ValueError, match="saliency_maps"):
        compute_maps(None, x, None, torch.rand(3, 6, 5), "Op")
    with pytest.raises(ValueError, match="saliency"):
        compute_maps(None, x, None, None, "Op")


def test_train_mode_saliency_switches_dropout_off_and_restores_it(make_tiny_net):
    """bn="train": batch statistics, but no dropout mask from the global RNG — two passes agree bit for bit
    (Co-Mixup's seeded output depended on it), and every module's mode is restored afterwards."""
    from keepmix.saliency import gradient
    net = make_tiny_net(dropout=0.5).train()
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 5, (6,))
    first = gradient(net, x, y, reduce="rms", bn="train")
    torch.manual_seed(123)                                   # another global RNG state: no effect
    second = gradient(net, x, y, reduce="rms", bn="train")
    assert torch.equal(first, second)
    assert all(m.training for m in net.modules())
    # batch statistics are still used: the map of an image depends on the rest of the batch
    alone = gradient(net, x[:3], y[:3], reduce="rms", bn="train")
    assert not torch.allclose(alone, first[:3])


@pytest.mark.parametrize("dtype,low,high", [(torch.float32, -149, 127), (torch.float64, -1074, 1023)])
def test_unit_scale_multiplies_by_an_exact_power_of_two(dtype, low, high):
    """unit_scale(s) = s·2^(−e) with 2^(e−1) ≤ max|s| < 2^e: bit-exact (the mantissa is unchanged), for
    every binary exponent of the dtype; maps below the normal range are scaled up as far as it allows."""
    from keepmix.saliency import unit_scale
    tiny = torch.finfo(dtype).tiny
    for exponent in range(low, high + 1):
        for mantissa in (0.5, 0.640625, 0.999755859375):  # exact in float32
            peak = math.ldexp(mantissa, exponent)
            if peak == 0.0:
                continue
            maps = torch.tensor([[[peak, -peak / 2], [peak / 4, 0.0]]], dtype=dtype)
            out = unit_scale(maps)
            assert out.dtype == torch.float32
            if peak >= tiny:
                expected = torch.tensor([[[mantissa, -mantissa / 2], [mantissa / 4, 0.0]]])
                assert torch.equal(out, expected), (exponent, mantissa)
            else:  # subnormal peaks: scaled by the factor of the smallest normal peak, exactly
                factor = math.frexp(tiny)[0] / tiny
                assert torch.equal(out, (maps * factor).float()), (exponent, mantissa)
    assert torch.equal(unit_scale(torch.zeros(2, 3, 3, dtype=dtype)), torch.zeros(2, 3, 3))
