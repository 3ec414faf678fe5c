"""Per-epoch training curves in output/data/: training_curves.csv and training_curves.png."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class TrainingCurves:
    """Per-epoch figures in output/data/: training_curves.csv and training_curves.png.

    ``learning_rate`` is the rate of the epoch's first step (of the resumed step, for an
    epoch resumed mid-way): read after the last step, poly and cosine would show 0 for the
    last epoch. The columns are the first row's: epoch, train_loss, the task's training and
    validation scores (``train_*``, ``validation_*``), learning_rate, epoch time and rate."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.rows: list[dict] = []

    def add(self, **row: float) -> None:
        self.rows.append(row)
        self.write()

    def write(self) -> None:
        """(Re)write both files from the rows; a restarted job's output/ may be empty."""
        if not self.rows:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "training_curves.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)
        self.figure().savefig(self.folder / "training_curves.png", dpi=80)

    def figure(self) -> Figure:
        """Loss and validation scores per epoch, on integer epoch ticks (matplotlib would
        otherwise spread one epoch over -0.04..0.04 with fractional ticks)."""
        from matplotlib.figure import Figure  # imported when drawn: training starts faster
        from matplotlib.ticker import MaxNLocator

        epochs = [r["epoch"] for r in self.rows]
        figure = Figure(figsize=(10, 4))  # not pyplot: no global figure state to close
        left, right = figure.subplots(1, 2)
        left.plot(epochs, [r["train_loss"] for r in self.rows], marker="o")
        left.set(title="train loss", xlabel="epoch")
        scores = [
            k for k in self.rows[0] if k.startswith(("validation_", "train_")) and k != "train_loss"
        ]
        for key in scores:
            right.plot(epochs, [r[key] for r in self.rows], marker="o", label=key)
        right.set(title="scores", xlabel="epoch", ylim=(0, 1))
        right.legend()
        for axes in (left, right):
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            if len(set(epochs)) == 1:
                axes.set_xlim(epochs[0] - 1, epochs[0] + 1)
        figure.tight_layout()
        return figure
