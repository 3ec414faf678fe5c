"""Optimizers, learning-rate schedules, early stopping, loss and precision choice."""

from __future__ import annotations

import math

import pytest
import torch

from segcontainer.config.hyperparameters import resolve
from segcontainer.training.engine import (
    EarlyStopping,
    Precision,
    build_optimizer,
    build_scheduler,
    segmentation_loss,
)

ITERS_PER_EPOCH = 5


def config(**given: str):
    return resolve({"num_classes": "3", **given})


def lr_trajectory(cfg, iters_per_epoch: int = ITERS_PER_EPOCH) -> list[float]:
    """The learning rate used at every iteration of the run."""
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = build_optimizer(cfg, [param])
    scheduler = build_scheduler(cfg, optimizer, iters_per_epoch)
    rates = []
    for _ in range(cfg.epochs * iters_per_epoch):
        rates.append(optimizer.param_groups[0]["lr"])
        param.grad = torch.ones(2)
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("optimizer", ["sgd", "nag", "adam", "adagrad", "rmsprop"])
def test_poly_schedule_per_iteration(optimizer: str) -> None:
    cfg = config(optimizer=optimizer, learning_rate="0.1", epochs="4", lr_scheduler="poly")
    total = 4 * ITERS_PER_EPOCH
    expected = [0.1 * (1 - i / total) ** 0.9 for i in range(total)]
    assert lr_trajectory(cfg) == pytest.approx(expected)


@pytest.mark.parametrize("optimizer", ["sgd", "nag", "adam", "adagrad", "rmsprop"])
def test_step_schedule_after_the_listed_epochs(optimizer: str) -> None:
    cfg = config(
        optimizer=optimizer,
        learning_rate="0.1",
        epochs="5",
        lr_scheduler="step",
        lr_scheduler_step="2, 4",
        lr_scheduler_factor="0.5",
    )
    rates = lr_trajectory(cfg)
    per_epoch = [rates[e * ITERS_PER_EPOCH : (e + 1) * ITERS_PER_EPOCH] for e in range(5)]
    expected_epoch_rates = [0.1, 0.1, 0.05, 0.05, 0.025]
    for epoch, rate in enumerate(expected_epoch_rates):
        assert per_epoch[epoch] == pytest.approx([rate] * ITERS_PER_EPOCH), epoch


@pytest.mark.parametrize("optimizer", ["sgd", "nag", "adam", "adagrad", "rmsprop"])
def test_cosine_schedule_per_iteration(optimizer: str) -> None:
    cfg = config(optimizer=optimizer, learning_rate="0.2", epochs="3", lr_scheduler="cosine")
    total = 3 * ITERS_PER_EPOCH
    expected = [0.1 * (1 + math.cos(math.pi * i / total)) for i in range(total)]
    assert lr_trajectory(cfg) == pytest.approx(expected)


def test_optimizer_settings_follow_the_builtin_meanings() -> None:
    params = [torch.nn.Parameter(torch.zeros(1))]
    sgd = build_optimizer(config(momentum="0.8", weight_decay="0.001"), params)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["momentum"] == 0.8 and sgd.defaults["weight_decay"] == 0.001
    assert sgd.defaults["nesterov"] is False
    nag = build_optimizer(config(optimizer="nag"), params)
    assert isinstance(nag, torch.optim.SGD) and nag.defaults["nesterov"] is True
    rms = build_optimizer(config(optimizer="rmsprop", gamma1="0.95", gamma2="0.5"), params)
    assert isinstance(rms, torch.optim.RMSprop)
    assert rms.defaults["alpha"] == 0.95 and rms.defaults["momentum"] == 0.5
    adam = build_optimizer(config(optimizer="adam", weight_decay="0.01"), params)
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["weight_decay"] == 0
    assert isinstance(build_optimizer(config(optimizer="adagrad"), params), torch.optim.Adagrad)


def run_early_stopping(stopper: EarlyStopping, mious: list[float]) -> tuple[int, list[bool]]:
    """Feed per-epoch mIoUs; return (epochs run, which epochs were the best so far)."""
    best_flags = []
    for epoch, miou in enumerate(mious):
        best_flags.append(stopper.update(miou))
        if stopper.should_stop(epoch + 1):
            return epoch + 1, best_flags
    return len(mious), best_flags


def test_early_stopping_waits_for_patience_after_the_best_epoch() -> None:
    stopper = EarlyStopping(True, min_epochs=2, patience=2, tolerance=0.0)
    epochs, best = run_early_stopping(stopper, [0.3, 0.5, 0.4, 0.45, 0.6, 0.7])
    assert epochs == 4
    assert best == [True, True, False, False]
    assert stopper.best == 0.5


def test_early_stopping_respects_min_epochs() -> None:
    stopper = EarlyStopping(True, min_epochs=5, patience=1, tolerance=0.0)
    epochs, _ = run_early_stopping(stopper, [0.5, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4])
    assert epochs == 5


def test_early_stopping_tolerance_is_relative() -> None:
    # +1% and +2% gains are below a 5% tolerance: stale, though still the best model so far
    stopper = EarlyStopping(True, min_epochs=0, patience=2, tolerance=0.05)
    epochs, best = run_early_stopping(stopper, [0.50, 0.505, 0.515, 0.9])
    assert epochs == 3
    assert best == [True, True, True]
    stopper = EarlyStopping(True, min_epochs=0, patience=2, tolerance=0.05)
    epochs, _ = run_early_stopping(stopper, [0.50, 0.56, 0.60, 0.70])
    assert epochs == 4


def test_early_stopping_disabled_runs_every_epoch() -> None:
    stopper = EarlyStopping(False, min_epochs=0, patience=0, tolerance=0.0)
    epochs, _ = run_early_stopping(stopper, [0.5, 0.1, 0.1, 0.1])
    assert epochs == 4


def test_loss_ignores_255_and_an_all_ignored_batch_is_zero() -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), 255, dtype=torch.uint8)
    loss = segmentation_loss(logits, target, None)
    assert loss.item() == 0.0
    loss.backward()  # and still differentiable
    target[0, 0, 0] = 1
    expected = torch.nn.functional.cross_entropy(logits[:1, :, 0, 0], torch.tensor([1]))
    assert segmentation_loss(logits, target, None).item() == pytest.approx(expected.item())


def test_class_weights_match_torch_weighted_mean() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 5)
    target = torch.randint(0, 3, (2, 5, 5))
    target[0, 0] = 255
    weight = torch.tensor([1.0, 4.0, 0.5])
    expected = torch.nn.functional.cross_entropy(logits, target, weight=weight, ignore_index=255)
    assert segmentation_loss(logits, target, weight).item() == pytest.approx(expected.item())


def test_precision_on_cpu_is_fp32_without_a_scaler() -> None:
    for requested in ("auto", "fp32", "bf16", "fp16"):
        precision = Precision.choose(requested, torch.device("cpu"))
        assert precision.dtype == torch.float32
        assert not precision.scaler.is_enabled()


def test_progress_lines_carry_iterations_rate_and_eta(caplog) -> None:
    import logging

    from segcontainer.training.engine import ProgressLog

    caplog.set_level(logging.INFO)
    progress = ProgressLog(epoch=2, total=10, interval=0.0)
    progress.step(4, 32)
    progress.step(10, 80)  # the epoch's end is summarised by the epoch line instead
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("epoch 2: 4/10 iterations,")
    assert "it/s" in line and "img/s" in line and "eta" in line


def test_progress_is_quiet_within_the_interval(caplog) -> None:
    import logging

    from segcontainer.training.engine import ProgressLog

    caplog.set_level(logging.INFO)
    progress = ProgressLog(epoch=0, total=1000, interval=3600)
    for done in range(1, 999):
        progress.step(done, done * 4)
    assert not caplog.records


def test_auto_class_weights_are_median_frequency_balancing() -> None:
    import numpy as np

    from segcontainer.training.entry import median_frequency_weights

    weights = median_frequency_weights(np.array([100, 300, 0, 600]))
    # frequencies 0.1, 0.3, -, 0.6; median of the present ones 0.3; absent class gets 1
    assert weights.tolist() == pytest.approx([3.0, 1.0, 1.0, 0.5])
