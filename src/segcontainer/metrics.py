"""Confusion-matrix mIoU and pixel accuracy over a whole validation set, and the metric lines.

mIoU is the mean IoU over the classes present in the ground truth or the prediction of the
validation set; a class absent from both has no defined IoU and is left out of the mean
(rather than counted as 0, which would cap mIoU whenever the validation set lacks a class).
Pixels labelled 255 are ignored everywhere.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Scores:
    miou: float
    pixel_accuracy: float
    per_class_iou: tuple[float | None, ...]  # None: class absent from truth and prediction

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


def metric_lines(host: str, epoch: int, train_loss: float, scores: Scores) -> list[str]:
    values = [
        ("train", "loss", "loss", train_loss),
        ("validation", "mIOU", "score", scores.miou),
        ("validation", "pixel_accuracy", "score", scores.pixel_accuracy),
    ]
    return [
        METRIC_LINE.format(host=host, epoch=epoch, split=s, name=n, kind=k, value=v)
        for s, n, k, v in values
    ]
