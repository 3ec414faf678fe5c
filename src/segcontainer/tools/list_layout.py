"""Image classification's channel layout as the converters write it: images under ``train/`` and
``validation/``, ``train_lst/train.lst`` and ``validation_lst/validation.lst`` holding
``index<TAB>label(s)<TAB>path`` lines as MXNet's im2rec.py writes them (the class id, or for
multi-label one 0/1 column per class), and ``class_names.txt``; with the summary printed after.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from segcontainer.errors import UserError
from segcontainer.tools.layout import LayoutWriter

CHANNELS = ("train", "validation", "train_lst", "validation_lst")
SPLITS = ("train", "validation")


def list_line(index: int, classes: tuple[int, ...], count: int, multi: bool, path: str) -> str:
    """One ``.lst`` line as im2rec.py writes it (labels printed with ``%f``)."""
    values = [float(i in classes) for i in range(count)] if multi else [float(classes[0])]
    return "\t".join([str(index), *(f"{v:f}" for v in values), path]) + "\n"


class ListWriter(LayoutWriter):
    """LayoutWriter's clean-up on failure, for the image and list channels."""

    def __post_init__(self) -> None:
        for channel in CHANNELS:
            folder = self.root / channel
            if folder.is_dir() and any(folder.iterdir()):
                raise UserError(
                    f"{folder} already holds files; write to a new OUT folder (or empty it), so "
                    "old and new images do not mix."
                )
        for channel in CHANNELS:
            self._make_folder(self.root / channel)

    def write(self, path: Path, data: bytes) -> None:
        self._write(path, data)


@dataclass
class ClassSummary:
    """What was written: images per split and per class, and the hyperparameters to use."""

    root: Path
    class_names: list[str]
    multi_label: bool
    per_class: dict[str, Counter]  # split -> class id -> images
    images: Counter  # split -> images
    notes: list[str]

    def lines(self) -> list[str]:
        count = {s: self.images[s] for s in SPLITS}
        out = [f"wrote {self.root}:"]
        out += [f"  {s:<10} {count[s]:6d} images" for s in SPLITS]
        if not count["validation"]:
            out.append("  warning: no validation images; training needs a validation channel.")
        out.append("  images per class (train / validation):")
        for index, name in enumerate(self.class_names):
            train, validation = self.per_class["train"][index], self.per_class["validation"][index]
            out.append(f"    {index:3d} {name:<20} {train:6d} / {validation:6d}")
        out += self.notes
        out.append("hyperparameters for this data:")
        out.append(f"  num_classes={len(self.class_names)}")
        out.append(f"  num_training_samples={count['train']}")
        if self.multi_label:
            out.append("  multi_label=1")
        out.append(f"  class_names={','.join(n.replace(',', ';') for n in self.class_names)}")
        out.append("channels: train, validation (application/x-image), train_lst, validation_lst")
        return out
