"""Checkpoint and run-folder I/O: framed, checksummed, code-free checkpoints; atomic writes; one writer.

**File format** (version 2). A checkpoint is two header lines and a payload::

    KEEPMIX-CHECKPOINT\\n
    {"version": 2, "sha256": "<64 hex digits>", "bytes": <payload length>}\\n
    <payload: the torch.save bytes of a dict of tensors and plain data>

The SHA-256 covers the payload; :func:`load_checkpoint` checks the length and the digest before
unpickling, so a truncated or bit-flipped file is refused with its path instead of loading
garbage weights. The payload is read with ``torch.load(weights_only=True)``: tensors, dicts,
lists, tuples, numbers, strings — nothing that can run code. A file that needs more (a pickle
that calls ``os.system``, a custom class) is refused, naming the file and the object it asked
for. (``tail -c +N`` of the header-less payload is an ordinary ``torch.save`` file.)
Checkpoints of version 1 (a bare ``torch.save`` zip without header, written before this format)
still load, through the same restricted unpickler with NumPy arrays allowed, but unverified.

**Writes** go to a temporary file ``.<name>.tmp<pid>`` in the same folder, are flushed to disk
(``fsync``) and renamed over the target (``os.replace``, atomic), so a reader sees the old file
or the new one, never a mix; a failed or interrupted write removes its temporary file, and
:func:`remove_stale_temps` clears those of a killed process. Before a new ``checkpoint.pt``
replaces a verified old one, the old one becomes ``checkpoint.prev.pt`` (a hard link, so at no
moment is there no ``checkpoint.pt``); a damaged old file is not promoted, the good previous one
stays. ``load_checkpoint(folder, fallback=True)`` (what ``keepmix train --resume`` uses) reads
``checkpoint.prev.pt`` with a :class:`CheckpointFallbackWarning` when ``checkpoint.pt`` is
missing or damaged.

**One writer per run folder.** :class:`RunLock` holds ``<folder>/.keepmix.lock`` (``fcntl.flock``,
the owner's pid inside) while a run writes there; a second writer gets :class:`RunLockedError`
(one line, with the owner's pid). The kernel drops the lock when its process dies, so the lock
file of a killed run is taken over by the next writer. Locks are re-entrant within a process.

**Before any work**, :func:`check_output_dir` tells (without writing) whether a run folder can
be created at all, and :func:`prepare_run_dir` creates it and reserves a checkpoint-sized file
there to prove that the disk (or the file-size limit) can hold the checkpoints.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

PathLike = Union[str, "os.PathLike[str]"]

FORMAT = "keepmix-checkpoint"
#: the version written by :func:`save_checkpoint` (1: bare torch.save zip with NumPy RNG state)
CHECKPOINT_VERSION = 2
MAGIC = b"KEEPMIX-CHECKPOINT\n"
CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_NAME = "checkpoint.prev.pt"
LOCK_NAME = ".keepmix.lock"
_TEMP = re.compile(r"^\..+\.tmp\d+$")
_CHUNK = 1 << 20


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, truncated, unsafe to open or not a keepmix checkpoint.

    ``path`` is the file; ``reason`` one of ``"damaged"``, ``"truncated"``, ``"unsafe"``,
    ``"format"``, ``"write"``. The message is one line that starts with the path.
    """

    def __init__(self, path: PathLike, reason: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = Path(path)
        self.reason = reason
        self.detail = message


class RunLockedError(RuntimeError):
    """Another live process holds the run folder's lock (one writer at a time)."""


class RunDirError(RuntimeError):
    """The run folder cannot be created or written, or cannot hold the checkpoints."""


class CheckpointFallbackWarning(UserWarning):
    """``checkpoint.pt`` was missing or damaged, and ``checkpoint.prev.pt`` was loaded instead."""


# --------------------------------------------------------------------------- atomic writes


def temp_path(path: PathLike) -> Path:
    """Where an atomic write of ``path`` stages its bytes: ``.<name>.tmp<pid>`` next to it."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened or synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: PathLike, data: Union[bytes, str]) -> Path:
    """Write ``data`` to ``path`` atomically: temporary file, ``fsync``, ``os.replace``.

    On any failure (a full disk, an interrupt) the temporary file is removed, the target is left
    as it was, and the error propagates (``OSError`` as :class:`RunDirError` naming the file).
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        raise RunDirError(f"cannot write {path}: {error.strerror or error} (the previous file, if any, is "
                          "unchanged)") from error
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def remove_stale_temps(folder: PathLike) -> List[Path]:
    """Remove the temporary files (``.<name>.tmp<pid>``) that interrupted writes left in ``folder``.

    Call it only while holding the folder's :class:`RunLock` (then no other writer is using them).
    """
    removed = []
    folder = Path(folder)
    if folder.is_dir():
        for entry in folder.iterdir():
            if _TEMP.match(entry.name) and entry.is_file():
                with contextlib.suppress(OSError):
                    entry.unlink()
                    removed.append(entry)
    return removed


# --------------------------------------------------------------------------- the file format


def encode_checkpoint(payload: Dict[str, Any]) -> bytes:
    """The bytes of a version-2 checkpoint file: header lines, then ``torch.save(payload)``."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    header = json.dumps({"version": CHECKPOINT_VERSION, "sha256": hashlib.sha256(body).hexdigest(),
                         "bytes": len(body)}, sort_keys=True)
    return MAGIC + header.encode("ascii") + b"\n" + body


def _read_header(path: Path, handle) -> Optional[Dict[str, Any]]:
    """The parsed header, or ``None`` for a file without the magic line (a version-1 checkpoint)."""
    first = handle.read(len(MAGIC))
    if first != MAGIC:
        return None
    line = handle.readline(4096)
    try:
        header = json.loads(line.decode("ascii"))
        ok = isinstance(header, dict) and isinstance(header.get("sha256"), str) and isinstance(header.get("bytes"), int)
    except (UnicodeDecodeError, ValueError):
        ok = False
    if not ok:
        raise CheckpointError(path, "damaged", "damaged checkpoint: its header line is unreadable")
    if header.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(path, "format", f"checkpoint format version {header.get('version')!r} is not "
                              f"supported (this keepmix reads {CHECKPOINT_VERSION})")
    return header


def _check_body(path: Path, header: Dict[str, Any], size: int, digest: str) -> None:
    if size != header["bytes"]:
        raise CheckpointError(path, "truncated", f"truncated or damaged checkpoint: {size} payload bytes, the header "
                              f"says {header['bytes']}")
    if digest != header["sha256"]:
        raise CheckpointError(path, "damaged", "damaged checkpoint: the SHA-256 of its payload does not match "
                              "the one recorded when it was written")


def verify_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Check a checkpoint's length and SHA-256 without unpickling it; returns its header.

    Raises :class:`CheckpointError` (damaged, truncated, unsupported version, no header — a
    version-1 file cannot be verified) and ``FileNotFoundError``.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        header = _read_header(path, handle)
        if header is None:
            raise CheckpointError(path, "format", "no keepmix checkpoint header (a version-1 file or another "
                                  "file): it cannot be verified")
        hasher, size = hashlib.sha256(), 0
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            hasher.update(chunk)
            size += len(chunk)
    _check_body(path, header, size, hasher.hexdigest())
    return header


def _numpy_globals() -> List[Any]:
    """NumPy names a version-1 checkpoint needs (its NumPy RNG state); arrays only, no code."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return []
    core = getattr(np, "_core", None) or np.core
    reconstruct = core.multiarray._reconstruct
    return [reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype,
            type(np.dtype(np.uint32))]


def _unpickle(path: Path, body: bytes, map_location, legacy: bool) -> Any:
    context = torch.serialization.safe_globals(_numpy_globals()) if legacy else contextlib.nullcontext()
    try:
        with context:
            return torch.load(io.BytesIO(body), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error))
        what = f"it asks for {found.group(1)}" if found else str(error).splitlines()[0]
        raise CheckpointError(path, "unsafe", f"refused: the checkpoint holds objects beyond tensors and plain data "
                              f"({what}); keepmix only opens checkpoints that cannot run code") from None
    except Exception as error:  # the zip reader's messages do not name the file
        detail = " ".join(str(error).split())[:200]
        raise CheckpointError(path, "damaged", f"damaged checkpoint: its payload cannot be read ({detail})") from None


def load_weights_file(path: PathLike, map_location="cpu") -> Any:
    """A plain ``torch.save`` file (pretrained weights: ``model.pretrained``, a teacher's
    ``pretrained``) read with ``weights_only=True``, as checkpoints are: a file that asks for
    more than tensors and plain data is refused with a :class:`CheckpointError` naming the file
    and what it asked for (nothing in it runs); an unreadable one names the file too.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        body = handle.read()
    return _unpickle(path, body, map_location, legacy=False)


def _load_file(path: Path, map_location) -> Dict[str, Any]:
    with open(path, "rb") as handle:
        header = _read_header(path, handle)
        if header is None:
            handle.seek(0)
        body = handle.read()
    if header is not None:
        _check_body(path, header, len(body), hashlib.sha256(body).hexdigest())
    elif body[:2] != b"PK":
        raise CheckpointError(path, "format", "not a keepmix checkpoint (no keepmix header and not a torch.save "
                              "file)")
    payload = _unpickle(path, body, map_location, legacy=header is None)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(path, "format", "not a keepmix checkpoint (no 'format: keepmix-checkpoint' entry)")
    return payload


def checkpoint_file(path: PathLike) -> Path:
    """``path`` itself, or ``path/checkpoint.pt`` when ``path`` is a run folder."""
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def load_checkpoint(path: PathLike, map_location="cpu", *, fallback: bool = False) -> Dict[str, Any]:
    """Read and verify a keepmix checkpoint (a file, or a run folder's ``checkpoint.pt``).

    Nothing in the file can run code (``weights_only=True``); the payload's length and SHA-256
    must match the header. ``fallback`` (only when ``path`` is a run folder): if
    ``checkpoint.pt`` is missing or damaged, load ``checkpoint.prev.pt`` instead and say so with
    a :class:`CheckpointFallbackWarning`. :func:`read_checkpoint` also returns the file used.

    Raises:
        FileNotFoundError: no checkpoint there (nor a previous one, with ``fallback``).
        CheckpointError: damaged, truncated, unsafe or not a keepmix checkpoint (message starts
            with the path and says why; for a run folder it points to ``checkpoint.prev.pt``).
            An unsafe ``checkpoint.pt`` is never replaced by the previous one.
    """
    return read_checkpoint(path, map_location, fallback=fallback)[0]


def read_checkpoint(path: PathLike, map_location="cpu", *, fallback: bool = False) -> Tuple[Dict[str, Any], Path]:
    """:func:`load_checkpoint`, returning ``(payload, the file it came from)``."""
    path = Path(path)
    target = checkpoint_file(path)
    previous = target.with_name(PREVIOUS_NAME)
    try:
        if not target.is_file():
            hint = f" (the previous epoch's is {previous})" if previous.is_file() and previous != target else ""
            raise FileNotFoundError(f"no checkpoint at {str(target)!r}{hint}")
        return _load_file(target, map_location), target
    except (FileNotFoundError, CheckpointError) as error:
        unsafe = isinstance(error, CheckpointError) and error.reason == "unsafe"
        if unsafe or target.name != CHECKPOINT_NAME or not previous.is_file():
            raise
        if not (fallback and path.is_dir()):
            if isinstance(error, FileNotFoundError):
                raise
            raise CheckpointError(target, error.reason, f"{error.detail}; the previous epoch's checkpoint is "
                                  f"{previous} (keepmix train --resume falls back to it)") from None
        payload = _load_file(previous, map_location)
        reason = "missing" if isinstance(error, FileNotFoundError) else f"unusable ({error.detail})"
        warnings.warn(f"{target} is {reason}; using the previous checkpoint {previous} (epoch "
                      f"{payload.get('epoch')})", CheckpointFallbackWarning, stacklevel=3)
        return payload, previous


def save_checkpoint(payload: Dict[str, Any], path: PathLike, *, keep_previous: bool = True) -> Path:
    """Write ``payload`` (tensors and plain data) as a verified checkpoint at ``path``, atomically.

    With ``keep_previous`` an existing ``path`` that verifies becomes ``<stem>.prev<suffix>``
    (``checkpoint.prev.pt``) first; a damaged one is not promoted (the previous one stays).

    Raises:
        CheckpointError (reason ``"write"``): the file could not be written (full disk, file-size
            limit…); the temporary file is removed and the old checkpoints are unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = encode_checkpoint(payload)
    tmp = temp_path(path)
    previous = path.with_name(f"{path.stem}.prev{path.suffix}")
    staged = temp_path(previous)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous and path.is_file() and _verifies(path):
            try:
                os.link(path, staged)
            except OSError:
                shutil.copyfile(path, staged)
            os.replace(staged, previous)
        os.replace(tmp, path)
    except OSError as error:
        raise CheckpointError(path, "write", f"cannot write the checkpoint: {error.strerror or error} (nothing was "
                              "replaced; the existing checkpoints are unchanged)") from error
    finally:
        for leftover in (tmp, staged):
            with contextlib.suppress(OSError):
                leftover.unlink()
    _fsync_dir(path.parent)
    return path


def _verifies(path: Path) -> bool:
    try:
        verify_checkpoint(path)
        return True
    except CheckpointError:
        return False


# --------------------------------------------------------------------------- the run folder


def check_output_dir(folder: PathLike) -> None:
    """Fail early, without writing, if ``folder`` cannot be created or written.

    Raises :class:`RunDirError` naming the folder and the ancestor in the way (a file where a
    folder must go, or a folder without write permission).
    """
    folder = Path(folder).absolute()
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise RunDirError(f"cannot create run folder {folder}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunDirError(f"cannot create run folder {folder}: {probe} is not writable")


def make_run_dir(folder: PathLike) -> List[Path]:
    """Create ``folder`` (and parents); returns the folders created, deepest first.

    Raises :class:`RunDirError` (one line, naming the folder) instead of a bare ``OSError``.
    """
    folder = Path(folder)
    check_output_dir(folder)
    missing = []
    probe = folder.absolute()
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirError(f"cannot create run folder {folder}: {error.strerror or error}") from None
    return missing


def remove_if_empty(folders: List[Path]) -> None:
    """``os.rmdir`` each folder (deepest first) that is empty; others are left alone."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def ensure_space(folder: PathLike, checkpoint_bytes: int, runs: int = 1) -> None:
    """Prove that ``folder`` can hold the checkpoints of ``runs`` runs before any work is done.

    A file of ``checkpoint_bytes`` is reserved there and removed (this catches a full disk, a
    quota and a file-size limit alike); then the free space must cover, per run, a checkpoint
    and its previous copy, plus the temporary file of one save — less what the checkpoints
    already in the folder (or its sub-folders, a recipe's arms) take.

    Raises :class:`RunDirError` naming the folder, the size needed and what the system said.
    """
    folder = Path(folder)
    probe = folder / f".space-probe.tmp{os.getpid()}"
    size = max(int(checkpoint_bytes), 1)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            if hasattr(os, "posix_fallocate"):
                try:
                    os.posix_fallocate(fd, 0, size)
                except OSError as error:
                    if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", -1)):
                        raise
                    _write_zeros(fd, size)
            else:  # pragma: no cover - non-POSIX
                _write_zeros(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as error:
        raise RunDirError(f"run folder {folder} cannot hold a checkpoint of {_mb(size)}: "
                          f"{error.strerror or error}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    existing = sum(path.stat().st_size for pattern in (CHECKPOINT_NAME, PREVIOUS_NAME, f"*/{CHECKPOINT_NAME}",
                                                       f"*/{PREVIOUS_NAME}") for path in folder.glob(pattern))
    needed = (2 * runs + 1) * size - existing
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise RunDirError(f"run folder {folder} has {_mb(free)} free; its checkpoints need about {_mb(needed)} "
                          "more (each run's checkpoint and previous one, and a temporary copy while saving)")


def _write_zeros(fd: int, size: int) -> None:
    block = bytes(min(size, _CHUNK))
    left = size
    while left > 0:
        left -= os.write(fd, block[:min(left, len(block))])


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

_HELD: Dict[str, List[Any]] = {}  # realpath of a folder -> [count, fd, lock path] for locks this process holds


class RunLock:
    """The exclusive writer lock of a run folder (``<folder>/.keepmix.lock``, holding the owner's pid).

    ``acquire`` raises :class:`RunLockedError` when another live process holds it; a lock file
    left by a dead process is taken over (POSIX ``flock`` locks die with their process). The
    lock is re-entrant within a process (a recipe's folder and its single arm are one folder);
    ``release`` removes the lock file when the last holder lets go. Use as a context manager.
    """

    def __init__(self, folder: PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._key = os.path.realpath(self.folder)
        self.held = False

    def acquire(self) -> "RunLock":
        if self.held:
            return self
        entry = _HELD.get(self._key)
        if entry is not None:
            entry[0] += 1
            self.held = True
            return self
        fd = self._lock_posix() if fcntl is not None else self._lock_exclusive()
        _HELD[self._key] = [1, fd, self.path]
        self.held = True
        return self

    def _locked(self, owner: str) -> RunLockedError:
        return RunLockedError(f"run folder {self.folder} is in use by another keepmix process (pid {owner or '?'}, "
                              f"lock {self.path}); wait for it to finish or stop it")

    def _lock_posix(self) -> int:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise RunDirError(f"cannot create the lock file {self.path}: {error.strerror or error}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                owner = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
                os.close(fd)
                if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise self._locked(owner) from None
                raise RunDirError(f"cannot lock {self.path}: {error.strerror or error}") from None
            try:  # the previous owner removes the file when it lets go: lock the file that is there now
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
                return fd
            os.close(fd)

    def _lock_exclusive(self) -> int:  # pragma: no cover - Windows: no stale-lock detection
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = self.path.read_text(encoding="ascii", errors="replace").strip()
            raise RunLockedError(f"run folder {self.folder} is in use by another keepmix process (pid {owner or '?'}); "
                                 f"if none is running, delete {self.path}") from None
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        return fd

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        entry = _HELD.get(self._key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] > 0:
            return
        del _HELD[self._key]
        _, fd, path = entry
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still locked: a waiting process then sees a new file
        os.close(fd)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = [
    "CHECKPOINT_NAME", "CHECKPOINT_VERSION", "CheckpointError", "CheckpointFallbackWarning", "FORMAT", "LOCK_NAME",
    "PREVIOUS_NAME", "RunDirError", "RunLock", "RunLockedError", "atomic_write", "check_output_dir",
    "checkpoint_file", "encode_checkpoint", "ensure_space", "load_checkpoint", "load_weights_file", "make_run_dir",
    "read_checkpoint",
    "remove_if_empty",
    "remove_stale_temps", "save_checkpoint", "temp_path", "verify_checkpoint",
]
