"""``segcontainer validate`` on image classification channels (a ``.lst`` or ``.rec`` among
them): the data check (classification_check.check_channels) with num_classes and multi_label
taken as ``train`` takes them.

    segcontainer validate data/ --num-classes 3
    segcontainer validate opt_ml/          # with opt_ml/input/config/hyperparameters.json

num_classes: --num-classes, else the hyperparameters file's, else the lines of class_names.txt.
multi_label: --multi-label, else the file's, else read off the data (a list with more than one
label column, or a record with a label vector) and said so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from segcontainer.config.environment import Paths, read_hyperparameters
from segcontainer.config.params import name_list
from segcontainer.errors import UserError
from segcontainer.tasks.classification.hyperparameters import SPEC, resolve
from segcontainer.tasks.classification.records import IR_HEADER
from segcontainer.tools.classification_check import ChannelReport, check_channels
from segcontainer.tools.classification_data import SPLITS, data_root, list_file, record_file
from segcontainer.tools.layout import read_class_names
from segcontainer.tools.validate import config_file


@dataclass
class ClassValidation:
    root: Path
    num_classes: int
    multi_label: bool
    class_names: list[str]
    report: ChannelReport
    settings: list[str] = field(default_factory=list)  # where each value came from
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        out = [f"validate {self.root} (image classification):", *self.settings]
        splits = self.report.splits
        for split in SPLITS:
            found = splits.get(split)
            where = f" ({found.source})" if found else ""
            out.append(f"  {split:<10} {found.images if found else 0:6d} images{where}")
        out.append("  images per class, train / validation:")
        for index in range(self.num_classes):
            name = self.class_names[index] if index < len(self.class_names) else f"class_{index}"
            cells = [
                f"{int(splits[s].per_class[index]):6d}" if s in splits else "     -" for s in SPLITS
            ]
            out.append(f"    {index:3d} {name:<20} {cells[0]} / {cells[1]}")
        out += [f"  note: {note}" for note in self.notes]
        if self.problems:
            count = f"{len(self.problems)} problem" + ("s" if len(self.problems) > 1 else "")
            out.append(f"training would refuse this data ({count}):")
            out += [f"  - {problem}" for problem in self.problems]
        else:
            train = splits.get("train")
            out.append("training would accept this data; hyperparameters for it:")
            out.append(f"  num_classes={self.num_classes}")
            out.append(f"  num_training_samples={train.images if train else 0}")
            if self.multi_label:
                out.append("  multi_label=1")
        return out


@dataclass(frozen=True)
class Chosen:
    """The hyperparameters file train would read (if any), resolved as train resolves it, and
    num_classes / multi_label / class_names / mini_batch_size from it (each parsed alone when
    another value makes the file invalid)."""

    file: str = ""
    values: dict = field(default_factory=dict)
    problems: tuple[str, ...] = ()


def _parsed(name: str, given: dict[str, str]) -> object:
    try:
        return SPEC[name].parse(given[name]) if name in given else None
    except ValueError:
        return None


def _config(root: Path, num_classes: int | None) -> Chosen:
    file = config_file(root)
    if file is None:
        return Chosen()
    given = read_hyperparameters(Paths(file.parents[2]))
    if num_classes is not None:
        given["num_classes"] = str(num_classes)
    try:
        return Chosen(str(file), resolve(given).as_dict())
    except UserError as exc:
        values = {name: _parsed(name, given) for name in given}
        return Chosen(str(file), values, (f"{file}: {exc}",))


def guess_multi_label(root: Path) -> bool | None:
    """Whether the data's labels are vectors: a list line with more than one label column, or a
    record whose header announces labels (MXNet's flag > 0); None when nothing tells."""
    for split in SPLITS:
        lst = list_file(root, split)
        if lst is not None:
            for line in lst.read_text(errors="replace").splitlines():
                if line.strip():
                    return len(line.split("\t")) > 3
        rec = record_file(root, split)
        if rec is not None:
            with open(rec, "rb") as stream:
                header = stream.read(8 + IR_HEADER.size)
            if len(header) == 8 + IR_HEADER.size:
                return IR_HEADER.unpack_from(header, 8)[0] > 0
    return None


def validate_classification(
    root: Path,
    num_classes: int | None = None,
    class_names: str | None = None,
    multi_label: bool | None = None,
) -> ClassValidation:
    """The classification data check on ROOT; problems are collected, not raised."""
    data = data_root(root)
    chosen = _config(root, num_classes)
    config = chosen.values
    settings = [f"  hyperparameters: {chosen.file}"] if chosen.file else []
    names = list(name_list(class_names)) if class_names else []
    names = names or list(config.get("class_names") or ()) or read_class_names(data)
    if num_classes is None:
        num_classes = config.get("num_classes") or len(names) or None
        if num_classes is None:
            raise UserError(
                f"num_classes of {root} is unknown: give --num-classes N (or class_names.txt, "
                "or a hyperparameters file as train reads it)."
            )
    notes = []
    if multi_label is None and config.get("multi_label") is not None:
        multi_label = bool(config["multi_label"])
    elif multi_label is None:
        multi_label = bool(guess_multi_label(data))
        notes.append(f"multi_label={int(multi_label)} read off the labels; --multi-label sets it")
    settings.append(f"  num_classes {num_classes}, multi_label {int(multi_label)}")
    report = check_channels(data, num_classes, multi_label)
    result = ClassValidation(root, num_classes, multi_label, names, report, settings)
    result.problems += [*chosen.problems, *report.problems]
    result.notes += notes
    train = report.splits.get("train")
    if train is not None:
        absent = [i for i in range(num_classes) if train.per_class[i] == 0]
        if absent:
            result.notes.append(
                f"classes {absent} have no training image: the model cannot learn them."
            )
        batch = config.get("mini_batch_size")
        if batch is not None and batch > train.images:
            result.problems.append(
                f"mini_batch_size is {batch} but the train channel holds "
                f"{train.images} images: the number of input images must be at least "
                "mini_batch_size. Lower mini_batch_size or add images."
            )
    return result
