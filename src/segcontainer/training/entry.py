"""The ``train`` entry point: environment -> config -> data -> model -> engine -> model_folder.

Any error ends the process non-zero after writing ``output/failure`` (a plain reason first,
which SageMaker shows as FailureReason, then the traceback). SIGTERM (StopTrainingJob, or
MaxRuntime) stops within seconds, keeping the best model so far in ``model/``.

With several GPUs (or SEGCONTAINER_CPU_WORKERS) this process launches one training process
per GPU and supervises them (training.launch); with several hosts every process joins one
torch.distributed job (training.distributed).
"""

from __future__ import annotations

import logging
import os
import signal
import traceback
from pathlib import Path

import numpy as np
import torch

from segcontainer import logs, model_folder
from segcontainer.config.environment import (
    Paths,
    read_hyperparameters,
    read_input_data_config,
    read_resource_config,
    running_under_sagemaker,
)
from segcontainer.config.hyperparameters import describe, resolve
from segcontainer.data.dataset import Parallel, Shard
from segcontainer.data.loaders import prepare
from segcontainer.errors import TrainingStopped, UserError
from segcontainer.export import after_training as export_after_training
from segcontainer.models import build_model
from segcontainer.training import collectives, distributed, epochs, launch, syncbn
from segcontainer.training.distributed import SINGLE, Rank, World
from segcontainer.training.incremental import start_from_model_channel
from segcontainer.training.loop import Setup, fit

log = logging.getLogger("segcontainer")
FAILURE_REASON_CHARS = 1024


class StopSignal:
    """SIGTERM handling: outside the epoch loop stop at once; inside it, at the next batch."""

    def __init__(self) -> None:
        self.requested = False
        self.in_loop = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        log.warning("SIGTERM received: stopping")
        self.requested = True
        if not self.in_loop:
            raise TrainingStopped("stopped outside the epoch loop")

    def __call__(self) -> bool:
        return self.requested


def median_frequency_weights(pixels: np.ndarray) -> torch.Tensor:
    """class_weights=auto: median frequency / class frequency; absent classes get 1."""
    freq = pixels / max(pixels.sum(), 1)
    present = freq > 0
    weights = np.ones_like(freq, dtype=np.float64)
    weights[present] = np.median(freq[present]) / freq[present]
    return torch.tensor(weights, dtype=torch.float32)


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


def run(paths: Paths, stop: StopSignal, rank: Rank = SINGLE) -> None:
    config = resolve(read_hyperparameters(paths))
    host = read_resource_config(paths).current_host
    channels = read_input_data_config(paths)
    if rank.is_main:
        log.info(
            "segcontainer training on host %s with hyperparameters:\n%s", host, describe(config)
        )
    batch_size = distributed.per_process_batch(config.mini_batch_size, rank.world.local_size)
    torch.manual_seed(config.seed)
    if rank.world.backend == "nccl":
        device = torch.device("cuda", rank.local_rank)
    elif rank.distributed:
        device = torch.device("cpu")
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = prepare(paths, config, channels, device, stop, data_parallel(channels, rank, batch_size))
    steps = collectives.all_reduce_min(data.iters_per_epoch, device)
    if steps != data.iters_per_epoch:  # ShardedByS3Key parts of unequal size
        log.warning("training %d steps per epoch, as the host with the least data", steps)
        data.limit_steps(steps)
        data.iters_per_epoch = steps
    if data.pixels_per_class is not None and rank.distributed:
        data.pixels_per_class = collectives.all_reduce_histogram(data.pixels_per_class, device)
    precision = epochs.Precision.choose(config.precision, device)
    log.info("device %s, precision %s", device, precision.dtype)

    incremental = paths.channel("model").is_dir()
    model = build_model(
        config.algorithm,
        config.backbone,
        config.num_classes,
        pretrained=config.use_pretrained_model and not incremental,
        aux=config.aux_loss_weight > 0,
    )
    start_from_model_channel(paths, config, model)
    model = syncbn.convert(model, config.syncbn, rank.size, device).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    # Data parallel: compile the DDP wrapper (torch.compile(DDP(model))), so DDP's graph
    # splitting at gradient buckets keeps overlapping communication with the backward pass.
    train_model = collectives.wrap(model, device)
    optimizer = epochs.build_optimizer(config, model.parameters(), device)
    scheduler = epochs.build_scheduler(config, optimizer, data.iters_per_epoch)
    class_weight = None
    if config.class_weights == "auto":
        if data.pixels_per_class is None:
            raise UserError(
                "class_weights=auto needs the training histogram, which Pipe mode "
                "cannot give before training; give one weight per class instead."
            )
        class_weight = median_frequency_weights(data.pixels_per_class).to(device)
    elif isinstance(config.class_weights, tuple):
        class_weight = torch.tensor(config.class_weights, dtype=torch.float32, device=device)
    setup = Setup(
        paths,
        config,
        host,
        model_folder.model_config(config, data.label_maps),
        model,
        optimizer,
        scheduler,
        precision,
        device,
        data.start_epoch,
        data.train_loader,
        data.validation_loader,
        class_weight,
        data.iters_per_epoch,
        batch_size,
        rank,
        compiled(train_model, config.compile_model, device) or train_model,
    )
    stop.in_loop = True
    fit(setup, stop)
    stop.in_loop = False
    if rank.is_main:  # model/ is rank 0's; a host's other processes share the folder
        export_after_training(paths, config, data)


def write_failure(file: Path, reason: str, details: str) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    reason = reason.strip()[:FAILURE_REASON_CHARS]
    file.write_text(f"{reason}\n\n{details}")


def finish_artifacts(paths: Paths) -> None:
    """A docker-run user gets output/model.tar.gz; under SageMaker the platform packs model/."""
    if not running_under_sagemaker() and (paths.model_dir / model_folder.WEIGHTS_FILE).exists():
        model_folder.pack_model(paths.model_dir, paths.output_dir / "model.tar.gz")
        log.info("packed %s into %s", paths.model_dir, paths.output_dir / "model.tar.gz")


def plan(paths: Paths) -> World:
    channels = read_input_data_config(paths)
    pipe_mode = any(
        c.input_mode == "Pipe" for name, c in channels.items() if name.startswith("train")
    )
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return distributed.plan_world(read_resource_config(paths), gpus, pipe_mode)


def clear_status_files(paths: Paths) -> None:
    """A local rerun finds the last run's output/ (SageMaker's starts empty): its ``failure``
    or ``success`` would contradict this run's. Cleared by the process that starts the host's
    training, before any other writes them."""
    for file in (paths.failure_file, paths.success_file):
        file.unlink(missing_ok=True)


def main() -> int:
    logs.configure()
    paths = Paths.from_env()
    clear_status_files(paths)
    try:
        world = plan(paths)
    except UserError as exc:
        write_failure(paths.failure_file, str(exc), traceback.format_exc())
        log.error("%s", exc)
        return 1
    if world.local_size > 1:
        code = launch.launch(world, worker, lambda r, d: write_failure(paths.failure_file, r, d))
        if code == 0:
            log.info("training finished on host %s", world.host)
        return code
    return train_process(paths, Rank(world, 0), paths.failure_file)


def worker(world: World, local_rank: int, reason_file: Path) -> int:
    """A spawned training process (one per GPU); its reason goes to the launcher."""
    logs.configure()
    # Share the cores (torchrun's habit too): N processes each with every core's worth of
    # OpenMP threads oversubscribe the CPU many times over.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world.local_size))
    return train_process(Paths.from_env(), Rank(world, local_rank), reason_file)


def lost_peers(exc: Exception) -> bool:
    """A collective or the store failed: a peer died or became unreachable."""
    text = str(exc)
    return isinstance(exc, torch.distributed.DistError) or any(
        word in text for word in ("Gloo", "gloo", "NCCL", "Connection", "connection", "peer")
    )


def train_process(paths: Paths, rank: Rank, failure_file: Path) -> int:
    """Train as one process of the job; the exit code: 0, 1 (failed) or 143 (SIGTERM)."""
    distributed.configure_logging(rank)
    stop = StopSignal()
    stop.install()
    try:
        if rank.distributed:
            distributed.init_process_group(rank)
        run(paths, stop, rank)
        if rank.is_main:
            finish_artifacts(paths)
    except TrainingStopped as exc:
        return stopped(paths, rank, failure_file, str(exc))
    except UserError as exc:
        if isinstance(exc, epochs.NonFiniteLoss) and rank.is_main:
            finish_artifacts(paths)  # the best model so far, packed as after a stop
        distributed.report_failure(rank, str(exc))
        write_failure(failure_file, str(exc), traceback.format_exc())
        log.error("%s", exc)
        return 1
    except Exception as exc:
        if stop.requested:  # a peer that stopped first cut a collective short
            return stopped(paths, rank, failure_file, f"{type(exc).__name__} while stopping")
        reason = f"Internal error in segcontainer: {type(exc).__name__}: {exc}"
        if rank.distributed and lost_peers(exc):
            others = distributed.peer_failures(rank)
            reason = (
                f"{rank.describe()} lost contact with its peers ({type(exc).__name__}: {exc}). "
                + (
                    f"Reported by the others: {'; '.join(others)}"
                    if others
                    else "No peer reported an error, so a peer process or host died (killed, "
                    "out of memory, or its instance failed); the failure reason of the other "
                    f"hosts ({', '.join(h for h in rank.world.hosts if h != rank.world.host)}) "
                    "names it."
                )
            )
        else:
            distributed.report_failure(rank, reason)
        write_failure(failure_file, reason, traceback.format_exc())
        log.exception("training failed: %s", reason)
        return 1
    finally:
        distributed.shutdown()
    if rank.local_rank == 0:
        paths.output_dir.mkdir(parents=True, exist_ok=True)
        paths.success_file.touch()
        if rank.is_main:
            log.info(
                "training finished; model in %s, curves in %s",
                paths.model_dir,
                paths.output_data_dir,
            )
    return 0


def stopped(paths: Paths, rank: Rank, failure_file: Path, why: str) -> int:
    if rank.is_main:
        kept = (paths.model_dir / model_folder.WEIGHTS_FILE).exists()
        where = (
            f"{paths.model_dir} holds the best model so far" if kept else "no epoch had finished"
        )
        finish_artifacts(paths)
    else:
        where = f"the first host ({rank.world.master}) keeps the model and the checkpoint"
    write_failure(
        failure_file, f"Training was stopped by SIGTERM ({why}); {where}.", traceback.format_exc()
    )
    log.error("training stopped: %s", why)
    return 143  # 128 + SIGTERM, as a shell reports it
