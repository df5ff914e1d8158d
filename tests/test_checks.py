"""Argument checks (messages name the argument), the input-checking switch, and the shared plumbing
(generator-driven draws in keepmix._random, dtype handling in keepmix.protocol)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import keepmix
from keepmix import _checks, _random
from keepmix.protocol import Op, restore_dtype, to_float


# --------------------------------------------------------------------------- the switch


def test_input_checks_switch_and_context_manager():
    nan = torch.tensor([1.0, float("nan")])
    assert _checks.input_checks_enabled()
    with pytest.raises(ValueError, match="thing"):
        _checks.check_finite(nan, "thing")
    with keepmix.input_checks(False):
        assert not _checks.input_checks_enabled()
        _checks.check_finite(nan, "thing")                         # off: no check, no raise
        with keepmix.input_checks(True):
            with pytest.raises(ValueError, match="thing"):
                _checks.check_finite(nan, "thing")
        assert not _checks.input_checks_enabled()                  # nested managers restore
    assert _checks.input_checks_enabled()
    with pytest.raises(RuntimeError):
        with keepmix.input_checks(False):
            raise RuntimeError("inside")
    assert _checks.input_checks_enabled()                          # restored after an exception
    try:
        keepmix.set_input_checks(False)
        assert not _checks.input_checks_enabled()
        _checks.check_images(torch.full((1, 1, 2, 2), float("inf")))
        _checks.check_maps(torch.full((1, 2, 2), float("nan")))
    finally:
        keepmix.set_input_checks(True)
    assert _checks.input_checks_enabled()
    _checks.check_finite(torch.tensor([1, 2]), "ints")              # integer tensors are always finite


def _nan_images():
    x = torch.rand(2, 3, 6, 6)
    x[1, 2, 3, 4] = float("nan")
    return x


def _nan_maps():
    m = torch.rand(2, 6, 6)
    m[1, 5, 2] = float("nan")
    return m


def _inf_maps():
    m = torch.rand(2, 6, 6)
    m[0, 0, 0] = float("inf")
    return m


class _Lin(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 6 * 6, 2)

    def forward(self, x):
        return self.fc(x.flatten(1))


NON_FINITE = {
    "window_scores": (lambda: keepmix.regions.window_scores(_inf_maps(), 2), "saliency"),
    "gradient": (lambda: keepmix.saliency.gradient(_Lin(), _nan_images(), torch.tensor([0, 1])), "images"),
    "spectral": (lambda: keepmix.saliency.spectral_residual(_nan_images()), "images"),
    "gaussian_blur": (lambda: keepmix.saliency.gaussian_blur(_inf_maps()), "maps"),
    "distance": (lambda: keepmix.pairing.saliency_distance(_inf_maps()), "maps"),
    "KeepCutout": (lambda: keepmix.KeepCutout(2)(_nan_images(), None, saliency_maps=torch.rand(2, 6, 6)), "images"),
    "KeepCutout maps": (lambda: keepmix.KeepCutout(2)(torch.rand(2, 3, 6, 6), None, saliency_maps=_inf_maps()),
                        "saliency_maps"),
    # the Keep ops check their maps through the peaks they scale by (compute_maps(…, finite=False)): every one
    "KeepCutout clip maps": (lambda: keepmix.KeepCutout(2, clip=True)(torch.rand(2, 3, 6, 6), None,
                                                                     saliency_maps=_nan_maps()), "saliency_maps"),
    "KeepRandomErasing maps": (lambda: keepmix.KeepRandomErasing(p=1.0)(torch.rand(2, 3, 6, 6), None,
                                                                        saliency_maps=_nan_maps()), "saliency_maps"),
    "KeepCutMix maps": (lambda: keepmix.KeepCutMix(2, prob=1.0)(torch.rand(2, 3, 6, 6), torch.tensor([0, 1]),
                                                                saliency_maps=_inf_maps()), "saliency_maps"),
    "SelectivePaste maps": (lambda: keepmix.SelectivePaste(lambda x: x.flip(-1), 2)(
        torch.rand(2, 3, 6, 6), None, saliency_maps=_nan_maps().half()), "saliency_maps"),
    "GuidedMixup": (lambda: keepmix.GuidedMixup(2, mix_prob=1.0)(_nan_images(), torch.tensor([0, 1])), "images"),
}


@pytest.mark.parametrize("name", list(NON_FINITE))
def test_non_finite_inputs_are_caught(name):
    call, argument = NON_FINITE[name]
    with keepmix.input_checks(True):
        with pytest.raises(ValueError, match=argument):
            call()


# --------------------------------------------------------------------------- check functions


def test_check_images():
    x = torch.rand(2, 3, 4, 5)
    assert _checks.check_images(x) is x
    with pytest.raises(TypeError, match="images"):
        _checks.check_images(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="images"):
        _checks.check_images(x[0])
    with pytest.raises(TypeError, match="images"):
        _checks.check_images(x.int())
    with pytest.raises(TypeError, match="images"):
        _checks.check_images(x > 0.5)
    assert _checks.check_images(x.to(torch.uint8)).dtype == torch.uint8
    with pytest.raises(TypeError, match="batch"):
        _checks.check_images(x.to(torch.uint8), "batch", allow_uint8=False)
    with pytest.raises(ValueError, match="images"):
        _checks.check_images(torch.rand(0, 3, 4, 5))
    with pytest.raises(ValueError, match="images"):
        _checks.check_images(torch.rand(1, 3, 0, 5))
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        _checks.check_images(x.to(dtype))


def test_check_maps_and_targets():
    m = torch.rand(2, 4, 5)
    assert _checks.check_maps(m, batch=2, size=(4, 5)) is m
    with pytest.raises(ValueError, match="saliency"):
        _checks.check_maps(m[0])
    with pytest.raises(TypeError, match="saliency"):
        _checks.check_maps(m.long())
    with pytest.raises(ValueError, match="mymaps"):
        _checks.check_maps(m, "mymaps", batch=3)
    with pytest.raises(ValueError, match="mymaps"):
        _checks.check_maps(m, "mymaps", size=(5, 4))
    with pytest.raises(TypeError, match="saliency"):
        _checks.check_maps([[1.0]])
    y = torch.tensor([0, 1])
    assert _checks.check_targets(y, 2) is y
    _checks.check_targets(torch.rand(2, 3), 2)
    with pytest.raises(ValueError, match="targets"):
        _checks.check_targets(y, 3)
    with pytest.raises(TypeError, match="targets"):
        _checks.check_targets(torch.tensor([0.0, 1.0]), 2)
    with pytest.raises(TypeError, match="targets"):
        _checks.check_targets(torch.tensor([True, False]), 2)
    with pytest.raises(TypeError, match="targets"):
        _checks.check_targets(torch.zeros(2, 3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="targets"):
        _checks.check_targets(torch.zeros(2, 3, 1), 2)
    with pytest.raises(TypeError, match="targets"):
        _checks.check_targets([0, 1], 2)


def test_check_numbers():
    assert _checks.check_probability(0, "p") == 0.0 and _checks.check_probability(1, "p") == 1.0
    for bad in (-0.01, 1.01, float("nan")):
        with pytest.raises(ValueError, match="prob"):
            _checks.check_probability(bad, "prob")
    with pytest.raises(ValueError, match="prob"):
        _checks.check_probability(0.0, "prob", low_open=True)
    for bad in (True, "0.5", None):
        with pytest.raises(TypeError, match="prob"):
            _checks.check_probability(bad, "prob")
    assert _checks.check_positive(2, "alpha") == 2.0
    assert _checks.check_positive(0, "alpha", allow_zero=True) == 0.0
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            _checks.check_positive(bad, "alpha")
    with pytest.raises(TypeError, match="alpha"):
        _checks.check_positive("1", "alpha")
    assert _checks.check_range((0.1, 0.2), "scale", low=0, high=1) == (0.1, 0.2)
    with pytest.raises(ValueError, match="scale"):
        _checks.check_range((0.3, 0.2), "scale", low=0, high=1)
    with pytest.raises(ValueError, match="scale"):
        _checks.check_range((-0.1, 0.2), "scale", low=0, high=1)
    with pytest.raises(TypeError, match="scale"):
        _checks.check_range(0.2, "scale", low=0, high=1)
    with pytest.raises(TypeError, match="scale"):
        _checks.check_range((0.1, 0.2, 0.3), "scale", low=0, high=1)


def test_check_size_and_generator():
    assert _checks.check_size(3) == (3, 3)
    assert _checks.check_size((2, 5)) == (2, 5)
    assert _checks.check_size((np.int64(2), 5)) == (2, 5)
    for bad in (0, (2, 0), (-1, 3)):
        with pytest.raises(ValueError, match="size"):
            _checks.check_size(bad)
    for bad in (True, 2.0, (2.0, 3), (1, 2, 3), "ab", (True, 2)):
        with pytest.raises(TypeError, match="size"):
            _checks.check_size(bad)
    g = torch.Generator()
    assert _checks.check_generator(g) is g and _checks.check_generator(None) is None
    with pytest.raises(TypeError, match="generator"):
        _checks.check_generator(42)


PUBLIC_RANGE_ERRORS = {
    "window size": (lambda: keepmix.regions.window_scores(torch.rand(1, 4, 4), 5), "size"),
    "quantile tau": (lambda: keepmix.regions.quantile_threshold(torch.rand(1, 4), 1.5), "tau"),
    "random batch": (lambda: keepmix.pairing.random_pairing(0), "batch_size"),
    "blur kernel": (lambda: keepmix.saliency.gaussian_blur(torch.rand(1, 4, 4), 2), "kernel_size"),
    "normalize eps": (lambda: keepmix.saliency.normalize_sum(torch.rand(1, 4, 4), -1.0), "eps"),
    "spectral max_size": (lambda: keepmix.saliency.spectral_residual(torch.rand(1, 3, 4, 4), max_size=-1),
                          "max_size"),
    "cutout tau": (lambda: keepmix.KeepCutout(4, tau=2), "tau"),
    "cutout p": (lambda: keepmix.KeepCutout(4, p=2), "p"),
    "erasing scale": (lambda: keepmix.KeepRandomErasing(scale=(0.2, 0.1)), "scale"),
    "erasing ratio": (lambda: keepmix.KeepRandomErasing(ratio=(3.0, 0.3)), "ratio"),
    "cutmix alpha": (lambda: keepmix.KeepCutMix(2, alpha=-1), "alpha"),
    "guided mix_prob": (lambda: keepmix.GuidedMixup(2, mix_prob=-0.5), "mix_prob"),
    "loss smoothing": (lambda: keepmix.soft_target_cross_entropy(torch.rand(2, 3), torch.tensor([0, 1]), 2.0),
                       "label_smoothing"),
    "gradient scale": (lambda: keepmix.GradientSaliency(nn.Linear(2, 2), scale=3.0), "scale"),
    "gradient reduce": (lambda: keepmix.GradientSaliency(nn.Linear(2, 2), reduce="l2"), "reduce"),
    "gradient bn": (lambda: keepmix.GradientSaliency(nn.Linear(2, 2), bn="none"), "bn"),
    "op images ndim": (lambda: keepmix.KeepCutout(2)(torch.rand(1, 1, 3, 4, 4), None), "images"),
    "op targets batch": (lambda: keepmix.KeepCutout(2)(torch.rand(2, 3, 4, 4), torch.tensor([1])), "targets"),
}


@pytest.mark.parametrize("name", list(PUBLIC_RANGE_ERRORS))
def test_public_value_errors_name_the_argument(name):
    call, argument = PUBLIC_RANGE_ERRORS[name]
    with pytest.raises(ValueError, match=argument):
        call()


# --------------------------------------------------------------------------- protocol


def test_to_float_and_restore_dtype():
    x8 = torch.tensor([0, 7, 255], dtype=torch.uint8)
    f = to_float(x8)
    assert f.dtype == torch.float32 and f.tolist() == [0.0, 7.0, 255.0]
    xf = torch.rand(3)
    assert to_float(xf) is xf
    back = restore_dtype(torch.tensor([-3.0, 2.4, 2.6, 300.0]), torch.zeros(1, dtype=torch.uint8))
    assert back.dtype == torch.uint8 and back.tolist() == [0, 2, 3, 255]
    assert restore_dtype(torch.tensor([1.5]), torch.zeros(1, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_op_base_class():
    class Double(Op):
        accepts_uint8 = False

        def apply(self, images, targets):
            return images * 2, targets

        def _repr_fields(self):
            return {"factor": 2}

    with pytest.raises(TypeError):
        Op()                                      # abstract
    op = Double()
    assert repr(op) == "Double(factor=2)" and op.last_stats == {} and op.generator is None
    y = torch.tensor([0, 1])
    out, same = op(torch.ones(2, 1, 2, 2), y)
    assert torch.equal(out, torch.full((2, 1, 2, 2), 2.0)) and same is y
    assert op(torch.ones(2, 1, 2, 2))[1] is None
    with pytest.raises(TypeError, match="images"):
        op(torch.ones(2, 1, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="targets"):
        op(torch.ones(2, 1, 2, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="generator"):
        Double(generator="seed")


# --------------------------------------------------------------------------- _random


def test_random_draws_follow_the_generator():
    for draw in (lambda g: _random.rand((5, 3), "cpu", g), lambda g: _random.randn((4,), "cpu", g),
                 lambda g: _random.randint(0, 10, (6,), "cpu", g), lambda g: _random.randperm(9, "cpu", g),
                 lambda g: _random.beta(0.4, 0.4, (8,), "cpu", g), lambda g: _random.gamma(2.5, (8,), "cpu", g)):
        a = draw(torch.Generator().manual_seed(1))
        b = draw(torch.Generator().manual_seed(1))
        c = draw(torch.Generator().manual_seed(2))
        assert torch.equal(a, b) and not torch.equal(a, c)
        assert a.device.type == "cpu"
    assert _random.rand((2,), "cpu", dtype=torch.float64).dtype == torch.float64
    assert sorted(_random.randperm(7, "cpu").tolist()) == list(range(7))
    r = _random.randint(3, 5, (200,), "cpu", torch.Generator().manual_seed(0))
    assert r.min() >= 3 and r.max() <= 4


@pytest.mark.parametrize("k", [0.3, 1.0, 4.0])
def test_gamma_moments(k):
    draws = _random.gamma(k, (20000,), "cpu", torch.Generator().manual_seed(3)).double()
    assert torch.all(draws >= 0) and torch.isfinite(draws).all()
    # mean k and variance k; the tolerance is ~5 standard errors
    assert abs(draws.mean().item() - k) < 5 * math.sqrt(k / 20000)
    assert abs(draws.var().item() - k) < 0.08 * k + 0.01


@pytest.mark.parametrize("a,b", [(1.0, 1.0), (2.0, 5.0), (1.0, 3.0)])
def test_beta_distribution(a, b, chi2_pvalue):
    n = 20000
    draws = _random.beta(a, b, (n,), "cpu", torch.Generator().manual_seed(4)).double()
    assert torch.all((draws >= 0) & (draws <= 1))
    # for integer a, b: I_x(a, b) = Σ_{j=a}^{a+b−1} C(a+b−1, j) x^j (1−x)^{a+b−1−j}
    edges = np.linspace(0, 1, 11)
    m = int(a + b - 1)
    cdf = np.array([sum(math.comb(m, j) * e ** j * (1 - e) ** (m - j) for j in range(int(a), m + 1))
                    for e in edges])
    expected = np.diff(cdf) * n
    observed = np.histogram(draws.numpy(), bins=edges)[0]
    keep = expected > 5
    rest_obs, rest_exp = observed[~keep].sum(), expected[~keep].sum()
    if rest_exp > 0:
        observed, expected = np.append(observed[keep], rest_obs), np.append(expected[keep], rest_exp)
    assert chi2_pvalue(observed, expected) > 1e-3


def test_beta_small_parameters_are_finite():
    draws = _random.beta(0.05, 0.05, (5000,), "cpu", torch.Generator().manual_seed(5))
    assert torch.isfinite(draws).all() and torch.all((draws >= 0) & (draws <= 1))
    assert abs(draws.mean().item() - 0.5) < 0.05                      # symmetric
    assert ((draws < 0.05) | (draws > 0.95)).float().mean() > 0.6      # mass at the ends
