"""The training batches of each input pipeline: Pipe mode's stream, File mode's samples
decoded and augmented on the GPU (JPEG) or in DataLoader workers on the CPU. Each hands the
epoch loop the same three controls (TrainBatches), so the loop does not know which it has.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from segcontainer.config.environment import Paths
from segcontainer.config.hyperparameters import Config
from segcontainer.data import pipe
from segcontainer.data.augment import train_transform
from segcontainer.data.channels import Sample
from segcontainer.data.dataset import EpochSampler, Parallel, SegmentationDataset
from segcontainer.data.gpu_pipeline import GpuTrainBatches, choose_pipeline
from segcontainer.data.label_maps import LabelMap

log = logging.getLogger(__name__)

PIPELINES = {
    "gpu": "JPEG decoding and augmentation on the GPU",
    "cpu": "decoding and augmentation on the CPU",
}
SHUFFLE_BUFFER = 512  # Pipe mode: pairs held for shuffling (encoded bytes, not pixels)


@dataclass(frozen=True, kw_only=True)
class TrainBatches:
    """One input pipeline's training batches and how the epoch loop drives them."""

    loader: Iterable[tuple[torch.Tensor, torch.Tensor]]
    start_epoch: Callable[[int, int], None]
    limit_steps: Callable[[int], None]
    samples_per_epoch: int  # this process's share


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """What every input pipeline's training batches are built with."""

    config: Config
    device: torch.device
    batch: int  # per process
    workers: int
    common: dict  # DataLoader options shared with validation (pin_memory)

    @property
    def transform(self) -> Callable:
        return train_transform(self.config.base_size, self.config.crop_size)


def pipe_batches(
    paths: Paths,
    layout: str,
    label_map: LabelMap,
    options: TrainOptions,
    stop: Callable[[], bool],
    parallel: Parallel,
) -> TrainBatches:
    """Pipe mode: pairs decoded as they stream from the FIFOs, through a shuffle buffer."""
    config, batch = options.config, options.batch
    stream = pipe.PipeTrainStream(
        paths,
        layout,
        label_map,
        options.transform,
        config.num_classes,
        config.num_training_samples // parallel.ranks,
        config.seed,
        SHUFFLE_BUFFER,
        stop,
        parallel.train,
    )
    log.info("input pipeline: %s (Pipe mode: records decoded as they arrive)", PIPELINES["cpu"])

    def limit_steps(steps: int) -> None:
        stream.length = min(stream.length, steps * batch)

    return TrainBatches(
        # One reader per FIFO: the stream is read in this process. Own generator, as in File
        # mode: a loader iterator drawn from the global random state (which dropout uses and
        # checkpoints restore) would make a resumed epoch differ from one run straight through.
        loader=DataLoader(
            stream,
            batch,
            drop_last=True,
            generator=torch.Generator().manual_seed(config.seed),
            **options.common,
        ),
        start_epoch=stream.set_epoch,
        limit_steps=limit_steps,
        samples_per_epoch=stream.length,
    )


def file_batches(
    samples: list[Sample], lut: np.ndarray, options: TrainOptions, parallel: Parallel
) -> TrainBatches:
    """File mode: the checked samples decoded and augmented on the GPU or on the CPU."""
    config, batch = options.config, options.batch
    # One order for either input pipeline: this process's shard of the epoch's order.
    sampler = EpochSampler(len(samples), config.seed, parallel.train)
    path, why = choose_pipeline(config.input_pipeline, options.device, samples)
    log.info("input pipeline: %s (%s)", PIPELINES[path], why)
    if path == "gpu":
        loader = GpuTrainBatches(
            samples,
            lut,
            config.base_size,
            config.crop_size,
            batch,
            config.seed,
            options.workers,
            options.device,
            sampler,
        )
        start_epoch = loader.set_epoch
    else:
        loader, start_epoch = _cpu_train_loader(samples, lut, sampler, options)

    def limit_steps(steps: int) -> None:
        sampler.limit = steps * batch

    return TrainBatches(
        loader=loader,
        start_epoch=start_epoch,
        limit_steps=limit_steps,
        samples_per_epoch=len(sampler),
    )


def _cpu_train_loader(
    samples: list[Sample], lut: np.ndarray, sampler: EpochSampler, options: TrainOptions
) -> tuple[DataLoader, Callable[[int, int], None]]:
    """Decoding and augmentation in DataLoader workers (PIL and transforms.v2)."""
    seed = options.config.seed
    train_set = SegmentationDataset(samples, lut, options.transform, seed)
    # drop_last: a trailing batch of one would make batch-norm statistics meaningless.
    loader = DataLoader(
        train_set,
        options.batch,
        sampler=sampler,
        drop_last=True,
        # Own generator: creating loader iterators must not draw from the global random
        # state, which dropout uses and checkpoints restore.
        generator=torch.Generator().manual_seed(seed),
        num_workers=options.workers,
        **options.common,
    )

    def start_epoch(epoch: int, skip: int) -> None:
        train_set.set_epoch(epoch)
        sampler.set_epoch(epoch, skip)

    return loader, start_epoch
