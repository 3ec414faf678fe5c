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
from segcontainer.metrics import Scores, metric_lines
from segcontainer.training import checkpoints, collectives, epochs
from segcontainer.training.checkpoints import Position
from segcontainer.training.collectives import CoordinatedStop
from segcontainer.training.curves import TrainingCurves
from segcontainer.training.distributed import SINGLE, Rank
from segcontainer.training.optim import resize_schedule

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
    precision: epochs.Precision
    device: torch.device
    start_epoch: Callable[[int, int], None]  # (epoch, samples to skip) -> data set up for it
    train_loader: torch.utils.data.DataLoader
    validation_loader: torch.utils.data.DataLoader
    class_weight: torch.Tensor | None
    iters_per_epoch: int
    batch_size: int  # per process: mini_batch_size split across the host's processes
    rank: Rank = SINGLE
    # What the training steps call: ``model`` wrapped for data parallelism and/or compiled
    # (compile_model); None: ``model`` itself. Validation, checkpoints and model/ always use
    # ``model``.
    train_model: torch.nn.Module | None = None


def _scores_dict(scores: Scores) -> dict:
    return {
        "miou": scores.miou,
        "pixel_accuracy": scores.pixel_accuracy,
        "per_class_iou": list(scores.per_class_iou),
    }


def _trained_on(s: Setup) -> dict:
    world = s.rank.world
    return {
        "hosts": list(world.hosts),
        "processes_per_host": world.local_size,
        "world_size": world.size,
        "written_by": f"rank 0 on {world.host}",
    }


def _restore_model_folder(s: Setup, best: checkpoints.Best) -> None:
    """After a resume, model/ holds the best model so far before training goes on: a spot
    restart starts with an empty /opt/ml/model, and no later epoch may beat the best."""
    scores = Scores(
        best.scores["miou"], best.scores["pixel_accuracy"], tuple(best.scores["per_class_iou"])
    )
    model_folder.save_model(
        s.paths.model_dir,
        best.weights,
        s.record,
        best.epoch,
        scores,
        s.config.class_names,
        _trained_on(s),
    )
    log.info(
        "wrote the best model so far (epoch %d, mIoU %.4f) from the checkpoint to %s",
        best.epoch,
        scores.miou,
        s.paths.model_dir,
    )


def fit(s: Setup, local_stop) -> None:
    """Train every epoch. Data parallel: every rank trains and validates its shard; global
    rank 0 alone writes the metric lines, curves, model/ and checkpoints."""
    config = s.config
    main = s.rank.is_main
    train_model = s.train_model or s.model
    stop = CoordinatedStop(local_stop, s.device)
    stopper = epochs.EarlyStopping(
        config.early_stopping,
        config.early_stopping_min_epochs,
        config.early_stopping_patience,
        config.early_stopping_tolerance,
    )
    curves = TrainingCurves(s.paths.output_data_dir)
    position, best = Position(), None
    model_is_best = False  # the model's current weights are best's (stored once)
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
        position, best, curves.rows = resumed.position, resumed.best, resumed.curves
        stopper.best = resumed.early_stopping["best"]
        stopper.stale_epochs = resumed.early_stopping["stale_epochs"]
        if best is not None and main:
            _restore_model_folder(s, best)
        elif stopper.best >= 0 and main:
            log.warning(
                "the checkpoint holds no best model (written by an older version): model/ is "
                "written again when an epoch beats mIoU %.4f",
                stopper.best,
            )
        if main:
            curves.write()

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
            best,
            s.record,
            model_is_best,
        )

    names = config.class_names or tuple(str(i) for i in range(config.num_classes))
    iters_per_epoch = s.iters_per_epoch  # what the schedule assumes; Pipe mode measures it
    for epoch in range(position.epoch, config.epochs):
        resuming = epoch == position.epoch
        done = position.iteration if resuming else 0
        s.start_epoch(epoch, done * s.batch_size)
        model_is_best = False  # training changes the weights
        epoch_rate = s.optimizer.param_groups[0]["lr"]  # the curves' rate: at the first step
        try:
            stats = epochs.train_one_epoch(
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
                aux_weight=config.aux_loss_weight,
                time_first_step=resuming,  # this process's first epoch
            )
        except TrainingStopped as exc:
            checkpoint(Position(epoch, exc.iteration or 0, exc.loss_sum))
            raise
        except epochs.NonFiniteLoss as exc:  # no checkpoint: the weights hold nan now
            raise epochs.NonFiniteLoss(non_finite_reason(s, str(exc), best, stopper)) from exc
        collectives.sync_buffers(s.model)
        if stats.steps != iters_per_epoch:
            # Pipe mode: num_training_samples sized the schedule, the stream was another length
            log.warning(
                "epoch %d had %d batches, not the %d the schedule assumed "
                "(num_training_samples / batch size): the rest of the learning-rate "
                "schedule is sized from the real count",
                epoch,
                stats.steps,
                iters_per_epoch,
            )
            iters_per_epoch = stats.steps
            resize_schedule(s.scheduler, epoch + 1, iters_per_epoch)
        try:
            # Ranks may hold unequal validation shards, so they agree on a stop after it.
            scores = epochs.evaluate(
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
            checkpoint(Position(epoch, stats.steps, stats.loss * stats.steps))
            raise
        stats.loss = collectives.all_reduce_mean(stats.loss, s.device)
        stats.images *= s.rank.size  # every rank trains on as many: the job's throughput
        if main:  # one set of metric lines per epoch, so HPO and CloudWatch see one value
            report(s, epoch, stats, scores, names, curves, epoch_rate)
        # every rank sees the same (summed) scores, so all take the same decisions
        if stopper.update(scores.miou):
            model_is_best = True
            if main:  # only the main process keeps the best weights and writes model/
                weights = {
                    k: v.detach().to("cpu", copy=True) for k, v in s.model.state_dict().items()
                }
                best = checkpoints.Best(epoch, _scores_dict(scores), weights)
                model_folder.save_model(
                    s.paths.model_dir,
                    weights,
                    s.record,
                    epoch,
                    scores,
                    config.class_names,
                    _trained_on(s),
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


def non_finite_reason(
    s: Setup, what: str, best: checkpoints.Best | None, stopper: epochs.EarlyStopping
) -> str:
    """The failure reason for a nan/inf loss: what happened, the likely causes with this job's
    values, and what is kept."""
    config = s.config
    if best is not None:
        kept = (
            f"{s.paths.model_dir} keeps the best model so far (epoch {best.epoch}, "
            f"mIoU {best.scores['miou']:.4f})"
        )
    elif stopper.best >= 0:  # a rank other than the main one, which keeps the model
        kept = f"the first host keeps the best model so far (mIoU {stopper.best:.4f})"
    else:
        kept = "no epoch had finished, so there is no model"
    precision = str(s.precision.dtype).removeprefix("torch.")
    return (
        f"Training stopped: {what}. Likely causes: a learning_rate too high (this job: "
        f"{config.learning_rate}), class_weights too large (this job: {config.class_weights}), "
        f"or fp16 overflow (this job trains in {precision}; precision=bf16 or fp32 avoids it). "
        f"Lower the one that applies and train again; {kept}."
    )


def report(s: Setup, epoch: int, stats, scores, names, curves: TrainingCurves, rate: float) -> None:
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
        learning_rate=rate,
        epoch_seconds=stats.seconds,
        images_per_second=stats.images_per_second,
    )
