"""``segcontainer validate``: the training-time data check on a folder, without training.

    segcontainer validate data/ --num-classes 3

ROOT is a layout root (``train/``, ``train_annotation/``, ``validation/``,
``validation_annotation/``, optionally ``label_map/``, as the converters and ``tile`` write
it) or a folder laid out like ``/opt/ml`` (its ``input/data/``). Each split is found, paired
and checked by the very functions ``train`` runs before its first step (``data.loaders``'
``find_split``, ``data.check``, ``data.label_maps``), so the verdict is training's: exit 0
when training would accept the data, 1 otherwise, with every problem and the files named.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segcontainer.config.environment import Paths
from segcontainer.data import check
from segcontainer.data.label_maps import (
    IGNORE_INDEX,
    SPLITS,
    LabelMap,
    read_label_map_folder,
)
from segcontainer.data.loaders import find_split
from segcontainer.errors import UserError
from segcontainer.tools.layout import read_class_names

# Without --num-classes or class_names.txt every label below 255 is accepted, and the
# number of classes is read off the masks instead.
ANY_LABEL = IGNORE_INDEX


@dataclass(frozen=True)
class LayoutPaths(Paths):
    """Paths whose channels are the folders of a layout root (ROOT/train, ...), where
    ``train`` finds them under ``input/data``."""

    @property
    def data_dir(self) -> Path:
        return self.base


@dataclass
class SplitCount:
    pairs: int
    pixels: np.ndarray | None = None  # (num_classes,) labelled pixels; None when not checked
    ignored: int = 0


@dataclass
class Validation:
    """What the check found: counts, histogram, problems (training refuses) and notes."""

    root: Path
    num_classes: int
    num_classes_from: str
    class_names: list[str]
    label_map: str
    splits: dict[str, SplitCount] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        out = [f"validate {self.root}:"]
        out.append(f"  num_classes {self.num_classes} ({self.num_classes_from})")
        out.append(f"  label map: {self.label_map}")
        for split in SPLITS:
            count = self.splits.get(split)
            out.append(f"  {split:<10} {count.pairs if count else 0:6d} image/mask pairs")
        out.append("  pixels per class (share of the split's labelled pixels), train / validation:")
        columns = [self.splits.get(s) for s in SPLITS]
        for index in range(self.num_classes):
            name = self.class_names[index] if index < len(self.class_names) else f"class_{index}"
            cells = [_cell(c, index) for c in columns]
            out.append(f"    {index:3d} {name:<20} {cells[0]} / {cells[1]}")
        ignored = [_cell(c, None) for c in columns]
        out.append(f"    255 {'(ignore)':<20} {ignored[0]} / {ignored[1]}".rstrip())
        out += [f"  note: {note}" for note in self.notes]
        if self.problems:
            problems = f"{len(self.problems)} problem" + ("s" if len(self.problems) > 1 else "")
            out.append(f"training would refuse this data ({problems}):")
            out += [f"  - {problem}" for problem in self.problems]
        else:
            out.append("training would accept this data; hyperparameters for it:")
            out.append(f"  num_classes={self.num_classes}")
            train = self.splits.get("train")
            out.append(f"  num_training_samples={train.pairs if train else 0}")
        return out


def _cell(count: SplitCount | None, index: int | None) -> str:
    """Pixels of class ``index`` (None: ignored pixels) and their share, 21 characters."""
    if count is None or count.pixels is None:
        return f"{'-':>12}{'':9}"
    if index is None:
        return f"{count.ignored:12d}{'':9}"
    pixels = int(count.pixels[index])
    return f"{pixels:12d} ({100 * pixels / (int(count.pixels.sum()) or 1):5.1f}%)"


def _label_maps(paths: Paths, given: Path | None) -> tuple[dict[str, LabelMap], str]:
    """Each split's label map: --label-map FILE (one JSON label map for both splits) or
    FOLDER (a label_map channel), else ROOT/label_map/ as training reads it, else identity."""
    if given is not None and given.is_file():
        try:
            spec = json.loads(given.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"--label-map {given} is not readable JSON: {exc}.") from exc
        label_map = LabelMap.from_spec(spec, f"--label-map {given}")
        return {split: label_map for split in SPLITS}, f"{given} (both splits)"
    if given is not None and not given.is_dir():
        raise UserError(f"--label-map {given} does not exist: give a JSON file or a folder.")
    folder = given if given is not None else paths.channel("label_map")
    maps = read_label_map_folder(folder)
    return maps, (f"{folder}" if folder.is_dir() else "identity (no label_map/ folder)")


def _num_classes(root: Path, given: int | None, names: list[str]) -> tuple[int, str]:
    if given is not None:
        if not 1 <= given <= 254:
            raise UserError(f"--num-classes must be in 1..254, got {given}.")
        return given, "--num-classes"
    if names:
        return len(names), f"the {len(names)} lines of {root / 'class_names.txt'}"
    return ANY_LABEL, "not given"


def validate(
    root: Path, num_classes: int | None = None, label_map: Path | None = None
) -> Validation:
    """Run training's data check on ROOT; problems are collected, not raised."""
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; give the folder that holds train/ etc.")
    paths = Paths(root) if (root / "input" / "data").is_dir() else LayoutPaths(root)
    names = read_class_names(paths.data_dir)
    classes, classes_from = _num_classes(paths.data_dir, num_classes, names)
    result = Validation(root, classes, classes_from, names, "identity")
    try:
        maps, result.label_map = _label_maps(paths, label_map)
    except UserError as exc:
        result.problems.append(str(exc))
        return result
    raw_train: set[int] = set()
    for split in SPLITS:
        try:
            found = find_split(paths, split)
        except UserError as exc:
            result.problems.append(str(exc))
            continue
        count = SplitCount(len(found.samples))
        result.splits[split] = count
        with tqdm(total=len(found.samples), desc=f"check {split}", unit="pair") as bar:
            try:
                summary = check.check_split(found, split, maps[split].lut, classes, bar.update)
            except UserError as exc:
                result.problems.append(str(exc))
                continue
        count.pixels, count.ignored = summary.pixels_per_class, summary.ignored_pixels
        raw_train |= summary.raw_values if split == "train" else set()
    if classes == ANY_LABEL:
        _guess_num_classes(result)
    train = result.splits.get("train")
    if train is not None and train.pixels is not None:
        hint = check.binary_255_hint(raw_train, result.num_classes, maps["train"].spec)
        if hint:
            result.problems.append(hint)
        absent = [i for i in range(result.num_classes) if train.pixels[i] == 0]
        if absent:
            result.notes.append(
                f"classes {absent} have no pixel in the training set: the model cannot learn them."
            )
        result.notes.append(
            f"mini_batch_size must be at most {train.pairs} (the train pairs) for training to "
            "form a batch."
        )
    return result


def _guess_num_classes(result: Validation) -> None:
    """Without --num-classes: the highest label found + 1, and a note saying so."""
    used = [
        int(np.flatnonzero(c.pixels).max())
        for c in result.splits.values()
        if c.pixels is not None and c.pixels.any()
    ]
    result.num_classes = max([*used, 0]) + 1 if used else 1
    result.num_classes_from = "the highest label in the masks + 1; pass --num-classes to check it"
    for count in result.splits.values():
        if count.pixels is not None:
            count.pixels = count.pixels[: result.num_classes]
