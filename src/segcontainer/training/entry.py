"""The ``train`` entry point: the host's processes, their exit codes and failure reasons.
Each process runs training.job (environment -> config -> data -> model -> epochs -> model/).

Any error ends the process non-zero after writing ``output/failure`` (a plain reason first,
which SageMaker shows as FailureReason, then the traceback). SIGTERM (StopTrainingJob, or
MaxRuntime) stops within seconds, keeping the best model so far in ``model/``.

With several GPUs (or SEGCONTAINER_CPU_WORKERS) this process launches one training process
per GPU and supervises them (training.launch); with several hosts every process joins one
torch.distributed job (training.distributed).
"""

from __future__ import annotations

import logging
import signal
import traceback
from functools import partial
from pathlib import Path

import torch

from segcontainer import logs, model_folder, model_tarball
from segcontainer.config.environment import (
    Paths,
    read_input_data_config,
    read_resource_config,
    running_under_sagemaker,
)
from segcontainer.cpus import usable_cpus
from segcontainer.errors import TrainingStopped, UserError
from segcontainer.training import distributed, epochs, launch
from segcontainer.training.distributed import Rank, World
from segcontainer.training.job import ModelBuilder, run

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


def write_failure(file: Path, reason: str, details: str) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    reason = reason.strip()[:FAILURE_REASON_CHARS]
    file.write_text(f"{reason}\n\n{details}")


def finish_artifacts(paths: Paths) -> None:
    """A docker-run user gets output/model.tar.gz; under SageMaker the platform packs model/."""
    if not running_under_sagemaker() and (paths.model_dir / model_folder.WEIGHTS_FILE).exists():
        model_tarball.pack_model(paths.model_dir, paths.output_dir / "model.tar.gz")
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


def main(model_builder: ModelBuilder | None = None) -> int:
    """The ``train`` command: plan this host's processes, train, exit 0, 1 or 143."""
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
        code = launch.launch(
            world,
            partial(worker, model_builder=model_builder),
            lambda r, d: write_failure(paths.failure_file, r, d),
        )
        if code == 0:
            log.info("training finished on host %s", world.host)
        return code
    return train_process(paths, Rank(world, 0), paths.failure_file, model_builder)


def worker(
    world: World, local_rank: int, reason_file: Path, model_builder: ModelBuilder | None = None
) -> int:
    """A spawned training process (one per GPU); its reason goes to the launcher."""
    logs.configure()
    # Share the cores (torchrun's habit too): N processes each with every core's worth of
    # OpenMP threads oversubscribe the CPU many times over.
    torch.set_num_threads(max(1, usable_cpus() // world.local_size))
    return train_process(Paths.from_env(), Rank(world, local_rank), reason_file, model_builder)


def lost_peers(exc: Exception) -> bool:
    """A collective or the store failed: a peer died or became unreachable."""
    text = str(exc)
    return isinstance(exc, torch.distributed.DistError) or any(
        word in text for word in ("Gloo", "gloo", "NCCL", "Connection", "connection", "peer")
    )


def train_process(
    paths: Paths, rank: Rank, failure_file: Path, model_builder: ModelBuilder | None = None
) -> int:
    """Train as one process of the job; the exit code: 0, 1 (failed) or 143 (SIGTERM)."""
    distributed.configure_logging(rank)
    stop = StopSignal()
    stop.install()
    try:
        if rank.distributed:
            distributed.init_process_group(rank)
        run(paths, stop, rank, model_builder=model_builder)
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
