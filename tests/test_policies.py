"""AutoAugment, RandAugment, TrivialAugmentWide, AugMix and the Jensen–Shannon loss.

The policies draw their op, magnitude and sign per image. The tests check the
drawn plans against the definitions (uniform frequencies by chi-square at
p = 0.001 with fixed seeds, magnitudes by formula) and that executing a plan on
a batch equals applying the chosen functional ops to each image on its own.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from keepmix.policies import (AUGMIX_OPS, POLICIES, RANDAUGMENT_OPS, AugMix, AutoAugment, RandAugment,
                              TrivialAugmentWide, jensen_shannon_loss)
from keepmix.policies import functional as F

# 0.999 quantiles of the chi-square distribution, by degrees of freedom
CHI2_999 = {2: 13.82, 8: 26.12, 13: 34.53, 24: 51.18, 30: 59.70}
KNOWN_OPS = {"identity", "auto_contrast", "equalize", "invert", "posterize", "solarize", "color", "contrast",
             "brightness", "sharpness", "rotate", "shear_x", "shear_y", "translate_x", "translate_y"}


def chi_square_uniform(values, categories):
    counts = torch.bincount(values.flatten(), minlength=categories).double()
    assert counts.numel() == categories
    expected = values.numel() / categories
    return float(((counts - expected) ** 2 / expected).sum())


def images_u8(batch=12, channels=3, height=10, width=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, channels, height, width), dtype=torch.uint8, generator=g)


def apply_named(name, image, value, fill, interpolation):
    """One op on one image through the public functional API."""
    if name in ("identity", "auto_contrast", "equalize", "invert"):
        return getattr(F, name)(image)
    if name in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y"):
        return getattr(F, name)(image, value, fill=fill, interpolation=interpolation)
    return getattr(F, name)(image, value)


def replay(policy, images, op_index, magnitude):
    """Apply image i's ops in sequence, one image at a time. op_index/magnitude: (B, steps)."""
    outs = []
    for i in range(images.shape[0]):
        x = images[i:i + 1]
        for step in range(op_index.shape[1]):
            name = policy.op_names[int(op_index[i, step])]
            x = apply_named(name, x, float(magnitude[i, step]), policy.fill, policy.interpolation)
        outs.append(x)
    return torch.cat(outs)


# ---------------------------------------------------------------------------------------------
# AutoAugment


@pytest.mark.parametrize("policy", ["cifar10", "svhn", "imagenet"])
def test_autoaugment_tables_are_well_formed(policy):
    subpolicies = POLICIES[policy]
    assert len(subpolicies) == 25
    for subpolicy in subpolicies:
        assert len(subpolicy) == 2
        for name, prob, level in subpolicy:
            assert name in KNOWN_OPS
            assert 0.0 <= prob <= 1.0
            if name in ("auto_contrast", "equalize", "invert"):
                assert level is None
            else:
                assert isinstance(level, int) and 0 <= level <= 9


def test_autoaugment_subpolicy_and_coin_frequencies():
    aa = AutoAugment("imagenet", generator=torch.Generator().manual_seed(1))
    n = 25000
    plan = aa.sample_plan(n, 32, 32, "cpu")
    assert chi_square_uniform(plan["subpolicy"], 25) < CHI2_999[24]
    for s, subpolicy in enumerate(POLICIES["imagenet"]):
        chosen = plan["subpolicy"] == s
        count = int(chosen.sum())
        for step, (_, prob, _) in enumerate(subpolicy):
            rate = float(plan["applied"][chosen, step].double().mean())
            assert abs(rate - prob) <= 4.5 * math.sqrt(prob * (1 - prob) / count) + 1e-12
    # the op of an applied step is the table's op; skipped steps are the identity
    table = torch.tensor([[aa.op_names.index(name) for name, _, _ in sp] for sp in POLICIES["imagenet"]])
    expected = torch.where(plan["applied"], table[plan["subpolicy"]], torch.zeros_like(plan["op_index"]))
    assert torch.equal(plan["op_index"], expected)


def expected_autoaugment_values(name, level, height, width):
    """The paper's ranges over 10 levels (both signs for the signed ops)."""
    f = level / 9
    if name in ("shear_x", "shear_y"):
        return {0.3 * f, -0.3 * f}
    if name in ("translate_x", "translate_y"):
        size = width if name == "translate_x" else height
        v = math.floor(150 / 331 * size * f)
        return {v, -v}
    if name == "rotate":
        return {30 * f, -30 * f}
    if name in ("color", "contrast", "brightness", "sharpness"):
        return {0.1 + 1.8 * f}
    if name == "posterize":
        return {[8, 8, 7, 7, 6, 6, 5, 5, 4, 4][level]}
    if name == "solarize":
        return {256 * (1 - f)}
    raise AssertionError(name)


@pytest.mark.parametrize("policy", ["cifar10", "svhn", "imagenet"])
def test_autoaugment_magnitudes_follow_the_paper_ranges(policy):
    aa = AutoAugment(policy, generator=torch.Generator().manual_seed(2))
    height, width = 40, 32
    plan = aa.sample_plan(3000, height, width, "cpu")
    signs = []
    for i in range(3000):
        for step in range(2):
            if not plan["applied"][i, step]:
                continue
            name, _, level = POLICIES[policy][int(plan["subpolicy"][i])][step]
            value = float(plan["magnitude"][i, step])
            if level is None:
                continue
            allowed = expected_autoaugment_values(name, level, height, width)
            assert any(abs(value - a) <= 1e-6 * max(1.0, abs(a)) for a in allowed), (name, level, value)  # float32
            if name in ("shear_x", "shear_y", "rotate") and level > 0:
                signs.append(value > 0)
    if signs:
        positive = sum(signs) / len(signs)
        assert abs(positive - 0.5) < 4.5 * math.sqrt(0.25 / len(signs))


def test_autoaugment_batch_equals_per_image_replay():
    images = images_u8(batch=16, height=9, width=11)
    aa = AutoAugment("svhn", fill=(10, 200, 30), generator=torch.Generator().manual_seed(3))
    out, targets = aa(images, None)
    stats = aa.last_stats
    assert len(torch.unique(stats["subpolicy"])) > 1  # images draw their own sub-policies
    assert torch.equal(out, replay(aa, images, stats["op_index"], stats["magnitude"]))


# ---------------------------------------------------------------------------------------------
# RandAugment


def test_randaugment_op_frequencies_are_uniform_and_independent_per_image():
    ra = RandAugment(num_ops=2, generator=torch.Generator().manual_seed(4))
    plan = ra.sample_plan(10000, 32, 32, "cpu")
    assert plan["op_index"].shape == (10000, 2)
    for step in range(2):
        assert chi_square_uniform(plan["op_index"][:, step], 14) < CHI2_999[13]
    # the two ops of an image are drawn independently: the pair (op1, op2) is uniform over 14·14 cells
    pair = plan["op_index"][:, 0] * 14 + plan["op_index"][:, 1]
    assert chi_square_uniform(pair, 196) < 261.76  # 0.999 quantile, 195 degrees of freedom


def expected_randaugment_value(name, m, bins, height, width):
    f = m / (bins - 1)
    table = {
        "rotate": {30 * f, -30 * f},
        "shear_x": {0.3 * f, -0.3 * f}, "shear_y": {0.3 * f, -0.3 * f},
        "translate_x": {math.floor(150 / 331 * width * f), -math.floor(150 / 331 * width * f)},
        "translate_y": {math.floor(150 / 331 * height * f), -math.floor(150 / 331 * height * f)},
        "posterize": {8 - math.floor(4 * f + 0.5)},
        "solarize": {256 * (1 - f)},
    }
    for enhance in ("color", "contrast", "brightness", "sharpness"):
        table[enhance] = {1 + 0.9 * f, 1 - 0.9 * f}
    return table.get(name, {0.0})


@pytest.mark.parametrize("magnitude,bins", [(9, 31), (30, 31), (0, 31), (7, 10)])
def test_randaugment_magnitudes_without_noise(magnitude, bins):
    ra = RandAugment(num_ops=3, magnitude=magnitude, num_magnitude_bins=bins,
                     generator=torch.Generator().manual_seed(5))
    plan = ra.sample_plan(600, 20, 40, "cpu")
    assert (plan["level"] == magnitude).all()
    for i, step in np.ndindex(600, 3):
        name = RANDAUGMENT_OPS[int(plan["op_index"][i, step])]
        allowed = expected_randaugment_value(name, magnitude, bins, 20, 40)
        value = float(plan["magnitude"][i, step])
        assert any(abs(value - a) <= 1e-6 * max(1.0, abs(a)) for a in allowed), (name, value)  # float32


def test_randaugment_magnitude_noise():
    n = 20000
    noisy = RandAugment(num_ops=1, magnitude=9, magnitude_std=0.5, generator=torch.Generator().manual_seed(6))
    level = noisy.sample_plan(n, 8, 8, "cpu")["level"].double()
    assert abs(level.mean() - 9) < 4.5 * 0.5 / math.sqrt(n)
    assert abs(level.std() - 0.5) < 0.02
    clipped = RandAugment(num_ops=1, magnitude=30, magnitude_std=5.0, generator=torch.Generator().manual_seed(7))
    level = clipped.sample_plan(n, 8, 8, "cpu")["level"]
    assert level.max() <= 30 and level.min() >= 0
    assert abs(float((level == 30).double().mean()) - 0.5) < 0.02  # half the Gaussian lands above M = max
    uniform = RandAugment(num_ops=1, magnitude=12, magnitude_std=float("inf"),
                          generator=torch.Generator().manual_seed(8))
    level = uniform.sample_plan(n, 8, 8, "cpu")["level"].double()
    assert level.min() >= 0 and level.max() <= 12
    assert abs(level.mean() - 6) < 4.5 * 12 / math.sqrt(12 * n)
    # the magnitude of each image follows its own level (rotate: ±30·m/30)
    plan = noisy.sample_plan(2000, 8, 8, "cpu")
    rot = plan["op_index"][:, 0] == RANDAUGMENT_OPS.index("rotate")
    assert torch.allclose(plan["magnitude"][rot, 0].abs(), plan["level"][rot, 0] * 30 / 30, atol=1e-5)
    assert len(torch.unique(plan["magnitude"][rot, 0].abs())) > 10


def test_randaugment_batch_equals_per_image_replay():
    images = images_u8(batch=20, height=9, width=9, seed=1)
    ra = RandAugment(num_ops=3, magnitude=12, magnitude_std=2.0, generator=torch.Generator().manual_seed(9))
    out, _ = ra(images, None)
    stats = ra.last_stats
    assert len(torch.unique(stats["op_index"][:, 0])) > 3
    assert torch.equal(out, replay(ra, images, stats["op_index"], stats["magnitude"]))


# ---------------------------------------------------------------------------------------------
# TrivialAugment Wide


def test_trivialaugment_frequencies_and_wide_ranges():
    ta = TrivialAugmentWide(generator=torch.Generator().manual_seed(10))
    plan = ta.sample_plan(15000, 24, 24, "cpu")
    assert chi_square_uniform(plan["op_index"], 14) < CHI2_999[13]
    assert chi_square_uniform(plan["level"].long(), 31) < CHI2_999[30]
    for i in range(3000):
        name = RANDAUGMENT_OPS[int(plan["op_index"][i])]
        m, value = float(plan["level"][i]), float(plan["magnitude"][i])
        f = m / 30
        allowed = {
            "rotate": {135 * f, -135 * f}, "shear_x": {0.99 * f, -0.99 * f}, "shear_y": {0.99 * f, -0.99 * f},
            "translate_x": {math.floor(32 * f), -math.floor(32 * f)},
            "translate_y": {math.floor(32 * f), -math.floor(32 * f)},
            "posterize": {8 - math.floor(6 * f + 0.5)}, "solarize": {256 * (1 - f)},
            "color": {1 + 0.99 * f, 1 - 0.99 * f}, "contrast": {1 + 0.99 * f, 1 - 0.99 * f},
            "brightness": {1 + 0.99 * f, 1 - 0.99 * f}, "sharpness": {1 + 0.99 * f, 1 - 0.99 * f},
        }.get(name, {0.0})
        assert any(abs(value - a) <= 1e-6 * max(1.0, abs(a)) for a in allowed), (name, m, value)  # float32


def test_trivialaugment_batch_equals_per_image_replay():
    images = images_u8(batch=20, height=8, width=10, seed=2)
    ta = TrivialAugmentWide(generator=torch.Generator().manual_seed(11))
    out, _ = ta(images, None)
    stats = ta.last_stats
    assert len(torch.unique(stats["op_index"])) > 3 and len(torch.unique(stats["level"])) > 3
    assert torch.equal(out, replay(ta, images, stats["op_index"][:, None], stats["magnitude"][:, None]))


# ---------------------------------------------------------------------------------------------
# AugMix


def test_augmix_draws():
    n = 8000
    am = AugMix(generator=torch.Generator().manual_seed(12))
    plan = am.sample_plan(n, 32, 32, "cpu")
    w = plan["chain_weights"].double()
    assert w.shape == (n, 3) and (w >= 0).all()
    assert torch.allclose(w.sum(1), torch.ones(n, dtype=torch.float64), atol=1e-6)
    # Dirichlet(1, 1, 1): each weight ~ Beta(1, 2), mean 1/3, variance 1/18
    assert (w.mean(0) - 1 / 3).abs().max() < 4.5 * math.sqrt(1 / 18 / n)
    assert (w.var(0) - 1 / 18).abs().max() < 0.004
    m = plan["mix_weight"].double()  # Beta(1, 1) = U[0, 1]
    assert abs(m.mean() - 0.5) < 4.5 * math.sqrt(1 / 12 / n) and abs(m.var() - 1 / 12) < 0.004
    assert chi_square_uniform(plan["depth"] - 1, 3) < CHI2_999[2]
    drawn = plan["op_index"][plan["op_index"] < len(AUGMIX_OPS)]
    assert chi_square_uniform(drawn, len(AUGMIX_OPS)) < CHI2_999[8]
    # chains are padded with the identity beyond their depth
    steps = torch.arange(3).view(1, 1, 3)
    assert torch.equal(plan["op_index"] == len(AUGMIX_OPS), steps >= plan["depth"].unsqueeze(2))
    assert plan["level"].min() >= 0.1 and plan["level"].max() <= 3
    assert not {"color", "contrast", "brightness", "sharpness"} & set(am.op_names)


def test_augmix_magnitudes_follow_the_official_scaling():
    am = AugMix(severity=3, all_ops=True, generator=torch.Generator().manual_seed(13))
    plan = am.sample_plan(800, 30, 36, "cpu")
    for idx in zip(*torch.nonzero(plan["op_index"] < len(am.drawn_ops), as_tuple=True)):
        name = am.op_names[int(plan["op_index"][idx])]
        f = float(plan["level"][idx]) / 10
        value = float(plan["magnitude"][idx])
        allowed = {
            "posterize": {4 - math.floor(4 * f)}, "solarize": {256 - math.floor(256 * f)},
            "rotate": {math.floor(30 * f), -math.floor(30 * f)}, "shear_x": {0.3 * f, -0.3 * f},
            "shear_y": {0.3 * f, -0.3 * f}, "translate_x": {math.floor(f * 12), -math.floor(f * 12)},
            "translate_y": {math.floor(f * 10), -math.floor(f * 10)},
        }.get(name, {0.1 + 1.8 * f} if name in ("color", "contrast", "brightness", "sharpness") else {0.0})
        assert any(abs(value - a) < 1e-4 for a in allowed), (name, f, value)


@pytest.mark.parametrize("depth", [-1, 2])
def test_augmix_equals_per_image_mixture(depth):
    g = torch.Generator().manual_seed(14)
    images = torch.rand(6, 3, 8, 8, generator=g, dtype=torch.float64)
    am = AugMix(width=3, depth=depth, generator=torch.Generator().manual_seed(15))
    out, _ = am(images, None)
    stats = am.last_stats
    if depth > 0:
        assert (stats["depth"] == depth).all()
    for i in range(6):
        x = images[i:i + 1]
        mixture = torch.zeros_like(x)
        for k in range(3):
            chain = replay(am, x, stats["op_index"][i:i + 1, k], stats["magnitude"][i:i + 1, k])
            mixture += float(stats["chain_weights"][i, k]) * chain
        m = float(stats["mix_weight"][i])
        assert torch.allclose(out[i:i + 1], (1 - m) * x + m * mixture, atol=1e-6)


def test_augmix_uint8_is_the_rounded_mixture_and_tiny_alpha_is_defined():
    images = images_u8(batch=5, height=8, width=8, seed=3)
    am = AugMix(generator=torch.Generator().manual_seed(16))
    out, _ = am(images, None)
    stats = am.last_stats
    assert out.dtype == torch.uint8
    for i in range(5):
        x = images[i:i + 1]
        mixture = torch.zeros(x.shape)
        for k in range(3):
            chain = replay(am, x, stats["op_index"][i:i + 1, k], stats["magnitude"][i:i + 1, k])
            mixture += stats["chain_weights"][i, k] * chain.float()
        m = stats["mix_weight"][i]
        expected = ((1 - m) * x.float() + m * mixture).round().clamp(0, 255)
        assert (out[i:i + 1].float() - expected).abs().max() <= 1  # float32 summation order
    tiny = AugMix(alpha=1e-3, generator=torch.Generator().manual_seed(17))
    out, _ = tiny(torch.rand(8, 3, 6, 6), None)
    assert torch.isfinite(out).all()
    assert torch.allclose(tiny.last_stats["chain_weights"].sum(1), torch.ones(8), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# all policies: protocol, seeds, dtypes, errors

POLICY_FACTORIES = {
    "autoaugment-cifar10": lambda g: AutoAugment("cifar10", generator=g),
    "autoaugment-imagenet": lambda g: AutoAugment("imagenet", generator=g),
    "randaugment": lambda g: RandAugment(num_ops=2, magnitude=9, magnitude_std=0.5, generator=g),
    "trivialaugment": lambda g: TrivialAugmentWide(generator=g),
    "augmix": lambda g: AugMix(generator=g),
}


@pytest.mark.parametrize("name", sorted(POLICY_FACTORIES))
def test_same_seed_is_bit_identical_and_targets_pass_through(name):
    images = images_u8(batch=16, height=12, width=12, seed=4)
    targets = torch.arange(16)
    first, t1 = POLICY_FACTORIES[name](torch.Generator().manual_seed(21))(images, targets)
    second, _ = POLICY_FACTORIES[name](torch.Generator().manual_seed(21))(images, targets)
    other, _ = POLICY_FACTORIES[name](torch.Generator().manual_seed(22))(images, targets)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    assert t1 is targets
    assert first.dtype == images.dtype and first.shape == images.shape and first.device == images.device
    soft = torch.rand(16, 4)
    assert POLICY_FACTORIES[name](None)(images, soft)[1] is soft


@pytest.mark.parametrize("name", sorted(POLICY_FACTORIES))
def test_uint8_and_float_inputs_get_the_same_plan_and_close_results(name):
    images = images_u8(batch=16, height=12, width=12, seed=5)
    op_u8 = POLICY_FACTORIES[name](torch.Generator().manual_seed(23))
    op_float = POLICY_FACTORIES[name](torch.Generator().manual_seed(23))
    from_u8, _ = op_u8(images, None)
    from_float, _ = op_float(images.float() / 255, None)
    for key, value in op_u8.last_stats.items():
        assert torch.equal(value, op_float.last_stats[key]), key
    assert from_float.dtype == torch.float32 and 0 <= from_float.min() and from_float.max() <= 1
    # rounding happens after every uint8 op only, so results differ by a few levels at most on average
    diff = (from_float.double() * 255 - from_u8.double()).abs()
    assert diff.mean() < 2.0


@pytest.mark.parametrize("name", sorted(POLICY_FACTORIES))
def test_half_precision_and_one_channel(name):
    op = POLICY_FACTORIES[name](torch.Generator().manual_seed(24))
    half = torch.rand(4, 3, 8, 8).half()
    out, _ = op(half, None)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    gray, _ = op(images_u8(batch=4, channels=1, height=8, width=8), None)
    assert gray.shape == (4, 1, 8, 8)


def test_policies_apply_different_ops_within_one_call():
    images = images_u8(batch=32, height=8, width=8, seed=6)
    ta = TrivialAugmentWide(generator=torch.Generator().manual_seed(25))
    out, _ = ta(images, None)
    ops = ta.last_stats["op_index"]
    # images that drew the identity are unchanged; images that drew invert-like ops are not
    identity = ops == RANDAUGMENT_OPS.index("identity")
    assert identity.any() and (~identity).any()
    assert torch.equal(out[identity], images[identity])
    changed = (out != images).flatten(1).any(1)
    assert changed[~identity].float().mean() > 0.5


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="policy"):
        AutoAugment("cifar100")
    with pytest.raises(ValueError, match="fill"):
        AutoAugment(fill=300)
    with pytest.raises(TypeError, match="fill"):
        RandAugment(fill="gray")
    with pytest.raises(ValueError, match="interpolation"):
        TrivialAugmentWide(interpolation="cubic")
    with pytest.raises(TypeError, match="generator"):
        AugMix(generator=1)
    with pytest.raises(ValueError, match="num_ops"):
        RandAugment(num_ops=-1)
    with pytest.raises(TypeError, match="num_ops"):
        RandAugment(num_ops=1.5)
    with pytest.raises(ValueError, match="magnitude"):
        RandAugment(magnitude=31)
    with pytest.raises(ValueError, match="magnitude_std"):
        RandAugment(magnitude_std=-1)
    with pytest.raises(ValueError, match="num_magnitude_bins"):
        RandAugment(num_magnitude_bins=1)
    with pytest.raises(ValueError, match="num_magnitude_bins"):
        TrivialAugmentWide(num_magnitude_bins=0)
    with pytest.raises(ValueError, match="severity"):
        AugMix(severity=0)
    with pytest.raises(ValueError, match="width"):
        AugMix(width=0)
    with pytest.raises(ValueError, match="depth"):
        AugMix(depth=0)
    with pytest.raises(ValueError, match="alpha"):
        AugMix(alpha=0)
    with pytest.raises(TypeError, match="all_ops"):
        AugMix(all_ops="yes")
    four = torch.zeros(2, 4, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="channels"):
        AutoAugment()(four, None)
    AugMix()(four, None)  # the default AugMix set has no grayscale op
    with pytest.raises(ValueError, match="fill"):
        RandAugment(fill=(1, 2, 3))(torch.zeros(2, 1, 8, 8), None)
    with pytest.raises(TypeError, match="images"):
        RandAugment()(torch.zeros(2, 3, 8, 8, dtype=torch.int32), None)
    with pytest.raises(ValueError, match="targets"):
        RandAugment()(torch.zeros(2, 3, 8, 8), torch.zeros(3, dtype=torch.long))


# ---------------------------------------------------------------------------------------------
# Jensen–Shannon loss


def numpy_js(a, b, c):
    def softmax(z):
        z = z - z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)
    ps = [softmax(z) for z in (a, b, c)]
    log_m = np.log(np.clip(sum(ps) / 3, 1e-7, 1))
    return np.mean(sum((p * (np.log(p) - log_m)).sum(1) for p in ps) / 3)


def test_jensen_shannon_equals_direct_computation():
    g = torch.Generator().manual_seed(30)
    a, b, c = (3 * torch.randn(8, 10, generator=g, dtype=torch.float64) for _ in range(3))
    loss = jensen_shannon_loss(a, b, c)
    assert loss.ndim == 0
    assert abs(float(loss) - numpy_js(a.numpy(), b.numpy(), c.numpy())) < 1e-12
    same = jensen_shannon_loss(a, a.clone(), a.clone())
    assert abs(float(same)) < 1e-12


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.floats(0.1, 20.0))
def test_jensen_shannon_properties(seed, scale):
    g = torch.Generator().manual_seed(seed)
    a, b, c = (scale * torch.randn(4, 5, generator=g, dtype=torch.float64) for _ in range(3))
    loss = jensen_shannon_loss(a, b, c)
    assert 0 <= float(loss) <= math.log(3) + 1e-9
    assert abs(float(loss) - float(jensen_shannon_loss(c, a, b))) < 1e-12  # symmetric in the three views
    # softmax is shift invariant
    assert abs(float(loss) - float(jensen_shannon_loss(a + 5, b - 2, c))) < 1e-9


def test_jensen_shannon_gradients_and_errors():
    logits = [torch.randn(4, 6, requires_grad=True) for _ in range(3)]
    jensen_shannon_loss(*logits).backward()
    assert all(torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0 for t in logits)
    a = torch.randn(4, 6)
    with pytest.raises(ValueError, match="logits_aug1"):
        jensen_shannon_loss(a, torch.randn(4, 5), a)
    with pytest.raises(ValueError, match="logits_clean"):
        jensen_shannon_loss(torch.randn(4), torch.randn(4), torch.randn(4))
    with pytest.raises(TypeError, match="logits_aug2"):
        jensen_shannon_loss(a, a, a.long())
    with pytest.raises(ValueError, match="logits_aug2"):
        jensen_shannon_loss(a, a, torch.full((4, 6), float("nan")))
