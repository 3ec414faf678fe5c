"""What training shows the user besides the metrics: the curves files, and the first step's
timing line (issue 27, items 9 and 10)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from segcontainer.precision import Precision
from segcontainer.tasks.segmentation.loss import Objective
from segcontainer.training import epochs
from segcontainer.training.curves import TrainingCurves
from tests.support.checkpoints import trainables


def row(epoch: int, learning_rate: float) -> dict:
    return dict(
        epoch=epoch,
        train_loss=1.0 / (epoch + 1),
        validation_mIOU=0.5,
        validation_pixel_accuracy=0.8,
        learning_rate=learning_rate,
        epoch_seconds=2.0,
        images_per_second=10.0,
    )


@pytest.mark.parametrize("epochs", [1, 3])
def test_curves_show_whole_epochs(tmp_path: Path, epochs: int) -> None:
    curves = TrainingCurves(tmp_path)
    curves.rows = [row(epoch, 0.0) for epoch in range(epochs)]
    for axes in curves.figure().axes:
        low, high = axes.get_xlim()
        ticks = [t for t in axes.get_xticks() if low <= t <= high]
        assert high - low >= 1, "one epoch is not drawn on a sliver of the axis"
        assert all(float(t).is_integer() for t in ticks), ticks
        assert set(range(epochs)) <= set(ticks)


def test_curves_csv_has_a_column_per_field(tmp_path: Path) -> None:
    curves = TrainingCurves(tmp_path)
    curves.add(**row(0, 0.01))
    with open(tmp_path / "training_curves.csv") as handle:
        (written,) = csv.DictReader(handle)
    assert float(written["learning_rate"]) == 0.01
    assert list(written) == list(row(0, 0.01))  # the loop's columns, in its order
    assert (tmp_path / "training_curves.png").stat().st_size > 1000


class Pixels(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def first_step_line(model: nn.Module, caplog) -> str:
    device = torch.device("cpu")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    batches = [(torch.randn(2, 3, 8, 8), torch.randint(0, 2, (2, 8, 8)))]
    precision = Precision.choose("fp32", device)
    with caplog.at_level(logging.INFO, logger=epochs.log.name):
        epochs.train_one_epoch(
            trainables(model, optimizer, scheduler),
            batches,
            precision=precision,
            device=device,
            epoch=0,
            objective=Objective(),
            time_first_step=True,
        )
    (line,) = [r.getMessage() for r in caplog.records if "first training step" in r.getMessage()]
    return line


def test_first_step_names_only_what_it_includes(caplog) -> None:
    eager = first_step_line(Pixels(), caplog)
    assert eager.startswith("first training step: ") and eager.endswith(" s"), eager
    caplog.clear()
    compiled = torch.compile(Pixels(), backend="eager")  # cheap: no code generation
    assert first_step_line(compiled, caplog).endswith(" s (compilation included)")
