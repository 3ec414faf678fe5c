"""Image classification's labelled images as users make them with MXNet: ``.lst`` list files
and ``.rec`` image records (``im2rec.py``, ``mxnet.recordio.pack``/``pack_img``).

A ``.lst`` line: ``index<TAB>label(s)<TAB>path``, the path relative to the image channel; one
label column (a class id), or one 0/1 column per class for multi-label (im2rec's
``--pack-label``). A ``.rec`` record (framing: data.recordio) holds MXNet's IRHeader, packed
``<IfQQ`` (flag, label, id, id2): flag 0 means ``label`` is the class id; flag k > 0 means k
float32 labels follow the header. Then the encoded image. Every problem names the file and the
line or record, and what to change. A few lines of struct: MXNet itself is not a dependency.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from segcontainer.data.recordio import LENGTH_MASK, MAGIC, RecordIOError, iter_records
from segcontainer.errors import UserError

IR_HEADER = struct.Struct("<IfQQ")  # MXNet's IRHeader: flag, label, id, id2


@dataclass(frozen=True)
class Labelled:
    """One image's labels: the class ids it belongs to (one for single-label data)."""

    index: int  # the .lst index or the record's id
    classes: tuple[int, ...]


@dataclass(frozen=True)
class ListEntry(Labelled):
    path: PurePosixPath  # relative to the image channel
    line: int = 0  # the line of the list (or manifest) naming it; 0: none


@dataclass(frozen=True)
class ImageRecord(Labelled):
    image: bytes  # the encoded image (JPEG or PNG)


def class_ids(
    values: Sequence[float], num_classes: int, multi_label: bool, where: str
) -> tuple[int, ...]:
    """The classes ``values`` name: one class id, or a 0/1 vector of ``num_classes`` entries
    (multi-label); UserError naming ``where`` otherwise."""
    if multi_label:
        if len(values) != num_classes:
            raise UserError(
                f"{where}: {len(values)} label values, but multi_label=1 needs one 0/1 value per "
                f"class (num_classes={num_classes}). Write the labels with im2rec's --pack-label "
                "as a one-hot vector of num_classes entries."
            )
        if any(value not in (0, 1) for value in values):
            raise UserError(f"{where}: multi-label values must be 0 or 1, found {list(values)}.")
        return tuple(i for i, value in enumerate(values) if value == 1)
    if len(values) != 1:
        raise UserError(
            f"{where}: {len(values)} label values for a single-label job; give one class id per "
            "image, or set multi_label=1 for one 0/1 value per class."
        )
    value = values[0]
    if not float(value).is_integer() or not 0 <= value < num_classes:
        raise UserError(
            f"{where}: label {value:g} is not a class id from 0 to {num_classes - 1} "
            f"(num_classes={num_classes}). Class ids are 0-based and contiguous."
        )
    return (int(value),)


def list_lines(
    file: Path, num_classes: int, multi_label: bool
) -> tuple[list[ListEntry], list[str]]:
    """Every line of a ``.lst`` file read and checked (tab-separated columns, a unique integer
    index, labels in range, a relative path inside the channel): the good lines' entries and
    one message per bad line, naming the file and line, so a data check reports them all."""
    entries, problems, seen = [], [], {}
    text = file.read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append(
                _list_line(
                    line, f"{file.name} line {number}", num_classes, multi_label, seen, number
                )
            )
        except UserError as exc:
            problems.append(str(exc))
    return entries, problems


def read_list(file: Path, num_classes: int, multi_label: bool) -> list[ListEntry]:
    """Every line of a ``.lst`` file, checked; UserError naming every bad line."""
    entries, problems = list_lines(file, num_classes, multi_label)
    if problems:
        raise UserError(" ".join(problems))
    return entries


def _list_line(
    line: str, where: str, num_classes: int, multi_label: bool, seen: dict[int, int], number: int
) -> ListEntry:
    columns = line.rstrip("\r\n").split("\t")
    if len(columns) < 3:
        raise UserError(
            f"{where}: {len(columns)} tab-separated columns; a list line is "
            "index<TAB>label(s)<TAB>path (im2rec.py --list writes them)."
        )
    try:
        index = int(columns[0])
        values = [float(column) for column in columns[1:-1]]
    except ValueError:
        raise UserError(f"{where}: the index and labels must be numbers: {line!r}") from None
    if index in seen:
        raise UserError(f"{where}: index {index} is used again (first on line {seen[index]}).")
    seen[index] = number
    classes = class_ids(values, num_classes, multi_label, where)
    return ListEntry(index, classes, _inside(columns[-1], where), number)


def _inside(text: str, where: str) -> PurePosixPath:
    """The image path of a list line, refused when it is absolute or leaves the channel."""
    path = PurePosixPath(text.strip().replace("\\", "/"))
    if not text.strip() or path.is_absolute() or ".." in path.parts:
        raise UserError(
            f"{where}: the image path {text!r} must be relative to the image channel and stay "
            "inside it (no leading / and no '..')."
        )
    return path


def unpack_record(payload: bytes, num_classes: int, multi_label: bool, where: str) -> ImageRecord:
    """One ``.rec`` payload as MXNet's ``recordio.unpack`` reads it, with its labels checked."""
    if len(payload) < IR_HEADER.size:
        raise UserError(
            f"{where}: {len(payload)} bytes, shorter than MXNet's 24-byte image header."
        )
    flag, label, record_id, _ = IR_HEADER.unpack_from(payload)
    start = IR_HEADER.size + 4 * flag
    if flag == 0:
        values: Sequence[float] = (label,)
    elif len(payload) < start:
        raise UserError(f"{where}: the header announces {flag} labels, more than the record holds.")
    else:
        values = struct.unpack_from(f"<{flag}f", payload, IR_HEADER.size)
    classes = class_ids(values, num_classes, multi_label, where)
    return ImageRecord(record_id, classes, payload[start:])


def scan_offsets(stream: BinaryIO, name: str) -> list[int]:
    """Where each record of a ``.rec`` stream starts (a split record: where its first part
    does), read from the framing alone; UserError for a damaged file."""
    size = stream.seek(0, 2)
    stream.seek(0)
    offsets, position, inside_split = [], 0, False
    while True:
        header = stream.read(8)
        if not header:
            break
        if len(header) < 8:
            raise UserError(f"{name} ends inside a record header: the file is truncated.")
        magic, word = struct.unpack("<II", header)
        if magic != MAGIC:
            raise UserError(
                f"{name}: record at byte {position} does not start with RecordIO's magic number: "
                "write the file with MXNet's im2rec.py or recordio.MXRecordIO."
            )
        cflag, length = word >> 29, word & LENGTH_MASK
        if not inside_split:
            offsets.append(position)
        inside_split = cflag in (1, 2)
        position += 8 + length + (-length % 4)
        if position > size + (-length % 4):  # the last record's padding may be left off
            raise UserError(
                f"{name} ends inside a record ({length} bytes announced at byte "
                f"{position - 8 - length - (-length % 4)}): the file is truncated; upload it whole."
            )
        stream.seek(position)
    return offsets


def read_records(
    stream: BinaryIO, name: str, num_classes: int, multi_label: bool
) -> Iterator[ImageRecord]:
    """Every image record of a ``.rec`` stream (a file, or a Pipe-mode FIFO), checked."""
    try:
        for index, payload in enumerate(iter_records(stream)):
            yield unpack_record(payload, num_classes, multi_label, f"{name} record {index}")
    except RecordIOError as exc:
        raise UserError(
            f"{name} is not a readable RecordIO file ({exc}): write it with MXNet's im2rec.py or "
            "recordio.MXRecordIO, and upload it whole."
        ) from exc
