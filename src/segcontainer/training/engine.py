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

from segcontainer.config.hyperparameters import Config
from segcontainer.data.channels import IGNORE_INDEX
from segcontainer.errors import TrainingStopped
from segcontainer.metrics import ConfusionMatrix, Scores
from segcontainer.training import collectives

log = logging.getLogger(__name__)
PROGRESS_SECONDS = 30.0  # one progress line per this many seconds, not one per step


def build_optimizer(config: Config, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The built-in's optimizers: momentum and weight_decay apply to sgd and nag only;
    gamma1 is rmsprop's squared-gradient decay and gamma2 its momentum."""
    lr = config.learning_rate
    name = config.optimizer
    if name in ("sgd", "nag"):
        return torch.optim.SGD(
            params,
            lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=name == "nag",
        )
    if name == "adam":
        return torch.optim.Adam(params, lr)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr, alpha=config.gamma1, momentum=config.gamma2)
    raise ValueError(f"unknown optimizer {name}")


def build_scheduler(config: Config, optimizer: torch.optim.Optimizer, iters_per_epoch: int):
    """A scheduler stepped once per iteration: poly (power 0.9) and cosine decay smoothly over
    the whole run; step multiplies by lr_scheduler_factor after each listed epoch."""
    total = config.epochs * iters_per_epoch
    schedulers = torch.optim.lr_scheduler
    if config.lr_scheduler == "poly":
        return schedulers.PolynomialLR(optimizer, total_iters=total, power=0.9)
    if config.lr_scheduler == "cosine":
        return schedulers.CosineAnnealingLR(optimizer, T_max=total)
    milestones = [epoch * iters_per_epoch for epoch in config.lr_scheduler_step]
    return schedulers.MultiStepLR(optimizer, milestones, gamma=config.lr_scheduler_factor)


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
        if device.type != "cuda" or requested == "fp32":
            if requested in ("bf16", "fp16") and device.type != "cuda":
                log.warning("precision=%s needs a GPU; training in fp32 on the CPU", requested)
            return cls(torch.float32, device)
        if requested == "fp16" or (requested == "auto" and not torch.cuda.is_bf16_supported()):
            return cls(torch.float16, device)
        return cls(torch.bfloat16, device)

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


@dataclass
class EpochStats:
    loss: float
    seconds: float
    images: int
    data_seconds: float

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
    fetch_start = time.monotonic()
    for images_batch, masks in loader:
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
            logits = model(images_batch)
        loss = segmentation_loss(logits, masks, class_weight, share)
        optimizer.zero_grad(set_to_none=True)
        precision.scaler.scale(loss).backward()
        precision.scaler.step(optimizer)
        precision.scaler.update()
        scheduler.step()
        total_loss += loss.detach()
        steps += 1
        images += images_batch.shape[0]
        progress.step(done + steps, images)
        fetch_start = time.monotonic()
    if done + steps == 0:
        raise RuntimeError("the training loader produced no batch")
    mean_loss = (loss_sum + float(total_loss)) / (done + steps)
    return EpochStats(mean_loss, time.monotonic() - start, images, data_seconds)


@torch.no_grad()
def evaluate(
    model,
    loader,
    num_classes: int,
    precision: Precision,
    device,
    should_stop: Callable[[], bool] = lambda: False,
) -> Scores:
    model.eval()
    matrix = ConfusionMatrix(num_classes, device)
    for images_batch, masks in loader:
        if should_stop():
            raise TrainingStopped("stopped during validation")
        images_batch = images_batch.to(device, non_blocking=True)
        if device.type == "cuda":
            images_batch = images_batch.contiguous(memory_format=torch.channels_last)
        with precision.autocast():
            logits = model(images_batch)
        matrix.update(masks.to(device, non_blocking=True), logits.argmax(1))
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
