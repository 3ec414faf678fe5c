"""Checkpoints for tests: small trainables, and checkpoints of them written by
``checkpoints.save`` as the epoch loop writes them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from segcontainer.training import checkpoints
from segcontainer.training.checkpoints import Best, Position, Progress
from segcontainer.training.optim import Trainables

FRESH_STOPPING = {"best": -1.0, "stale_epochs": 0}  # early stopping before any epoch
AFTER_EPOCH_0 = Position(1)


def trainables(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> Trainables:
    """``model`` and ``optimizer`` with ``scheduler`` (default: a constant rate) and the
    disabled gradient scaler of fp32 training on the CPU."""
    return Trainables(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler or torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
    )


def save_checkpoint(
    folder: Path,
    state: Trainables,
    *,
    record: dict,
    position: Position = AFTER_EPOCH_0,
    early_stopping: dict = FRESH_STOPPING,
    curves: Sequence[dict] = (),
    best: Best | None = None,
) -> Path:
    """A checkpoint of ``state`` at ``position`` in ``folder``; its path."""
    progress = Progress(
        position=position, early_stopping=dict(early_stopping), curves=list(curves), best=best
    )
    return checkpoints.save(folder, progress=progress, trainables=state, record=record)
