"""LoopTiming: a loader that sleeps shows up as data wait, a step that sleeps as compute."""

from __future__ import annotations

import logging
import time

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from brainfm_lightning.callbacks import LoopTiming

SLEEP_S = 0.05


class SlowDataset(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict:
        time.sleep(SLEEP_S)  # one batch of 2 waits at least 2 * SLEEP_S
        return {"x": torch.randn(3), "present": torch.tensor([True, index % 2 == 0])}


class SlowStep(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        time.sleep(SLEEP_S)
        return self.layer(batch["x"]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_wait_and_step_are_measured_logged_and_summarised(caplog):
    timing = LoopTiming(skip_first=1)
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, callbacks=[timing],
                        log_every_n_steps=1)
    with caplog.at_level(logging.INFO):
        trainer.fit(SlowStep(), DataLoader(SlowDataset(), batch_size=2, num_workers=0))
    assert len(timing.history) == 8
    later = list(timing.history)[1:]  # the very first batch has no previous end to wait from
    assert all(step.data_wait_ms >= 2 * SLEEP_S * 1e3 for step in later)
    assert all(step.step_ms >= SLEEP_S * 1e3 for step in timing.history)
    assert timing.history[0].modalities_per_session == [2, 1]
    metrics = trainer.callback_metrics
    assert {"perf/data_wait_ms", "perf/step_ms", "perf/sessions_per_s"} <= set(metrics)
    assert float(metrics["perf/sessions_per_s"]) <= 2 / (3 * SLEEP_S)
    summary = timing.summary()
    assert summary.startswith("loop timing over 7 batches: data wait") and "% of step time" in summary
    share = int(summary.split("data wait ")[1].split("%")[0])
    assert 30 <= share <= 90  # about 2/3: twice as long waiting as computing
    assert summary in caplog.text  # printed when fit ends


def test_nothing_to_summarise_before_the_first_batches():
    assert LoopTiming().summary() == ""
