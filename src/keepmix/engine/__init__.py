"""The training engine's plumbing: checkpoint and run-folder I/O (:mod:`.checkpoint`) and the
distributed helpers (:mod:`.distributed`). The training loop itself is :mod:`keepmix.train`."""

from .checkpoint import (CHECKPOINT_NAME, CHECKPOINT_VERSION, PREVIOUS_NAME, CheckpointError,
                         CheckpointFallbackWarning, RunDirError, RunLock, RunLockedError, atomic_write,
                         check_output_dir, ensure_space, load_checkpoint, make_run_dir, remove_if_empty,
                         remove_stale_temps, save_checkpoint, verify_checkpoint)
from .distributed import (DEFAULT_TIMEOUT, Distributed, DistributedError, all_reduce_sum, collective_errors,
                          init_distributed, shutdown_distributed, sync_buffers)

__all__ = [
    "CHECKPOINT_NAME", "CHECKPOINT_VERSION", "DEFAULT_TIMEOUT", "PREVIOUS_NAME", "CheckpointError",
    "CheckpointFallbackWarning", "Distributed", "DistributedError", "RunDirError", "RunLock", "RunLockedError",
    "all_reduce_sum", "atomic_write", "check_output_dir", "collective_errors", "ensure_space", "init_distributed",
    "load_checkpoint", "make_run_dir", "remove_if_empty", "remove_stale_temps", "save_checkpoint",
    "shutdown_distributed", "sync_buffers", "verify_checkpoint",
]
