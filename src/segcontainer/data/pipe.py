"""Pipe mode: records streamed through the FIFOs ``input/data/<channel>_<epoch>``.

Two layouts (contract §1.6, §2.4):

- augmented manifest: ``train`` (and ``validation``) with RecordWrapperType RecordIO, whose
  records alternate image bytes and annotation PNG bytes;
- plain channels: ``train`` and ``train_annotation`` (and the validation pair) each streamed
  with one RecordIO record per file, paired by position (S3 streams objects in key order).

Validation data is read once (``validation_0``) and kept. Training data is streamed every
epoch through a bounded shuffle buffer, so memory does not grow with the dataset. Every pair
passes the File-mode checks, named by its record index.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset

from segcontainer.config.environment import ChannelConfig, Paths
from segcontainer.data.channels import InMemory, Sample, load_image, load_mask
from segcontainer.data.check import SplitSummary, binary_255_hint, check_samples
from segcontainer.data.dataset import WHOLE, Shard, mixed_seed
from segcontainer.data.label_maps import LabelMap
from segcontainer.data.preprocess import to_tensors
from segcontainer.data.recordio import RecordIOError, iter_records
from segcontainer.errors import TrainingStopped, UserError

log = logging.getLogger(__name__)
FIFO_WAIT_SECONDS = 600.0  # SageMaker opens the next epoch's FIFO as soon as it is asked


def is_pipe(channels: dict[str, ChannelConfig], name: str) -> bool:
    return name in channels and channels[name].input_mode == "Pipe"


def read_whole(paths: Paths, channel: str, should_stop: Callable[[], bool]) -> bytes:
    """All of a small one-off channel's stream (``<channel>_0``), e.g. the label map."""
    path = paths.channel(f"{channel}_0")
    wait_for(path, should_stop)
    return path.read_bytes()


def pipe_layout(channels: dict[str, ChannelConfig], split: str) -> str | None:
    """'manifest', 'channels' or None (File mode) for a split; UserError when unusable."""
    config = channels.get(split)
    if config is None or config.input_mode != "Pipe":
        return None
    annotation = channels.get(f"{split}_annotation")
    if config.record_wrapper != "RecordIO" or (
        annotation and annotation.record_wrapper != "RecordIO"
    ):
        raise UserError(
            f"Channel '{split}' is in Pipe mode without RecordIO wrapping, so the files arrive "
            "back to back with no boundaries. Set RecordWrapperType='RecordIO' (record_wrapping="
            "'RecordIO' in TrainingInput), or use File mode."
        )
    if annotation is None:
        return "manifest"
    if annotation.input_mode != "Pipe":
        raise UserError(
            f"Channel '{split}' is in Pipe mode but '{split}_annotation' is not; "
            "give both the same input mode."
        )
    return "channels"


def wait_for(path: Path, should_stop: Callable[[], bool], timeout: float = FIFO_WAIT_SECONDS):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if should_stop():
            raise TrainingStopped(f"stopped while waiting for {path.name}")
        if time.monotonic() > deadline:
            raise UserError(f"The Pipe-mode input {path} did not appear within {timeout:.0f} s.")
        time.sleep(0.05)


def _records(path: Path, should_stop) -> Iterator[bytes]:
    wait_for(path, should_stop)
    with open(path, "rb") as stream:
        try:
            yield from iter_records(stream)
        except RecordIOError as exc:
            raise UserError(f"The Pipe-mode stream {path.name} is corrupt: {exc}.") from exc


def stream_pairs(
    paths: Paths,
    split: str,
    layout: str,
    fifo_index: int,
    should_stop: Callable[[], bool] = lambda: False,
) -> Iterator[Sample]:
    """The (image, mask) pairs of one pass over a split's FIFO(s), named by record index."""
    if layout == "manifest":
        records = _records(paths.channel(f"{split}_{fifo_index}"), should_stop)
        for index, image in enumerate(records):
            mask = next(records, None)
            if mask is None:
                raise UserError(
                    f"The Pipe-mode stream {split}_{fifo_index} holds an odd number of records: "
                    f"image record {2 * index} has no annotation record after it. An augmented "
                    "manifest needs AttributeNames=['source-ref', '<name>-ref']."
                )
            yield Sample(
                InMemory(image, f"{split} record {2 * index} (image)"),
                InMemory(mask, f"{split} record {2 * index + 1} (annotation)"),
            )
        return
    images = _records(paths.channel(f"{split}_{fifo_index}"), should_stop)
    masks = _records(paths.channel(f"{split}_annotation_{fifo_index}"), should_stop)
    index = 0
    for index, image in enumerate(images):  # noqa: B007 - index is reported after the loop
        mask = next(masks, None)
        if mask is None:
            raise UserError(
                f"{split} streamed more images than {split}_annotation streamed "
                f"annotations (image record {index} has none)."
            )
        yield Sample(
            InMemory(image, f"{split} record {index}"),
            InMemory(mask, f"{split}_annotation record {index}"),
        )
    if next(masks, None) is not None:
        raise UserError(
            f"{split}_annotation streamed more annotations than {split} streamed images."
        )


def read_validation(
    paths: Paths, layout: str, lut: np.ndarray, num_classes: int, stop
) -> SplitSummary:
    """Validation in Pipe mode: read validation_0 once, check every pair, keep it."""
    samples = list(stream_pairs(paths, "validation", layout, 0, stop))
    if not samples:
        raise UserError("The Pipe-mode validation stream is empty.")
    return check_samples(samples, "validation", lut, num_classes)


class PipeTrainStream(IterableDataset):
    """Training pairs streamed from ``train_<n>`` every epoch through a shuffle buffer.

    Each pass also gathers the masks' raw values for the 0/255 hint, which File mode gives
    before training: here it comes once the first pass has read the whole stream (before the
    first step when the stream fits the shuffle buffer).
    """

    def __init__(
        self,
        paths: Paths,
        layout: str,
        label_map: LabelMap,
        transform: Callable,
        num_classes: int,
        length: int,
        seed: int,
        buffer_size: int,
        should_stop: Callable[[], bool],
        shard: Shard = WHOLE,
    ):
        self.paths, self.layout, self.label_map, self.transform = (
            paths,
            layout,
            label_map,
            transform,
        )
        self.num_classes, self.length = num_classes, length
        self.seed, self.buffer_size, self.should_stop = seed, buffer_size, should_stop
        self.shard = shard  # FullyReplicated on several hosts: record i goes to rank i % count
        self.epoch, self.skip, self.fifo_index, self.streamed = 0, 0, 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        # num_training_samples (a stream cannot be counted up front), less what is skipped
        return max(0, self.length - self.skip)

    def shuffled(self) -> Iterator[tuple[int, Sample]]:
        """(position in the stream, pair) in buffer-shuffled order; at most buffer_size held."""
        rng = random.Random(mixed_seed(self.seed, self.epoch))
        buffer: list[tuple[int, Sample]] = []
        pairs = stream_pairs(self.paths, "train", self.layout, self.fifo_index, self.should_stop)
        self.fifo_index += 1  # each pass reads the next FIFO, whatever the epoch number
        self.streamed = 0
        raw_values: set[int] = set()
        for index, sample in enumerate(pairs):
            self.streamed = index + 1
            if index % self.shard.count != self.shard.index:
                continue  # another host's record (each host reads the whole stream)
            summary = check_samples([sample], "train", self.label_map.lut, self.num_classes)
            raw_values |= summary.raw_values
            buffer.append((index, sample))
            if len(buffer) >= self.buffer_size:
                yield buffer.pop(rng.randrange(len(buffer)))
        if not self.streamed:
            raise UserError(f"The Pipe-mode training stream train_{self.fifo_index - 1} is empty.")
        hint = binary_255_hint(raw_values, self.num_classes, self.label_map.spec)
        if hint:
            raise UserError(hint)
        while buffer:
            yield buffer.pop(rng.randrange(len(buffer)))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for position, (index, sample) in enumerate(self.shuffled()):
            if position < self.skip:
                continue  # trained on before a stop: the stream is replayed up to here
            image, mask = to_tensors(
                load_image(sample.image), load_mask(sample.mask, self.label_map.lut)
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(mixed_seed(self.seed, self.epoch, index))
                image, mask = self.transform(image, mask)
            yield image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
        if self.streamed // self.shard.count != self.length:
            log.warning(
                "train_%d streamed %d pairs but num_training_samples is %d",
                self.fifo_index - 1,
                self.streamed,
                self.length * self.shard.count,
            )
