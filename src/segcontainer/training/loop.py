"""The epoch loop: train, validate, report, keep the best model, checkpoint, stop early.

Data parallel: every rank trains and validates its shard; global rank 0 alone writes the
metric lines, curves, TensorBoard's event files, model/ and checkpoints. Every rank sees the
same (summed) scores, so all take the same decisions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from segcontainer import model_folder
from segcontainer.config.environment import Paths, read_tensorboard_dir
from segcontainer.config.hyperparameters import Config
from segcontainer.data.loaders import TrainingData
from segcontainer.errors import TrainingStopped
from segcontainer.metrics import EpochReport, ValidationScores
from segcontainer.precision import Precision
from segcontainer.tasks.task import Loss, Task
from segcontainer.training import checkpoints, collectives, epochs
from segcontainer.training.best import BestModel
from segcontainer.training.checkpoints import Position, Progress
from segcontainer.training.collectives import CoordinatedStop
from segcontainer.training.curves import TrainingCurves
from segcontainer.training.distributed import SINGLE, Rank
from segcontainer.training.optim import Trainables, resize_schedule
from segcontainer.training.tensorboard import PICTURES, Board

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Setup:
    """Everything the loop works with, built by training.job.run."""

    paths: Paths
    config: Config
    host: str
    record: dict  # the resolved configuration: model/ and every checkpoint carry it
    trainables: Trainables
    precision: Precision
    device: torch.device
    data: TrainingData
    task: Task  # validation, training scores, metric lines: the task's
    objective: Loss  # the task's loss, built for this job's data
    batch_size: int  # per process: mini_batch_size split across the host's processes
    rank: Rank = SINGLE
    started_from: dict | None = None  # incremental training: model_info.json records it


class Run:
    """One job's pass over its epochs: what the loop keeps between them (early-stopping
    state, curves, the best model) and the steps of an epoch that can stop or fail."""

    def __init__(self, s: Setup, local_stop: Callable[[], bool]) -> None:
        config = s.config
        self.s, self.local_stop = s, local_stop
        self.stop = CoordinatedStop(local_stop, s.device)
        self.stopper = epochs.EarlyStopping(
            config.early_stopping,
            config.early_stopping_min_epochs,
            config.early_stopping_patience,
            config.early_stopping_tolerance,
        )
        self.curves = TrainingCurves(s.paths.output_data_dir)
        self.best = BestModel(
            model_dir=s.paths.model_dir,
            record=s.record,
            class_names=config.class_names,
            rank=s.rank,
            started_from=s.started_from,
        )

    def resume(self) -> Position:
        """Continue from the newest valid checkpoint (every rank from the same one): the
        trainables, early-stopping state, curves and best model; where to start."""
        s, main = self.s, self.s.rank.is_main
        progress = checkpoints.resume(
            s.paths.checkpoints_dir,
            record=s.record,
            trainables=s.trainables,
            main=main,
            share=collectives.broadcast_from_main if collectives.active() else None,
        )
        if progress is None:
            return Position()
        self.curves.rows = progress.curves
        self.stopper.best = progress.early_stopping["best"]
        self.stopper.stale_epochs = progress.early_stopping["stale_epochs"]
        if progress.best is not None:
            self.best.restore(progress.best)
        elif self.stopper.best >= 0 and main:
            log.warning(
                "the checkpoint holds no best model (written by an older version): model/ is "
                "written again when an epoch beats mIoU %.4f",
                self.stopper.best,
            )
        if main:
            self.curves.write()
        return progress.position

    def checkpoint(self, at: Position) -> None:
        """The main process writes a checkpoint at ``at``; the others keep none."""
        s = self.s
        if not s.rank.is_main:
            return
        early_stopping = {"best": self.stopper.best, "stale_epochs": self.stopper.stale_epochs}
        checkpoints.save(
            s.paths.checkpoints_dir,
            progress=Progress(
                position=at,
                early_stopping=early_stopping,
                curves=self.curves.rows,
                best=self.best.best,
            ),
            trainables=s.trainables,
            record=s.record,
            model_is_best=self.best.is_current,
        )

    def train(self, epoch: int, resumed: Position | None) -> tuple[epochs.EpochStats, float]:
        """Train ``epoch`` (from where ``resumed`` left it, in this process's first epoch):
        its stats and its learning rate at the first step. A stop writes a checkpoint."""
        s = self.s
        done = resumed.iteration if resumed else 0
        s.data.start_epoch(epoch, done * s.batch_size)
        self.best.is_current = False  # training changes the weights
        rate = s.trainables.optimizer.param_groups[0]["lr"]  # the curves' rate: at the first step
        try:
            stats = epochs.train_one_epoch(
                s.trainables,
                s.data.train_loader,
                precision=s.precision,
                device=s.device,
                epoch=epoch,
                objective=s.objective,
                metric=s.task.train_metric(s.config, s.device) if s.task.train_metric else None,
                should_stop=self.stop,
                done=done,
                loss_sum=resumed.loss_sum if resumed else 0.0,
                time_first_step=resumed is not None,  # this process's first epoch
            )
        except TrainingStopped as exc:
            self.checkpoint(Position(epoch, exc.iteration or 0, exc.loss_sum))
            raise
        except epochs.NonFiniteLoss as exc:  # no checkpoint: the weights hold nan now
            raise epochs.NonFiniteLoss(self.non_finite_reason(str(exc))) from exc
        return stats, rate

    def validate(self, epoch: int, stats: epochs.EpochStats) -> ValidationScores:
        """Score the trained epoch; a stop writes a checkpoint at the epoch's end (its
        validation runs again on resume)."""
        s = self.s
        try:
            # Ranks may hold unequal validation shards, so they agree on a stop after it.
            scores = s.task.validate(
                s.trainables.model,
                s.data.validation_loader,
                s.config,
                s.precision,
                s.device,
                self.local_stop if not collectives.active() else lambda: False,
            )
            if collectives.active() and self.stop.agree():
                raise TrainingStopped("stopped during validation")
        except TrainingStopped:
            self.checkpoint(Position(epoch, stats.steps, stats.loss * stats.steps))
            raise
        return scores

    def non_finite_reason(self, what: str) -> str:
        """The failure reason for a nan/inf loss: what happened, the likely causes with this
        job's values, and what is kept."""
        s, best = self.s, self.best.best
        if best is not None:
            kept = (
                f"{s.paths.model_dir} keeps the best model so far (epoch {best.epoch}, "
                f"{best.scores.headline} {best.scores.score:.4f})"
            )
        elif self.stopper.best >= 0:  # a rank other than the main one, which keeps the model
            kept = f"the first host keeps the best model so far (score {self.stopper.best:.4f})"
        else:
            kept = "no epoch had finished, so there is no model"
        precision = str(s.precision.dtype).removeprefix("torch.")
        return (
            f"Training stopped: {what}. Likely causes: a learning_rate too high (this job: "
            f"{s.config.learning_rate}), "
            + "".join(f"{hint}, " for hint in s.config.divergence_hints())
            + f"or fp16 overflow (this job trains in {precision}; "
            "precision=bf16 or fp32 avoids it). Lower the one that applies and train again; "
            f"{kept}."
        )


def fit(s: Setup, local_stop: Callable[[], bool]) -> None:
    """Train every epoch left, validating, reporting and checkpointing after each."""
    run = Run(s, local_stop)
    position = run.resume()
    board = Board.open(read_tensorboard_dir(s.paths), position.epoch) if s.rank.is_main else Board()
    with board:  # closed however the loop ends; each epoch was flushed when written
        train_epochs(s, run, position, board)


def train_epochs(s: Setup, run: Run, position: Position, board: Board) -> None:
    """The epochs left from ``position``: each trained, validated, reported (rank 0, to the
    metric lines, curves and ``board``) and checkpointed."""
    config = s.config
    iters_per_epoch = s.data.iters_per_epoch  # what the schedule assumes; Pipe mode measures it
    for epoch in range(position.epoch, config.epochs):
        stats, rate = run.train(epoch, position if epoch == position.epoch else None)
        collectives.sync_buffers(s.trainables.model)
        iters_per_epoch = fit_schedule(s.trainables, epoch, stats.steps, iters_per_epoch)
        scores = run.validate(epoch, stats)
        stats.loss = collectives.all_reduce_mean(stats.loss, s.device)
        stats.images *= s.rank.size  # every rank trains on as many: the job's throughput
        if s.rank.is_main:  # one set of metric lines per epoch, so HPO and CloudWatch see one
            report(s, epoch, stats, scores, run.curves, rate, board)
        if run.stopper.update(scores.score):
            run.best.keep(s.trainables.model, epoch, scores)
        if s.rank.is_main and kept_epoch(config.checkpoint_frequency, epoch):
            model_folder.save_epoch_weights(s.paths.model_dir, s.trainables.model, epoch)
        if run.stopper.should_stop(epoch + 1):
            log.info(
                "early stopping after epoch %d: %s has not improved by more than %.3g "
                "for %d epochs (best %.4f)",
                epoch,
                scores.headline,
                config.early_stopping_tolerance,
                run.stopper.stale_epochs,
                run.stopper.best,
            )
            run.checkpoint(Position(config.epochs))  # finished: a restart does not train on
            return
        run.checkpoint(Position(epoch + 1))


def kept_epoch(frequency: int | None, epoch: int) -> bool:
    """Whether checkpoint_frequency keeps ``epoch``'s weights in model/ (the built-in packs
    every such epoch into model.tar.gz beside the best one)."""
    return frequency is not None and (epoch + 1) % frequency == 0


def fit_schedule(trainables: Trainables, epoch: int, steps: int, assumed: int) -> int:
    """The batches per epoch the schedule assumes from here on: Pipe mode's num_training_samples
    sized it, and when the stream was another length the rest is sized from the real count."""
    if steps == assumed:
        return assumed
    log.warning(
        "epoch %d had %d batches, not the %d the schedule assumed "
        "(num_training_samples / batch size): the rest of the learning-rate "
        "schedule is sized from the real count",
        epoch,
        steps,
        assumed,
    )
    resize_schedule(trainables.scheduler, epoch + 1, steps)
    return steps


def report(
    s: Setup,
    epoch: int,
    stats: epochs.EpochStats,
    scores: ValidationScores,
    curves: TrainingCurves,
    rate: float,
    board: Board,
) -> None:
    """The epoch's metric lines (stdout, for HPO and CloudWatch; worded by the task), its log
    line, curves and TensorBoard figures and pictures."""
    epoch_report = EpochReport(
        epoch, stats.loss, stats.train_values, scores, stats.seconds, s.config.class_names
    )
    for line in s.task.metric_lines(s.host, epoch_report):
        print(line, flush=True)
    names = s.config.class_names or tuple(str(i) for i in range(s.config.num_classes))
    per_class = ", ".join(
        f"{n} {'-' if v is None else f'{v:.3f}'}"
        for n, v in zip(names, scores.per_class, strict=True)
    )
    log.info(
        "epoch %d: %.1f s, %.1f img/s, data loading %.0f%% of the epoch, per-class %s: %s",
        epoch,
        stats.seconds,
        stats.images_per_second,
        100 * stats.data_share,
        scores.per_class_name,
        per_class,
    )
    row = dict(
        epoch=epoch,
        train_loss=stats.loss,
        **{f"train_{name}": value for name, value in stats.train_values},
        **{f"validation_{name}": value for name, value in scores.values},
        learning_rate=rate,
        epoch_seconds=stats.seconds,
        images_per_second=stats.images_per_second,
    )
    curves.add(**row)
    preview = s.task.preview if board.active else None
    pictures = (
        preview(s.trainables.model, s.data, s.config, s.precision, s.device, PICTURES)
        if preview
        else []
    )
    board.epoch(row, scores, names, stats.data_share, pictures)
