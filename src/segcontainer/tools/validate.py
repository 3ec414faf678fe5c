"""``segcontainer validate``: the training-time data check on a folder, without training.

    segcontainer validate data/ --num-classes 3
    segcontainer validate opt_ml/            # with opt_ml/input/config/hyperparameters.json

ROOT is a layout root (``train/``, ``train_annotation/``, ``validation/``,
``validation_annotation/``, optionally ``label_map/``, as the converters and ``tile`` write
it) or a folder laid out like ``/opt/ml`` (its ``input/data/``). Each split is found, paired
and checked by the very functions ``train`` runs before its first step (``data.splits``'
``find_split``, ``data.check``, ``data.label_maps``), so the verdict is training's: exit 0
when training would accept the data, 1 otherwise, with every problem and the files named.

When ROOT is (or is the ``input/data`` of) a folder whose ``input/config/hyperparameters.json``
exists, that file is parsed as ``train`` parses it (``config.hyperparameters.resolve``), so its
``num_classes``, ``class_names`` and ``mini_batch_size`` are the ones checked;
``--num-classes`` and ``--class-names`` override it, as they override ``class_names.txt``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segcontainer.config.environment import Paths, read_hyperparameters
from segcontainer.config.hyperparameters import SPEC, Config, resolve
from segcontainer.config.params import name_list
from segcontainer.data import check
from segcontainer.data.label_maps import (
    IGNORE_INDEX,
    SPLITS,
    LabelMap,
    read_label_map_folder,
)
from segcontainer.data.splits import find_split
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
    class_names_from: str = ""
    config: str = ""  # the hyperparameters file used and the values taken from it, if any
    splits: dict[str, SplitCount] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        out = [f"validate {self.root}:"]
        if self.config:
            out.append(f"  hyperparameters: {self.config}")
        out.append(f"  num_classes {self.num_classes} ({self.num_classes_from})")
        if self.class_names_from:
            out.append(f"  class names from {self.class_names_from}")
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


@dataclass
class Settings:
    """num_classes, class names and (from a hyperparameters file) the whole config that the
    data is checked against, each with where it came from."""

    num_classes: int
    num_classes_from: str
    names: list[str]
    names_from: str
    config: Config | None = None
    config_line: str = ""
    problems: list[str] = field(default_factory=list)


def config_file(root: Path) -> Path | None:
    """The hyperparameters.json `train` would read for ROOT: ROOT/input/config/ when ROOT is
    laid out like /opt/ml, ../config/ when ROOT is such a folder's input/data."""
    inside = root.name == "data" and root.parent.name == "input"
    for base in (root, root.parent.parent if inside else None):
        if base is not None and Paths(base).hyperparameters_file.is_file():
            return Paths(base).hyperparameters_file
    return None


def _read_config(
    file: Path, num_classes: int | None, class_names: str | None
) -> tuple[Config | None, dict[str, str], list[str]]:
    """``file`` with the options' overrides, resolved as `train` resolves it: (the config or
    None when invalid, the raw values, the problems training would refuse it for)."""
    try:
        given = read_hyperparameters(Paths(file.parents[2]))
    except UserError as exc:
        return None, {}, [str(exc)]
    if num_classes is not None:
        given["num_classes"] = str(num_classes)
    if class_names is not None:
        given["class_names"] = class_names
    try:
        return resolve(given), given, []
    except UserError as exc:
        return None, given, [f"{file}: {exc}"]


def _parsed(name: str, given: dict[str, str]) -> object:
    """One value of an invalid config, parsed alone, or None: the data is still checked with
    a num_classes the file gives when another hyperparameter is what is wrong."""
    try:
        return SPEC[name].parse(given[name]) if name in given else None
    except ValueError:
        return None


def _names(paths: Paths, option: str | None, values: dict, file: Path | None):
    """The class names and where they came from: --class-names, the config, class_names.txt."""
    if option is not None:
        return list(name_list(option)), "--class-names"
    if values.get("class_names"):
        return list(values["class_names"]), f"class_names in {file}"
    names = read_class_names(paths.data_dir)
    return names, (str(paths.data_dir / "class_names.txt") if names else "")


def _classes(option: int | None, values: dict, file: Path | None, names: list[str], source: str):
    """num_classes and where it came from: --num-classes, the config, the names, else none
    (then it is read off the masks)."""
    if option is not None:
        return option, "--num-classes"
    if values.get("num_classes") is not None:
        return values["num_classes"], f"num_classes in {file}"
    if names:
        counted = "lines" if source.endswith("class_names.txt") else "names"
        return len(names), f"the {len(names)} {counted} of {source}"
    return ANY_LABEL, "not given"


def _shown(value: object) -> str:
    if value is None or value == ():
        return "(not set)"
    return ",".join(value) if isinstance(value, tuple | list) else str(value)


def settings(
    paths: Paths, root: Path, num_classes: int | None, class_names: str | None
) -> Settings:
    """What the data is checked against: --num-classes / --class-names, else the
    hyperparameters file `train` would read, else class_names.txt, else the masks."""
    if num_classes is not None and not 1 <= num_classes <= 254:
        raise UserError(f"--num-classes must be in 1..254, got {num_classes}.")
    file = config_file(root)
    config, given, problems = (
        _read_config(file, num_classes, class_names) if file else (None, {}, [])
    )
    values = config.as_dict() if config is not None else {k: _parsed(k, given) for k in given}
    names, names_from = _names(paths, class_names, values, file)
    classes, classes_from = _classes(num_classes, values, file, names, names_from)
    if file is None and class_names is not None and len(names) != classes:
        problems.append(
            f"--class-names has {len(names)} names but num_classes is {classes}: give one name "
            "per class"
        )
    line = ""
    if file is not None:
        used = ("num_classes", "class_names", "mini_batch_size")
        line = f"{file} ({', '.join(f'{k}={_shown(values.get(k))}' for k in used)})"
        options = {"--num-classes": num_classes, "--class-names": class_names}
        overridden = [option for option, value in options.items() if value is not None]
        if overridden:
            line += f"; {' and '.join(overridden)} given on the command line"
    return Settings(classes, classes_from, names, names_from, config, line, problems)


def validate(
    root: Path,
    num_classes: int | None = None,
    label_map: Path | None = None,
    class_names: str | None = None,
) -> Validation:
    """Run training's data check on ROOT; problems are collected, not raised."""
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; give the folder that holds train/ etc.")
    paths = Paths(root) if (root / "input" / "data").is_dir() else LayoutPaths(root)
    chosen = settings(paths, root, num_classes, class_names)
    classes = chosen.num_classes
    result = Validation(
        root, classes, chosen.num_classes_from, chosen.names, "identity", chosen.names_from
    )
    result.config = chosen.config_line
    result.problems += chosen.problems
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
        count.pixels, count.ignored = summary.class_counts, summary.ignored_pixels
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
        _batch_check(result, chosen.config, train.pairs)
    return result


def _batch_check(result: Validation, config: Config | None, pairs: int) -> None:
    """With a config, its mini_batch_size is checked as `train` checks it; else a note."""
    if config is None:
        result.notes.append(
            f"mini_batch_size must be at most {pairs} (the train pairs) for training to form a "
            "batch."
        )
    elif config.mini_batch_size > pairs:
        result.problems.append(
            f"mini_batch_size is {config.mini_batch_size} but the train channel holds only "
            f"{pairs} image/mask pairs, so no full batch can be formed. Lower mini_batch_size "
            "or add data."
        )


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
