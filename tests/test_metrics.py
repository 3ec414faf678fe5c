"""Metric arithmetic on hand-made confusion matrices, and the metric lines SageMaker parses."""

from __future__ import annotations

import re

import pytest
import torch

from segcontainer.metrics import (
    METRIC_DEFINITIONS,
    ConfusionMatrix,
    EpochReport,
    Scores,
    class_rates,
    metric_class_names,
    metric_lines,
)
from tests.support.training import readme_metric_regexes


def test_perfect_prediction() -> None:
    scores = Scores.from_matrix(torch.tensor([[5, 0], [0, 3]]))
    assert scores.miou == 1.0
    assert scores.pixel_accuracy == 1.0
    assert scores.per_class_iou == (1.0, 1.0)


def test_two_class_arithmetic() -> None:
    # rows: truth, columns: prediction
    scores = Scores.from_matrix(torch.tensor([[3, 1], [2, 4]]))
    iou0 = 3 / (3 + 1 + 2)
    iou1 = 4 / (4 + 2 + 1)
    assert scores.per_class_iou == pytest.approx((iou0, iou1))
    assert scores.miou == pytest.approx((iou0 + iou1) / 2)
    assert scores.pixel_accuracy == pytest.approx(7 / 10)


def test_class_absent_from_truth_and_prediction_is_left_out_of_the_mean() -> None:
    matrix = torch.tensor([[4, 0, 0], [1, 5, 0], [0, 0, 0]])
    scores = Scores.from_matrix(matrix)
    assert scores.per_class_iou[2] is None
    assert scores.miou == pytest.approx((4 / 5 + 5 / 6) / 2)


def test_class_predicted_but_never_true_counts_as_zero() -> None:
    matrix = torch.tensor([[4, 0, 1], [0, 5, 0], [0, 0, 0]])
    scores = Scores.from_matrix(matrix)
    assert scores.per_class_iou[2] == 0.0
    assert scores.miou == pytest.approx((4 / 5 + 1 + 0) / 3)


def test_empty_matrix_gives_zero_not_nan() -> None:
    scores = Scores.from_matrix(torch.zeros(3, 3, dtype=torch.int64))
    assert scores.miou == 0.0 and scores.pixel_accuracy == 0.0


def test_update_ignores_255_and_accumulates_over_batches() -> None:
    matrix = ConfusionMatrix(3)
    truth = torch.tensor([[0, 1, 255], [2, 2, 255]], dtype=torch.uint8)
    prediction = torch.tensor([[0, 2, 1], [2, 1, 0]])
    matrix.update(truth, prediction)
    matrix.update(truth, prediction)
    expected = torch.tensor([[2, 0, 0], [0, 0, 2], [0, 2, 2]])
    assert torch.equal(matrix.matrix, expected)
    assert matrix.scores().pixel_accuracy == pytest.approx(4 / 8)


def general_and_per_class(definitions: dict[str, str]) -> tuple[dict, dict]:
    """The README's definitions split: the three every job prints, the per-class examples."""
    per_class = {n: r for n, r in definitions.items() if n.startswith("validation:IoU_")}
    return {n: r for n, r in definitions.items() if n not in per_class}, per_class


def test_readme_gives_the_three_metric_definitions_the_code_uses() -> None:
    general, per_class = general_and_per_class(readme_metric_regexes())
    assert set(general) == {"train:loss", "validation:mIOU", "validation:pixel_accuracy"}
    assert general == {d["Name"]: d["Regex"] for d in METRIC_DEFINITIONS}
    # and examples of per-class ones (their lines: tests/training/test_class_metric_lines.py)
    assert set(per_class) == {"validation:IoU_car", "validation:IoU_traffic_light"}


def test_metric_lines_parse_with_the_readme_regexes() -> None:
    """The three lines, then one per class with a defined IoU (traffic light's is undefined
    this epoch: no line, so its README regex finds nothing)."""
    scores = Scores(miou=0.6123, pixel_accuracy=0.9123, per_class_iou=(0.9, 0.41, None))
    names = ("background", "car", "traffic light")
    lines = metric_lines("algo-1", EpochReport(3, 0.4123, (), scores, 1.0, names))
    assert lines == [
        "#quality_metric: host=algo-1, epoch=3, train loss <loss>=0.4123",
        "#quality_metric: host=algo-1, epoch=3, validation mIOU <score>=0.6123",
        "#quality_metric: host=algo-1, epoch=3, validation pixel_accuracy <score>=0.9123",
        "#quality_metric: host=algo-1, epoch=3, validation IoU_background <score>=0.9000",
        "#quality_metric: host=algo-1, epoch=3, validation IoU_car <score>=0.4100",
    ]
    values = {}
    for name, regex in readme_metric_regexes().items():
        matches = [m.group(1) for line in lines if (m := re.search(regex, line))]
        assert len(matches) <= 1, name
        if matches:
            values[name] = float(matches[0])
    assert values == {
        "train:loss": 0.4123,
        "validation:mIOU": 0.6123,
        "validation:pixel_accuracy": 0.9123,
        "validation:IoU_car": 0.41,
    }


def test_per_class_lines_without_class_names_name_class_ids() -> None:
    scores = Scores(miou=0.5, pixel_accuracy=0.8, per_class_iou=(None, 0.25))
    lines = metric_lines("algo-2", EpochReport(0, 1.0, (), scores, 1.0))
    assert lines[3:] == [
        "#quality_metric: host=algo-2, epoch=0, validation IoU_class_1 <score>=0.2500"
    ]


def test_metric_class_names_are_regex_safe_and_unique() -> None:
    names = ("car", "traffic light", "traffic-light", "Car", "traffic_light_2", "a.b*c", "ö")
    safe = metric_class_names(names, len(names))
    # anything but an ASCII letter, digit or _ becomes _; a name taken gets _2, _3, ...
    assert safe == (
        "car",
        "traffic_light",
        "traffic_light_2",
        "Car",  # names differ in case: different metrics
        "traffic_light_2_2",  # its own name was taken by the third class's
        "a_b_c",
        "_",
    )
    assert all(re.fullmatch(r"\w+", name, re.ASCII) for name in safe)
    assert metric_class_names((), 3) == ("class_0", "class_1", "class_2")


def test_class_rates_and_undefined_ones() -> None:
    # rows: truth, columns: prediction; class 2 is never true and never predicted.
    rates = class_rates(torch.tensor([[3, 1, 0], [2, 4, 0], [0, 0, 0]]))
    assert rates["precision"] == pytest.approx((3 / 5, 4 / 5, None))
    assert rates["recall"] == pytest.approx((3 / 4, 4 / 6, None))
    # false positives over the pixels of other classes: 2 of 6 for class 0, 1 of 4 for class 1
    assert rates["false_positive_rate"] == pytest.approx((2 / 6, 1 / 4, 0.0))
