"""The training mechanics: optimizers, schedules, precision, one epoch, evaluation, stopping."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from segcontainer import inference
from segcontainer.config.hyperparameters import Config
from segcontainer.data.label_maps import IGNORE_INDEX
from segcontainer.errors import TrainingStopped, UserError
from segcontainer.metrics import ConfusionMatrix, Scores
from segcontainer.precision import autocast_dtype
from segcontainer.training import collectives
from segcontainer.training.optim import IterationSchedule, MXNetRMSProp

log = logging.getLogger(__name__)
PROGRESS_SECONDS = 30.0  # one progress line per this many seconds, not one per step
LOSS_CHECK_STEPS = 50  # nan/inf in the loss is looked for every this many steps (a device sync)


def build_optimizer(
    config: Config, params: Iterable[nn.Parameter], device: torch.device | None = None
) -> torch.optim.Optimizer:
    """The built-in's optimizers: momentum and weight_decay apply to sgd and nag only;
    gamma1 is rmsprop's squared-gradient decay and gamma2 its momentum. On a GPU, SGD and
    Adam use their fused kernels (one launch for all parameters instead of one per tensor)."""
    lr = config.learning_rate
    name = config.optimizer
    fused = device is not None and device.type == "cuda"
    if name in ("sgd", "nag"):
        return torch.optim.SGD(
            params,
            lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=name == "nag",
            fused=fused or None,
        )
    if name == "adam":
        return torch.optim.Adam(params, lr, fused=fused or None)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr)
    if name == "rmsprop":  # MXNet's centered RMSProp, where gamma2 is defined (see optim.py)
        return MXNetRMSProp(params, lr, gamma1=config.gamma1, gamma2=config.gamma2)
    raise ValueError(f"unknown optimizer {name}")


def build_scheduler(config: Config, optimizer: torch.optim.Optimizer, iters_per_epoch: int):
    """A scheduler stepped once per iteration: poly (power 0.9) and cosine decay smoothly over
    the whole run; step multiplies by lr_scheduler_factor after each listed epoch. In closed
    form, so Pipe mode can resize it once an epoch's real length is known."""
    schedule = IterationSchedule(
        config.lr_scheduler,
        config.epochs,
        iters_per_epoch,
        config.lr_scheduler_step or (),
        config.lr_scheduler_factor,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


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


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    share: Callable[[torch.Tensor], torch.Tensor] | None = None,
):
    """Pixel-wise cross-entropy ignoring 255; a batch with no labelled pixel gives 0, not NaN.

    ``share`` (data parallel) turns this process's labelled-pixel count into its share of the
    global batch's count, so the ranks' losses average (as DDP averages gradients) to the loss
    of one process over the whole global batch, however the labelled pixels fall."""
    target = target.long()
    total = F.cross_entropy(
        logits.float(), target, weight=weight, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    valid = target != IGNORE_INDEX
    if weight is None:
        count = valid.sum()
    else:
        count = (weight[target.clamp(max=logits.shape[1] - 1)] * valid).sum()
    if share is not None:
        return total / share(count)
    return total / count.clamp_min(1)


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


def train_one_epoch(
    model,
    loader,
    optimizer,
    scheduler,
    precision: Precision,
    device,
    epoch: int,
    class_weight: torch.Tensor | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    done: int = 0,
    loss_sum: float = 0.0,
    aux_weight: float = 0.0,
    time_first_step: bool = False,
) -> EpochStats:
    """Train over ``loader``; ``done`` batches (summed loss ``loss_sum``) of this epoch were
    trained before a resume. A stop request raises TrainingStopped carrying the progress."""
    model.train()
    channels_last = device.type == "cuda"
    total_loss = torch.zeros((), device=device)
    start = time.monotonic()
    data_seconds, images, steps = 0.0, 0, 0
    progress = ProgressLog(epoch, done + len(loader), done=done)
    share = collectives.count_share if collectives.active() else None
    guard = LossGuard(precision.scaler.is_enabled(), device)
    fetch_start = time.monotonic()
    batches = iter(loader)
    while True:
        try:
            images_batch, masks = next(batches)
        except StopIteration:
            break
        except TrainingStopped as exc:  # from the data: SIGTERM while waiting for a FIFO
            raise TrainingStopped(str(exc), done + steps, loss_sum + float(total_loss)) from exc
        data_seconds += time.monotonic() - fetch_start
        if should_stop():
            raise TrainingStopped(
                f"stopped during epoch {epoch}", done + steps, loss_sum + float(total_loss)
            )
        images_batch = images_batch.to(device, non_blocking=True)
        if channels_last:
            images_batch = images_batch.contiguous(memory_format=torch.channels_last)
        masks = masks.to(device, non_blocking=True)
        with precision.autocast():
            out = model(images_batch)
        logits, aux_logits = out if isinstance(out, tuple) else (out, None)
        loss = segmentation_loss(logits, masks, class_weight, share)
        if aux_logits is not None:  # the training-only head on layer3 (aux_loss_weight)
            # the same global-count normalisation as the main term, so ranks still average
            aux = segmentation_loss(aux_logits, masks, class_weight, share)
            loss = loss + aux_weight * aux
        optimizer.zero_grad(set_to_none=True)
        precision.scaler.scale(loss).backward()
        precision.scaler.step(optimizer)
        precision.scaler.update()
        scheduler.step()
        total_loss += guard.add(loss.detach())
        steps += 1
        if steps % LOSS_CHECK_STEPS == 0:
            guard.check(epoch, done + steps)
        images += images_batch.shape[0]
        progress.step(done + steps, images)
        if steps == 1 and time_first_step:
            # One sync, once: the first step holds cuDNN autotuning and torch.compile.
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
        fetch_start = time.monotonic()
    guard.check(epoch, done + steps)
    if device.type == "cuda":
        log.info(
            "epoch %d: peak GPU memory %.2f GiB",
            epoch,
            torch.cuda.max_memory_allocated(device) / 2**30,
        )
    if done + steps == 0:
        raise RuntimeError("the training loader produced no batch")
    mean_loss = (loss_sum + float(total_loss)) / (done + steps)
    return EpochStats(mean_loss, time.monotonic() - start, images, data_seconds, done + steps)


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
