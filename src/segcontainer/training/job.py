"""One training process's job: configuration and data in, the trained model and its exports
out. Builds what the epoch loop (training.loop) works with: the device, the data every rank
agrees on, the model and what trains it, the loss.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

import torch

from segcontainer.config.environment import (
    Paths,
    read_hyperparameters,
    read_input_data_config,
    read_resource_config,
)
from segcontainer.config.hyperparameters import Config
from segcontainer.data.dataset import Parallel, Shard
from segcontainer.data.loaders import TrainingData
from segcontainer.export import after_training as export_after_training
from segcontainer.precision import Precision
from segcontainer.tasks import choose_task
from segcontainer.tasks.task import Task
from segcontainer.training import collectives, distributed, syncbn
from segcontainer.training.distributed import SINGLE, Rank
from segcontainer.training.incremental import start_from_model_channel
from segcontainer.training.loop import Setup, fit
from segcontainer.training.optim import Trainables, build_optimizer, build_scheduler

log = logging.getLogger(__name__)


class StopFlag(Protocol):
    """entry.StopSignal as the job sees it: asked at every batch, told when the loop runs
    (outside it a SIGTERM stops at once)."""

    in_loop: bool

    def __call__(self) -> bool: ...


def data_parallel(channels: dict, rank: Rank, batch_size: int) -> Parallel:
    """Which part of each channel this process takes. ShardedByS3Key: the host holds its own
    part, shared among its processes only; FullyReplicated: every host holds it all."""

    def shard(name: str) -> Shard:
        config = channels.get(name)
        by_key = config is not None and config.extra.get("S3DistributionType") == "ShardedByS3Key"
        if by_key:
            return Shard(rank.local_rank, rank.world.local_size)
        return Shard(rank.rank, rank.size)

    return Parallel(
        shard("train"), shard("validation"), batch_size, rank.size, rank.world.local_size
    )


def compiled(model: torch.nn.Module, setting: str, device: torch.device):
    """torch.compile for the training steps (auto: on a GPU, where it pays; on the CPU the
    compile time outweighs the gain for short jobs), or None. Compilation happens at the
    first step, whose time is logged; validation keeps the eager model (its image sizes vary)."""
    if setting == "false" or (setting == "auto" and device.type != "cuda"):
        log.info("compile_model=%s: training steps run eagerly", setting)
        return None
    log.info("compile_model=%s: the training steps run through torch.compile", setting)
    return torch.compile(model)


# Builds the model to train: (config, pretrained) -> a module with the task's forward contract.
# The task's own (Task.build_model) unless another is given (benchmarks/reference_train.py); a
# module-level function, so that it reaches spawned training processes.
ModelBuilder = Callable[[Config, bool], torch.nn.Module]


def run(
    paths: Paths,
    stop: StopFlag,
    rank: Rank = SINGLE,
    *,
    model_builder: ModelBuilder | None = None,
) -> None:
    """One training process's job: read the configuration and the data, build what trains,
    train every epoch, then (main process) export the best model."""
    given = read_hyperparameters(paths)
    host = read_resource_config(paths).current_host
    channels = read_input_data_config(paths)
    task = choose_task(given, channels, paths)
    config = task.resolve(given)
    if rank.is_main:
        log.info(
            "segcontainer training %s on host %s with hyperparameters:\n%s",
            task.name,
            host,
            config.describe(),
        )
    batch_size = distributed.per_process_batch(config.mini_batch_size, rank.world.local_size)
    torch.manual_seed(config.seed)
    device = choose_device(rank)
    parallel = data_parallel(channels, rank, batch_size)
    data = task.prepare_data(paths, config, channels, device, stop, parallel)
    data = agreed(data, rank, device)
    precision = Precision.choose(config.precision, device)
    log.info("device %s, precision %s", device, precision.dtype)
    model, step_model, started_from = build_for_training(
        paths, config, rank, device, model_builder or task.build_model, task
    )
    trainables = trainables_for(config, model, step_model, precision, data.iters_per_epoch)
    setup = Setup(
        paths=paths,
        config=config,
        host=host,
        record=task.model_record(config, data),
        trainables=trainables,
        precision=precision,
        device=device,
        data=data,
        task=task,
        objective=task.objective(config, data, device),
        batch_size=batch_size,
        rank=rank,
        started_from=started_from,
    )
    stop.in_loop = True
    fit(setup, stop)
    stop.in_loop = False
    if rank.is_main:  # model/ is rank 0's; a host's other processes share the folder
        export_after_training(paths, config, data)


def trainables_for(
    config: Config,
    model: torch.nn.Module,
    step_model: torch.nn.Module,
    precision: Precision,
    iters_per_epoch: int,
) -> Trainables:
    """What training changes: the model, its optimizer and schedule (the task's config's
    optimization settings), the gradient scaler, and the (compiled) module the steps call."""
    device = precision.device
    optimization = config.optimization()
    optimizer = build_optimizer(optimization, model.parameters(), device)
    return Trainables(
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimization, optimizer, iters_per_epoch),
        scaler=precision.scaler,
        step_model=compiled(step_model, config.compile_model, device) or step_model,
    )


def choose_device(rank: Rank) -> torch.device:
    """This process's GPU (NCCL), the CPU (gloo), or alone: a GPU when there is one."""
    if rank.world.backend == "nccl":
        return torch.device("cuda", rank.local_rank)
    if rank.distributed:
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def agreed(data: TrainingData, rank: Rank, device: torch.device) -> TrainingData:
    """The data as every rank must see it: as many steps per epoch as the rank with the least
    data, and the whole job's training histogram."""
    steps = collectives.all_reduce_min(data.iters_per_epoch, device)
    if steps != data.iters_per_epoch:  # ShardedByS3Key parts of unequal size
        log.warning("training %d steps per epoch, as the host with the least data", steps)
        data = data.limited(steps)
    if data.class_counts is not None and rank.distributed:
        counts = collectives.all_reduce_histogram(data.class_counts, device)
        data = replace(data, class_counts=counts)
    return data


def build_for_training(
    paths: Paths,
    config: Config,
    rank: Rank,
    device: torch.device,
    model_builder: ModelBuilder,
    task: Task,
) -> tuple[torch.nn.Module, torch.nn.Module, dict | None]:
    """The model (pretrained, or the model channel's weights for incremental training) on
    ``device``, what the training steps call (the model wrapped for data parallelism), and
    the record of a start from the model channel (None without one)."""
    incremental = paths.channel("model").is_dir()
    model = model_builder(config, config.use_pretrained_model and not incremental)
    started_from = start_from_model_channel(paths, config, model, task)
    model = syncbn.convert(model, config.syncbn, rank.size, device).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    # Data parallel: compile the DDP wrapper (torch.compile(DDP(model))), so DDP's graph
    # splitting at gradient buckets keeps overlapping communication with the backward pass.
    return model, collectives.wrap(model, device), started_from
