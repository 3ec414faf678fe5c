"""Image classification's loss, accuracies and metric lines, on hand-computed examples."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from segcontainer.errors import UserError
from segcontainer.metrics import EpochReport, ValidationScores
from segcontainer.precision import Precision
from segcontainer.tasks.classification import loss, scores
from segcontainer.tasks.classification.hyperparameters import resolve

CPU = torch.device("cpu")
FP32 = Precision(torch.float32, CPU)


def config(**given: str):
    return resolve(
        {"num_classes": "3", "num_training_samples": "4", "mini_batch_size": "2", **given}
    )


class Fixed(nn.Module):
    """A 'model' whose logits are its input: the scores are computed by hand below."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_single_label_loss_is_the_mean_cross_entropy() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    targets = torch.tensor([0, 2])
    expected = (-math.log(math.e**2 / (math.e**2 + 2)) - math.log(1 / (math.e + 2))) / 2
    value = loss.ClassificationLoss(multi_label=False)(logits, targets)
    assert float(value) == pytest.approx(expected, rel=1e-6)


def test_data_parallel_share_replaces_the_local_count() -> None:
    logits, targets = torch.zeros(2, 3), torch.tensor([0, 1])
    local = loss.ClassificationLoss(multi_label=False)(logits, targets)
    # two ranks of two images each: the global count is 4, each rank's share 2 (= its count)
    shared = loss.ClassificationLoss(multi_label=False)(
        logits, targets, share=lambda count: count * 4 / 2 / 2
    )
    assert float(shared) == pytest.approx(float(local))
    halved = loss.ClassificationLoss(multi_label=False)(logits, targets, share=lambda c: c * 2)
    assert float(halved) == pytest.approx(float(local) / 2)


def test_multi_label_loss_weights_positive_terms_by_label_frequency() -> None:
    weights = loss.label_frequency_weights(np.array([1, 3, 0]), images=4)
    assert weights.tolist() == pytest.approx([3.0, 1 / 3, 1.0])  # negatives / positives
    logits, targets = torch.zeros(1, 3), torch.tensor([[1.0, 1.0, 0.0]])
    value = loss.ClassificationLoss(multi_label=True, pos_weight=weights)(logits, targets)
    log2 = math.log(2)  # BCE of a 0 logit, whatever the label
    assert float(value) == pytest.approx((3 * log2 + log2 / 3 + log2) / 3, rel=1e-6)


def test_weighted_loss_needs_the_counts_of_file_mode() -> None:
    job = config(multi_label="1", use_weighted_loss="1")
    with pytest.raises(UserError, match="Pipe mode streams without counting"):
        loss.objective(job, None, CPU)
    built = loss.objective(job, np.array([1, 3, 2]), CPU)
    assert built.multi_label and built.pos_weight.tolist() == pytest.approx([3.0, 1 / 3, 1.0])


def test_validation_accuracy_top_k_and_per_class_recall() -> None:
    logits = torch.tensor(
        [[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0]]
    )  # top-1: 0, 0, 1, 2; top-2: {0,1}, {0,1}, {1,2}, {1,2}
    targets = torch.tensor([0, 1, 2, 2])
    loader = [(logits[:2], targets[:2]), (logits[2:], targets[2:])]
    result = scores.validate(Fixed(), loader, config(top_k="2"), FP32, CPU)
    assert result.values == (("accuracy", 0.5), ("top_k_accuracy_2", 1.0))
    assert result.headline == "accuracy" and result.score == 0.5
    assert result.per_class == (1.0, 0.0, 0.5) and result.per_class_name == "recall"


def test_multi_label_validation_counts_each_class_decision() -> None:
    logits = torch.tensor([[1.0, -1.0, 1.0], [-1.0, -1.0, 1.0]])  # sigmoid >= 0.5 where > 0
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    result = scores.validate(Fixed(), [(logits, targets)], config(multi_label="1"), FP32, CPU)
    assert result.values == (("accuracy", pytest.approx(4 / 6)),)  # top_k: single-label only
    assert result.per_class == (1.0, 0.5, 0.5) and result.per_class_name == "accuracy"


def test_training_accuracy_accumulates_over_batches() -> None:
    metric = scores.train_metric(config(), CPU)
    metric.update(torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), torch.tensor([0, 1]))
    metric.update(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([2]))
    assert metric.values() == (("accuracy", pytest.approx(2 / 3)),)


def test_metric_lines_are_mxnets_and_parse_with_the_definitions() -> None:
    validation = ValidationScores((("accuracy", 0.78), ("top_k_accuracy_5", 0.95)))
    lines = scores.metric_lines(
        "algo-1", EpochReport(3, 0.5, (("accuracy", 0.81),), validation, 12.3456)
    )
    assert lines == [
        "Epoch[3] Train-accuracy=0.810000",
        "Epoch[3] Time cost=12.346",
        "Epoch[3] Validation-accuracy=0.780000",
        "Epoch[3] Validation-top_k_accuracy_5=0.950000",
    ]
    parsed = {
        d["Name"]: [float(m.group(1)) for line in lines if (m := re.search(d["Regex"], line))]
        for d in scores.METRIC_DEFINITIONS
    }
    assert parsed == {
        "train:accuracy": [0.81],
        "validation:accuracy": [0.78],
        "validation:top_k_accuracy": [0.95],
    }
