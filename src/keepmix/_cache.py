"""Host-side caches of device constants (band matrices, index grids, small scalars).

:func:`device_cache` is ``functools.lru_cache`` for functions that build a constant tensor from
hashable arguments (sizes, a device): eagerly the tensor is made once and reused, so an op launches
nothing to create it. Under ``torch.compile`` the cache is host state Dynamo cannot trace (it warns
that it ignores the wrapper and may be silently wrong), so there the undecorated function is called
instead and its tensor becomes a constant of the graph — the same values, without the warning.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable)


def device_cache(maxsize: int) -> Callable[[F], F]:
    """``functools.lru_cache(maxsize)`` that steps aside while ``torch.compile`` traces."""
    def wrap(fn: F) -> F:
        cached = functools.lru_cache(maxsize=maxsize)(fn)

        @functools.wraps(fn)
        def call(*args, **kwargs):
            if torch.compiler.is_compiling():
                return fn(*args, **kwargs)
            return cached(*args, **kwargs)

        call.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
        call.cache_info = cached.cache_info  # type: ignore[attr-defined]
        return call  # type: ignore[return-value]
    return wrap
