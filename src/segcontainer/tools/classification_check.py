"""The data check ``segcontainer validate`` runs on image classification channels, behind one
function, ``check_channels``: training's own File-mode reading and check of each split
(tasks.classification.file_mode.read_split: every bad list line, record, manifest line and
image named), and the images per class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segcontainer.tasks.classification.check import Problems, class_counts
from segcontainer.tasks.classification.file_mode import Labels, read_split
from segcontainer.tools.classification_data import SPLITS, list_file, record_file
from segcontainer.tools.validate import LayoutPaths


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


def _source(root: Path, split: str) -> str:
    lst = list_file(root, split) if (root / f"{split}_lst").is_dir() else None
    if lst is not None:
        return f"{split}/ listed by {split}_lst/{lst.name}"
    rec = record_file(root, split)
    return f"{split}/{rec.name}" if rec is not None else f"{split}/"


def check_channels(root: Path, num_classes: int, multi_label: bool) -> ChannelReport:
    """Both splits of the classification channels under ``root``, every problem collected."""
    report, problems = ChannelReport(), Problems()
    labels = Labels(num_classes, multi_label)
    for split in SPLITS:
        read = read_split(LayoutPaths(root), split, None, labels, problems)
        if read is not None:
            counts = class_counts([c for c in read.classes if c], num_classes)
            report.splits[split] = SplitReport(_source(root, split), len(read.classes), counts)
    report.problems = [text for texts in problems.found.values() for text in texts]
    return report
