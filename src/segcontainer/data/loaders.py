"""From channels to DataLoaders: File mode (checked up front) or Pipe mode (streamed).

Data order and augmentation are functions of (seed, epoch, sample), whatever the worker
count, so a resumed job sees exactly the batches it had left.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from segcontainer.config.environment import ChannelConfig, Paths
from segcontainer.config.hyperparameters import Config
from segcontainer.data import check as datacheck
from segcontainer.data import pipe
from segcontainer.data.augment import pad_collate, train_transform
from segcontainer.data.channels import label_map_lut, read_label_maps
from segcontainer.data.dataset import ONE_PROCESS, EpochSampler, Parallel, SegmentationDataset
from segcontainer.data.preprocess import validation_transform
from segcontainer.errors import UserError

log = logging.getLogger(__name__)
SHUFFLE_BUFFER = 512  # Pipe mode: pairs held for shuffling (encoded bytes, not pixels)


@dataclass
class TrainingData:
    label_maps: dict
    train_loader: DataLoader
    validation_loader: DataLoader
    start_epoch: Callable[[int, int], None]  # (epoch, samples already trained on)
    iters_per_epoch: int
    pixels_per_class: np.ndarray | None  # training histogram (File mode only)
    limit_steps: Callable[[int], None]  # cap the steps per epoch (ranks with unequal parts)


def worker_count(setting: str | int, processes: int = 1) -> int:
    """DataLoader workers per training process; ``auto`` shares the host's cores among its
    training processes (one per GPU), leaving a core to each of them."""
    if setting != "auto":
        return int(setting)
    return max(1, min(8, (os.cpu_count() or 2) // processes - 1))


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


def prepare(
    paths: Paths,
    config: Config,
    channels: dict[str, ChannelConfig],
    device,
    stop: Callable[[], bool],
    parallel: Parallel = ONE_PROCESS,
) -> TrainingData:
    label_maps = read_label_maps(paths)
    layouts = {split: pipe.pipe_layout(channels, split) for split in ("train", "validation")}
    if layouts["train"] and config.num_training_samples is None:
        raise UserError(
            "Pipe mode streams the training data, so it cannot be counted before "
            "training: set num_training_samples (it sizes the learning-rate "
            "schedule), or use File mode."
        )
    train_summary = None
    if not layouts["train"]:
        train_summary = datacheck.check_split(
            paths, "train", label_maps["train"], config.num_classes
        )
        hint = datacheck.binary_255_hint(
            train_summary.raw_values, config.num_classes, label_maps["train"]
        )
        if hint:
            raise UserError(hint)
        _check_count(config, len(train_summary.samples), parallel)
    if layouts["validation"]:
        validation = pipe.read_validation(
            paths, layouts["validation"], label_maps["validation"], config.num_classes, stop
        )
    else:
        validation = datacheck.check_split(
            paths, "validation", label_maps["validation"], config.num_classes
        )
    if train_summary is not None:
        datacheck.log_histogram(train_summary, config.class_names)

    workers = worker_count(config.workers, parallel.local)
    # Workers start afresh each epoch (not persistent) so they see the dataset's epoch.
    common = {"pin_memory": device.type == "cuda"}
    # Own generator: creating loader iterators must not draw from the global random state,
    # which dropout uses and checkpoints restore.
    generator = torch.Generator().manual_seed(config.seed)
    batch = parallel.batch_size or config.mini_batch_size
    train_lut = label_map_lut(label_maps["train"], "train label map")
    transform = train_transform(config.base_size, config.crop_size)
    if layouts["train"]:
        stream = pipe.PipeTrainStream(
            paths,
            layouts["train"],
            train_lut,
            transform,
            label_maps["train"],
            config.num_classes,
            config.num_training_samples // parallel.ranks,
            config.seed,
            SHUFFLE_BUFFER,
            stop,
            parallel.train,
        )
        # One reader per FIFO: the stream is read in this process.
        train_loader = DataLoader(stream, batch, drop_last=True, **common)
        start_epoch, count = stream.set_epoch, stream.length

        def limit_steps(steps: int) -> None:
            stream.length = min(stream.length, steps * batch)
    else:
        train_set = SegmentationDataset(train_summary.samples, train_lut, transform, config.seed)
        sampler = EpochSampler(len(train_set), config.seed, parallel.train)
        # drop_last: a trailing batch of one would make batch-norm statistics meaningless.
        train_loader = DataLoader(
            train_set,
            batch,
            sampler=sampler,
            drop_last=True,
            generator=generator,
            num_workers=workers,
            **common,
        )

        def start_epoch(epoch: int, skip: int) -> None:
            train_set.set_epoch(epoch)
            sampler.set_epoch(epoch, skip)

        def limit_steps(steps: int) -> None:
            sampler.limit = steps * batch

        count = len(sampler)
    validation_set = SegmentationDataset(
        parallel.validation.every(validation.samples),
        label_map_lut(label_maps["validation"], "validation label map"),
        validation_transform(),
    )
    validation_loader = DataLoader(
        validation_set,
        config.validation_mini_batch_size,
        collate_fn=pad_collate,
        generator=generator,
        num_workers=workers,
        **common,
    )
    return TrainingData(
        label_maps,
        train_loader,
        validation_loader,
        start_epoch,
        count // batch,
        train_summary.pixels_per_class if train_summary else None,
        limit_steps,
    )
