"""Image classification in Pipe mode: images streamed through the FIFOs
``input/data/<split>_<n>``, in one of two forms (the channel's RecordWrapperType tells them apart):

- ``.rec`` streams (RecordWrapperType None): the ``.rec`` files' own RecordIO records, each an
  MXNet image record (records.py), as im2rec writes them;
- augmented manifests (RecordWrapperType RecordIO): records alternating the image's bytes and
  the label attribute's value as text (``AttributeNames`` = [image, label], in that order), read
  by the channel's ``label-format``.

Validation is read once (``validation_0``) and kept; training streams every epoch through a
bounded shuffle buffer, as segmentation's Pipe mode (data/pipe.py): record i goes to shard
i % count, order and augmentation are functions of (seed, epoch, record), and a resumed epoch
replays the stream up to where it stopped. Each record is checked as it arrives, named by its
record index.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import torch
from torch.utils.data import IterableDataset

from segcontainer.config.environment import ChannelConfig, Paths
from segcontainer.data.dataset import WHOLE, Shard, mixed_seed
from segcontainer.data.pipe import wait_for
from segcontainer.data.recordio import MAGIC_BYTES, RecordIOError, iter_records
from segcontainer.errors import UserError
from segcontainer.tasks.classification.dataset import Transform, decode, target
from segcontainer.tasks.classification.manifest_labels import label_format, manifest_classes
from segcontainer.tasks.classification.records import read_records

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamForm:
    """How a split's stream is read: ``rec`` or ``manifest`` (with its label format)."""

    kind: str
    label_format: str
    num_classes: int
    multi_label: bool


def stream_form(channel: ChannelConfig, num_classes: int, multi_label: bool) -> StreamForm:
    kind = "manifest" if channel.record_wrapper == "RecordIO" else "rec"
    return StreamForm(kind, label_format(channel.content_type), num_classes, multi_label)


@dataclass(frozen=True)
class Streamed:
    """One streamed image: its position in the stream, encoded bytes, classes and name."""

    index: int
    image: bytes
    classes: tuple[int, ...]
    where: str


def stream_images(
    paths: Paths, split: str, form: StreamForm, fifo_index: int, stop: Callable[[], bool]
) -> Iterator[Streamed]:
    """The labelled images of one pass over ``<split>_<fifo_index>``, checked as they come."""
    name = f"{split}_{fifo_index}"
    path = paths.channel(name)
    wait_for(path, stop)
    with open(path, "rb") as stream:
        if form.kind == "rec":
            records = read_records(stream, name, form.num_classes, form.multi_label)
            for index, record in enumerate(records):
                yield Streamed(index, record.image, record.classes, f"{name} record {index}")
        else:
            yield from _manifest_pairs(stream, name, form)


def _manifest_pairs(stream: BinaryIO, name: str, form: StreamForm) -> Iterator[Streamed]:
    records = iter_records(stream)
    try:
        for index, image in enumerate(records):
            if index == 0 and image.startswith(MAGIC_BYTES):
                raise UserError(
                    f"The Pipe-mode stream {name} holds RecordIO files wrapped in RecordIO: a "
                    ".rec file streams as it is. Set RecordWrapperType to None for .rec files "
                    "(RecordIO wrapping is for augmented manifests)."
                )
            label = next(records, None)
            if label is None:
                raise UserError(
                    f"The Pipe-mode stream {name} holds an odd number of records: image record "
                    f"{2 * index} has no label record after it. An augmented manifest streams "
                    "AttributeNames=['source-ref', '<label attribute>'], both on every line."
                )
            where = f"{name} record {2 * index + 1} (the label of image record {2 * index})"
            classes = _label(label, image, where, form)
            yield Streamed(index, image, classes, f"{name} record {2 * index}")
    except RecordIOError as exc:
        raise UserError(f"The Pipe-mode stream {name} is corrupt: {exc}.") from exc


def _label(data: bytes, image: bytes, where: str, form: StreamForm) -> tuple[int, ...]:
    try:
        text = data.decode("utf-8").strip()
        return manifest_classes(text, form.num_classes, form.multi_label, form.label_format, where)
    except (UnicodeDecodeError, UserError) as exc:
        if _looks_like_label(image):
            raise UserError(
                f"{where}: the records come label first. Give AttributeNames in the order "
                "[image attribute, label attribute], e.g. ['source-ref', 'class']."
            ) from None
        if isinstance(exc, UserError):
            raise
        raise UserError(
            f"{where} is not text: a label record holds the label attribute's value (e.g. "
            "\"1\" or \"[0, 1, 1]\"). Give AttributeNames=['source-ref', '<label attribute>']."
        ) from None


def _looks_like_label(data: bytes) -> bool:
    if len(data) > 4096:
        return False
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(value, int | float | list)


class PipeImageStream(IterableDataset):
    """Training images streamed from ``train_<n>`` every pass, through a shuffle buffer of at
    most ``buffer_size`` encoded images; ``length``: num_training_samples' share."""

    def __init__(
        self,
        paths: Paths,
        form: StreamForm,
        transform: Transform,
        length: int,
        seed: int,
        buffer_size: int,
        should_stop: Callable[[], bool],
        shard: Shard = WHOLE,
    ):
        self.paths, self.form, self.transform, self.length = paths, form, transform, length
        self.seed, self.buffer_size, self.should_stop = seed, buffer_size, should_stop
        self.shard = shard  # record i goes to shard i % count (each host reads all)
        self.epoch, self.skip, self.fifo_index, self.streamed = 0, 0, 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return max(0, self.length - self.skip)

    def shuffled(self) -> Iterator[Streamed]:
        """This shard's images in buffer-shuffled order."""
        rng = random.Random(mixed_seed(self.seed, self.epoch))
        buffer: list[Streamed] = []
        images = stream_images(self.paths, "train", self.form, self.fifo_index, self.should_stop)
        self.fifo_index += 1  # each pass reads the next FIFO, whatever the epoch number
        self.streamed = 0
        for item in images:
            self.streamed = item.index + 1
            if item.index % self.shard.count != self.shard.index:
                continue
            buffer.append(item)
            if len(buffer) >= self.buffer_size:
                yield buffer.pop(rng.randrange(len(buffer)))
        if not self.streamed:
            raise UserError(f"The Pipe-mode training stream train_{self.fifo_index - 1} is empty.")
        while buffer:
            yield buffer.pop(rng.randrange(len(buffer)))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        form = self.form
        for position, item in enumerate(self.shuffled()):
            if position < self.skip:
                continue  # trained on before a stop: the stream is replayed up to here
            image = decode(item.image, item.where)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(mixed_seed(self.seed, self.epoch, item.index))
                pixels = self.transform(image)
            yield pixels, target(item.classes, form.num_classes, form.multi_label)
        if self.streamed // self.shard.count != self.length:
            log.warning(
                "train_%d streamed %d images but num_training_samples is %d",
                self.fifo_index - 1,
                self.streamed,
                self.length * self.shard.count,
            )
