"""Image classification's datasets: images listed by a ``.lst`` file or a manifest, the image
records of a ``.rec`` file (read by offset, so a large file is never held in memory; an
``.idx`` beside it is not needed), or images held in memory (Pipe mode's validation stream).
Each item: the transformed image and its target, a class id (single-label) or a float 0/1
vector of ``num_classes`` (multi-label, for the BCE loss). ``EpochSeeded`` makes a training
set's augmentation a function of (seed, epoch, sample), whatever the worker count."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from segcontainer.data.dataset import mixed_seed
from segcontainer.data.preprocess import to_rgb
from segcontainer.data.recordio import iter_records
from segcontainer.errors import UserError
from segcontainer.tasks.classification.records import ListEntry, scan_offsets, unpack_record

Transform = Callable[[Image.Image], torch.Tensor]


def target(classes: Sequence[int], num_classes: int, multi_label: bool) -> torch.Tensor:
    """The loss's target: the class id, or the multi-hot vector."""
    if not multi_label:
        return torch.tensor(classes[0], dtype=torch.int64)
    vector = torch.zeros(num_classes, dtype=torch.float32)
    vector[list(classes)] = 1.0
    return vector


def decode(data: bytes, where: str, draft_side: int | None = None) -> Image.Image:
    """Encoded image bytes as RGB (EXIF orientation applied), or UserError naming ``where``.

    ``draft_side`` (training only): a JPEG is decoded at the smallest of its DCT scales (1/2,
    1/4, 1/8) whose sides stay at least that long, Pillow's ``draft``. Training then resizes
    to that side anyway, and decoding a 4K frame at full size costs more than the step of a
    small network. Validation and the endpoint decode in full, so they stay identical."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if draft_side and image.format == "JPEG":
                image.draft("RGB", (draft_side, draft_side))
            return to_rgb(image)
    except Exception as exc:  # Pillow raises several types for broken or truncated files
        raise UserError(f"{where} is not an image Pillow can read ({exc}).") from exc


class Transformed(Dataset):
    """A dataset whose items pass through ``transform``; ``with_transform`` gives the same
    items through another (training's and validation's), without reading the list again."""

    transform: Transform
    draft_side: int | None = None  # decode's: training's reduced JPEG decoding

    def with_transform(self, transform: Transform, draft_side: int | None = None):
        twin = copy.copy(self)
        twin.transform, twin.draft_side = transform, draft_side
        return twin


class ListDataset(Transformed):
    """The images a ``.lst`` file (or a manifest, ``source``) lists, below ``root`` (the image
    channel; a manifest's paths are resolved already)."""

    def __init__(
        self,
        root: Path,
        entries: Sequence[ListEntry],
        transform: Transform,
        num_classes: int,
        multi_label: bool,
        source: str = "",
    ):
        self.root, self.entries, self.transform = root, list(entries), transform
        self.num_classes, self.multi_label, self.source = num_classes, multi_label, source

    def __len__(self) -> int:
        return len(self.entries)

    def where(self, entry: ListEntry) -> str:
        file = self.root / entry.path
        if self.source and entry.line:
            return f"{file} ({self.source} line {entry.line})"
        return f"{file} (list index {entry.index})"

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        entry = self.entries[index]
        file = self.root / entry.path
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise UserError(f"{self.where(entry)} cannot be read: {exc}.") from exc
        image = decode(data, self.where(entry), self.draft_side)
        return self.transform(image), target(entry.classes, self.num_classes, self.multi_label)


class RecordDataset(Transformed):
    """The image records of a ``.rec`` file, each read at its offset when asked for."""

    def __init__(self, file: Path, transform: Transform, num_classes: int, multi_label: bool):
        self.file, self.transform = file, transform
        self.num_classes, self.multi_label = num_classes, multi_label
        with open(file, "rb") as stream:
            self.offsets = scan_offsets(stream, file.name)
        self._stream = None  # opened in the process that reads (DataLoader workers fork)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._stream is None:
            self._stream = open(self.file, "rb")  # noqa: SIM115 - kept open for every item
        self._stream.seek(self.offsets[index])
        payload = next(iter_records(self._stream))
        where = f"{self.file.name} record {index}"
        record = unpack_record(payload, self.num_classes, self.multi_label, where)
        image = decode(record.image, where, self.draft_side)
        return self.transform(image), target(record.classes, self.num_classes, self.multi_label)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_stream": None}  # a file handle does not cross processes


class MemoryDataset(Transformed):
    """Encoded images held in memory with their classes, each named for messages."""

    def __init__(
        self,
        items: Sequence[tuple[bytes, tuple[int, ...], str]],
        transform: Transform,
        num_classes: int,
        multi_label: bool,
    ):
        self.items, self.transform = list(items), transform
        self.num_classes, self.multi_label = num_classes, multi_label

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        data, classes, where = self.items[index]
        image = decode(data, where, self.draft_side)
        return self.transform(image), target(classes, self.num_classes, self.multi_label)


class EpochSeeded(Dataset):
    """``dataset``'s items with the random transforms seeded by (seed, epoch, index): the
    augmentation of a sample does not depend on the worker that loads it, so a resumed epoch
    sees the batches it had left. DataLoader workers start per epoch and see ``epoch``."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):  # leave the caller's random state untouched
            torch.manual_seed(mixed_seed(self.seed, self.epoch, index))
            return self.dataset[index]
