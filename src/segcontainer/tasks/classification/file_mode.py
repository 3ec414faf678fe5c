"""Image classification's File-mode splits (File and FastFile input), in the contract's three
forms, read and checked: a ``.rec`` file in the split's channel (an ``.idx`` beside it is not
needed); images in the split's channel listed by the one ``.lst`` file of ``<split>_lst``; or an
augmented manifest in the split's channel (its references resolved as segmentation resolves
them; the label attribute is the one key besides ``source-ref`` and the ``*-metadata`` keys,
read by the channel's ``label-format``). Every bad item goes to the check's Problems."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from segcontainer.config.environment import ChannelConfig, Paths
from segcontainer.data.channels import visible_files
from segcontainer.data.manifest import S3_CACHE, find_manifest, resolve_reference
from segcontainer.data.recordio import RecordIOError, iter_records
from segcontainer.errors import UserError
from segcontainer.tasks.classification.check import Problems, check_images
from segcontainer.tasks.classification.dataset import ListDataset, RecordDataset, Transformed
from segcontainer.tasks.classification.manifest_labels import label_format, manifest_classes
from segcontainer.tasks.classification.records import ListEntry, list_lines, unpack_record

FORMS = (
    "a .rec file in '{split}'; images in '{split}' with one .lst file in '{split}_lst'; or an "
    "augmented manifest (one .manifest or .jsonl file) in '{split}'"
)


@dataclass(frozen=True)
class Labels:
    num_classes: int
    multi_label: bool


@dataclass(frozen=True)
class FileSplit:
    """A checked split: its dataset (no transform yet: ``with_transform``) and each item's
    classes, in the dataset's order."""

    name: str
    dataset: Transformed
    classes: tuple[tuple[int, ...], ...]


def _unchanged(image):
    return image


def read_split(
    paths: Paths, split: str, channel: ChannelConfig | None, labels: Labels, problems: Problems
) -> FileSplit | None:
    """The split in whichever form its channels hold; None (with the problem added) when they
    hold none of the three."""
    folder = paths.channel(split)
    if paths.channel(f"{split}_lst").is_dir():
        return _list_split(paths, split, labels, problems)
    if folder.is_dir():
        records = visible_files(folder, "*.rec", recursive=False)
        if len(records) == 1:
            return _record_split(records[0], split, labels, problems)
        if records:
            names = ", ".join(r.name for r in records)
            problems.add(
                "layout",
                f"Channel '{split}' holds {len(records)} .rec files ({names}); give one per "
                "channel (im2rec.py packs a whole list into one).",
            )
            return None
        manifest = find_manifest(folder)
        if manifest is not None:
            content_type = channel.content_type if channel else None
            return _manifest_split(manifest, split, label_format(content_type), labels, problems)
    held = "is missing" if not folder.is_dir() else "holds none of them"
    problems.add(
        "layout", f"Channel '{split}' {held}: give {FORMS.format(split=split)}, as the built-in."
    )
    return None


def _list_split(paths: Paths, split: str, labels: Labels, problems: Problems) -> FileSplit | None:
    lists = visible_files(paths.channel(f"{split}_lst"), "*.lst")
    root = paths.channel(split)
    if len(lists) != 1 or not root.is_dir():
        found = ", ".join(f.name for f in lists) or "none"
        problems.add(
            "layout",
            f"Channel '{split}_lst' must hold one .lst file (found: {found}) listing images of "
            f"the channel '{split}'" + ("" if root.is_dir() else ", which is missing") + ".",
        )
        return None
    entries, bad_lines = list_lines(lists[0], labels.num_classes, labels.multi_label)
    for text in bad_lines:
        problems.add("entry", text)
    where = f"({split}_lst/{lists[0].name} line {{}})"
    check_images(
        ((root / e.path, f"{split}/{e.path} " + where.format(e.line)) for e in entries), problems
    )
    dataset = ListDataset(
        root, entries, _unchanged, labels.num_classes, labels.multi_label, lists[0].name
    )
    return FileSplit(split, dataset, tuple(e.classes for e in entries))


def _record_split(file: Path, split: str, labels: Labels, problems: Problems) -> FileSplit | None:
    try:
        dataset = RecordDataset(file, _unchanged, labels.num_classes, labels.multi_label)
    except UserError as exc:  # damaged framing: its records cannot be told apart
        problems.add("layout", str(exc))
        return None
    classes: list[tuple[int, ...]] = []

    def images():
        with open(file, "rb") as stream:
            for index, payload in enumerate(iter_records(stream)):
                where = f"{split}/{file.name} record {index}"
                try:
                    record = unpack_record(payload, labels.num_classes, labels.multi_label, where)
                except UserError as exc:
                    problems.add("entry", str(exc))
                    classes.append(())
                    continue
                classes.append(record.classes)
                yield record.image, where

    try:
        check_images(images(), problems)
    except RecordIOError as exc:
        problems.add("layout", f"{split}/{file.name} is not a readable RecordIO file: {exc}.")
        return None
    return FileSplit(split, dataset, tuple(classes))


def _manifest_split(
    manifest: Path, split: str, fmt: str, labels: Labels, problems: Problems
) -> FileSplit:
    entries = []
    text = manifest.read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append(_manifest_entry(line, number, manifest, fmt, labels))
        except UserError as exc:
            problems.add("entry", str(exc))
    if not entries and not problems.found:
        problems.add("layout", f"The manifest {split}/{manifest.name} lists no images.")
    where = f"({split}/{manifest.name} line {{}})"
    check_images(((e.path, f"{e.path} " + where.format(e.line)) for e in entries), problems)
    dataset = ListDataset(
        manifest.parent, entries, _unchanged, labels.num_classes, labels.multi_label, manifest.name
    )
    return FileSplit(split, dataset, tuple(e.classes for e in entries))


def _manifest_entry(line: str, number: int, manifest: Path, fmt: str, labels: Labels) -> ListEntry:
    where = f"{manifest.name} line {number}"
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where} is not JSON: {exc}.") from None
    names = (
        [k for k in entry if k != "source-ref" and not k.endswith("-metadata")]
        if isinstance(entry, dict)
        else []
    )
    if not isinstance(entry, dict) or "source-ref" not in entry or len(names) != 1:
        found = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise UserError(
            f"{where} needs 'source-ref' (the image) and exactly one label attribute besides "
            f"the '*-metadata' keys (Ground Truth's job name, e.g. \"class\"); found {found}."
        )
    classes = manifest_classes(entry[names[0]], labels.num_classes, labels.multi_label, fmt, where)
    path = resolve_reference(str(entry["source-ref"]), manifest, S3_CACHE)
    return ListEntry(number, classes, path, number)  # type: ignore[arg-type] - a local path
