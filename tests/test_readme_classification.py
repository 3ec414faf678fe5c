"""The documentation's image classification page (docs/image-classification.md) agrees with the
code: its hyperparameter table is the task's SPEC (names, order, defaults, reasons), and its
metric_definitions are the regexes the task's metric lines are written for, and they read those
lines."""

from __future__ import annotations

import re

from segcontainer.metrics import EpochReport, ValidationScores
from segcontainer.tasks.classification import scores
from segcontainer.tasks.classification.hyperparameters import SPEC
from tests.support.readme import assert_table_is_spec, metric_regexes, page, table_rows


def test_the_readme_table_lists_each_classification_hyperparameter_with_its_default() -> None:
    assert_table_is_spec(table_rows(page("image-classification")), SPEC)


def test_the_readme_gives_the_metric_definitions_the_task_prints() -> None:
    readme = metric_regexes("image-classification")
    assert readme == {d["Name"]: d["Regex"] for d in scores.METRIC_DEFINITIONS}
    # segmentation's part keeps its own three, none of classification's
    assert set(metric_regexes("segmentation")).isdisjoint(readme)


def test_the_readme_regexes_read_the_metric_lines() -> None:
    validation = ValidationScores((("accuracy", 0.78), ("top_k_accuracy_5", 0.95)))
    lines = scores.metric_lines(
        "algo-1", EpochReport(3, 0.41, (("accuracy", 0.81),), validation, 12.3)
    )
    found = {
        name: [float(m) for line in lines for m in re.findall(regex, line)]
        for name, regex in metric_regexes("image-classification").items()
    }
    assert found == {
        "train:accuracy": [0.81],
        "validation:accuracy": [0.78],
        "validation:top_k_accuracy": [0.95],
    }
    # the README's example lines are the code's form
    example = page("image-classification").split("**Metric lines**", 1)[1]
    assert "Epoch[3] Time cost=12.300" in lines
    for line in lines:
        assert re.sub(r"=[0-9.]+$", "=", line) in re.sub(r"=[0-9.]+\n", "=\n", example), line


def test_the_readme_task_rule_names_exactly_the_classification_only_hyperparameters() -> None:
    from segcontainer.config.hyperparameters import SPEC as SEGMENTATION_SPEC

    rule = page("image-classification").split("**Which task a job is.**", 1)[1]
    listed = rule.split("Image Classification has (", 1)[1].split(")", 1)[0]
    named = re.findall(r"`(\w+)`", listed)
    assert sorted(named) == sorted(n for n in SPEC if n not in SEGMENTATION_SPEC)
