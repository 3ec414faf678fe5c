"""Checkpoints for tests: small trainables, and checkpoints of them written by
``checkpoints.save`` as the epoch loop writes them; a job run in this process, and a real
SIGTERM sent to it at a counted batch."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from segcontainer.training import checkpoints
from segcontainer.training.checkpoints import Best, Position, Progress
from segcontainer.training.entry import StopSignal, main
from segcontainer.training.optim import Trainables
from tests.support.local_mode import SAGEMAKER_JOB

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


def run_in_process(patch: pytest.MonkeyPatch, base: Path, code: int) -> None:
    patch.setenv("SAGEMAKER_BASE_DIR", str(base))
    patch.setenv("TRAINING_JOB_NAME", SAGEMAKER_JOB)
    assert main() == code


def sigterm_before_batch(monkeypatch, after: Path, batch: int) -> None:
    """A real SIGTERM to this process just before batch ``batch`` of the epoch that starts
    once the checkpoint ``after`` is written (deterministic: counted, not timed)."""
    original = StopSignal.__call__
    calls = 0

    def call(self: StopSignal) -> bool:
        nonlocal calls
        if after.exists():
            calls += 1
            if calls == batch + 1:
                os.kill(os.getpid(), signal.SIGTERM)
                while not self.requested:  # let the handler run
                    time.sleep(0.001)
        return original(self)

    monkeypatch.setattr(StopSignal, "__call__", call)
