"""The ``train`` entry point: environment -> config -> data -> model -> engine -> model_folder.

Any error ends the process non-zero after writing ``output/failure`` (a plain reason first,
which SageMaker shows as FailureReason, then the traceback). SIGTERM (StopTrainingJob, or
MaxRuntime) stops within seconds, keeping the best model so far in ``model/``.
"""

from __future__ import annotations

import logging
import signal
import sys
import traceback

import numpy as np
import torch

from segcontainer import model_folder
from segcontainer.config.environment import (
    Paths,
    read_hyperparameters,
    read_input_data_config,
    read_resource_config,
    running_under_sagemaker,
)
from segcontainer.config.hyperparameters import describe, resolve
from segcontainer.data.loaders import prepare
from segcontainer.errors import TrainingStopped, UserError
from segcontainer.export import after_training as export_after_training
from segcontainer.models import build_model
from segcontainer.training import engine
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


def setup_logging() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def median_frequency_weights(pixels: np.ndarray) -> torch.Tensor:
    """class_weights=auto: median frequency / class frequency; absent classes get 1."""
    freq = pixels / max(pixels.sum(), 1)
    present = freq > 0
    weights = np.ones_like(freq, dtype=np.float64)
    weights[present] = np.median(freq[present]) / freq[present]
    return torch.tensor(weights, dtype=torch.float32)


def compiled(model: torch.nn.Module, setting: str, device: torch.device):
    """torch.compile for the training steps (auto: on a GPU, where it pays; on the CPU the
    compile time outweighs the gain for short jobs), or None. Compilation happens at the
    first step, whose time is logged; validation keeps the eager model (its image sizes vary)."""
    if setting == "false" or (setting == "auto" and device.type != "cuda"):
        log.info("compile_model=%s: training steps run eagerly", setting)
        return None
    log.info("compile_model=%s: the training steps run through torch.compile", setting)
    return torch.compile(model)


def run(paths: Paths, stop: StopSignal) -> None:
    config = resolve(read_hyperparameters(paths))
    host = read_resource_config(paths).current_host
    channels = read_input_data_config(paths)
    log.info("segcontainer training on host %s with hyperparameters:\n%s", host, describe(config))
    torch.manual_seed(config.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = prepare(paths, config, channels, device, stop)
    precision = engine.Precision.choose(config.precision, device)
    log.info("device %s, precision %s", device, precision.dtype)
    if config.syncbn:
        log.info("syncbn=True: one process on one device here, so plain batch norm is the same")

    incremental = paths.channel("model").is_dir()
    model = build_model(
        config.algorithm,
        config.backbone,
        config.num_classes,
        pretrained=config.use_pretrained_model and not incremental,
        aux=config.aux_loss_weight > 0,
    )
    start_from_model_channel(paths, config, model)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = engine.build_optimizer(config, model.parameters(), device)
    scheduler = engine.build_scheduler(config, optimizer, data.iters_per_epoch)
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
        compiled(model, config.compile_model, device),
    )
    stop.in_loop = True
    fit(setup, stop)
    stop.in_loop = False
    export_after_training(paths, config, data)


def write_failure(paths: Paths, reason: str, details: str) -> None:
    paths.output_dir.mkdir(parents=True, exist_ok=True)
    reason = reason.strip()[:FAILURE_REASON_CHARS]
    paths.failure_file.write_text(f"{reason}\n\n{details}")


def finish_artifacts(paths: Paths) -> None:
    """A docker-run user gets output/model.tar.gz; under SageMaker the platform packs model/."""
    if not running_under_sagemaker() and (paths.model_dir / model_folder.WEIGHTS_FILE).exists():
        model_folder.pack_model(paths.model_dir, paths.output_dir / "model.tar.gz")
        log.info("packed %s into %s", paths.model_dir, paths.output_dir / "model.tar.gz")


def main() -> int:
    setup_logging()
    paths = Paths.from_env()
    stop = StopSignal()
    stop.install()
    try:
        run(paths, stop)
        finish_artifacts(paths)
    except TrainingStopped as exc:
        kept = (paths.model_dir / model_folder.WEIGHTS_FILE).exists()
        where = (
            f"{paths.model_dir} holds the best model so far" if kept else "no epoch had finished"
        )
        write_failure(
            paths, f"Training was stopped by SIGTERM ({exc}); {where}.", traceback.format_exc()
        )
        finish_artifacts(paths)
        log.error("training stopped: %s", exc)
        return 143  # 128 + SIGTERM, as a shell reports it
    except UserError as exc:
        write_failure(paths, str(exc), traceback.format_exc())
        log.error("%s", exc)
        return 1
    except Exception as exc:
        write_failure(
            paths,
            f"Internal error in segcontainer: {type(exc).__name__}: {exc}",
            traceback.format_exc(),
        )
        log.exception("training failed")
        return 1
    paths.output_dir.mkdir(parents=True, exist_ok=True)
    paths.success_file.touch()
    log.info("training finished; model in %s, curves in %s", paths.model_dir, paths.output_data_dir)
    return 0
