"""Where the training loop's time goes: waiting for data versus computing, logged per step."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override


def is_logging_step(trainer: L.Trainer) -> bool:
    """Whether the loggers write this training step (every ``log_every_n_steps`` and the last one).

    A ``self.log`` call costs about half a millisecond of Lightning bookkeeping whether or not the step is written;
    metrics that are only ever shown per step need not be logged on the others. Epoch aggregates must still be.
    """
    connector = getattr(trainer, "_logger_connector", None)
    return bool(getattr(connector, "should_update_logs", True))


@dataclass
class StepTiming:
    """The timings of one training batch.

    Milliseconds from the previous batch's end to this one's start (fetch, collation, transfer, device augmentation,
    other callbacks' end hooks such as checkpointing) and of the step itself (forward, backward, optimizer, logging),
    with the modality count of each of its sessions.
    """

    data_wait_ms: float
    step_ms: float
    modalities_per_session: list[int]


class LoopTiming(L.Callback):
    """Times the training loop: where each step's time goes, and whether the loader keeps up.

    Logs ``perf/data_wait_ms``, ``perf/step_ms``, ``perf/augment_ms`` (device augmentation, when the datamodule
    runs it), ``perf/sessions_per_s`` and ``perf/tokens_per_s`` on the training steps the loggers write (every batch
    is timed and kept in :attr:`history`), and prints a one-line summary when fit ends.

    A large ``perf/data_wait_ms`` against ``perf/step_ms`` means the loader starves the model: more workers, the
    prepared cache, or augmentation on the device. The first ``skip_first`` batches (worker start-up, allocation)
    are left out of the summary.

    Args:
        skip_first: Batches of each fit left out of the summary.
        keep_last: Per-batch timings kept in :attr:`history` (for benchmarks).
    """

    def __init__(self, skip_first: int = 5, keep_last: int = 10_000) -> None:
        if skip_first < 0 or keep_last < 0:
            raise ValueError(f"skip_first and keep_last must be >= 0, got {skip_first}, {keep_last}")
        self.skip_first = skip_first
        self.history: deque[StepTiming] = deque(maxlen=keep_last)
        self._reset()

    def _reset(self) -> None:
        self._last_end: float | None = None
        self._start: float | None = None
        self._wait_ms = 0.0
        self._seen = 0
        self._totals = {"data_wait_ms": 0.0, "step_ms": 0.0, "augment_ms": 0.0}
        self._counted = 0

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()
        self.history.clear()

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        now = time.perf_counter()
        self._wait_ms = (now - self._last_end) * 1e3 if self._last_end is not None else 0.0
        self._start = now

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.perf_counter()
        if self._start is None:
            return
        step_ms = (now - self._start) * 1e3
        counts = batch["present"].sum(dim=1).tolist() if isinstance(batch, dict) and "present" in batch else []
        self.history.append(StepTiming(self._wait_ms, step_ms, [int(c) for c in counts]))
        datamodule = getattr(trainer, "datamodule", None)
        augment_ms = float(getattr(datamodule, "last_augment_ms", 0.0))
        seconds = (self._wait_ms + step_ms) / 1e3
        if is_logging_step(trainer):
            self._log(pl_module, seconds, step_ms, augment_ms, counts)
        self._seen += 1
        if self._seen > self.skip_first:
            self._counted += 1
            self._totals["data_wait_ms"] += self._wait_ms
            self._totals["step_ms"] += step_ms
            self._totals["augment_ms"] += augment_ms
        self._last_end = time.perf_counter()

    def _log(self, pl_module: L.LightningModule, seconds: float, step_ms: float, augment_ms: float,
             counts: list[int]) -> None:
        metrics = {"perf/data_wait_ms": self._wait_ms, "perf/step_ms": step_ms, "perf/augment_ms": augment_ms,
                   "perf/sessions_per_s": len(counts) / seconds}
        tokens_per_modality = getattr(getattr(pl_module, "net", None), "tokens_per_modality", None)
        if tokens_per_modality:  # encoder input tokens of the batch (visible and masked)
            metrics["perf/tokens_per_s"] = sum(counts) * tokens_per_modality / seconds
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=max(1, len(counts)))

    @override
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_end = None  # the time spent validating is not waiting for training data

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        line = self.summary()
        if line:
            rank_zero_info(line)

    def summary(self) -> str:
        """``loop timing over N batches: data wait 3% of step time (...)`` over the counted batches, or ``""``.

        The share is the wait over wait plus compute: the part of each batch's period the model was not computing.
        """
        if not self._counted:
            return ""
        wait = self._totals["data_wait_ms"] / self._counted
        step = self._totals["step_ms"] / self._counted
        augment = self._totals["augment_ms"] / self._counted
        share = wait / (wait + step) if wait + step > 0 else 0.0
        return (f"loop timing over {self._counted} batches: data wait {share:.0%} of step time ({wait:.1f} ms "
                f"waiting, {step:.1f} ms computing per batch; device augmentation {augment:.1f} ms of the wait)")
