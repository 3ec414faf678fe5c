"""Optimizers, learning-rate schedules, early stopping, loss and precision choice."""

from __future__ import annotations

import math

import pytest
import torch

from segcontainer.config.hyperparameters import resolve
from segcontainer.precision import Precision
from segcontainer.tasks.segmentation.loss import segmentation_loss
from segcontainer.training.epochs import EarlyStopping
from segcontainer.training.optim import build_optimizer, build_scheduler, resize_schedule

ITERS_PER_EPOCH = 5


def config(**given: str):
    return resolve({"num_classes": "3", **given})


def lr_trajectory(cfg, iters_per_epoch: int = ITERS_PER_EPOCH) -> list[float]:
    """The learning rate used at every iteration of the run."""
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = build_optimizer(cfg.optimization(), [param])
    scheduler = build_scheduler(cfg.optimization(), optimizer, iters_per_epoch)
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
    sgd = build_optimizer(config(momentum="0.8", weight_decay="0.001").optimization(), params)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["momentum"] == 0.8 and sgd.defaults["weight_decay"] == 0.001
    assert sgd.defaults["nesterov"] is False
    nag = build_optimizer(config(optimizer="nag").optimization(), params)
    assert isinstance(nag, torch.optim.SGD) and nag.defaults["nesterov"] is True
    rms = build_optimizer(
        config(optimizer="rmsprop", gamma1="0.95", gamma2="0.5").optimization(), params
    )
    assert rms.defaults["gamma1"] == 0.95 and rms.defaults["gamma2"] == 0.5
    adam = build_optimizer(config(optimizer="adam", weight_decay="0.01").optimization(), params)
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["weight_decay"] == 0
    assert isinstance(
        build_optimizer(config(optimizer="adagrad").optimization(), params), torch.optim.Adagrad
    )


def mxnet_centered_rmsprop(weights, grads, rates, gamma1, gamma2, eps=1e-8):
    """MXNet's rmspropalex_update (RMSProp, centered=True) in plain floats, element-wise."""
    n, g, delta = [0.0] * len(weights), [0.0] * len(weights), [0.0] * len(weights)
    weights = list(weights)
    for grad, lr in zip(grads, rates, strict=True):
        for i, gi in enumerate(grad):
            n[i] = (1 - gamma1) * gi * gi + gamma1 * n[i]
            g[i] = (1 - gamma1) * gi + gamma1 * g[i]
            delta[i] = gamma2 * delta[i] - lr * gi / math.sqrt(n[i] - g[i] * g[i] + eps)
            weights[i] += delta[i]
    return weights


def test_rmsprop_is_the_builtins_centered_update() -> None:
    """gamma1 decays the gradient and squared-gradient means, gamma2 is the momentum; the
    learning rate scales each new step (a schedule change does not rescale past ones)."""
    grads = [[0.5, -2.0], [0.3, 1.0], [-0.2, 0.1], [0.4, 0.4]]
    rates = [0.01, 0.01, 0.005, 0.002]
    param = torch.nn.Parameter(torch.tensor([1.0, -1.0], dtype=torch.float64))
    cfg = config(optimizer="rmsprop", learning_rate="0.01", gamma1="0.9", gamma2="0.8")
    optimizer = build_optimizer(cfg.optimization(), [param])
    for step, (grad, lr) in enumerate(zip(grads, rates, strict=True)):
        optimizer.param_groups[0]["lr"] = lr
        param.grad = torch.tensor(grad, dtype=torch.float64)
        optimizer.step()
        expected = mxnet_centered_rmsprop(
            [1.0, -1.0], grads[: step + 1], rates[: step + 1], 0.9, 0.8
        )
        assert param.tolist() == pytest.approx(expected, rel=1e-12), step
    # by hand: the first step moves each weight by lr / sqrt(0.1 - 0.01) = lr / 0.3, downhill
    first = torch.nn.Parameter(torch.tensor([1.0, -1.0], dtype=torch.float64))
    single = build_optimizer(cfg.optimization(), [first])
    first.grad = torch.tensor(grads[0], dtype=torch.float64)
    single.step()
    assert first.tolist() == pytest.approx([1.0 - 0.01 / 0.3, -1.0 + 0.01 / 0.3], rel=1e-6)


@pytest.mark.parametrize("schedule", ["poly", "cosine"])
def test_schedule_resized_from_the_real_epoch_length(schedule: str) -> None:
    """Pipe mode: num_training_samples promised 2 batches an epoch, the stream gave 5. After
    the first epoch the rest of the run follows the schedule of the real count: poly does
    not sit at 0 and cosine does not rise again."""
    cfg = config(learning_rate="0.1", epochs="3", lr_scheduler=schedule)
    rates = []
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = build_optimizer(cfg.optimization(), [param])
    scheduler = build_scheduler(cfg.optimization(), optimizer, 2)
    for epoch in range(3):
        for _ in range(5):
            rates.append(optimizer.param_groups[0]["lr"])
            param.grad = torch.ones(2)
            optimizer.step()
            scheduler.step()
        if epoch == 0:
            resize_schedule(scheduler, epochs_done=1, iters_per_epoch=5)
    real = lr_trajectory(cfg, iters_per_epoch=5)  # had num_training_samples been right
    assert rates[5:] == pytest.approx(real[5:])
    assert all(rate > 0 for rate in rates)
    assert all(later <= earlier for earlier, later in zip(rates[5:], rates[6:], strict=False))


def test_step_milestones_move_with_the_real_epoch_length() -> None:
    cfg = config(
        learning_rate="0.1",
        epochs="4",
        lr_scheduler="step",
        lr_scheduler_step="2, 3",
        lr_scheduler_factor="0.5",
    )
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = build_optimizer(cfg.optimization(), [param])
    scheduler = build_scheduler(cfg.optimization(), optimizer, 2)
    per_epoch = []
    for epoch in range(4):
        per_epoch.append(optimizer.param_groups[0]["lr"])
        for _ in range(3):  # 3 batches, not the 2 promised
            param.grad = torch.ones(2)
            optimizer.step()
            scheduler.step()
        if epoch == 0:
            resize_schedule(scheduler, epochs_done=1, iters_per_epoch=3)
    assert per_epoch == pytest.approx([0.1, 0.1, 0.05, 0.025])


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


@pytest.mark.parametrize(
    ("capability", "dtype"),
    [
        ((7, 0), torch.float16),  # V100 (ml.p3): bf16 only emulated
        ((7, 5), torch.float16),  # T4 (ml.g4dn)
        ((8, 0), torch.bfloat16),  # A100
        ((9, 0), torch.bfloat16),  # H100
    ],
)
def test_auto_precision_uses_bf16_only_where_the_gpu_computes_it(
    monkeypatch, capability, dtype
) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # as on a T4
    # let the gradient scaler switch on without a GPU here
    monkeypatch.setattr(torch.cuda.amp.common, "amp_definitely_not_available", lambda: False)
    precision = Precision.choose("auto", torch.device("cuda"))
    assert precision.dtype == dtype
    assert precision.scaler.is_enabled() == (dtype == torch.float16)


def test_progress_lines_carry_iterations_rate_and_eta(caplog) -> None:
    import logging

    from segcontainer.training.epochs import ProgressLog

    caplog.set_level(logging.INFO)
    progress = ProgressLog(epoch=2, total=10, interval=0.0)
    progress.step(4, 32)
    progress.step(10, 80)  # the epoch's end is summarised by the epoch line instead
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("epoch 2: 4/10 iterations,")
    assert "it/s" in line and "img/s" in line and "eta" in line


def test_progress_is_quiet_within_the_interval(caplog) -> None:
    import logging

    from segcontainer.training.epochs import ProgressLog

    caplog.set_level(logging.INFO)
    progress = ProgressLog(epoch=0, total=1000, interval=3600)
    for done in range(1, 999):
        progress.step(done, done * 4)
    assert not caplog.records


def test_auto_class_weights_are_median_frequency_balancing() -> None:
    import numpy as np

    from segcontainer.tasks.segmentation.loss import median_frequency_weights

    weights = median_frequency_weights(np.array([100, 300, 0, 600]))
    # frequencies 0.1, 0.3, -, 0.6; median of the present ones 0.3; absent class gets 1
    assert weights.tolist() == pytest.approx([3.0, 1.0, 1.0, 0.5])
