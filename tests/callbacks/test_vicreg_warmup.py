"""VICRegWarmup: 0 at step 0, half at 2.5 epochs, full from epoch 5, per step."""

from types import SimpleNamespace

import pytest

from brainfm_lightning.callbacks import VICRegWarmup, warmup_scale


def run_hook(callback, global_step, batches=10, accumulate=1):
    trainer = SimpleNamespace(global_step=global_step, num_training_batches=batches, accumulate_grad_batches=accumulate)
    module = SimpleNamespace(regularizer_scale=None)
    callback.on_train_batch_start(trainer, module, None, 0)
    return module.regularizer_scale


def test_ramp_points():
    callback = VICRegWarmup(warmup_epochs=5)
    assert run_hook(callback, 0) == 0.0
    assert run_hook(callback, 25) == pytest.approx(0.5)  # 2.5 epochs of 10 steps
    assert run_hook(callback, 1) == pytest.approx(1 / 50)  # per step, not per epoch
    assert run_hook(callback, 50) == 1.0
    assert run_hook(callback, 500) == 1.0


def test_accumulation_counts_optimizer_steps():
    assert run_hook(VICRegWarmup(5), 10, batches=20, accumulate=4) == pytest.approx(10 / 25)


def test_explicit_steps_per_epoch_for_iterable_data():
    assert run_hook(VICRegWarmup(5, steps_per_epoch=4), 10, batches=float("inf")) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        run_hook(VICRegWarmup(5), 10, batches=float("inf"))


def test_zero_epochs_disables_the_ramp_and_bad_values_are_rejected():
    assert warmup_scale(0, 10, 0) == 1.0
    with pytest.raises(ValueError, match="warmup_epochs"):
        VICRegWarmup(-1)
