"""From channels to DataLoaders: File mode (checked up front) or Pipe mode (streamed).

One way through, each step handing the next what it needs: label maps are read and turned
into look-up tables once (label_maps.py); each File-mode split's samples are found and
paired once (manifest.py or channels.py); they are checked (check.py); then the datasets
and loaders are built (dataset.py, or pipe.py's stream, which checks each pair as it comes).
Data order and augmentation are functions of (seed, epoch, sample), whatever the worker
count, so a resumed job sees exactly the batches it had left.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.utils.data import DataLoader

from segcontainer.config.environment import ChannelConfig, Paths
from segcontainer.config.hyperparameters import Config
from segcontainer.cpus import usable_cpus
from segcontainer.data import check as datacheck
from segcontainer.data import pipe
from segcontainer.data.augment import SizeGroupCollate
from segcontainer.data.channels import Sample
from segcontainer.data.dataset import ONE_PROCESS, Parallel, SegmentationDataset
from segcontainer.data.label_maps import (
    LabelMap,
    read_label_map_folder,
    read_label_map_stream,
)
from segcontainer.data.preprocess import model_input_transform, tile_size
from segcontainer.data.splits import find_split
from segcontainer.data.train_batches import TrainOptions, file_batches, pipe_batches
from segcontainer.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TrainingData:
    """What training and the exports after it get from the channels: the loaders and their
    controls (any task), then what only segmentation's data has (empty for other tasks)."""

    train_loader: Iterable[tuple[torch.Tensor, torch.Tensor]]  # a DataLoader or GpuTrainBatches
    validation_loader: Iterable  # batches the task's validation reads
    start_epoch: Callable[[int, int], None]  # (epoch, samples already trained on)
    iters_per_epoch: int
    limit_steps: Callable[[int], None]  # cap the steps per epoch (ranks with unequal parts)
    # The training labels per class (pixels or images), summed over hosts; None in Pipe mode
    class_counts: np.ndarray | None
    label_maps: dict[str, dict] = field(default_factory=dict)  # as given, saved with the model
    # File mode: every checked training pair (the exports calibrate on them); Pipe mode keeps
    # none (streamed).
    train_samples: tuple = ()
    # This process's share of the validation pairs: what its validation loader scores.
    validation_samples: tuple = ()
    validation_lut: np.ndarray | None = None  # the validation label map as a look-up table

    def limited(self, steps: int) -> TrainingData:
        """The same data with at most ``steps`` batches per epoch."""
        self.limit_steps(steps)
        return replace(self, iters_per_epoch=steps)


def worker_count(setting: str | int, processes: int = 1) -> int:
    """DataLoader workers per training process; ``auto`` shares the host's cores among its
    training processes (one per GPU), leaving a core to each of them."""
    if setting != "auto":
        return int(setting)
    return max(1, min(8, usable_cpus() // processes - 1))


def _check_count(config: Config, count: int, parallel: Parallel) -> None:
    if config.num_training_samples is not None and config.num_training_samples != count:
        log.warning(
            "num_training_samples is %d but the train channel holds %d image/mask pairs; using %d",
            config.num_training_samples,
            count,
            count,
        )
    share = parallel.train.size(count)
    batch = parallel.batch_size or config.mini_batch_size
    if parallel.train.count > 1 and batch > share:
        raise UserError(
            f"The train channel holds {count} image/mask pairs, {share} for each of the "
            f"{parallel.train.count} training processes, fewer than the {batch} each trains "
            "on per step. Lower mini_batch_size or add data."
        )
    if config.mini_batch_size > count:
        raise UserError(
            f"mini_batch_size is {config.mini_batch_size} but the train channel holds only "
            f"{count} image/mask pairs, so no full batch can be formed. Lower mini_batch_size "
            "or add data."
        )


def read_label_maps(
    paths: Paths, channels: dict[str, ChannelConfig], stop: Callable[[], bool]
) -> dict[str, LabelMap]:
    """Each split's label map and look-up table, from the label_map channel in any mode."""
    if pipe.is_pipe(channels, "label_map"):
        return read_label_map_stream(pipe.read_whole(paths, "label_map", stop), "label_map_0")
    return read_label_map_folder(paths.channel("label_map"))


def build_validation_loader(
    samples: list[Sample], lut: np.ndarray, config: Config, **loader_options
) -> DataLoader:
    """Validation batches prepared exactly as the endpoint prepares a request (long side
    resized to base_size, normalised; the tile size it predicts with), masks at their own
    size, grouped by model-input size within each batch of validation_mini_batch_size."""
    dataset = SegmentationDataset(samples, lut, model_input_transform(config.base_size))
    return DataLoader(
        dataset,
        config.validation_mini_batch_size,
        collate_fn=SizeGroupCollate(tile_size(config.crop_size)),
        **loader_options,
    )


def prepare(
    paths: Paths,
    config: Config,
    channels: dict[str, ChannelConfig],
    device: torch.device,
    stop: Callable[[], bool],
    parallel: Parallel = ONE_PROCESS,
) -> TrainingData:
    """Read the label maps, find and check both splits (File mode) and build the loaders;
    UserError, naming the files, when training would fail on the data."""
    label_maps = read_label_maps(paths, channels, stop)
    layouts = {split: pipe.pipe_layout(channels, split) for split in ("train", "validation")}
    train_summary = _checked_train(paths, config, layouts["train"], label_maps, parallel)
    validation_lut = label_maps["validation"].lut
    validation = _checked_validation(paths, config, layouts["validation"], validation_lut, stop)
    if train_summary is not None:
        datacheck.log_histogram(train_summary, config.class_names)

    workers = worker_count(config.workers, parallel.local)
    # Workers start afresh each epoch (not persistent) so they see the dataset's epoch.
    common = {"pin_memory": device.type == "cuda"}
    batch = parallel.batch_size or config.mini_batch_size
    options = TrainOptions(
        config=config, device=device, batch=batch, workers=workers, common=common
    )
    if layouts["train"]:
        train = pipe_batches(paths, layouts["train"], label_maps["train"], options, stop, parallel)
    else:
        train = file_batches(train_summary.samples, label_maps["train"].lut, options, parallel)
    validation_samples = parallel.validation.every(validation.samples)
    validation_loader = build_validation_loader(
        validation_samples,
        validation_lut,
        config,
        # Own generator: creating loader iterators must not draw from the global random
        # state, which dropout uses and checkpoints restore.
        generator=torch.Generator().manual_seed(config.seed),
        num_workers=workers,
        **common,
    )
    return TrainingData(
        label_maps={split: label_map.spec for split, label_map in label_maps.items()},
        train_samples=tuple(train_summary.samples) if train_summary else (),
        validation_samples=tuple(validation_samples),
        validation_lut=validation_lut,
        train_loader=train.loader,
        validation_loader=validation_loader,
        start_epoch=train.start_epoch,
        iters_per_epoch=train.samples_per_epoch // batch,
        class_counts=train_summary.class_counts if train_summary else None,
        limit_steps=train.limit_steps,
    )


def _checked_train(
    paths: Paths,
    config: Config,
    layout: str | None,
    label_maps: dict[str, LabelMap],
    parallel: Parallel,
) -> datacheck.SplitSummary | None:
    """File mode: the training split found and checked whole; Pipe mode: None (each pair is
    checked as it streams), once num_training_samples can size the schedule."""
    if layout:
        if config.num_training_samples is None:
            raise UserError(
                "Pipe mode streams the training data, so it cannot be counted before "
                "training: set num_training_samples (it sizes the learning-rate "
                "schedule), or use File mode."
            )
        return None
    label_map = label_maps["train"]
    summary = datacheck.check_split(
        find_split(paths, "train"), "train", label_map.lut, config.num_classes
    )
    hint = datacheck.binary_255_hint(summary.raw_values, config.num_classes, label_map.spec)
    if hint:
        raise UserError(hint)
    _check_count(config, len(summary.samples), parallel)
    return summary


def _checked_validation(
    paths: Paths, config: Config, layout: str | None, lut: np.ndarray, stop: Callable[[], bool]
) -> datacheck.SplitSummary:
    """The validation split, checked whole: read from its stream once (Pipe mode), or found."""
    if layout:
        return pipe.read_validation(paths, layout, lut, config.num_classes, stop)
    return datacheck.check_split(
        find_split(paths, "validation"), "validation", lut, config.num_classes
    )
