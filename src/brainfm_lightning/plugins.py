"""Lightning plugins: checkpoint files that are always whole."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic: a kill at any moment leaves the previous file whole.

    The checkpoint is written to a hidden temporary file in the target's own folder, flushed and fsynced, then
    renamed over the target with ``os.replace`` (atomic on POSIX within one file system), and the folder is fsynced
    so the rename survives a crash of the node. A reader sees the old ``last.ckpt`` or the new one, never a torn
    file. Remote paths (``s3://`` and the like) go through Lightning's own writer. ``brainfm fit`` uses it unless
    another ``CheckpointIO`` is configured; a config can also name it in ``trainer.plugins``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically.

        Args:
            checkpoint: What Lightning dumps (weights, optimizer, loops, callbacks).
            path: Target file.
            storage_options: Unsupported, as in ``TorchCheckpointIO``.
        """
        protocol = get_filesystem(path).protocol
        is_local = "file" in (protocol if isinstance(protocol, tuple) else (protocol,))
        if storage_options is not None or not is_local:
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        for stale in target.parent.glob(f".{target.name}.*.partial"):  # left by writers killed mid-write
            stale.unlink(missing_ok=True)
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
