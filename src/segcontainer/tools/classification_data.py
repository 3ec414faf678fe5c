"""What the tools need to know about image classification data and models: which task a model
folder or a data folder is, and the labelled images of one split.

A model's task is what its hyperparams.json records (``tasks.task_of_model``). A data folder
is classification data when one of its channels holds a ``.lst`` (the image + list channels
``train``/``train_lst``...) or a ``.rec`` file (RecordIO channels); else it is segmentation's
layout. A split's labelled images: ``<split>_lst/*.lst`` listing images below ``<split>/``, or
the records of ``<split>/*.rec``, read by training's own readers (tasks.classification.records).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from segcontainer.data.recordio import iter_records
from segcontainer.errors import UserError
from segcontainer.model_folder import CONFIG_FILE
from segcontainer.tasks import task_of_model
from segcontainer.tasks.classification import CLASSIFICATION
from segcontainer.tasks.classification.dataset import decode
from segcontainer.tasks.classification.records import (
    read_list,
    scan_offsets,
    unpack_record,
)

SPLITS = ("train", "validation")


def model_is_classification(model_dir: Path) -> bool:
    """Whether the model in model_dir is an image classification model (a folder without
    hyperparams.json is left to the segmentation path, which names what is missing)."""
    if not (model_dir / CONFIG_FILE).is_file():
        return False
    return task_of_model(model_dir).name == CLASSIFICATION.name


def data_root(data: Path) -> Path:
    """The folder holding the channels: DATA, or DATA/input/data for a folder like /opt/ml."""
    inner = data / "input" / "data"
    return inner if inner.is_dir() else data


def list_file(root: Path, split: str) -> Path | None:
    """The one ``.lst`` of ``<split>_lst/`` (None: no such channel); UserError for several."""
    folder = root / f"{split}_lst"
    if not folder.is_dir():
        return None
    files = sorted(folder.glob("*.lst"))
    if len(files) > 1:
        names = ", ".join(f.name for f in files)
        raise UserError(f"{folder} holds several .lst files ({names}); a list channel holds one.")
    return files[0] if files else None


def record_file(root: Path, split: str) -> Path | None:
    """The ``.rec`` of the ``<split>/`` channel, or None; UserError for several."""
    files = sorted((root / split).glob("*.rec")) if (root / split).is_dir() else []
    if len(files) > 1:
        names = ", ".join(f.name for f in files)
        raise UserError(f"{root / split} holds several .rec files ({names}); give one per channel.")
    return files[0] if files else None


def data_is_classification(data: Path) -> bool:
    """Whether DATA (a layout root, a folder like /opt/ml, or one channel) is classification's."""
    root = data_root(data)
    channels = [root / s for s in SPLITS] + [root / f"{s}_lst" for s in SPLITS]
    if data.name in SPLITS:  # one channel folder: its own list channel beside it
        channels = [data, data.parent / f"{data.name}_lst"]
    return any(
        folder.is_dir() and (any(folder.glob("*.lst")) or any(folder.glob("*.rec")))
        for folder in channels
    )


@dataclass(frozen=True)
class Item:
    """One labelled image: its name in reports, its class ids and how to read it."""

    name: str
    classes: tuple[int, ...]
    load: Callable[[], Image.Image]


def _listed(images: Path, lst: Path, num_classes: int, multi_label: bool) -> list[Item]:
    def loader(file: Path, where: str) -> Callable[[], Image.Image]:
        def load() -> Image.Image:
            try:
                data = file.read_bytes()
            except OSError as exc:
                raise UserError(f"{where} cannot be read: {exc.strerror}.") from exc
            return decode(data, where)

        return load

    return [
        Item(
            entry.path.as_posix(),
            entry.classes,
            loader(images / entry.path, f"{images / entry.path} ({lst.name} index {entry.index})"),
        )
        for entry in read_list(lst, num_classes, multi_label)
    ]


def _recorded(rec: Path, num_classes: int, multi_label: bool) -> list[Item]:
    """The records' labels, read once; each image read again at its offset when loaded, so a
    large file is never held in memory."""

    def payload(offset: int) -> bytes:
        with open(rec, "rb") as stream:
            stream.seek(offset)
            return next(iter_records(stream))

    def loader(offset: int, where: str) -> Callable[[], Image.Image]:
        def load() -> Image.Image:
            record = unpack_record(payload(offset), num_classes, multi_label, where)
            return decode(record.image, where)

        return load

    items = []
    with open(rec, "rb") as stream:
        offsets = scan_offsets(stream, rec.name)
    for index, offset in enumerate(offsets):
        where = f"{rec.name} record {index}"
        record = unpack_record(payload(offset), num_classes, multi_label, where)
        items.append(Item(f"record_{index:06d}", record.classes, loader(offset, where)))
    return items


def split_items(data: Path, num_classes: int, multi_label: bool) -> tuple[str, list[Item]]:
    """(where the images are, its labelled images): DATA's validation split, or DATA itself when
    it is one image channel (data/train, with data/train_lst beside it or a .rec inside)."""
    if data.name in SPLITS and data.is_dir():
        root, split = data.parent, data.name
    else:
        root, split = data_root(data), "validation"
    rec, lst = record_file(root, split), list_file(root, split)
    if rec is not None:
        return str(rec), _recorded(rec, num_classes, multi_label)
    if lst is not None:
        if not (root / split).is_dir():
            raise UserError(f"{root / split} is missing: the images {lst} lists belong there.")
        return str(root / split), _listed(root / split, lst, num_classes, multi_label)
    raise UserError(
        f"{data} holds no image classification {split} data: expected {split}/ with a .rec file, "
        f"or {split}/ images with a .lst file in {split}_lst/. Give e.g. data/ or data/train."
    )
