"""From channels to image classification's loaders: File mode checked up front (file_mode.py,
check.py), Pipe mode streamed (stream.py), both split across processes and hosts as segmentation
data is (``Parallel``: ShardedByS3Key and FullyReplicated are resolved into it already).

Training batches: (images (N, 3, H, W) float, targets), N exactly the per-process batch
(drop_last), through transforms.train_transform; order and augmentation are functions of
(seed, epoch, sample), so a resumed job sees exactly the batches it had left. Validation
batches: the same pair, this process's share of the validation images in their order, prepared
by transforms.eval_transform exactly as the endpoint prepares a request. Targets: int64 class
ids (N,), or float 0/1 (N, num_classes) for multi-label.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from segcontainer.config.environment import ChannelConfig, Paths
from segcontainer.data import pipe
from segcontainer.data.dataset import ONE_PROCESS, EpochSampler, Parallel, Shard
from segcontainer.data.loaders import TrainingData, worker_count
from segcontainer.data.train_batches import PIPELINES, SHUFFLE_BUFFER, TrainBatches
from segcontainer.errors import UserError
from segcontainer.tasks.classification.check import (
    Problems,
    check_count,
    check_images,
    class_counts,
    warn_absent_classes,
)
from segcontainer.tasks.classification.dataset import (
    EpochSeeded,
    MemoryDataset,
    Transform,
    Transformed,
)
from segcontainer.tasks.classification.file_mode import FileSplit, Labels, read_split
from segcontainer.tasks.classification.hyperparameters import ClassificationConfig
from segcontainer.tasks.classification.stream import PipeImageStream, stream_form, stream_images
from segcontainer.tasks.classification.transforms import eval_transform, train_transform

log = logging.getLogger(__name__)
SPLITS = ("train", "validation")


def prepare(
    paths: Paths,
    config: ClassificationConfig,
    channels: dict[str, ChannelConfig],
    device: torch.device,
    stop: Callable[[], bool],
    parallel: Parallel = ONE_PROCESS,
) -> TrainingData:
    """Check the File-mode splits (UserError naming every bad item of both), then build the
    loaders; Pipe-mode splits are checked as they stream."""
    labels = Labels(config.num_classes, config.multi_label)
    checked = checked_splits(paths, config, channels, parallel)
    workers = worker_count(config.workers, parallel.local)
    # Workers start afresh each epoch (not persistent) so they see the dataset's epoch.
    common = {"pin_memory": device.type == "cuda"}
    batch = parallel.batch_size or config.mini_batch_size
    augmented = train_transform(config.image_shape, config.resize, config.augmentation_type)
    if "train" in checked:
        # decoded no larger than training resizes to (the shorter side: resize, else the
        # input's shorter side)
        draft_side = config.resize or min(config.image_shape[1:])
        train_set = checked["train"].dataset.with_transform(augmented, draft_side)
        train = _file_batches(train_set, config.seed, batch, workers, common, parallel)
    else:
        train = _pipe_batches(
            paths, channels["train"], augmented, config, (batch, common), stop, parallel
        )
    log.info("input pipeline: %s", PIPELINES["cpu"])
    if "validation" in checked:
        validation_set = checked["validation"].dataset
    else:
        validation_set = pipe_validation(paths, channels["validation"], labels, stop)
    validation_loader = build_validation_loader(
        validation_set, config, batch, parallel.validation, num_workers=workers, **common
    )
    counts = None
    if "train" in checked:
        counts = class_counts(checked["train"].classes, config.num_classes)
        warn_absent_classes(counts, config.class_names)
    return TrainingData(
        train_loader=train.loader,
        validation_loader=validation_loader,
        start_epoch=train.start_epoch,
        iters_per_epoch=train.samples_per_epoch // batch,
        limit_steps=train.limit_steps,
        class_counts=counts,
        # the exports' images (tasks.classification.export_check): calibration on the training
        # images (File mode only), the int8 check on the validation images
        train_samples=(checked["train"].dataset,) if "train" in checked else (),
        validation_samples=(validation_set,),
    )


def build_validation_loader(
    dataset: Transformed, config: ClassificationConfig, batch: int, shard: Shard, **options
) -> DataLoader:
    """This process's share of the validation images (every count-th, in order), prepared by
    eval_transform exactly as the endpoint prepares a request, in batches of ``batch``."""
    prepared = dataset.with_transform(eval_transform(config.image_shape, config.resize))
    return DataLoader(
        Subset(prepared, shard.every(range(len(dataset)))),
        batch,
        # Own generator: creating loader iterators must not draw from the global random
        # state, which dropout uses and checkpoints restore.
        generator=torch.Generator().manual_seed(config.seed),
        **options,
    )


def checked_splits(
    paths: Paths,
    config: ClassificationConfig,
    channels: dict[str, ChannelConfig],
    parallel: Parallel = ONE_PROCESS,
) -> dict[str, FileSplit]:
    """The File-mode splits, read and checked together: one UserError names every problem of
    both (and too few training images for the batch)."""
    labels, problems = Labels(config.num_classes, config.multi_label), Problems()
    found = {}
    for split in SPLITS:
        if pipe.is_pipe(channels, split):
            continue
        before = sum(len(items) for items in problems.found.values())
        read = read_split(paths, split, channels.get(split), labels, problems)
        if read is None:
            continue
        found[split] = read
        if not read.classes and sum(len(i) for i in problems.found.values()) == before:
            problems.add("layout", f"The {split} channel holds no images.")
    # The size of the training set once its items are known good (bad ones are not counted)
    if "train" in found and found["train"].classes and not problems.found:
        count = len(found["train"].classes)
        for text in check_count(
            count, config.num_training_samples, config.mini_batch_size, parallel
        ):
            problems.add("count", text)
    problems.raise_if_any()
    return found


def pipe_validation(
    paths: Paths, channel: ChannelConfig, labels: Labels, stop: Callable[[], bool]
) -> MemoryDataset:
    """Pipe mode's validation: ``validation_0`` read once, every image checked, kept."""
    form = stream_form(channel, labels.num_classes, labels.multi_label)
    items = list(stream_images(paths, "validation", form, 0, stop))
    if not items:
        raise UserError("The Pipe-mode validation stream validation_0 is empty.")
    problems = Problems()
    check_images(((item.image, item.where) for item in items), problems)
    problems.raise_if_any()
    kept = [(item.image, item.classes, item.where) for item in items]
    return MemoryDataset(kept, _unchanged, labels.num_classes, labels.multi_label)


def _unchanged(image):
    return image


def _file_batches(
    dataset: Dataset, seed: int, batch: int, workers: int, common: dict, parallel: Parallel
) -> TrainBatches:
    """File mode: this process's shard of each epoch's order (data.dataset.EpochSampler)."""
    sampler = EpochSampler(len(dataset), seed, parallel.train)
    seeded = EpochSeeded(dataset, seed)
    # drop_last: every step trains on exactly the per-process batch (batch norm, the schedule)
    loader = DataLoader(
        seeded,
        batch,
        sampler=sampler,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
        num_workers=workers,
        **common,
    )

    def start_epoch(epoch: int, skip: int) -> None:
        seeded.set_epoch(epoch)
        sampler.set_epoch(epoch, skip)

    def limit_steps(steps: int) -> None:
        sampler.limit = steps * batch

    return TrainBatches(
        loader=loader,
        start_epoch=start_epoch,
        limit_steps=limit_steps,
        samples_per_epoch=len(sampler),
    )


def _pipe_batches(
    paths: Paths,
    channel: ChannelConfig,
    transform: Transform,
    config: ClassificationConfig,
    batching: tuple[int, dict],
    stop: Callable[[], bool],
    parallel: Parallel,
) -> TrainBatches:
    """Pipe mode: images decoded as they stream, through a shuffle buffer; one reader per FIFO
    (this process), num_training_samples sizing the epoch (a stream cannot be counted first)."""
    batch, common = batching
    length = config.num_training_samples // parallel.ranks
    if length < batch:
        raise UserError(
            f"num_training_samples is {config.num_training_samples}: {length} images for each of "
            f"the {parallel.ranks} training processes, fewer than the {batch} each trains on per "
            "step. Give the real number of training images, or lower mini_batch_size."
        )
    form = stream_form(channel, config.num_classes, config.multi_label)
    stream = PipeImageStream(
        paths, form, transform, length, config.seed, SHUFFLE_BUFFER, stop, parallel.train
    )

    def limit_steps(steps: int) -> None:
        stream.length = min(stream.length, steps * batch)

    loader = DataLoader(
        stream,
        batch,
        drop_last=True,
        generator=torch.Generator().manual_seed(config.seed),
        **common,
    )
    return TrainBatches(
        loader=loader,
        start_epoch=stream.set_epoch,
        limit_steps=limit_steps,
        samples_per_epoch=stream.length,
    )
