"""Checkpoints in /opt/ml/checkpoints (synced with S3 for managed spot training).

One file per save, written atomically, the newest few kept. A checkpoint holds everything
needed to continue bit for bit: model, optimizer, scheduler, gradient scaler, the position
(epoch, and batches already done in it), the epoch's running loss, early-stopping state,
the training curves so far, and the global random state (dropout). Data order and
augmentation are functions of (seed, epoch, sample), so they need no saved state.
"""

from __future__ import annotations

import collections
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger(__name__)
KEEP = 3  # newest checkpoints kept; older ones are deleted after a successful save
NAME = re.compile(r"^checkpoint-e(\d+)-i(\d+)\.pt$")
FORMAT_VERSION = 1
MUST_MATCH = ("algorithm", "backbone", "num_classes", "crop_size", "mini_batch_size", "epochs")


@dataclass
class Position:
    """Where training stands: ``iteration`` batches of ``epoch`` are done."""

    epoch: int = 0
    iteration: int = 0
    loss_sum: float = 0.0
    steps: int = 0


@dataclass
class Resumed:
    position: Position
    early_stopping: dict
    curves: list[dict] = field(default_factory=list)
    best_epoch: int = -1


def save(
    folder: Path,
    position: Position,
    model,
    optimizer,
    scheduler,
    scaler,
    early_stopping: dict,
    curves: list[dict],
    best_epoch: int,
    record: dict,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"checkpoint-e{position.epoch:04d}-i{position.iteration:06d}.pt"
    state = {
        "format_version": FORMAT_VERSION,
        "position": vars(position),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "early_stopping": early_stopping,
        "curves": curves,
        "best_epoch": best_epoch,
        "rng": torch.get_rng_state(),
        "config": record,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a stop mid-write never leaves a half checkpoint under the name
    for old in _listed(folder)[KEEP:]:
        old.unlink(missing_ok=True)
    return path


def _listed(folder: Path) -> list[Path]:
    """Checkpoint files, newest position first."""
    if not folder.is_dir():
        return []
    found = [
        (tuple(map(int, m.groups())), p) for p in folder.iterdir() if (m := NAME.match(p.name))
    ]
    return [p for _, p in sorted(found, reverse=True)]


def _load(path: Path) -> dict:
    # MultiStepLR keeps its milestones in a Counter; everything else is tensors and plain data.
    with torch.serialization.safe_globals([collections.Counter]):
        return torch.load(path, map_location="cpu", weights_only=True)


def _valid_states(folder: Path, record: dict, model) -> Iterator[dict]:
    """Checkpoint contents, newest first, leaving out (with a warning) truncated or corrupt
    files and those written for another model."""
    current = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for path in _listed(folder):
        try:
            state = _load(path)
        except Exception as exc:  # truncated zip, bad pickle, wrong format: try an older one
            log.warning("skipping checkpoint %s: it cannot be read (%s)", path.name, exc)
            continue
        mismatched = [k for k in MUST_MATCH if state.get("config", {}).get(k) != record.get(k)]
        if mismatched:
            log.warning(
                "skipping checkpoint %s: written with other %s", path.name, ", ".join(mismatched)
            )
            continue
        if {k: tuple(v.shape) for k, v in state["model"].items()} != current:
            log.warning("skipping checkpoint %s: its weights do not fit this model", path.name)
            continue
        state["name"] = path.name
        yield state


def apply(state: dict, model, optimizer, scheduler, scaler) -> Resumed | None:
    """Load a checkpoint's contents into the given objects; None when they do not fit."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
    except (KeyError, RuntimeError, ValueError) as exc:
        log.warning("skipping checkpoint %s: it does not fit this model (%s)", state["name"], exc)
        return None
    torch.set_rng_state(state["rng"])
    position = Position(**state["position"])
    log.info(
        "resuming from %s: epoch %d, %d batches done",
        state["name"],
        position.epoch,
        position.iteration,
    )
    return Resumed(position, state["early_stopping"], state["curves"], state["best_epoch"])


def resume(
    folder: Path,
    record: dict,
    model,
    optimizer,
    scheduler,
    scaler,
    main: bool = True,
    share: Callable[[dict | None], dict | None] | None = None,
) -> Resumed | None:
    """Load the newest valid checkpoint into the given objects; None when there is none.

    Data parallel: the ``main`` process reads its folder and ``share`` hands its choice to
    every process, so a host whose checkpoint folder is empty resumes from the same state.
    """
    chosen, resumed = None, None
    if main:
        for state in _valid_states(folder, record, model):
            if resumed := apply(state, model, optimizer, scheduler, scaler):
                chosen = state
                break
    if share is None:
        return resumed
    chosen = share(chosen)
    if main or chosen is None:
        return resumed
    return apply(chosen, model, optimizer, scheduler, scaler)
