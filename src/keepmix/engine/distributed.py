"""Distributed helpers: joining a ``torchrun`` job with a timeout, naming a rank that stopped, BN sync.

**Timeout.** :func:`init_distributed` creates the process group with ``timeout`` seconds
(``dist_timeout`` in a recipe, ``--dist-timeout`` on the command line; default
:data:`DEFAULT_TIMEOUT` = 10 minutes instead of PyTorch's 30). A collective that waits longer
raises; :func:`collective_errors` turns that into one :class:`DistributedError` line.
(With NCCL the timeout is enforced by PyTorch's watchdog, which may end the process itself.)

**Which rank stopped.** Every rank runs a heartbeat thread that increments its counter in the
job's TCP store (the one ``MASTER_ADDR:MASTER_PORT`` names, torchrun's agent store) every
``interval`` seconds. When a collective times out or a peer drops, the rank that noticed reads
the counters twice, a few intervals apart: a rank whose counter did not move is stopped,
frozen (SIGSTOP, a debugger) or dead, and the message names it. No clocks are compared.

**BatchNorm buffers.** DDP keeps parameters identical but each rank updates its BatchNorm
running statistics from its own shard. :func:`sync_buffers` (called before every evaluation and
checkpoint) sets ``running_mean``/``running_var`` of every BatchNorm layer to the average over
ranks — every shard contributes, as with timm's ``distribute_bn`` — and copies every other
buffer from rank 0 (what DDP's ``broadcast_buffers`` would use at the next forward). Then all
ranks evaluate the same model, and that model is the one the checkpoint holds.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Iterator, List, Optional

import torch
import torch.distributed as dist
from torch import nn

#: seconds a collective may wait before the job fails (PyTorch's own default is 30 minutes)
DEFAULT_TIMEOUT = 600.0


@dataclass
class Distributed:
    """This process's place in a (possibly one-process) job; ``timeout`` in seconds."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    timeout: float = DEFAULT_TIMEOUT

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class DistributedError(RuntimeError):
    """A collective timed out or a peer dropped; the message names the ranks that stopped, when it can tell."""


def init_distributed(device_type: str, timeout: float = DEFAULT_TIMEOUT) -> Distributed:
    """Join the ``torchrun`` job described by the environment (gloo on CPU, NCCL on CUDA), if any.

    ``timeout`` (seconds) bounds every collective and the start-up rendezvous. Starts this
    rank's heartbeat. Raises :class:`DistributedError` when the ranks do not all join in time.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(timeout=timeout)
    if not timeout > 0:
        raise ValueError(f"dist_timeout must be > 0 seconds, got {timeout!r}")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        try:
            dist.init_process_group(backend=backend, init_method="env://",
                                    timeout=datetime.timedelta(seconds=timeout))
        except (RuntimeError, dist.DistError) as error:
            raise DistributedError(f"rank {os.environ.get('RANK', '?')}: the {world} processes of the job did not all "
                                   f"join within dist_timeout={timeout:g} s ({_short(error)})") from error
    job = Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, timeout=timeout)
    _start_heartbeat(job)
    return job


def shutdown_distributed(clean: bool = False) -> None:
    """Stop the heartbeat and leave the process group (if this process joined one).

    ``clean=True`` (the command finished without an error on this rank) first meets the other ranks at a barrier, so
    no rank tears its gloo/NCCL pairs down while a peer still has a collective in flight: a rank that left early made
    its peer abort (``terminate called without an active exception``) at exit. After an error there is no barrier, as
    the peers may never arrive; the group is destroyed at once.
    """
    global _HEARTBEAT
    if _HEARTBEAT is not None:
        _HEARTBEAT.stop()
        _HEARTBEAT = None
    if dist.is_available() and dist.is_initialized():
        if clean and dist.get_world_size() > 1:
            try:
                dist.barrier()
            except (RuntimeError, dist.DistError):  # a peer died meanwhile: leave anyway
                pass
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, job: Distributed) -> torch.Tensor:
    """Sum over ranks (in place; a no-op in a one-process run)."""
    if job.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


@torch.no_grad()
def sync_buffers(module: nn.Module, job: Distributed) -> None:
    """Make ``module``'s buffers identical on every rank (a no-op in a one-process run).

    BatchNorm ``running_mean``/``running_var`` become the mean over ranks; every other buffer
    (``num_batches_tracked``, constants) is broadcast from rank 0. One collective per dtype
    and device, in a fixed order (every rank has the same modules).
    """
    if not job.enabled:
        return
    averaged: List[torch.Tensor] = []
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.track_running_stats \
                and layer.running_mean is not None:
            averaged.extend([layer.running_mean, layer.running_var])
    ids = {id(t) for t in averaged}
    copied = [b for b in module.buffers() if id(b) not in ids]
    for tensors, average in ((averaged, True), (copied, False)):
        groups = {}
        for tensor in tensors:
            groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
        for key in sorted(groups, key=str):
            group = groups[key]
            flat = torch.cat([t.reshape(-1) for t in group])
            if average:
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
                flat /= job.world_size
            else:
                dist.broadcast(flat, src=0)
            offset = 0
            for tensor in group:
                tensor.copy_(flat[offset:offset + tensor.numel()].view_as(tensor))
                offset += tensor.numel()


# --------------------------------------------------------------------------- stopped ranks


class _Heartbeat:
    """A daemon thread adding 1 to ``keepmix/heartbeat/<run>/<rank>`` in the job's store every ``interval`` s."""

    def __init__(self, job: Distributed):
        self.job = job
        self.interval = min(5.0, max(0.25, job.timeout / 10))
        prefix = f"keepmix/heartbeat/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/" \
                 f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self.keys = [f"{prefix}/{rank}" for rank in range(job.world_size)]
        wait = datetime.timedelta(seconds=max(1.0, min(4 * self.interval, job.timeout)))
        self.store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                   timeout=wait, wait_for_workers=False)
        self._stop = threading.Event()
        self.store.add(self.keys[job.rank], 1)
        self.thread = threading.Thread(target=self._run, name="keepmix-heartbeat", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.store.add(self.keys[self.job.rank], 1)
            except Exception:  # the store is gone: the job is ending
                return

    def stop(self) -> None:
        self._stop.set()

    def stalled(self) -> Optional[List[int]]:
        """Ranks whose counter did not move over three intervals (``None``: the store does not answer)."""
        try:
            before = [self.store.add(key, 0) for key in self.keys]
            time.sleep(3 * self.interval)
            after = [self.store.add(key, 0) for key in self.keys]
        except Exception:
            return None
        return [rank for rank in range(self.job.world_size) if rank != self.job.rank and after[rank] == before[rank]]


_HEARTBEAT: Optional[_Heartbeat] = None


def _start_heartbeat(job: Distributed) -> None:
    global _HEARTBEAT
    if _HEARTBEAT is not None and _HEARTBEAT.job.world_size == job.world_size:
        return
    try:
        _HEARTBEAT = _Heartbeat(job)
    except Exception:  # no reachable store (another init method): errors just cannot name the rank
        _HEARTBEAT = None


def _short(error: BaseException) -> str:
    """The first line of an error, without a ``[/path/file.cc:78]`` prefix."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return re.sub(r"^\[[^\]]*\]\s*", "", text)[:300]


_PEER_FAILURE = re.compile(r"time[d ]?\s*out|timeout|pair closure|connection (closed|reset|refused)|closed by peer|"
                           r"broken pipe|socket|gloo|nccl", re.IGNORECASE)


def describe_failure(job: Distributed, error: BaseException) -> str:
    """One line: what failed on this rank, and which ranks stopped sending heartbeats."""
    timed_out = re.search(r"time[d ]?\s*out|timeout", str(error), re.IGNORECASE) is not None
    what = (f"a collective operation did not complete within dist_timeout={job.timeout:g} s" if timed_out
            else "lost contact with the other processes")
    heartbeat = _HEARTBEAT
    stalled = heartbeat.stalled() if heartbeat is not None else None
    if stalled is None:
        who = "cannot tell which rank stopped (no heartbeat store)"
    elif stalled:
        names = ", ".join(str(r) for r in stalled)
        who = (f"rank{'s' if len(stalled) > 1 else ''} {names} stopped responding (no heartbeat for "
               f"{3 * heartbeat.interval:.1f} s: stopped, frozen or dead)")
    else:
        who = "every rank still has a heartbeat: one is slow or stuck inside a collective"
    return (f"rank {job.rank} of {job.world_size}: {what}; {who}. Raise dist_timeout (--dist-timeout) if a rank is "
            f"only slow. [{_short(error)}]")


@contextlib.contextmanager
def collective_errors(job: Distributed) -> Iterator[None]:
    """Turn a collective's timeout or a lost peer into one :class:`DistributedError` line (DDP jobs only)."""
    try:
        yield
    except DistributedError:
        raise
    except RuntimeError as error:
        if not job.enabled or not (isinstance(error, dist.DistError) or _PEER_FAILURE.search(str(error))):
            raise
        raise DistributedError(describe_failure(job, error)) from error


__all__ = ["DEFAULT_TIMEOUT", "Distributed", "DistributedError", "all_reduce_sum", "collective_errors",
           "describe_failure", "init_distributed", "shutdown_distributed", "sync_buffers"]
