"""The data check ``segcontainer validate`` runs on image classification channels, behind one
function, ``check_channels``: every bad list line, record and image of both splits named, and
the images per class.

This adapter reads the channels with training's readers (tasks.classification.records:
``read_list``, ``scan_offsets``, ``unpack_record``) and checks each image with Pillow's
``verify``; it is the one place to hand over to training's own File-mode check once that is the
shared entry (tasks.classification.check).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from segcontainer.data.recordio import RecordIOError, iter_records
from segcontainer.errors import UserError
from segcontainer.tasks.classification.records import read_list, scan_offsets, unpack_record
from segcontainer.tools.classification_data import SPLITS, list_file, record_file


@dataclass
class SplitReport:
    """One split: where its images are, how many, and how many of each class."""

    source: str
    images: int
    per_class: np.ndarray


@dataclass
class ChannelReport:
    splits: dict[str, SplitReport] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _image_problem(data: bytes | Path, where: str) -> str | None:
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            image.verify()
    except FileNotFoundError:
        return f"{where}: no such file"
    except Exception as exc:  # Pillow raises many types for broken or truncated files
        return f"{where}: not an image Pillow can read ({exc})"
    return None


def _counts(classes: list[tuple[int, ...]], num_classes: int) -> np.ndarray:
    counts = np.zeros(num_classes, dtype=np.int64)
    for ids in classes:
        counts[list(ids)] += 1
    return counts


def _records(file: Path, split: str, labels: tuple[int, bool], problems: list[str]) -> list:
    classes = []
    with open(file, "rb") as stream:
        scan_offsets(stream, f"{split}/{file.name}")  # damaged framing: one named problem
        stream.seek(0)
        try:
            for index, payload in enumerate(iter_records(stream)):
                where = f"{split}/{file.name} record {index}"
                try:
                    record = unpack_record(payload, *labels, where)
                except UserError as exc:
                    problems.append(str(exc))
                    continue
                classes.append(record.classes)
                if problem := _image_problem(record.image, where):
                    problems.append(problem)
        except RecordIOError as exc:
            problems.append(f"{split}/{file.name} is not a readable RecordIO file: {exc}")
    return classes


def _listed(root: Path, lst: Path, split: str, labels: tuple[int, bool], problems: list[str]):
    classes = []
    for entry in read_list(lst, *labels):
        where = f"{split}/{entry.path} ({split}_lst/{lst.name} index {entry.index})"
        if problem := _image_problem(root / split / entry.path, where):
            problems.append(problem)
        classes.append(entry.classes)
    return classes


def check_channels(root: Path, num_classes: int, multi_label: bool) -> ChannelReport:
    """Both splits of the classification channels under ``root``, every problem collected."""
    report, labels = ChannelReport(), (num_classes, multi_label)
    for split in SPLITS:
        try:
            rec, lst = record_file(root, split), list_file(root, split)
            if rec is not None:
                source = f"{split}/{rec.name}"
                classes = _records(rec, split, labels, report.problems)
            elif lst is not None:
                source = f"{split}/ listed by {split}_lst/{lst.name}"
                classes = _listed(root, lst, split, labels, report.problems)
            else:
                report.problems.append(
                    f"Channel '{split}' holds no image classification data: give a .rec file in "
                    f"{split}/, or images in {split}/ with one .lst file in {split}_lst/."
                )
                continue
        except UserError as exc:  # a bad list line or damaged framing: the file is named
            report.problems.append(str(exc))
            continue
        report.splits[split] = SplitReport(source, len(classes), _counts(classes, num_classes))
    return report
