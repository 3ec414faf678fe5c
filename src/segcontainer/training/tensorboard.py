"""TensorBoard event files: each epoch's figures and a few validation pictures, written by
global rank 0 alone with torch.utils.tensorboard's SummaryWriter (the tensorboard package's
format, which `tensorboard --logdir` and SageMaker's TensorBoard read).

The folder is the job's TensorBoardOutputConfig LocalPath, else output/tensorboard
(config.environment.read_tensorboard_dir); SageMaker uploads it to S3 while the job runs when
the job has a TensorBoardOutputConfig. Every epoch is flushed when written, so a stopped or
failed job keeps the epochs it finished. The step of every value is the epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import torch

from segcontainer.errors import UserError
from segcontainer.metrics import ValidationScores

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger(__name__)

PICTURES = 4  # validation images drawn each epoch: a forward pass each, on rank 0 only

# The curves' columns (training.curves) that are not train_* or validation_*, by section
SECTIONS = {
    "learning_rate": "train/learning_rate",
    "epoch_seconds": "speed/epoch_seconds",
    "images_per_second": "speed/images_per_second",
}


def tag(column: str) -> str:
    """The TensorBoard tag of a curves column: train_loss -> train/loss, validation_mIOU ->
    validation/mIOU (TensorBoard groups tags by what precedes the first slash)."""
    if column in SECTIONS:
        return SECTIONS[column]
    for split in ("train", "validation"):
        if column.startswith(f"{split}_"):
            return f"{split}/{column.removeprefix(split + '_')}"
    return column


class Board:
    """Rank 0's writer (``writer`` None: another rank, which writes nothing); a context
    manager that closes the file."""

    def __init__(self, writer: SummaryWriter | None = None):
        self.writer = writer

    @classmethod
    def open(cls, folder: Path, first_epoch: int) -> Board:
        """A writer of a new event file in ``folder``. ``first_epoch`` is the epoch this run
        starts at: TensorBoard hides what earlier runs in the folder wrote for it and after
        (purge_step), e.g. an epoch reported before a stop whose checkpoint came before it."""
        from torch.utils.tensorboard import SummaryWriter  # rank 0 alone imports it

        try:
            folder.mkdir(parents=True, exist_ok=True)
            writer = SummaryWriter(str(folder), purge_step=first_epoch)
        except OSError as exc:
            raise UserError(
                f"TensorBoard's event files cannot be written in {folder}: {exc}. Set "
                "TensorBoardOutputConfig's LocalPath (container_local_output_path) to a "
                "writable folder, or leave it out (/opt/ml/output/tensorboard)."
            ) from exc
        log.info("TensorBoard event files in %s", folder)
        return cls(writer)

    def __enter__(self) -> Board:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self.writer is not None:
            self.writer.close()

    @property
    def active(self) -> bool:
        return self.writer is not None

    def epoch(
        self,
        row: Mapping[str, float],
        scores: ValidationScores,
        class_names: Sequence[str],
        data_share: float,
        pictures: Sequence[tuple[str, torch.Tensor]] = (),
    ) -> None:
        """Write an epoch and flush it: the curves' ``row`` (its ``epoch`` is the step), the
        per-class scores (validation_IOU/<class name>; a class whose score is undefined is
        left out), the share of the epoch spent waiting for data, and the pictures
        ((3, H, W) uint8)."""
        if self.writer is None:
            return
        step = int(row["epoch"])
        for column, value in row.items():
            if column != "epoch":
                self.writer.add_scalar(tag(column), value, step)
        self.writer.add_scalar("speed/data_loading_share", data_share, step)
        for name, value in zip(class_names, scores.per_class, strict=True):
            if value is not None:  # a slash would nest the class in a group of its own
                tag_name = f"validation_{scores.per_class_name}/{name.replace('/', '_')}"
                self.writer.add_scalar(tag_name, value, step)
        for name, picture in pictures:
            self.writer.add_image(f"validation_images/{name}", picture, step)
        self.writer.flush()
