"""The epoch loop's parts: one training epoch (on the task's loss), the nan guard, progress
lines, early stopping. Validation is the task's (tasks.task.Validation).

The optimizers and learning-rate schedules it steps are built in optim.py."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from segcontainer.errors import TrainingStopped, UserError
from segcontainer.precision import Precision
from segcontainer.training import collectives
from segcontainer.training.optim import Trainables

if TYPE_CHECKING:
    from segcontainer.tasks.task import Loss, TrainMetric

log = logging.getLogger(__name__)
PROGRESS_SECONDS = 30.0  # one progress line per this many seconds, not one per step
LOSS_CHECK_STEPS = 50  # nan/inf in the loss is looked for every this many steps (a device sync)


class ProgressLog:
    """Logs iterations, rate and ETA every PROGRESS_SECONDS (a line per step would flood
    CloudWatch; tqdm's carriage returns do not survive it either)."""

    def __init__(self, epoch: int, total: int, interval: float = PROGRESS_SECONDS, done: int = 0):
        self.epoch, self.total, self.interval, self.first = epoch, total, interval, done
        self.start = self.last = time.monotonic()

    def step(self, done: int, images: int) -> None:
        now = time.monotonic()
        if now - self.last < self.interval or done >= self.total:
            return
        self.last = now
        rate = (done - self.first) / (now - self.start)
        eta = (self.total - done) / rate
        log.info(
            "epoch %d: %d/%d iterations, %.2f it/s, %.1f img/s, eta %ds",
            self.epoch,
            done,
            self.total,
            rate,
            images / (now - self.start),
            eta,
        )


class NonFiniteLoss(UserError):
    """The training loss became nan or inf; training on would spread it into every weight."""


@dataclass
class LossGuard:
    """Looks for nan/inf in the training loss every LOSS_CHECK_STEPS steps and at the epoch's
    end: a count kept on the device, read once per check (a sync per check, not per step).
    Every rank checks at the same steps and they agree (any rank's failure stops them all).

    Without the gradient scaler a non-finite loss fails at once: its step has put nan into the
    weights. With it (fp16) the scaler skips a step whose gradients are not finite, leaving the
    weights as they were; so a non-finite loss is left out of the epoch's loss and fails only
    when every step since the last check had one (then the scaler skips everything and nothing
    trains)."""

    scaled: bool
    device: torch.device
    steps: int = 0
    bad: torch.Tensor | None = None

    def add(self, loss: torch.Tensor) -> torch.Tensor:
        """Count ``loss`` (detached); what the epoch's loss sum takes from it."""
        finite = torch.isfinite(loss)
        self.bad = (~finite).int() if self.bad is None else self.bad + ~finite
        self.steps += 1
        return torch.where(finite, loss, 0.0) if self.scaled else loss

    def check(self, epoch: int, last: int) -> None:
        """Raise NonFiniteLoss when the steps since the last check (up to batch ``last`` of
        ``epoch``) fail the rule above, on this rank or any other."""
        if self.bad is None:
            return
        failed = self.bad >= self.steps if self.scaled else self.bad > 0
        count, steps = self.bad, self.steps
        self.bad, self.steps = None, 0
        if not collectives.any_rank(failed):
            return
        where = f"in {int(count)} of batches {last - steps + 1}-{last}" if bool(failed) else ""
        raise NonFiniteLoss(
            f"the training loss became nan or inf {where or 'on another process'} of epoch "
            f"{epoch}"
            + (", and the gradient scaler skipped every one of them" if self.scaled else "")
        )


@dataclass
class EpochStats:
    loss: float
    seconds: float
    images: int
    data_seconds: float
    steps: int = 0  # batches in the epoch, those before a resume included
    # the task's training scores (train accuracy), over the batches this process trained
    train_values: tuple[tuple[str, float], ...] = ()

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)

    @property
    def data_share(self) -> float:
        return self.data_seconds / max(self.seconds, 1e-9)


@dataclass
class _Tally:
    """An epoch's running totals; ``done`` batches (summed loss ``loss_sum``) were trained
    before a resume."""

    done: int
    loss_sum: float
    total_loss: torch.Tensor  # on the device: summed without a sync per step
    steps: int = 0
    images: int = 0
    data_seconds: float = 0.0

    def stopped(self, reason: str) -> TrainingStopped:
        """A stop that carries the progress, for the checkpoint written on the way out."""
        return TrainingStopped(
            reason, self.done + self.steps, self.loss_sum + float(self.total_loss)
        )


def _batches(loader: Iterable, tally: _Tally, epoch: int, should_stop: Callable[[], bool]):
    """The loader's batches, with the time spent waiting for each added to the tally; a stop
    request (here or from the data: SIGTERM while waiting for a FIFO) raises TrainingStopped."""
    fetch_start = time.monotonic()
    batches = iter(loader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except TrainingStopped as exc:
            raise tally.stopped(str(exc)) from exc
        tally.data_seconds += time.monotonic() - fetch_start
        if should_stop():
            raise tally.stopped(f"stopped during epoch {epoch}")
        yield batch
        fetch_start = time.monotonic()


def _step(
    trainables: Trainables,
    precision: Precision,
    device: torch.device,
    batch: tuple[torch.Tensor, torch.Tensor],
    objective: Loss,
    metric: TrainMetric | None = None,
) -> torch.Tensor:
    """One optimisation step on ``batch`` (counted by ``metric``); its loss, detached."""
    images, masks = batch
    images = images.to(device, non_blocking=True)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    masks = masks.to(device, non_blocking=True)
    with precision.autocast():
        out = trainables.stepped(images)
    loss = objective(out, masks, collectives.count_share if collectives.active() else None)
    if metric is not None:
        metric.update(out.detach() if isinstance(out, torch.Tensor) else out, masks)
    trainables.optimizer.zero_grad(set_to_none=True)
    trainables.scaler.scale(loss).backward()
    trainables.scaler.step(trainables.optimizer)
    trainables.scaler.update()
    trainables.scheduler.step()
    return loss.detach()


def _log_first_step(model: torch.nn.Module, device: torch.device, start: float) -> None:
    """The first step's time: it holds cuDNN autotuning and torch.compile (one sync, once)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    autotuned = device.type == "cuda" and torch.backends.cudnn.benchmark
    included = [  # named only when on: an eager CPU step has neither
        *(["compilation"] if hasattr(model, "_orig_mod") else []),  # torch.compile's
        *(["autotuning"] if autotuned else []),
    ]
    log.info(
        "first training step: %.1f s%s",
        time.monotonic() - start,
        f" ({' and '.join(included)} included)" if included else "",
    )


def train_one_epoch(
    trainables: Trainables,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    precision: Precision,
    device: torch.device,
    epoch: int,
    objective: Loss,  # the task's loss (tasks.task.Loss)
    metric: TrainMetric | None = None,  # the task's training scores, if it reports any
    should_stop: Callable[[], bool] = lambda: False,
    done: int = 0,
    loss_sum: float = 0.0,
    time_first_step: bool = False,
) -> EpochStats:
    """Train over ``loader``; ``done`` batches (summed loss ``loss_sum``) of this epoch were
    trained before a resume. A stop request raises TrainingStopped carrying the progress."""
    trainables.stepped.train()
    tally = _Tally(done, loss_sum, torch.zeros((), device=device))
    start = time.monotonic()
    progress = ProgressLog(epoch, done + len(loader), done=done)
    guard = LossGuard(trainables.scaler.is_enabled(), device)
    for batch in _batches(loader, tally, epoch, should_stop):
        loss = _step(trainables, precision, device, batch, objective, metric)
        tally.total_loss += guard.add(loss)
        tally.steps += 1
        if tally.steps % LOSS_CHECK_STEPS == 0:
            guard.check(epoch, done + tally.steps)
        tally.images += batch[0].shape[0]
        progress.step(done + tally.steps, tally.images)
        if tally.steps == 1 and time_first_step:
            _log_first_step(trainables.stepped, device, start)
    guard.check(epoch, done + tally.steps)
    if device.type == "cuda":
        log.info(
            "epoch %d: peak GPU memory %.2f GiB",
            epoch,
            torch.cuda.max_memory_allocated(device) / 2**30,
        )
    steps = done + tally.steps
    if steps == 0:
        raise RuntimeError("the training loader produced no batch")
    mean_loss = (loss_sum + float(tally.total_loss)) / steps
    return EpochStats(
        mean_loss,
        time.monotonic() - start,
        tally.images,
        tally.data_seconds,
        steps,
        metric.values() if metric is not None else (),
    )


@dataclass
class EarlyStopping:
    """Stop when the headline score (mIoU, accuracy) has not improved by more than
    ``tolerance`` (relative) for ``patience`` epochs, once ``min_epochs`` epochs have run."""

    enabled: bool
    min_epochs: int
    patience: int
    tolerance: float
    best: float = -1.0
    stale_epochs: int = 0

    def update(self, score: float) -> bool:
        """Record an epoch's score; True when it is the best so far (the model worth keeping)."""
        gain = (score - self.best) / self.best if self.best > 0 else float(score > self.best) * 2
        self.stale_epochs = 0 if gain > self.tolerance else self.stale_epochs + 1
        is_best = score > self.best
        if is_best:
            self.best = score
        return is_best

    def should_stop(self, epochs_done: int) -> bool:
        return (
            self.enabled and epochs_done >= self.min_epochs and self.stale_epochs >= self.patience
        )
