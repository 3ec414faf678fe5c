"""``segcontainer groundtruth`` for a Ground Truth image classification job: the output manifest ->
image classification's image + list channels (``train``, ``validation``, ``train_lst``,
``validation_lst``).

Per the SageMaker Developer Guide ("Labeling job output data", sms-data-output.md), a labelled
line of a single-label job (label attribute ``sport``) reads::

    {"source-ref": "s3://bucket/image_example.png", "sport": 0,
     "sport-metadata": {"class-name": "football", "confidence": 0.0,
        "type": "groundtruth/image-classification", "job-name": "identify-sport",
        "human-annotated": "yes", "creation-date": "2018-10-18T22:18:13.527256"}}

and one of a multi-label job holds the list of class ids and, in its metadata, a ``class-map``
naming them (``"type": "groundtruth/image-classification-multilabel"``)::

    {"source-ref": "s3://bucket/a.jpg", "animals": [0, 2],
     "animals-metadata": {"class-map": {"0": "cat", "2": "bird"},
        "confidence-map": {"0": 0.93, "2": 0.87},
        "type": "groundtruth/image-classification-multilabel", ...}}

The label value is the class id (the index in the job's label category list); the names come
from the metadata of the lines, merged (an id no line names becomes ``class_<id>``). Images are
written unchanged under ``train/`` and ``validation/``; ``train_lst/train.lst`` and
``validation_lst/validation.lst`` hold ``index<TAB>label(s)<TAB>path`` lines as MXNet's im2rec.py
writes them: the class id, or for multi-label one 0/1 column per class.
"""

from __future__ import annotations

import io
import posixpath
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from PIL import Image

from segcontainer.errors import UserError
from segcontainer.tools.groundtruth import Fetcher, read_lines, source_stem
from segcontainer.tools.layout import CLASS_NAMES_FILE, image_suffix
from segcontainer.tools.list_layout import SPLITS, ClassSummary, ListWriter, list_line
from segcontainer.tools.splits import SplitOptions, unmatched_notes

SINGLE_TYPE = "groundtruth/image-classification"
MULTI_TYPE = "groundtruth/image-classification-multilabel"
SHOWN_PROBLEMS = 20


def is_classification(entry: dict, attribute: str) -> bool:
    """Whether ``attribute`` of a line is an image classification label, by its metadata: the
    type Ground Truth writes, or (metadata without a type) a class-name or class-map. Other
    types with a class-name (label verification, text classification) are not."""
    meta = entry.get(f"{attribute}-metadata")
    if attribute.endswith("-ref") or not isinstance(meta, dict):
        return False
    if "type" in meta:
        return meta["type"] in (SINGLE_TYPE, MULTI_TYPE)
    return "class-name" in meta or "class-map" in meta


def classification_attributes(lines: list[tuple[int, dict]]) -> Counter:
    """Each classification label attribute of the manifest and how many lines hold it."""
    return Counter(
        key
        for _, entry in lines
        for key in entry
        if not key.endswith("-metadata") and is_classification(entry, key)
    )


@dataclass(frozen=True)
class Labelled:
    number: int  # the manifest line
    source: str  # its source-ref
    classes: tuple[int, ...]


@dataclass
class Labels:
    """The labels of the lines, the class names gathered from their metadata, and every
    problem found (line number, message)."""

    multi_label: bool
    items: list[Labelled] = field(default_factory=list)
    names: dict[int, tuple[str, int]] = field(default_factory=dict)  # id -> (name, first line)
    problems: list[tuple[int, str]] = field(default_factory=list)

    def name(self, class_id: object, name: object, number: int) -> None:
        if not isinstance(name, str) or not name:
            self.problems.append((number, f"class {class_id} has the name {name!r}"))
            return
        try:
            key = int(str(class_id))
        except ValueError:
            self.problems.append((number, f"class-map key {class_id!r} is not a class id"))
            return
        known, first = self.names.setdefault(key, (name, number))
        if known != name:
            self.problems.append(
                (number, f"class {key} is named {name!r}, but line {first} names it {known!r}")
            )

    def class_names(self) -> list[str]:
        used = [c for item in self.items for c in item.classes]
        count = max([*(c + 1 for c in used), *(c + 1 for c in self.names)], default=0)
        return [self.names[i][0] if i in self.names else f"class_{i}" for i in range(count)]


def _class_id(value: object) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else None


def parse_labels(labelled: list[tuple[int, dict]], attribute: str) -> Labels:
    """Every labelled line's class ids and names; a bad line is recorded, not raised, so all
    of them are named together."""
    first = labelled[0][1]
    meta = first.get(f"{attribute}-metadata") or {}
    labels = Labels(isinstance(first[attribute], list) or meta.get("type") == MULTI_TYPE)
    for number, entry in labelled:
        value, meta = entry[attribute], entry.get(f"{attribute}-metadata")
        meta = meta if isinstance(meta, dict) else {}
        if labels.multi_label:
            ids = [_class_id(v) for v in value] if isinstance(value, list) else [None]
            table = meta.get("class-map", {})
            if None in ids or not isinstance(table, dict):
                labels.problems.append(
                    (
                        number,
                        f"{attribute} is {value!r}; a multi-label job's label is a list of "
                        "class ids (integers from 0) with a class-map in its metadata",
                    )
                )
                continue
            for key, name in table.items():
                labels.name(key, name, number)
            classes = tuple(sorted(set(ids)))
        else:
            class_id = _class_id(value)
            if class_id is None:
                labels.problems.append(
                    (
                        number,
                        f"{attribute} is {value!r}; a single-label job's label is one class "
                        "id (an integer from 0)",
                    )
                )
                continue
            if "class-name" in meta:
                labels.name(class_id, meta["class-name"], number)
            classes = (class_id,)
        labels.items.append(Labelled(number, entry["source-ref"], classes))
    return labels


def refuse(problems: list[tuple[int, str]], source: str) -> None:
    """One UserError naming every bad line (the first SHOWN_PROBLEMS), or nothing."""
    if not problems:
        return
    shown = "\n".join(f"  line {n}: {m}" for n, m in sorted(problems)[:SHOWN_PROBLEMS])
    more = len(problems) - SHOWN_PROBLEMS
    raise UserError(
        f"{source}: {len(problems)} bad lines, nothing written:\n{shown}"
        + (f"\n  ... and {more} more" if more > 0 else "")
        + "\nFix or remove those lines (or choose another --label-attribute)."
    )


def convert_classification(
    manifest: str,
    out: Path,
    split: SplitOptions,
    lines: list[tuple[int, dict]],
    attribute: str,
    fetcher: Fetcher,
) -> ClassSummary:
    """Write the classification layout for ``attribute``'s labels (every bad line named)."""
    labelled = [(n, e) for n, e in lines if attribute in e]
    skipped = [n for n, e in lines if attribute not in e]
    if not labelled:
        raise UserError(f"{manifest}: none of its {len(lines)} lines has the label {attribute}.")
    labels = parse_labels(labelled, attribute)
    stems: dict[str, int] = {}
    for item in labels.items:
        first = stems.setdefault(source_stem({"source-ref": item.source}), item.number)
        if first != item.number:
            labels.problems.append(
                (
                    item.number,
                    f"{item.source} has the base name of line {first}'s image; rename one of them",
                )
            )
    refuse(labels.problems, manifest)
    names = labels.class_names()
    base = (
        posixpath.dirname(manifest) if manifest.startswith("s3://") else str(Path(manifest).parent)
    )
    splits, unmatched = split.assign(list(stems))
    per_class, images = {s: Counter() for s in SPLITS}, Counter()
    text = {s: [] for s in SPLITS}
    with ListWriter(out) as writer:
        problems = []
        for index, item in enumerate(labels.items):
            stem = source_stem({"source-ref": item.source})
            try:
                data = fetcher.read(item.source, base)
                Image.open(io.BytesIO(data)).verify()
            except Exception as exc:  # a UserError from the fetcher, or Pillow's many kinds
                problems.append((item.number, f"{item.source} cannot be read as an image: {exc}"))
                continue
            fallback = PurePosixPath(urlparse(item.source).path).suffix or ".jpg"
            name = f"{stem}{image_suffix(data, fallback)}"
            where = splits[stem]
            writer.write(out / where / name, data)
            text[where].append(list_line(index, item.classes, len(names), labels.multi_label, name))
            per_class[where].update(item.classes)
            images[where] += 1
        refuse(problems, manifest)  # inside the writer: what this run wrote is removed
        for where in SPLITS:
            writer.write(out / f"{where}_lst" / f"{where}.lst", "".join(text[where]).encode())
        writer.write(out / CLASS_NAMES_FILE, "".join(f"{n}\n" for n in names).encode())
    notes = unmatched_notes(unmatched)
    if split.manifest_prefix:
        notes.append(
            "  note: --manifest-prefix unused: the .lst files hold paths relative to the image "
            "channels, wherever they are uploaded."
        )
    if skipped:
        shown = ", ".join(map(str, skipped[:10])) + (" ..." if len(skipped) > 10 else "")
        notes.insert(0, f"  skipped {len(skipped)} lines without {attribute}: lines {shown}")
    return ClassSummary(out, names, labels.multi_label, per_class, images, notes)


def convert_job(
    manifest: str,
    out: Path,
    split: SplitOptions,
    *,
    s3_roots: Sequence[str] = (),
    label_attribute: str | None = None,
) -> ClassSummary | object:
    """``segcontainer groundtruth``: a classification job's manifest converted here, any other
    handed to the segmentation converter (groundtruth.convert). The label attribute decides:
    the one given, else the only label of the manifest."""
    from segcontainer.tools import groundtruth

    fetcher = Fetcher(Fetcher.parse_roots(list(s3_roots)))
    text = fetcher.read(manifest, ".").decode("utf-8", errors="replace")
    lines = read_lines(text, manifest)
    found = classification_attributes(lines)
    if label_attribute is not None and label_attribute in found:
        attribute = label_attribute
    elif label_attribute is None and len(found) == 1:
        attribute = next(iter(found))
    elif label_attribute is None and len(found) > 1:
        listed = ", ".join(f"{key} ({count} lines)" for key, count in found.most_common())
        raise UserError(
            f"{manifest} holds several image classification labels: {listed}. Choose one with "
            "--label-attribute NAME."
        )
    else:  # a segmentation job, or a label attribute that is not a classification one
        return groundtruth.convert(
            manifest, out, split, s3_roots=s3_roots, label_attribute=label_attribute
        )
    return convert_classification(manifest, out, split, lines, attribute, fetcher)
