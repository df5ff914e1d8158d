"""GPU-shaped hot paths, pinned structurally (not by timing): operator calls per op call do not grow
with the batch and stay within budget, one host sync per call at most (none with checks off), every
op but the documented exceptions traces with torch.compile(fullgraph=True), and no op creates a
float64 tensor from float32 input."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from keepmix import input_checks
from keepmix.launches import CASES, count_calls, make_call

PINNED = list(CASES)  # the policies' rows count their fused engine (engine="fused")


@pytest.mark.parametrize("name", PINNED)
def test_calls_are_flat_in_the_batch_and_within_budget(name):
    counts = {batch: count_calls(make_call(name, batch)) for batch in (4, 16, 64)}
    calls = {batch: c.calls for batch, c in counts.items()}
    assert len(set(calls.values())) == 1, f"{name}: operator calls grow with the batch: {calls}"
    assert calls[64] <= CASES[name].budget, f"{name}: {calls[64]} calls > budget {CASES[name].budget}"
    assert all(c.syncs <= 1 for c in counts.values()), f"{name}: more than one host sync per call"


@pytest.mark.parametrize("name", PINNED)
def test_no_host_sync_with_checks_off(name):
    with input_checks(False):
        assert count_calls(make_call(name, 8)).syncs == 0


@pytest.mark.parametrize("name", PINNED)
def test_ops_trace_with_fullgraph(name):
    """Dynamo captures the whole op in one graph (the eager backend checks tracing without codegen),
    and never meets a host cache it would trace around ("Dynamo ignores the cache wrapper … silent
    incorrectness": keepmix's device-constant caches step aside while compiling, keepmix._cache)."""
    import torch._dynamo
    torch._dynamo.reset()
    fn = make_call(name, 8)
    with input_checks(False), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = torch.compile(fn, backend="eager", fullgraph=True)()
    assert isinstance(out, tuple) and out[0].shape[0] == 8
    cache_warnings = [str(w.message) for w in caught if "lru_cache" in str(w.message)]
    assert not cache_warnings, cache_warnings[0]


@pytest.mark.slow
def test_cutout_and_guided_mixup_compile_with_inductor():
    import torch._dynamo
    for name in ("Cutout", "GuidedMixup (maps given)"):
        torch._dynamo.reset()
        fn = make_call(name, 8)
        with input_checks(False), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            images, targets = torch.compile(fn, fullgraph=True)()
        assert torch.isfinite(images).all() and targets.shape[0] == 8


class _Float64Watch(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                self.seen.append(str(func))
        return out


@pytest.mark.parametrize("name", list(CASES))
def test_no_float64_tensor_on_the_device(name):
    """Apple's MPS has no float64 and consumer GPUs run it at 1/32 speed: float32 input, no float64 anywhere."""
    fn = make_call(name, 8)
    with _Float64Watch() as watch:
        fn()
    assert not watch.seen, f"{name} created float64 tensors: {sorted(set(watch.seen))[:5]}"


def test_greedy_pairing_device_path_equals_the_host_path():
    from keepmix.pairing import _greedy_order_device, _greedy_order_numpy
    g = torch.Generator().manual_seed(0)
    for batch in (2, 3, 7, 32):
        for integer in (False, True):
            d = torch.rand(batch, batch, generator=g)
            d = (d * 4).floor() if integer else d                # ties: lowest index wins on both paths
            assert _greedy_order_device(d).tolist() == _greedy_order_numpy(d.numpy()).tolist()


def test_device_cache_reuses_eagerly_and_builds_in_the_graph():
    """Eagerly the constant is made once (the same tensor object); compiled, the function body runs in the
    trace (no cache lookup Dynamo would ignore) and gives the same values."""
    import torch._dynamo
    from keepmix._cache import device_cache
    made = []

    @device_cache(4)
    def ramp(n, device):
        made.append(n)
        return torch.arange(n, device=device, dtype=torch.float32)

    first, again = ramp(5, torch.device("cpu")), ramp(5, torch.device("cpu"))
    assert first is again and made == [5]
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = torch.compile(lambda x: x + ramp(5, x.device), backend="eager", fullgraph=True)(torch.zeros(5))
    assert torch.equal(out, first)
    assert not [w for w in caught if "lru_cache" in str(w.message)]
    assert ramp.cache_info().currsize == 1
