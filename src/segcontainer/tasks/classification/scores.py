"""Image classification's scores: training accuracy (counted on the training batches as they
train, as MXNet's fit counts it), validation accuracy and top-k accuracy of what the endpoint
would answer, and the metric lines in the built-in's MXNet form.

Single-label accuracy is the share of images whose highest-scoring class is the label; top-k
the share whose label is among the k highest. Multi-label accuracy is the share of (image,
class) decisions that are right, each class predicted present when its sigmoid is at least
0.5 (the endpoint's probabilities); top-k does not apply to multi-label models. Per class:
recall (single-label: the share of the class's images predicted as it) or the class's decision
accuracy (multi-label).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from segcontainer.errors import TrainingStopped
from segcontainer.metrics import EpochReport, ValidationScores
from segcontainer.precision import Precision

# The lines SageMaker's metric definitions parse: MXNet's fit lines, as the built-in printed
# them; the regexes are the README's (a test runs them against real training output).
METRIC_DEFINITIONS = [
    {"Name": "train:accuracy", "Regex": r"Epoch\[\d+\] Train-accuracy=([0-9.]+)"},
    {"Name": "validation:accuracy", "Regex": r"Epoch\[\d+\] Validation-accuracy=([0-9.]+)"},
    {
        "Name": "validation:top_k_accuracy",
        "Regex": r"Epoch\[\d+\] Validation-top_k_accuracy_\d+=([0-9.]+)",
    },
]


def _summed(counts: torch.Tensor) -> torch.Tensor:
    """``counts`` summed over every process (as is without torch.distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        counts = counts.clone()
        torch.distributed.all_reduce(counts)
    return counts


def right_decisions(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N,) single-label: 1 where the top class is the label; (N, C) multi-label: 1 where the
    class's decision (sigmoid >= 0.5, i.e. logit >= 0) matches the label."""
    if targets.dim() == 2:
        return ((logits >= 0) == (targets > 0.5)).long()
    return (logits.argmax(dim=1) == targets).long()


class TrainAccuracy:
    """tasks.task.TrainMetric: right decisions over all decisions, kept on the device."""

    def __init__(self, device: torch.device):
        self.counts = torch.zeros(2, dtype=torch.int64, device=device)  # right, total

    def update(self, out: torch.Tensor, targets: torch.Tensor) -> None:
        right = right_decisions(out.detach().float(), targets)
        self.counts += torch.stack([right.sum(), torch.tensor(right.numel(), device=right.device)])

    def values(self) -> tuple[tuple[str, float], ...]:
        right, total = _summed(self.counts).tolist()
        return (("accuracy", right / max(total, 1)),)


def train_metric(config, device: torch.device) -> TrainAccuracy:
    return TrainAccuracy(device)


class _Counts:
    """Validation's running counts, all on one device and summed over processes at the end."""

    def __init__(self, num_classes: int, top_k: int, device: torch.device):
        self.top_k = top_k
        self.totals = torch.zeros(3, dtype=torch.int64, device=device)  # right, top-k, decisions
        self.class_right = torch.zeros(num_classes, dtype=torch.int64, device=device)
        self.class_total = torch.zeros(num_classes, dtype=torch.int64, device=device)

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        right = right_decisions(logits, targets)
        if targets.dim() == 2:  # multi-label: every (image, class) decision
            top_k = right.new_zeros(())
            self.class_right += right.sum(dim=0)
            self.class_total += len(targets)
        else:
            k = min(self.top_k, logits.shape[1])
            top_k = (logits.topk(k, dim=1).indices == targets[:, None]).any(dim=1).sum()
            self.class_right.index_add_(0, targets, right)
            self.class_total.index_add_(0, targets, torch.ones_like(targets))
        self.totals += torch.stack([right.sum(), top_k, right.new_tensor(right.numel())])

    def scores(self, multi_label: bool) -> ValidationScores:
        totals = _summed(self.totals).tolist()
        class_right, class_total = _summed(self.class_right), _summed(self.class_total)
        per_class = tuple(
            right / total if total else None
            for right, total in zip(class_right.tolist(), class_total.tolist(), strict=True)
        )
        values = [("accuracy", totals[0] / max(totals[2], 1))]
        if self.top_k > 1 and not multi_label:
            values.append((f"top_k_accuracy_{self.top_k}", totals[1] / max(totals[2], 1)))
        return ValidationScores(tuple(values), per_class, "accuracy" if multi_label else "recall")


@torch.no_grad()
def validate(
    model,
    loader,
    config,
    precision: Precision,
    device: torch.device,
    should_stop: Callable[[], bool] = lambda: False,
) -> ValidationScores:
    """Score what the endpoint would answer (tasks.task.Validation; ``config``: a
    ClassificationConfig): the loader prepares each image with the endpoint's transform
    (transforms.eval_transform), the model runs in eval mode."""
    model.eval()
    counts = _Counts(config.num_classes, config.top_k or 1, device)
    for images, targets in loader:
        if should_stop():
            raise TrainingStopped("stopped during validation")
        images = images.to(device, non_blocking=True)
        with precision.autocast():
            logits = model(images).float()
        counts.add(logits, targets.to(device, non_blocking=True))
    return counts.scores(config.multi_label)


def metric_lines(host: str, report: EpochReport) -> list[str]:
    """MXNet's fit lines: ``Epoch[3] Train-accuracy=0.810000``, ``Epoch[3] Time cost=12.345``,
    ``Epoch[3] Validation-accuracy=0.780000`` (and ``Validation-top_k_accuracy_5=`` with
    top_k). One host prints them (the main process), so no host is named."""
    epoch = report.epoch
    return [
        *(f"Epoch[{epoch}] Train-{name}={value:.6f}" for name, value in report.train),
        f"Epoch[{epoch}] Time cost={report.seconds:.3f}",
        *(
            f"Epoch[{epoch}] Validation-{name}={value:.6f}"
            for name, value in report.validation.values
        ),
    ]
