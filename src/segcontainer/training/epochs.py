"""The epoch loop: precision, the loss, one training epoch, evaluation, early stopping.

The optimizers and learning-rate schedules it steps are built in optim.py."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from segcontainer import inference
from segcontainer.errors import TrainingStopped, UserError
from segcontainer.metrics import ConfusionMatrix, Scores
from segcontainer.precision import autocast_dtype
from segcontainer.training import collectives
from segcontainer.training.loss import Objective
from segcontainer.training.optim import Trainables

log = logging.getLogger(__name__)
PROGRESS_SECONDS = 30.0  # one progress line per this many seconds, not one per step
LOSS_CHECK_STEPS = 50  # nan/inf in the loss is looked for every this many steps (a device sync)


@dataclass
class Precision:
    """Mixed precision as one autocast context plus a scaler that disables itself."""

    dtype: torch.dtype
    device: torch.device
    scaler: torch.amp.GradScaler = field(init=False)

    def __post_init__(self) -> None:
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    @classmethod
    def choose(cls, requested: str, device: torch.device) -> Precision:
        """The ``precision`` hyperparameter on ``device``, by segcontainer.precision's policy
        (fp16 gets the gradient scaler)."""
        return cls(autocast_dtype(device, requested) or torch.float32, device)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


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
    objective: Objective,
) -> torch.Tensor:
    """One optimisation step on ``batch``; its loss, detached."""
    images, masks = batch
    images = images.to(device, non_blocking=True)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    masks = masks.to(device, non_blocking=True)
    with precision.autocast():
        out = trainables.stepped(images)
    loss = objective(out, masks)
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
    objective: Objective | None = None,  # None: unweighted, no auxiliary term
    should_stop: Callable[[], bool] = lambda: False,
    done: int = 0,
    loss_sum: float = 0.0,
    time_first_step: bool = False,
) -> EpochStats:
    """Train over ``loader``; ``done`` batches (summed loss ``loss_sum``) of this epoch were
    trained before a resume. A stop request raises TrainingStopped carrying the progress."""
    trainables.stepped.train()
    objective = Objective() if objective is None else objective
    tally = _Tally(done, loss_sum, torch.zeros((), device=device))
    start = time.monotonic()
    progress = ProgressLog(epoch, done + len(loader), done=done)
    guard = LossGuard(trainables.scaler.is_enabled(), device)
    for batch in _batches(loader, tally, epoch, should_stop):
        loss = _step(trainables, precision, device, batch, objective)
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
    return EpochStats(mean_loss, time.monotonic() - start, tally.images, tally.data_seconds, steps)


@torch.no_grad()
def evaluate(
    model,
    loader,
    num_classes: int,
    precision: Precision,
    device,
    should_stop: Callable[[], bool] = lambda: False,
) -> Scores:
    """Score the model on what the endpoint would answer: the loader prepares each image as
    the endpoint does (long side resized to base_size; ``data.loaders``), inference tiles it
    and upsamples the logits to the mask's size in bands as the endpoint does, and the
    confusion matrix counts pixels at the mask's resolution."""
    model.eval()
    matrix = ConfusionMatrix(num_classes, device)

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        if device.type == "cuda":
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with precision.autocast():
            return model(inputs).float()

    for batch in loader:
        if should_stop():
            raise TrainingStopped("stopped during validation")
        for inputs, masks in batch.groups:
            inputs = inputs.to(device, non_blocking=True)
            logits = inference.tiled_logits(forward, inputs, batch.tile_size)
            for image_logits, mask in zip(logits, masks, strict=True):
                mask = mask.to(device, non_blocking=True)
                matrix.update(mask, inference.class_map(image_logits, *mask.shape[-2:]))
    matrix.reduce()
    return matrix.scores()


@dataclass
class EarlyStopping:
    """Stop when mIoU has not improved by more than ``tolerance`` (relative) for ``patience``
    epochs, once at least ``min_epochs`` epochs have run."""

    enabled: bool
    min_epochs: int
    patience: int
    tolerance: float
    best: float = -1.0
    stale_epochs: int = 0

    def update(self, miou: float) -> bool:
        """Record an epoch's mIoU; True when it is the best so far (the model worth keeping)."""
        gain = (miou - self.best) / self.best if self.best > 0 else float(miou > self.best) * 2
        self.stale_epochs = 0 if gain > self.tolerance else self.stale_epochs + 1
        is_best = miou > self.best
        if is_best:
            self.best = miou
        return is_best

    def should_stop(self, epochs_done: int) -> bool:
        return (
            self.enabled and epochs_done >= self.min_epochs and self.stale_epochs >= self.patience
        )
