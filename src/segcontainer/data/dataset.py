"""The torch Dataset over checked File-mode samples, and the epoch-seeded sampler.

Augmentation and data order are pure functions of (seed, epoch, sample index): any worker
count gives the same batches, and a resumed job continues exactly where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from segcontainer.data.channels import Sample, Source, load_image, load_mask
from segcontainer.data.preprocess import to_tensors
from segcontainer.errors import UserError

T = TypeVar("T")


def mixed_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (a splitmix-style mix, so nearby inputs differ)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (part + 0x9E3779B97F4A7C15 + (value << 6) + (value >> 2))) & (2**64 - 1)
        value = (value * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    return value >> 1


class UnreadableFile(UserError):
    """A sample file that failed to read during training although the data check at the
    start of the job had read it whole (FastFile mode streams from S3 and can fail later)."""


def read_sample(load: Callable[[Source], T], source: Source, role: str) -> T:
    """``load(source)``, failing with UnreadableFile naming the file and the way out."""
    try:
        return load(source)
    except UserError:
        raise  # already names the file (a colour mask, ...)
    except Exception as exc:  # Pillow and the file system raise many types
        name = source if isinstance(source, Path) else source.name
        cause = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line
        raise UnreadableFile(
            f"The {role} {name} could not be read during training ({cause}), although the "
            "data check at the start of the job read it whole: the file changed or its "
            "storage failed since (FastFile mode streams from S3, where a dropped connection "
            "reads as a truncated file). Check or replace the file and run the job again (it "
            "resumes from its last checkpoint); input mode File copies the data to the "
            "instance before training starts."
        ) from exc


class SegmentationDataset(Dataset):
    """(image, mask) pairs: images decoded to RGB, masks mapped to labels, then transformed."""

    def __init__(
        self, samples: Sequence[Sample], lut: np.ndarray, transform: Callable, seed: int = 0
    ):
        self.samples = list(samples)
        self.lut = lut
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # DataLoader workers are started per epoch, so they see this

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        image = read_sample(load_image, sample.image, "image")
        mask = read_sample(lambda source: load_mask(source, self.lut), sample.mask, "mask")
        image, mask = to_tensors(image, mask)
        with torch.random.fork_rng(devices=[]):  # leave the caller's random state untouched
            torch.manual_seed(mixed_seed(self.seed, self.epoch, index))
            image, mask = self.transform(image, mask)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


@dataclass(frozen=True)
class Shard:
    """One training process's part of the data: part ``index`` of ``count`` (data parallel)."""

    index: int = 0
    count: int = 1

    def take(self, order: Sequence[int]) -> list[int]:
        """Every count-th item from ``index``, every part equally long (the rest is dropped).

        With per-process batch b, step k of all parts together covers order[k*b*count :
        (k+1)*b*count]: one process's batch k at the global batch, so the training matches."""
        return list(order[self.index :: self.count][: len(order) // self.count])

    def size(self, length: int) -> int:
        return length // self.count

    def every(self, items: Sequence) -> list:
        """Every count-th item from ``index``, nothing dropped (validation covers all)."""
        return list(items[self.index :: self.count])


@dataclass(frozen=True)
class Parallel:
    """How this process takes part in data-parallel training (one process: the defaults)."""

    train: Shard = Shard()  # its part of the training order (or, Pipe mode, of the records)
    validation: Shard = Shard()  # its part of the validation images
    batch_size: int | None = None  # per process; None: mini_batch_size
    ranks: int = 1  # processes in the job (Pipe mode shares num_training_samples among them)
    local: int = 1  # processes on this host, sharing its cores for data loading


WHOLE = Shard()
ONE_PROCESS = Parallel()


class EpochSampler(Sampler[int]):
    """A shuffled order per epoch from (seed, epoch), of which this process takes its shard;
    ``skip`` leaves out samples already trained on before a stop, so a resumed epoch sees
    exactly the batches it had left; ``limit`` caps the shard (hosts with unequal parts)."""

    def __init__(self, length: int, seed: int, shard: Shard = WHOLE, limit: int | None = None):
        self.length, self.seed, self.shard, self.limit = length, seed, shard, limit
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(mixed_seed(self.seed, self.epoch))
        order = self.shard.take(torch.randperm(self.length, generator=generator).tolist())
        return iter(order[: self.limit][self.skip :])

    def __len__(self) -> int:
        size = self.shard.size(self.length)
        return max(0, min(size, size if self.limit is None else self.limit) - self.skip)
