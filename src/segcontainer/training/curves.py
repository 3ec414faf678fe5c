"""Per-epoch training curves in output/data/: training_curves.csv and training_curves.png."""

from __future__ import annotations

import csv
from pathlib import Path


class TrainingCurves:
    """Per-epoch figures in output/data/: training_curves.csv and training_curves.png."""

    FIELDS = (
        "epoch",
        "train_loss",
        "validation_mIOU",
        "validation_pixel_accuracy",
        "learning_rate",
        "epoch_seconds",
        "images_per_second",
    )

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
            writer = csv.DictWriter(handle, self.FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)
        self._plot()

    def _plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")  # no display in a container
        from matplotlib import pyplot as plt

        epochs = [r["epoch"] for r in self.rows]
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        left.plot(epochs, [r["train_loss"] for r in self.rows], marker="o")
        left.set(title="train loss", xlabel="epoch")
        for key in ("validation_mIOU", "validation_pixel_accuracy"):
            right.plot(epochs, [r[key] for r in self.rows], marker="o", label=key)
        right.set(title="validation", xlabel="epoch", ylim=(0, 1))
        right.legend()
        fig.tight_layout()
        fig.savefig(self.folder / "training_curves.png", dpi=80)
        plt.close(fig)
