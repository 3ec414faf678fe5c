"""The epoch loop: train, validate, report, keep the best model, checkpoint, stop early."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from segcontainer import model_folder
from segcontainer.config.environment import Paths
from segcontainer.config.hyperparameters import Config
from segcontainer.errors import TrainingStopped
from segcontainer.metrics import metric_lines
from segcontainer.training import checkpoints, collectives, engine
from segcontainer.training.checkpoints import Position
from segcontainer.training.collectives import CoordinatedStop
from segcontainer.training.curves import TrainingCurves
from segcontainer.training.distributed import SINGLE, Rank

log = logging.getLogger(__name__)


@dataclass
class Setup:
    """Everything the loop works with, built by training.run."""

    paths: Paths
    config: Config
    host: str
    record: dict
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    precision: engine.Precision
    device: torch.device
    start_epoch: Callable[[int, int], None]  # (epoch, samples to skip) -> data set up for it
    train_loader: torch.utils.data.DataLoader
    validation_loader: torch.utils.data.DataLoader
    class_weight: torch.Tensor | None
    iters_per_epoch: int
    batch_size: int  # per process: mini_batch_size split across the host's processes
    rank: Rank = SINGLE
    train_model: torch.nn.Module | None = None  # the DistributedDataParallel wrapper, if any


def fit(s: Setup, local_stop) -> None:
    """Train every epoch. Data parallel: every rank trains and validates its shard; global
    rank 0 alone writes the metric lines, curves, model/ and checkpoints."""
    config = s.config
    main = s.rank.is_main
    train_model = s.train_model or s.model
    stop = CoordinatedStop(local_stop, s.device)
    stopper = engine.EarlyStopping(
        config.early_stopping,
        config.early_stopping_min_epochs,
        config.early_stopping_patience,
        config.early_stopping_tolerance,
    )
    curves = TrainingCurves(s.paths.output_data_dir)
    position, best_epoch = Position(), -1
    resumed = checkpoints.resume(
        s.paths.checkpoints_dir,
        s.record,
        s.model,
        s.optimizer,
        s.scheduler,
        s.precision.scaler,
        main,
        collectives.broadcast_from_main if collectives.active() else None,
    )
    if resumed:
        position, best_epoch, curves.rows = resumed.position, resumed.best_epoch, resumed.curves
        stopper.best = resumed.early_stopping["best"]
        stopper.stale_epochs = resumed.early_stopping["stale_epochs"]

    def checkpoint(at: Position) -> None:
        if not main:
            return
        state = {"best": stopper.best, "stale_epochs": stopper.stale_epochs}
        checkpoints.save(
            s.paths.checkpoints_dir,
            at,
            s.model,
            s.optimizer,
            s.scheduler,
            s.precision.scaler,
            state,
            curves.rows,
            best_epoch,
            s.record,
        )

    names = config.class_names or tuple(str(i) for i in range(config.num_classes))
    for epoch in range(position.epoch, config.epochs):
        resuming = epoch == position.epoch
        done = position.iteration if resuming else 0
        s.start_epoch(epoch, done * s.batch_size)
        try:
            stats = engine.train_one_epoch(
                train_model,
                s.train_loader,
                s.optimizer,
                s.scheduler,
                s.precision,
                s.device,
                epoch,
                s.class_weight,
                stop,
                done=done,
                loss_sum=position.loss_sum if resuming else 0.0,
            )
        except TrainingStopped as exc:
            checkpoint(Position(epoch, exc.iteration, exc.loss_sum))
            raise
        collectives.sync_buffers(s.model)
        try:
            # Ranks may hold unequal validation shards, so they agree on a stop after it.
            scores = engine.evaluate(
                s.model,
                s.validation_loader,
                config.num_classes,
                s.precision,
                s.device,
                local_stop if not collectives.active() else lambda: False,
            )
            if collectives.active() and stop.agree():
                raise TrainingStopped("stopped during validation")
        except TrainingStopped:  # the epoch's training is done; validation runs again
            checkpoint(Position(epoch, s.iters_per_epoch, stats.loss * s.iters_per_epoch))
            raise
        stats.loss = collectives.all_reduce_mean(stats.loss, s.device)
        stats.images *= s.rank.size  # every rank trains on as many: the job's throughput
        if main:  # one set of metric lines per epoch, so HPO and CloudWatch see one value
            report(s, epoch, stats, scores, names, curves)
        # every rank sees the same (summed) scores, so all take the same decisions
        if stopper.update(scores.miou):
            best_epoch = epoch
            if main:
                model_folder.save_model(
                    s.paths.model_dir, s.model, s.record, epoch, scores, config.class_names
                )
            log.info(
                "epoch %d is the best so far (mIoU %.4f): saved to %s",
                epoch,
                scores.miou,
                s.paths.model_dir,
            )
        if stopper.should_stop(epoch + 1):
            log.info(
                "early stopping after epoch %d: mIoU has not improved by more than %.3g "
                "for %d epochs (best %.4f)",
                epoch,
                config.early_stopping_tolerance,
                stopper.stale_epochs,
                stopper.best,
            )
            checkpoint(Position(config.epochs))  # finished: a restart does not train on
            return
        checkpoint(Position(epoch + 1))


def report(s: Setup, epoch: int, stats, scores, names, curves: TrainingCurves) -> None:
    for line in metric_lines(s.host, epoch, stats.loss, scores):
        print(line, flush=True)
    per_class = ", ".join(
        f"{n} {'-' if v is None else f'{v:.3f}'}"
        for n, v in zip(names, scores.per_class_iou, strict=True)
    )
    log.info(
        "epoch %d: %.1f s, %.1f img/s, data loading %.0f%% of the epoch, per-class IoU: %s",
        epoch,
        stats.seconds,
        stats.images_per_second,
        100 * stats.data_share,
        per_class,
    )
    curves.add(
        epoch=epoch,
        train_loss=stats.loss,
        validation_mIOU=scores.miou,
        validation_pixel_accuracy=scores.pixel_accuracy,
        learning_rate=s.optimizer.param_groups[0]["lr"],
        epoch_seconds=stats.seconds,
        images_per_second=stats.images_per_second,
    )
