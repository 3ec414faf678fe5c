"""The ``train`` entry point: environment -> config -> data -> model -> engine -> artifacts.

Any error ends the process non-zero after writing ``output/failure`` (a plain reason first,
which SageMaker shows as FailureReason, then the traceback). SIGTERM (StopTrainingJob, or
MaxRuntime) stops within seconds, keeping the best model so far in ``model/``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback

import numpy as np
import torch
from torch.utils.data import DataLoader

from segcontainer import artifacts, datacheck, engine
from segcontainer.augment import pad_collate, train_transform, validation_transform
from segcontainer.channels import label_map_lut, read_label_maps
from segcontainer.dataset import EpochSampler, SegmentationDataset
from segcontainer.environment import (
    Paths,
    read_hyperparameters,
    read_input_data_config,
    read_resource_config,
    running_under_sagemaker,
)
from segcontainer.errors import TrainingStopped, UserError
from segcontainer.hyperparameters import Config, describe, resolve
from segcontainer.incremental import start_from_model_channel
from segcontainer.models import build_model
from segcontainer.trainer import Setup, fit

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


def worker_count(setting: str | int) -> int:
    if setting != "auto":
        return int(setting)
    return max(1, min(8, (os.cpu_count() or 2) - 1))  # leave a core for the training process


def median_frequency_weights(pixels: np.ndarray) -> torch.Tensor:
    """class_weights=auto: median frequency / class frequency; absent classes get 1."""
    freq = pixels / max(pixels.sum(), 1)
    present = freq > 0
    weights = np.ones_like(freq, dtype=np.float64)
    weights[present] = np.median(freq[present]) / freq[present]
    return torch.tensor(weights, dtype=torch.float32)


def check_data(paths: Paths, config: Config, label_maps: dict):
    train = datacheck.check_split(paths, "train", label_maps["train"], config.num_classes)
    hint = datacheck.binary_255_hint(train.raw_values, config.num_classes, label_maps["train"])
    if hint:
        raise UserError(hint)
    validation = datacheck.check_split(
        paths, "validation", label_maps["validation"], config.num_classes
    )
    count = len(train.samples)
    if config.num_training_samples is not None and config.num_training_samples != count:
        log.warning(
            "num_training_samples is %d but the train channel holds %d image/mask pairs; using %d",
            config.num_training_samples,
            count,
            count,
        )
    if config.mini_batch_size > count:
        raise UserError(
            f"mini_batch_size is {config.mini_batch_size} but the train channel holds only {count} "
            "image/mask pairs, so no full batch can be formed. Lower mini_batch_size or add data."
        )
    datacheck.log_histogram(train, config.class_names)
    return train, validation


def make_loaders(config: Config, label_maps, train, validation, device: torch.device):
    workers = worker_count(config.workers)
    # Workers start afresh each epoch (not persistent) so they see the dataset's epoch.
    common = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    train_set = SegmentationDataset(
        train.samples,
        label_map_lut(label_maps["train"], "train label map"),
        train_transform(config.base_size, config.crop_size),
        seed=config.seed,
    )
    validation_set = SegmentationDataset(
        validation.samples,
        label_map_lut(label_maps["validation"], "validation label map"),
        validation_transform(),
    )
    sampler = EpochSampler(len(train_set), config.seed)
    # Own generators: creating loader iterators must not draw from the global random state,
    # which dropout uses and checkpoints restore.
    generator = torch.Generator().manual_seed(config.seed)
    # drop_last: a trailing batch of one would make batch-norm statistics meaningless.
    train_loader = DataLoader(
        train_set,
        config.mini_batch_size,
        sampler=sampler,
        drop_last=True,
        generator=generator,
        **common,
    )
    validation_loader = DataLoader(
        validation_set,
        config.validation_mini_batch_size,
        collate_fn=pad_collate,
        generator=generator,
        **common,
    )
    return train_set, sampler, train_loader, validation_loader


def run(paths: Paths, stop: StopSignal) -> None:
    config = resolve(read_hyperparameters(paths))
    host = read_resource_config(paths).current_host
    channels = read_input_data_config(paths)
    piped = [c.name for c in channels.values() if c.input_mode == "Pipe"]
    if piped:
        raise UserError(
            f"Channels {piped} use Pipe mode, which this version does not read yet; "
            "use File or FastFile input mode."
        )
    log.info("segcontainer training on host %s with hyperparameters:\n%s", host, describe(config))
    torch.manual_seed(config.seed)

    label_maps = read_label_maps(paths)
    train, validation = check_data(paths, config, label_maps)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
    )
    start_from_model_channel(paths, config, model)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    train_set, sampler, train_loader, validation_loader = make_loaders(
        config, label_maps, train, validation, device
    )
    optimizer = engine.build_optimizer(config, model.parameters())
    iters_per_epoch = len(train_set) // config.mini_batch_size
    scheduler = engine.build_scheduler(config, optimizer, iters_per_epoch)
    class_weight = None
    if config.class_weights == "auto":
        class_weight = median_frequency_weights(train.pixels_per_class).to(device)
    elif isinstance(config.class_weights, tuple):
        class_weight = torch.tensor(config.class_weights, dtype=torch.float32, device=device)
    setup = Setup(
        paths,
        config,
        host,
        artifacts.model_config(config, label_maps),
        model,
        optimizer,
        scheduler,
        precision,
        device,
        train_set,
        sampler,
        train_loader,
        validation_loader,
        class_weight,
        iters_per_epoch,
    )
    stop.in_loop = True
    fit(setup, stop)
    stop.in_loop = False


def write_failure(paths: Paths, reason: str, details: str) -> None:
    paths.output_dir.mkdir(parents=True, exist_ok=True)
    reason = reason.strip()[:FAILURE_REASON_CHARS]
    paths.failure_file.write_text(f"{reason}\n\n{details}")


def finish_artifacts(paths: Paths) -> None:
    """A docker-run user gets output/model.tar.gz; under SageMaker the platform packs model/."""
    if not running_under_sagemaker() and (paths.model_dir / artifacts.WEIGHTS_FILE).exists():
        artifacts.pack_model(paths.model_dir, paths.output_dir / "model.tar.gz")
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
        kept = (paths.model_dir / artifacts.WEIGHTS_FILE).exists()
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
