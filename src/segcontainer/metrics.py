"""Validation scores as the epoch loop keeps them (any task), and segmentation's: confusion-matrix
mIoU and pixel accuracy over a whole validation set, and its metric lines.

mIoU is the mean IoU over the classes present in the ground truth or the prediction of the
validation set; a class absent from both has no defined IoU and is left out of the mean
(rather than counted as 0, which would cap mIoU whenever the validation set lacks a class).
Pixels labelled 255 are ignored everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from segcontainer.data.label_maps import IGNORE_INDEX

# The lines SageMaker's metric definitions parse; the regexes are in the README.
METRIC_LINE = "#quality_metric: host={host}, epoch={epoch}, {split} {name} <{kind}>={value:.4f}"
METRIC_DEFINITIONS = [
    {
        "Name": "train:loss",
        "Regex": r"#quality_metric: host=\S+, epoch=\d+, train loss <loss>=(\S+)",
    },
    {
        "Name": "validation:mIOU",
        "Regex": r"#quality_metric: host=\S+, epoch=\d+, validation mIOU <score>=(\S+)",
    },
    {
        "Name": "validation:pixel_accuracy",
        "Regex": r"#quality_metric: host=\S+, epoch=\d+, validation pixel_accuracy <score>=(\S+)",
    },
]


@dataclass(frozen=True)
class ValidationScores:
    """A validation's scores as the task-free machinery keeps them: named values in the order
    the task reports them, the first (the headline: mIoU, accuracy) being the one early
    stopping and the best model compare; per-class values for the log and model_info.json.
    model_info.json and the curves name each value ``validation_<name>``."""

    values: tuple[tuple[str, float], ...]
    per_class: tuple[float | None, ...] = ()  # None: undefined for that class
    per_class_name: str = "IOU"

    @property
    def headline(self) -> str:
        return self.values[0][0]

    @property
    def score(self) -> float:
        return self.values[0][1]

    def state(self) -> dict:
        """Plain types: a checkpoint holds them (torch.load's weights_only reads them)."""
        return {
            "values": [list(pair) for pair in self.values],
            "per_class": list(self.per_class),
            "per_class_name": self.per_class_name,
        }

    @classmethod
    def from_state(cls, state: dict) -> ValidationScores:
        if "values" not in state:  # a checkpoint written before tasks: segmentation's three
            return Scores(state["miou"], state["pixel_accuracy"], tuple(state["per_class_iou"]))
        values = tuple((str(name), float(value)) for name, value in state["values"])
        return cls(values, tuple(state["per_class"]), state["per_class_name"])


@dataclass(frozen=True)
class EpochReport:
    """What an epoch's metric lines report (the task words them: Task.metric_lines)."""

    epoch: int
    train_loss: float
    train: tuple[tuple[str, float], ...]  # scores measured while training (train accuracy)
    validation: ValidationScores
    seconds: float
    class_names: tuple[str, ...] = ()  # the job's class_names; () when it gave none


class ConfusionMatrix:
    """Accumulates a (num_classes x num_classes) matrix, rows = truth, columns = prediction."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, truth: torch.Tensor, prediction: torch.Tensor) -> None:
        truth, prediction = truth.reshape(-1).long(), prediction.reshape(-1).long()
        keep = truth != IGNORE_INDEX
        index = truth[keep] * self.num_classes + prediction[keep]
        self.matrix += torch.bincount(index, minlength=self.num_classes**2).view_as(self.matrix)

    def reduce(self) -> None:
        """Sum the matrix over all processes (a no-op without torch.distributed)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.matrix)

    def scores(self) -> Scores:
        return Scores.from_matrix(self.matrix.cpu())


@dataclass(frozen=True, init=False)
class Scores(ValidationScores):
    """Segmentation's scores: mIoU (the headline), pixel accuracy and per-class IoU."""

    def __init__(
        self, miou: float, pixel_accuracy: float, per_class_iou: tuple[float | None, ...]
    ) -> None:
        super().__init__((("mIOU", miou), ("pixel_accuracy", pixel_accuracy)), per_class_iou)

    @property
    def miou(self) -> float:
        return self.values[0][1]

    @property
    def pixel_accuracy(self) -> float:
        return self.values[1][1]

    @property
    def per_class_iou(self) -> tuple[float | None, ...]:
        return self.per_class

    @classmethod
    def from_matrix(cls, matrix: torch.Tensor) -> Scores:
        matrix = matrix.double()
        intersection = matrix.diag()
        union = matrix.sum(0) + matrix.sum(1) - intersection
        present = union > 0
        iou = torch.where(present, intersection / union.clamp_min(1), torch.nan)
        labelled = matrix.sum()
        return cls(
            miou=float(iou[present].mean()) if present.any() else 0.0,
            pixel_accuracy=float(intersection.sum() / labelled) if labelled > 0 else 0.0,
            per_class_iou=tuple(None if v != v else float(v) for v in iou.tolist()),
        )


def class_rates(matrix: torch.Tensor) -> dict[str, tuple[float | None, ...]]:
    """Per-class precision (of the pixels predicted as the class, the share truly of it),
    recall (of its true pixels, the share found) and false-positive rate (of the pixels not
    of the class, the share predicted as it), from a matrix with rows = truth, columns =
    prediction. None where the denominator is 0 (no such pixels)."""
    matrix = matrix.double()
    hits = matrix.diag()
    predicted, true = matrix.sum(0), matrix.sum(1)
    negatives = matrix.sum() - true

    def ratio(top: torch.Tensor, bottom: torch.Tensor) -> tuple[float | None, ...]:
        return tuple(float(t / b) if b > 0 else None for t, b in zip(top, bottom, strict=True))

    return {
        "precision": ratio(hits, predicted),
        "recall": ratio(hits, true),
        "false_positive_rate": ratio(predicted - hits, negatives),
    }


def metric_class_names(class_names: Sequence[str], num_classes: int) -> tuple[str, ...]:
    """Each class's name in metric names, safe in a regex and a CloudWatch metric name: its
    class_names entry with every character other than an ASCII letter, digit or underscore
    made "_" ("traffic light" -> "traffic_light"), a name taken already getting "_2", "_3"...
    in class order; ``class_<id>`` without class_names."""
    if not class_names:
        return tuple(f"class_{i}" for i in range(num_classes))
    taken: set[str] = set()
    safe = []
    for name in class_names:
        base = re.sub(r"[^A-Za-z0-9_]", "_", name)
        unique, suffix = base, 2
        while unique in taken:
            unique, suffix = f"{base}_{suffix}", suffix + 1
        taken.add(unique)
        safe.append(unique)
    return tuple(safe)


def metric_lines(host: str, report: EpochReport) -> list[str]:
    """Segmentation's lines: train loss, each validation score (mIOU, pixel_accuracy), then
    each class's IoU (``IoU_<metric_class_names>``); a class with no defined IoU this epoch
    (neither in the validation truth nor predicted) has no line."""
    per_class = report.validation.per_class
    names = metric_class_names(report.class_names, len(per_class))
    values = [
        ("train", "loss", "loss", report.train_loss),
        *(("validation", name, "score", value) for name, value in report.validation.values),
        *(
            ("validation", f"IoU_{name}", "score", iou)
            for name, iou in zip(names, per_class, strict=True)
            if iou is not None
        ),
    ]
    return [
        METRIC_LINE.format(host=host, epoch=report.epoch, split=s, name=n, kind=k, value=v)
        for s, n, k, v in values
    ]
