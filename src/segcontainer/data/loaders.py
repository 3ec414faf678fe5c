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
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from segcontainer.config.environment import ChannelConfig, Paths
from segcontainer.config.hyperparameters import Config
from segcontainer.data import check as datacheck
from segcontainer.data import manifest, pipe
from segcontainer.data.augment import SizeGroupCollate, train_transform
from segcontainer.data.channels import FoundSamples, Sample, find_samples
from segcontainer.data.dataset import ONE_PROCESS, EpochSampler, Parallel, SegmentationDataset
from segcontainer.data.gpu_pipeline import GpuTrainBatches, choose_pipeline
from segcontainer.data.label_maps import (
    LabelMap,
    read_label_map_folder,
    read_label_map_stream,
)
from segcontainer.data.preprocess import model_input_transform, tile_size
from segcontainer.errors import UserError

log = logging.getLogger(__name__)
PIPELINES = {
    "gpu": "JPEG decoding and augmentation on the GPU",
    "cpu": "decoding and augmentation on the CPU",
}
SHUFFLE_BUFFER = 512  # Pipe mode: pairs held for shuffling (encoded bytes, not pixels)


@dataclass
class TrainingData:
    label_maps: dict[str, dict]  # each split's label map as given, saved with the model
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


def read_label_maps(
    paths: Paths, channels: dict[str, ChannelConfig], stop: Callable[[], bool]
) -> dict[str, LabelMap]:
    """Each split's label map and look-up table, from the label_map channel in any mode."""
    if pipe.is_pipe(channels, "label_map"):
        return read_label_map_stream(pipe.read_whole(paths, "label_map", stop), "label_map_0")
    return read_label_map_folder(paths.channel("label_map"))


def find_split(paths: Paths, split: str) -> FoundSamples:
    """A File-mode split's samples, found and paired once: a manifest, or two folders."""
    found = manifest.find_manifest_samples(paths, split)
    return found if found is not None else find_samples(paths, split)


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


def _cpu_train_loader(
    samples, lut, transform, sampler: EpochSampler, batch: int, seed: int, workers: int, common
):
    """Decoding and augmentation in DataLoader workers (PIL and transforms.v2)."""
    train_set = SegmentationDataset(samples, lut, transform, seed)
    # drop_last: a trailing batch of one would make batch-norm statistics meaningless.
    loader = DataLoader(
        train_set,
        batch,
        sampler=sampler,
        drop_last=True,
        # Own generator: creating loader iterators must not draw from the global random
        # state, which dropout uses and checkpoints restore.
        generator=torch.Generator().manual_seed(seed),
        num_workers=workers,
        **common,
    )

    def start_epoch(epoch: int, skip: int) -> None:
        train_set.set_epoch(epoch)
        sampler.set_epoch(epoch, skip)

    return loader, start_epoch


def prepare(
    paths: Paths,
    config: Config,
    channels: dict[str, ChannelConfig],
    device,
    stop: Callable[[], bool],
    parallel: Parallel = ONE_PROCESS,
) -> TrainingData:
    label_maps = read_label_maps(paths, channels, stop)
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
            find_split(paths, "train"), "train", label_maps["train"].lut, config.num_classes
        )
        hint = datacheck.binary_255_hint(
            train_summary.raw_values, config.num_classes, label_maps["train"].spec
        )
        if hint:
            raise UserError(hint)
        _check_count(config, len(train_summary.samples), parallel)
    validation_lut = label_maps["validation"].lut
    if layouts["validation"]:
        validation = pipe.read_validation(
            paths, layouts["validation"], validation_lut, config.num_classes, stop
        )
    else:
        validation = datacheck.check_split(
            find_split(paths, "validation"), "validation", validation_lut, config.num_classes
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
    transform = train_transform(config.base_size, config.crop_size)
    if layouts["train"]:
        stream = pipe.PipeTrainStream(
            paths,
            layouts["train"],
            label_maps["train"],
            transform,
            config.num_classes,
            config.num_training_samples // parallel.ranks,
            config.seed,
            SHUFFLE_BUFFER,
            stop,
            parallel.train,
        )
        log.info("input pipeline: %s (Pipe mode: records decoded as they arrive)", PIPELINES["cpu"])
        # One reader per FIFO: the stream is read in this process.
        train_loader = DataLoader(stream, batch, drop_last=True, **common)
        start_epoch, count = stream.set_epoch, stream.length

        def limit_steps(steps: int) -> None:
            stream.length = min(stream.length, steps * batch)
    else:
        # One order for either input pipeline: this process's shard of the epoch's order.
        sampler = EpochSampler(len(train_summary.samples), config.seed, parallel.train)
        path, why = choose_pipeline(config.input_pipeline, device, train_summary.samples)
        log.info("input pipeline: %s (%s)", PIPELINES[path], why)
        if path == "gpu":
            train_loader = GpuTrainBatches(
                train_summary.samples,
                label_maps["train"].lut,
                config.base_size,
                config.crop_size,
                batch,
                config.seed,
                workers,
                device,
                sampler,
            )
            start_epoch = train_loader.set_epoch
        else:
            train_loader, start_epoch = _cpu_train_loader(
                train_summary.samples,
                label_maps["train"].lut,
                transform,
                sampler,
                batch,
                config.seed,
                workers,
                common,
            )

        def limit_steps(steps: int) -> None:
            sampler.limit = steps * batch

        count = len(sampler)
    validation_loader = build_validation_loader(
        parallel.validation.every(validation.samples),
        validation_lut,
        config,
        generator=generator,
        num_workers=workers,
        **common,
    )
    return TrainingData(
        {split: label_map.spec for split, label_map in label_maps.items()},
        train_loader,
        validation_loader,
        start_epoch,
        count // batch,
        train_summary.pixels_per_class if train_summary else None,
        limit_steps,
    )
