"""Argument checks shared by every public function and op.

Bad input raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError``
(wrong shape, range or value), and the message names the argument and what was
expected. Value checks (finiteness, index ranges) need the values: inside an op
call they are collected and read back together with one host sync per call
(:func:`deferred_checks`); they are on by default and can be switched off with
:func:`set_input_checks` or the :func:`input_checks` context manager once a
pipeline is known to be clean — then an op makes no host sync at all.
"""

from __future__ import annotations

import contextlib
import numbers
import threading
from typing import Iterator, List, Optional, Tuple, Union

import torch

_CHECK_FINITE = True


def set_input_checks(enabled: bool) -> None:
    """Switch the finiteness checks of images and saliency maps on or off (global)."""
    global _CHECK_FINITE
    _CHECK_FINITE = bool(enabled)


def input_checks_enabled() -> bool:
    return _CHECK_FINITE


@contextlib.contextmanager
def input_checks(enabled: bool) -> Iterator[None]:
    """Context manager form of :func:`set_input_checks`."""
    global _CHECK_FINITE
    previous = _CHECK_FINITE
    _CHECK_FINITE = bool(enabled)
    try:
        yield
    finally:
        _CHECK_FINITE = previous


class _Pending(threading.local):
    """The checks of the op call in progress on this thread (None outside a call)."""
    flags: Optional[List[Tuple[torch.Tensor, str]]] = None


_PENDING = _Pending()


@contextlib.contextmanager
def deferred_checks() -> Iterator[None]:
    """Collect the value checks made inside (finiteness, index ranges) and read them back at the
    end with **one** host sync for all of them; raise the first failed check's ValueError.

    Every op call runs in one (``Op.__call__``); nested op calls (Compose, SelectivePaste's
    transform) join the outermost scope. Checks made outside any scope sync at once. With input
    checks off nothing is recorded and nothing syncs. A failed check is raised after the op's
    tensor work and before its result is returned (that work never hangs on NaN).
    """
    if _PENDING.flags is not None or torch.compiler.is_compiling():  # nested: the outer scope reads back
        yield
        return
    flags: List[Tuple[torch.Tensor, str]] = []
    _PENDING.flags = flags
    try:
        yield
    except Exception as error:  # a bad value met earlier explains a later failure better: report it first
        _PENDING.flags = None
        _raise_failed(flags, cause=error)
        raise
    finally:
        _PENDING.flags = None
    if flags:
        device = flags[0][0].device
        ok = flags[0][0] if len(flags) == 1 else torch.stack(
            [f if f.device == device else f.to(device) for f, _ in flags]).all()
        if not bool(ok):  # the one sync
            _raise_failed(flags)


def _raise_failed(flags, cause: Optional[BaseException] = None) -> None:
    for ok, message in flags or ():
        if not bool(ok):
            raise ValueError(message) from cause


def check_flag(ok: torch.Tensor, message: str) -> None:
    """Require a 0-d bool tensor to be true: ValueError(message) otherwise, raised at once or at the end
    of the enclosing :func:`deferred_checks` scope. Only when input checks are on."""
    if not _CHECK_FINITE or torch.compiler.is_compiling():
        return
    if _PENDING.flags is not None:
        _PENDING.flags.append((ok, message))
    elif not bool(ok):
        raise ValueError(message)


def check_finite(tensor: torch.Tensor, name: str, *, boundary: bool = False) -> None:
    """Raise ValueError if ``tensor`` holds NaN or inf (only when input checks are on).

    Called directly (outside an op), every function checks its own input. Inside an op call only
    the op's *boundary* is checked (``boundary=True``: its images, targets and saliency maps,
    given or computed); what the op derives from checked values is not checked again.
    """
    if not (_CHECK_FINITE and tensor.is_floating_point()) or (_PENDING.flags is not None and not boundary):
        return
    # Σ(x·0) is 0 exactly when every value is finite (inf·0 and NaN give NaN) and never overflows:
    # one elementwise pass and one reduction — an order of magnitude cheaper than isfinite().all()
    check_flag(tensor.mul(0).sum() == 0, f"{name} contains NaN or infinite values")


def check_images(images, name: str = "images", *, allow_uint8: bool = True, boundary: bool = False) -> torch.Tensor:
    """Validate a B×C×H×W batch. uint8 is accepted only where ``allow_uint8``."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape B×C×H×W, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"{name} must have 4 dimensions (B×C×H×W), got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        if not allow_uint8:
            raise TypeError(f"{name} must be a floating-point tensor here (convert and normalise uint8 images first)")
    elif not images.is_floating_point():
        raise TypeError(f"{name} must be uint8 or floating point, got {images.dtype}")
    if images.shape[0] < 1 or images.shape[2] < 1 or images.shape[3] < 1:
        raise ValueError(f"{name} must have at least one image of at least 1×1 pixels, got shape {tuple(images.shape)}")
    check_finite(images, name, boundary=boundary)
    return images


def check_maps(maps, name: str = "saliency", *, batch: Optional[int] = None,
               size: Optional[Tuple[int, int]] = None, boundary: bool = False) -> torch.Tensor:
    """Validate saliency maps B×H×W (floating point, optionally of a given batch and size)."""
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape B×H×W, got {type(maps).__name__}")
    if maps.ndim != 3:
        raise ValueError(f"{name} must have 3 dimensions (B×H×W), got shape {tuple(maps.shape)}")
    if not maps.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {maps.dtype}")
    if maps.shape[1] == 0 or maps.shape[2] == 0:
        raise ValueError(f"{name} must have at least one pixel (H, W ≥ 1), got shape {tuple(maps.shape)}")
    if batch is not None and maps.shape[0] != batch:
        raise ValueError(f"{name} must hold {batch} maps (one per image), got {maps.shape[0]}")
    if size is not None and tuple(maps.shape[1:]) != tuple(size):
        raise ValueError(f"{name} must be {size[0]}×{size[1]} to match the images, got {tuple(maps.shape[1:])}")
    check_finite(maps, name, boundary=boundary)
    return maps


def check_targets(targets, batch: int, name: str = "targets") -> torch.Tensor:
    """Validate class indices (B,) int64 or soft targets (B, K) float."""
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (class indices B or soft targets B×K), "
                        f"got {type(targets).__name__}")
    if targets.ndim == 1:
        if targets.is_floating_point() or targets.dtype == torch.bool:
            raise TypeError(f"{name} given as a 1-d tensor must hold integer class indices, got {targets.dtype}")
    elif targets.ndim == 2:
        if not targets.is_floating_point():
            raise TypeError(f"{name} given as a 2-d tensor must be floating point soft targets, got {targets.dtype}")
    else:
        raise ValueError(f"{name} must be class indices (B,) or soft targets (B×K), got shape {tuple(targets.shape)}")
    if targets.shape[0] != batch:
        raise ValueError(f"{name} must hold {batch} entries (one per image), got {targets.shape[0]}")
    return targets


def check_probability(value, name: str, *, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r}")
    value = float(value)
    if not (0.0 <= value <= 1.0) or (low_open and value == 0.0):
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return value


def check_positive(value, name: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not value == value or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value


def check_range(value, name: str, *, low: float, high: float) -> Tuple[float, float]:
    """A (min, max) pair inside [low, high] with min <= max."""
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair (min, max), got {value!r}") from None
    if not (low <= a <= b <= high):
        raise ValueError(f"{name} must satisfy {low} <= min <= max <= {high}, got ({a}, {b})")
    return a, b


SizeLike = Union[int, Tuple[int, int]]


def check_size(size: SizeLike, name: str = "size") -> Tuple[int, int]:
    """An int or (h, w) pair of positive integers."""
    if isinstance(size, bool):
        raise TypeError(f"{name} must be an int or a pair (h, w) of ints, got {size!r}")
    if isinstance(size, numbers.Integral):
        h = w = int(size)
    else:
        try:
            h, w = size
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be an int or a pair (h, w) of ints, got {size!r}") from None
        if isinstance(h, bool) or isinstance(w, bool) or not isinstance(h, numbers.Integral) \
                or not isinstance(w, numbers.Integral):
            raise TypeError(f"{name} must be an int or a pair (h, w) of ints, got {size!r}")
        h, w = int(h), int(w)
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be positive, got ({h}, {w})")
    return h, w


def check_num_classes(num_classes) -> Optional[int]:
    """None, or a positive int number of classes K."""
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
    return int(num_classes)


def check_generator(generator) -> Optional[torch.Generator]:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator
