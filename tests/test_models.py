"""The model zoo: shapes, parameter counts against the published numbers, the ClassifierModel
interface (composition, first block, Manifold-Mixup hooks), He initialisation, Shake-Shake and
ShakeDrop maths, the registry and argument errors.

Full-size networks are built on the meta device when only their parameter count is needed;
behavioural tests use reduced depths/widths and small inputs (CIFAR models 32 px, 224 px models 64 px).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from keepmix.models import (
    MODELS, ClassifierModel, CifarResNet, DeepCifarResNet, DenseNet, ImageNetResNet, PreActResNet,
    PyramidNetShakeDrop, ShakeDrop, ShakeShakeResNet, SmallResNet, WideResNet, build_model, densenet121,
    preact_resnet18, pyramidnet_shakedrop, resnet18, resnet18_cifar, resnet50, resnet101, resnet110, resnet_cifar_depth,
    resnet_small, shake_shake26_2x96d, wide_resnet, wrn28_2, wrn28_10,
)
from keepmix.models.densenet import DenseLayer
from keepmix.models.pyramidnet import PyramidBottleneck, pyramid_widths, shake_drop_scale
from keepmix.models.resnet_deep_cifar import CifarBasicBlock
from keepmix.models.resnet_imagenet import Bottleneck
from keepmix.models.shake_shake import ShakeShakeBlock, ShiftedPoolShortcut, shake_shake_mix


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(factory, *args, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return factory(*args, **kwargs)


# name -> (factory, input size, classes, last feature map C×h×w, first-block output C×h×w)
CASES = {
    "resnet18_cifar_small": (lambda: CifarResNet(6, blocks=(1, 1), widths=(8, 16)), 32, 6, (16, 16, 16), (8, 32, 32)),
    "preact_small": (lambda: PreActResNet(6, blocks=(1, 1, 1, 1), widths=(8, 16, 32, 64)), 32, 6,
                     (64, 4, 4), (8, 32, 32)),
    "resnet20": (lambda: resnet_cifar_depth(20, num_classes=6), 32, 6, (64, 8, 8), (16, 32, 32)),
    "resnet8_B": (lambda: resnet_cifar_depth(8, num_classes=6, shortcut="B"), 32, 6, (64, 8, 8), (16, 32, 32)),
    "wrn10_2": (lambda: wide_resnet(10, 2, num_classes=6), 32, 6, (128, 8, 8), (32, 32, 32)),
    "resnet18": (lambda: resnet18(num_classes=7), 64, 7, (512, 2, 2), (64, 16, 16)),
    "resnet50_1111": (lambda: ImageNetResNet(Bottleneck, (1, 1, 1, 1), num_classes=7), 64, 7, (2048, 2, 2),
                      (256, 16, 16)),
    # DenseNet, k = 8, 2 layers per block, stem 16: 16 → 32 → (transition) 16 → … → 32 features.
    "densenet_small": (lambda: DenseNet(8, (2, 2, 2, 2), 16, 2, num_classes=7), 64, 7, (32, 2, 2), (16, 8, 8)),
    "shake8_2x16d": (lambda: ShakeShakeResNet(8, 16, num_classes=6), 32, 6, (64, 8, 8), (16, 32, 32)),
    # PyramidNet-20, α 24: N = 6 blocks, widths round(16 + 4k) → 20..40, stage 1 ends at 4·24 channels.
    "pyramid20_a24": (lambda: pyramidnet_shakedrop(20, 24, num_classes=6), 32, 6, (160, 8, 8), (96, 32, 32)),
    "resnet_small": (lambda: resnet_small(num_classes=6), 32, 6, (64, 4, 4), (16, 16, 16)),
}
CASE_NAMES = list(CASES)


@pytest.fixture(scope="module")
def built():
    """Each case built once (eval mode), with a fixed input batch of two images."""
    torch.manual_seed(0)
    out = {}
    for name, (factory, size, classes, feat, first) in CASES.items():
        model = factory().eval()
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
        out[name] = (model, x, classes, feat, first)
    return out


def _tail(model, blocks, k, h):
    """The network after block k applied to h: blocks k+1… → pool → classifier."""
    for block in blocks[k + 1:]:
        h = block(h)
    return model.classifier(torch.flatten(model.pool(h), 1))


# ---------------------------------------------------------------------------------------------- interface


@pytest.mark.parametrize("name", CASE_NAMES)
def test_output_and_feature_shapes(built, name):
    model, x, classes, feat, _ = built[name]
    assert isinstance(model, ClassifierModel)
    with torch.no_grad():
        y = model(x)
        f = model.features(x)
    assert y.shape == (2, classes) and y.dtype == torch.float32 and torch.isfinite(y).all()
    assert tuple(f.shape) == (2, *feat)
    assert model.num_features == feat[0] == model.classifier.in_features
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == classes


@pytest.mark.parametrize("name", CASE_NAMES)
def test_hidden_blocks_compose_to_forward(built, name):
    model, x, _, _, _ = built[name]
    blocks = model.hidden_blocks()
    submodules = list(model.modules())
    assert len(blocks) >= 2 and blocks[0] is model.stem
    assert len({id(b) for b in blocks}) == len(blocks)
    assert all(any(b is m for m in submodules) for b in blocks)
    with torch.no_grad():
        h = x
        for block in blocks:
            h = block(h)
        assert torch.equal(h, model.features(x))
        assert torch.equal(model.classifier(torch.flatten(model.pool(h), 1)), model(x))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_first_block_is_a_submodule_whose_output_exists(built, name):
    model, x, _, _, first = built[name]
    assert model.first_block is model.hidden_blocks()[1]
    assert any(model.first_block is m for m in model.modules())
    seen = []
    handle = model.first_block.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    assert seen == [torch.Size((2, *first))]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_hooks_on_hidden_blocks(built, name):
    """Identity hooks change nothing; a zero hook on block k gives exactly tail_k(0) ≠ forward."""
    model, x, _, _, _ = built[name]
    blocks = model.hidden_blocks()
    with torch.no_grad():
        reference = model(x)
        for k, block in enumerate(blocks):
            handle = block.register_forward_hook(lambda mod, inp, out: out)
            try:
                same = model(x)
            finally:
                handle.remove()
            assert torch.equal(same, reference), f"identity hook on block {k}"
            outputs = []
            handle = block.register_forward_hook(lambda mod, inp, out: outputs.append(out) or torch.zeros_like(out))
            try:
                zeroed = model(x)
            finally:
                handle.remove()
            expected = _tail(model, blocks, k, torch.zeros_like(outputs[0]))
            torch.testing.assert_close(zeroed, expected, rtol=1e-5, atol=1e-6)
            assert not torch.allclose(zeroed, reference), f"zero hook on block {k} changed nothing"


@pytest.mark.parametrize("name", CASE_NAMES)
def test_input_gradient_is_finite_and_nonzero(built, name):
    model, x, _, _, _ = built[name]
    x = x.clone().requires_grad_(True)
    model(x)[:, 0].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", [n for n in CASE_NAMES if not n.startswith("resnet18_cifar")])
def test_he_initialisation(built, name):
    """Conv weights ~ N(0, 2/(k_h·k_w·C_out)); BN weight 1, bias 0; classifier bias 0."""
    model = built[name][0]
    normalised = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            w = module.weight.detach()
            expected = math.sqrt(2.0 / (w.shape[0] * w.shape[2] * w.shape[3]))
            normalised.append(w.flatten() / expected)
            if w.numel() >= 4096:  # per-layer check where the sample is large enough (SE of std < 1.2 %)
                assert abs(w.std().item() / expected - 1) < 0.06, module
        elif isinstance(module, nn.BatchNorm2d):
            assert torch.equal(module.weight, torch.ones_like(module.weight))
            assert torch.equal(module.bias, torch.zeros_like(module.bias))
    pooled = torch.cat(normalised)  # all layers together: N(0, 1) if every layer has the He scale
    assert pooled.numel() >= 10_000
    assert abs(pooled.std().item() - 1) < 0.03 and abs(pooled.mean().item()) < 0.03
    assert torch.equal(model.classifier.bias, torch.zeros_like(model.classifier.bias))


@pytest.mark.parametrize("factory, feat", [
    (lambda: resnet18(num_classes=7), (512, 2, 2)),
    (lambda: resnet50(num_classes=7), (2048, 2, 2)),
    (lambda: densenet121(num_classes=7), (1024, 2, 2)),
])
def test_full_size_224px_models_accept_64px(factory, feat):
    model = factory().eval()
    with torch.no_grad():
        f = model.features(torch.randn(1, 3, 64, 64))
        assert tuple(f.shape) == (1, *feat)
        assert model.classifier(torch.flatten(model.pool(f), 1)).shape == (1, 7)


@pytest.mark.parametrize("factory", [
    lambda: resnet_small(3, in_channels=1), lambda: resnet_cifar_depth(8, 3, in_channels=1),
    lambda: wide_resnet(10, 1, 3, in_channels=1), lambda: ShakeShakeResNet(8, 8, 3, in_channels=1),
    lambda: pyramidnet_shakedrop(11, 8, 3, in_channels=1),
    lambda: PreActResNet(3, (1, 1), (4, 8), in_channels=1)])
def test_single_channel_odd_size_inputs(factory):
    model = factory().eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 27, 29)).shape == (2, 3)


# ---------------------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("factory, classes, expected", [
    # torchvision ships the same topologies: exact published counts at 1000 classes.
    (resnet18, 1000, 11_689_512),
    (resnet50, 1000, 25_557_032),
    (resnet101, 1000, 44_549_160),
    (densenet121, 1000, 7_978_856),
    # CIFAR ResNet-18 (3×3 stem): the widely reported 11,173,962 at 10 classes.
    (resnet18_cifar, 10, 11_173_962),
    # WRN-28-10 at 10 classes: 36,479,194 (36.5 M in Zagoruyko & Komodakis).
    (wrn28_10, 10, 36_479_194),
    # WRN-28-2 at 10 classes: 1,467,610 (1.5 M in the semi-supervised benchmarks, Oliver et al. 2018).
    (wrn28_2, 10, 1_467_610),
    # ResNet-110, option A: 1,727,962 (1.7 M in He et al. 2016a).
    (resnet110, 10, 1_727_962),
])
def test_exact_parameter_counts(factory, classes, expected):
    assert n_params(on_meta(factory, num_classes=classes)) == expected


@pytest.mark.parametrize("factory, classes, published", [
    (resnet18, 1000, 11.69e6), (resnet50, 1000, 25.56e6), (densenet121, 1000, 7.98e6),
    (wrn28_10, 10, 36.5e6), (resnet110, 10, 1.7e6),
    (shake_shake26_2x96d, 10, 26.2e6),  # Gastaldi 2017, Table 1
    (lambda num_classes: pyramidnet_shakedrop(272, 200, num_classes), 10, 26.0e6),  # Han et al., Table 4
])
def test_parameter_counts_match_published_numbers(factory, classes, published):
    # 1.7 M is given to two digits: allow its rounding (±0.05 M); the others to within 1 %.
    tolerance = 0.05e6 / 1.7e6 if published == 1.7e6 else 0.01
    assert abs(n_params(on_meta(factory, num_classes=classes)) / published - 1) <= tolerance


@pytest.mark.parametrize("n", [1, 3, 5, 9, 18])
def test_cifar_resnet_depth_count_formula(n):
    """Hand count for ResNet-(6n+2), option A, K = 10: conv/BN per block, projections absent."""
    stem = 3 * 16 * 9 + 2 * 16
    stage1 = n * (2 * 16 * 16 * 9 + 2 * 2 * 16)
    stage2 = (16 * 32 * 9 + 32 * 32 * 9 + 4 * 32) + (n - 1) * (2 * 32 * 32 * 9 + 4 * 32)
    stage3 = (32 * 64 * 9 + 64 * 64 * 9 + 4 * 64) + (n - 1) * (2 * 64 * 64 * 9 + 4 * 64)
    expected = stem + stage1 + stage2 + stage3 + 64 * 10 + 10
    assert n_params(on_meta(resnet_cifar_depth, 6 * n + 2)) == expected
    # Option B adds two 1×1 conv + BN projections (16→32, 32→64).
    extra = 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64
    assert n_params(on_meta(resnet_cifar_depth, 6 * n + 2, shortcut="B")) == expected + extra


def test_preact_resnet18_count_from_resnet18_cifar():
    """Same convolutions as the CIFAR ResNet-18; BN differs: no stem BN (−2·64), no shortcut BNs
    (−2·(128+256+512)), the first BN of stages 2–4 sees the narrower input (−2·(64+128+256)),
    plus the final BN (+2·512)."""
    expected = 11_173_962 - 2 * 64 - 2 * (128 + 256 + 512) - 2 * (64 + 128 + 256) + 2 * 512
    assert n_params(on_meta(preact_resnet18, 10)) == expected == 11_172_170


def test_resnet_small_count_and_cost():
    stem = 3 * 16 * 9 + 32
    block = lambda cin, c: cin * c * 9 + c * c * 9 + 4 * c + cin * c + 2 * c  # noqa: E731 (two convs, 2 BN, projection)
    expected = stem + block(16, 16) + block(16, 32) + block(32, 64) + 64 * 10 + 10
    model = resnet_small(10)
    assert n_params(model) == expected == 78_330
    # Multiply-adds per 32×32 image, counted from the conv output sizes: cheap enough for CPU epochs.
    macs = []
    hooks = [m.register_forward_hook(
        lambda mod, inp, out: macs.append(out[0].numel() * mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1]))
        for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert sum(macs) < 4.0e6


def test_pyramidnet_widths_and_features():
    """Block k of N has width round(16 + α·k/N) and 4× that many output channels."""
    model = pyramidnet_shakedrop(29, 45, num_classes=3)  # N = 9, α/N = 5
    blocks = [b for stage in model.stages for b in stage if isinstance(b, PyramidBottleneck)]
    assert [b.branch[-1].num_features for b in blocks] == [4 * (16 + 5 * k) for k in range(1, 10)]
    assert pyramid_widths(272, 200)[-1] == 216 and len(pyramid_widths(272, 200)) == 90
    assert on_meta(pyramidnet_shakedrop, 272, 200).num_features == 864


def test_pyramidnet_shakedrop_survival_schedule():
    """p_k = 1 − (k/N)(1 − p_L): linear from 1 − (1 − p_L)/N down to p_L."""
    model = pyramidnet_shakedrop(29, 9, num_classes=3, last_survival=0.4)
    survivals = [m.survival for m in model.modules() if isinstance(m, ShakeDrop)]
    assert survivals == pytest.approx([1 - k / 9 * 0.6 for k in range(1, 10)])
    assert survivals[-1] == pytest.approx(0.4)


# ---------------------------------------------------------------------------------------------- blocks


def test_option_a_shortcut_is_subsampled_zero_padded_identity():
    block = CifarBasicBlock(16, 32, stride=2, shortcut="A")
    x = torch.randn(2, 16, 9, 10)
    s = block.shortcut(x)
    assert s.shape == (2, 32, 5, 5)
    torch.testing.assert_close(s[:, 8:24], x[:, :, ::2, ::2], rtol=0, atol=0)
    assert torch.count_nonzero(s[:, :8]) == 0 and torch.count_nonzero(s[:, 24:]) == 0
    assert not any(isinstance(m, nn.Conv2d) for m in block.modules() if m is not block.conv1 and m is not block.conv2)


def test_dense_layer_appends_growth_channels_to_its_input():
    layer = DenseLayer(10, growth=4, bn_size=2).eval()
    x = torch.randn(2, 10, 5, 5)
    y = layer(x)
    assert y.shape == (2, 14, 5, 5) and torch.equal(y[:, :10], x)


def test_densenet_transitions_halve_channels_and_resolution():
    model = DenseNet(growth=4, blocks=(2, 3), stem_channels=8, bn_size=2, num_classes=3).eval()
    with torch.no_grad():
        h = model.stem(torch.randn(1, 3, 32, 32))
        assert h.shape == (1, 8, 8, 8)
        h = model.stages[0](h)
        assert h.shape == (1, (8 + 2 * 4) // 2, 4, 4)
        assert model.stages[1](h).shape == (1, 8 + 3 * 4, 4, 4) and model.num_features == 20


def test_shake_shake_mix_forward_and_backward_coefficients():
    torch.manual_seed(3)
    b1 = torch.randn(3, 2, 4, 4, requires_grad=True)
    b2 = torch.randn(3, 2, 4, 4, requires_grad=True)
    alpha = torch.tensor([0.1, 0.5, 0.9]).view(3, 1, 1, 1)
    beta = torch.tensor([0.7, 0.2, 0.4]).view(3, 1, 1, 1)
    y = shake_shake_mix(b1, b2, alpha, beta)
    torch.testing.assert_close(y, alpha * b1 + (1 - alpha) * b2)
    upstream = torch.randn_like(y)
    y.backward(upstream)
    torch.testing.assert_close(b1.grad, beta * upstream)
    torch.testing.assert_close(b2.grad, (1 - beta) * upstream)


def test_shifted_pool_shortcut_definition():
    shortcut = ShiftedPoolShortcut(4, 6, stride=2).eval()
    x = torch.randn(2, 4, 8, 8)
    r = F.relu(x)
    even = F.conv2d(r[:, :, 0::2, 0::2], shortcut.conv_even.weight)
    odd = F.conv2d(r[:, :, 1::2, 1::2], shortcut.conv_odd.weight)  # shifted by one pixel, then subsampled
    expected = torch.cat([even, odd], 1) / math.sqrt(1 + shortcut.bn.eps)  # fresh BN in eval: x / sqrt(1 + eps)
    torch.testing.assert_close(shortcut(x), expected)


def _branch_grads(block, x):
    """Run block in train mode and return (output, b1, b2, shortcut, grad at b1, grad at b2)."""
    store = {}

    def keep(name):
        def hook(mod, inp, out):
            store[name] = out
            out.register_hook(lambda g: store.__setitem__(name + "_grad", g))
        return hook

    handles = [block.branch1.register_forward_hook(keep("b1")), block.branch2.register_forward_hook(keep("b2")),
               block.shortcut.register_forward_hook(keep("s"))]
    y = block(x)
    y.sum().backward()
    for h in handles:
        h.remove()
    return y.detach(), store["b1"].detach(), store["b2"].detach(), store["s"].detach(), store["b1_grad"], \
        store["b2_grad"]


def test_shake_shake_block_train_uses_one_alpha_and_beta_per_sample():
    torch.manual_seed(5)
    block = ShakeShakeBlock(8, 8).train()
    x = torch.randn(6, 8, 6, 6, requires_grad=True)
    y, b1, b2, s, g1, g2 = _branch_grads(block, x)
    diff = b1 - b2
    alpha = ((y - s - b2) * diff).flatten(1).sum(1) / (diff * diff).flatten(1).sum(1)  # least-squares α per sample
    torch.testing.assert_close(y, s + alpha.view(-1, 1, 1, 1) * b1 + (1 - alpha.view(-1, 1, 1, 1)) * b2,
                               rtol=1e-4, atol=1e-5)
    assert ((alpha >= 0) & (alpha <= 1)).all() and alpha.unique().numel() == 6
    # Backward: ∂y/∂b1 = β (one value per sample), ∂y/∂b2 = 1 − β, β independent of α.
    beta = g1.flatten(1)[:, 0]
    torch.testing.assert_close(g1, beta.view(-1, 1, 1, 1).expand_as(g1))
    torch.testing.assert_close(g1 + g2, torch.ones_like(g1))
    assert ((beta >= 0) & (beta <= 1)).all() and not torch.allclose(beta, alpha)


def test_shake_shake_block_eval_averages_branches():
    block = ShakeShakeBlock(4, 8, stride=2).eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), block.shortcut(x) + 0.5 * (block.branch1(x) + block.branch2(x)))


def test_shake_drop_scale_forward_and_backward():
    residual = torch.randn(3, 2, 3, 3, requires_grad=True)
    gate = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1, 1)
    alpha = torch.tensor([0.3, -0.5, 0.7]).view(3, 1, 1, 1)
    beta = torch.tensor([0.2, 0.9, 0.4]).view(3, 1, 1, 1)
    y = shake_drop_scale(residual, gate, alpha, beta)
    # b + α − bα: 1 where the gate is open, α where it is closed; same with β backward.
    torch.testing.assert_close(y, residual * torch.tensor([1.0, -0.5, 0.7]).view(3, 1, 1, 1))
    y.sum().backward()
    torch.testing.assert_close(residual.grad, torch.tensor([1.0, 0.9, 0.4]).view(3, 1, 1, 1).expand(3, 2, 3, 3))


def test_shake_drop_eval_is_the_expected_scale():
    x = torch.randn(4, 3, 2, 2)
    assert torch.equal(ShakeDrop(0.7).eval()(x), x * 0.7)  # E[α] = 0 on [−1, 1]
    torch.testing.assert_close(ShakeDrop(0.7, alpha_range=(0.0, 1.0)).eval()(x), x * (0.7 + 0.3 * 0.5))


def test_shake_drop_train_statistics():
    """Gate open with probability p (scale exactly 1); closed: α ~ U[−1, 1] forward, β ~ U[0, 1] backward."""
    torch.manual_seed(11)
    n, p = 40_000, 0.7
    residual = torch.ones(n, 1, 1, 1, requires_grad=True)
    y = ShakeDrop(p).train()(residual)
    y.sum().backward()
    scale, grad = y.detach().flatten(), residual.grad.flatten()
    open_ = scale == 1
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(open_.float().mean().item() - p) < 5 * sigma
    assert torch.equal(grad[open_], torch.ones_like(grad[open_]))
    closed_alpha, closed_beta = scale[~open_], grad[~open_]
    m = closed_alpha.numel()
    assert closed_alpha.min() >= -1 and closed_alpha.max() < 1 and closed_beta.min() >= 0 and closed_beta.max() < 1
    assert abs(closed_alpha.mean().item()) < 5 * math.sqrt(1 / 3 / m)           # U[−1,1]: var 1/3
    assert abs(closed_beta.mean().item() - 0.5) < 5 * math.sqrt(1 / 12 / m)     # U[0,1]: var 1/12
    assert abs((closed_alpha < 0).float().mean().item() - 0.5) < 5 * math.sqrt(0.25 / m)


def test_pyramid_block_eval_and_shortcut():
    block = PyramidBottleneck(12, 5, stride=2, survival=0.6).eval()
    x = torch.randn(2, 12, 7, 7)
    with torch.no_grad():
        shortcut = F.pad(F.avg_pool2d(x, 2, stride=2, ceil_mode=True), (0, 0, 0, 0, 0, 8))
        torch.testing.assert_close(block.shortcut(x), shortcut)
        torch.testing.assert_close(block(x), shortcut + 0.6 * block.branch(x))


# ---------------------------------------------------------------------------------------------- stochastic models


@pytest.mark.parametrize("factory", [lambda: ShakeShakeResNet(8, 8, num_classes=4),
                                     lambda: pyramidnet_shakedrop(20, 8, num_classes=4)])
def test_shake_models_deterministic_in_eval_and_stochastic_per_sample_in_train(factory):
    torch.manual_seed(0)
    model = factory()
    image = torch.randn(1, 3, 16, 16)
    batch = image.expand(8, -1, -1, -1).contiguous()  # eight copies of one image
    with torch.no_grad():
        model.eval()
        a, b = model(batch), model(batch)
        assert torch.equal(a, b)
        torch.testing.assert_close(a, a[:1].expand_as(a))
        model.train()
        torch.manual_seed(1)
        t1 = model(batch)
        torch.manual_seed(1)
        t1_again = model(batch)
        t2 = model(batch)
    assert torch.equal(t1, t1_again)  # reproducible from torch's global seed
    assert not torch.equal(t1, t2)
    # BN sees identical copies, so only per-sample coefficients can make the copies differ.
    assert torch.unique(t1, dim=0).shape[0] > 1


def test_wide_resnet_dropout_only_in_training():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    model = wide_resnet(10, 1, 4, dropout=0.3)
    plain = wide_resnet(10, 1, 4)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), model(x))
        model.train()
        assert not torch.equal(model(x), model(x))
        plain.train()
        assert torch.equal(plain(x), plain(x))


# ---------------------------------------------------------------------------------------------- registry and errors


def test_registry_names_and_exports():
    assert set(MODELS) == {"resnet18_cifar", "preact_resnet18", "resnet110", "wrn28_10", "wrn28_2", "wide_resnet",
                           "resnet18",
                           "resnet50", "resnet101", "densenet121", "shake_shake26_2x96d", "pyramidnet_shakedrop",
                           "resnet_small"}
    expected_types = {"resnet18_cifar": CifarResNet, "preact_resnet18": PreActResNet, "resnet110": DeepCifarResNet,
                      "wrn28_10": WideResNet, "wrn28_2": WideResNet, "wide_resnet": WideResNet,
                      "resnet18": ImageNetResNet,
                      "resnet50": ImageNetResNet, "resnet101": ImageNetResNet, "densenet121": DenseNet,
                      "shake_shake26_2x96d": ShakeShakeResNet,
                      "pyramidnet_shakedrop": PyramidNetShakeDrop, "resnet_small": SmallResNet}
    for name, cls in expected_types.items():
        model = on_meta(build_model, name, 13)
        assert isinstance(model, cls) and isinstance(model, ClassifierModel)
        assert model.classifier.out_features == 13


def test_build_model_passes_kwargs():
    model = build_model("wide_resnet", 5, depth=16, width=2, dropout=0.1)
    assert (model.depth, model.width, model.dropout, model.num_features) == (16, 2, 0.1, 128)
    assert build_model("pyramidnet_shakedrop", 3, depth=11, alpha=8).num_features == 4 * 24
    assert build_model("resnet110", 4, shortcut="B").depth == 110


def test_build_model_errors():
    with pytest.raises(ValueError) as info:
        build_model("resnet19", 10)
    for name in MODELS:
        assert name in str(info.value)
    with pytest.raises(TypeError, match="name"):
        build_model(None, 10)


@pytest.mark.parametrize("call, error, word", [
    (lambda: resnet_cifar_depth(21), ValueError, "depth"),
    (lambda: resnet_cifar_depth(20.0), TypeError, "depth"),
    (lambda: resnet_cifar_depth(20, shortcut="C"), ValueError, "shortcut"),
    (lambda: wide_resnet(27, 10), ValueError, "depth"),
    (lambda: wide_resnet(28, 0), ValueError, "width"),
    (lambda: wide_resnet(10, 1, dropout=1.0), ValueError, "dropout"),
    (lambda: pyramidnet_shakedrop(21, 48), ValueError, "depth"),
    (lambda: pyramidnet_shakedrop(20, -1), ValueError, "alpha"),
    (lambda: pyramidnet_shakedrop(20, 8, last_survival=1.5), ValueError, "last_survival"),
    (lambda: ShakeShakeResNet(25, 96), ValueError, "depth"),
    (lambda: ShakeShakeResNet(26, 95), ValueError, "base_width"),
    (lambda: resnet_small(0), ValueError, "num_classes"),
    (lambda: resnet50(num_classes=2.5), TypeError, "num_classes"),
    (lambda: densenet121(num_classes=True), TypeError, "num_classes"),
    (lambda: preact_resnet18(in_channels=0), ValueError, "in_channels"),
    (lambda: ShakeDrop(-0.1), ValueError, "survival"),
    (lambda: ShakeDrop(0.5, alpha_range=(1, -1)), ValueError, "alpha_range"),
])
def test_bad_arguments(call, error, word):
    with pytest.raises(error, match=word):
        call()
