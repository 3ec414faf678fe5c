"""Checkpoints in /opt/ml/checkpoints (synced with S3 for managed spot training).

One file per save, written atomically, the newest few kept. A checkpoint holds everything
needed to continue bit for bit: model, optimizer, scheduler, gradient scaler, the position
(epoch, and batches already done in it), the epoch's running loss, early-stopping state,
the training curves so far, the global random state (dropout), and the best epoch so far
with its scores and weights (stored once when they are the checkpoint's own weights), from
which a restarted job rewrites model/. Data order and augmentation are functions of
(seed, epoch, sample), so they need no saved state.

The folder may also hold another job's checkpoints (a reused checkpoint_s3_uri): they are
neither resumed from nor pruned.
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
FORMAT_VERSION = 2  # 2: carries the best model
MUST_MATCH = ("algorithm", "backbone", "num_classes", "crop_size", "mini_batch_size", "epochs")


@dataclass
class Position:
    """Where training stands: ``iteration`` batches of ``epoch`` are done."""

    epoch: int = 0
    iteration: int = 0
    loss_sum: float = 0.0
    steps: int = 0


@dataclass
class Best:
    """The best epoch so far: its number, scores (metrics.Scores fields) and weights (CPU)."""

    epoch: int
    scores: dict
    weights: dict[str, torch.Tensor]


@dataclass
class Resumed:
    position: Position
    early_stopping: dict
    curves: list[dict] = field(default_factory=list)
    best: Best | None = None


def save(
    folder: Path,
    position: Position,
    model,
    optimizer,
    scheduler,
    scaler,
    early_stopping: dict,
    curves: list[dict],
    best: Best | None,
    record: dict,
    model_is_best: bool = False,
) -> Path:
    """Write a checkpoint atomically, then prune this job's older ones. ``model_is_best``:
    the model's current weights are the best's (stored once, not twice)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"checkpoint-e{position.epoch:04d}-i{position.iteration:06d}.pt"
    best_state = None
    if best is not None:
        weights = None if model_is_best else best.weights  # None: the same as "model"
        best_state = {"epoch": best.epoch, "scores": best.scores, "model": weights}
    state = {
        "format_version": FORMAT_VERSION,
        "position": vars(position),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "early_stopping": early_stopping,
        "curves": curves,
        "best": best_state,
        "rng": torch.get_rng_state(),
        "config": record,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a stop mid-write never leaves a half checkpoint under the name
    _prune(folder, record)
    return path


def _mismatched(config: dict, record: dict) -> list[str]:
    return [k for k in MUST_MATCH if config.get(k) != record.get(k)]


def _prune(folder: Path, record: dict) -> None:
    """Keep this job's newest KEEP checkpoints; leave any other job's alone (a reused
    checkpoint_s3_uri): counting them would delete this job's fresh checkpoints."""
    own = []
    for path in _listed(folder):
        try:  # mmap: only the small pickle is read, not the weights
            with torch.serialization.safe_globals([collections.Counter]):
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            why = _mismatched(state.get("config", {}), record)
            reason = f"written with other {', '.join(why)}" if why else None
        except Exception as exc:  # unreadable: not ours to delete either
            reason = f"it cannot be read ({exc})"
        if reason is None:
            own.append(path)
        elif str(path) not in _left_alone:
            _left_alone.add(str(path))
            log.warning(
                "checkpoint %s is left alone: another job's (%s), so neither resumed from "
                "nor pruned",
                path.name,
                reason,
            )
    for old in own[KEEP:]:
        old.unlink(missing_ok=True)


_left_alone: set[str] = set()  # paths already reported, so the log says it once


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
        mismatched = _mismatched(state.get("config", {}), record)
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
    best = None
    if state.get("best"):
        saved = state["best"]
        weights = state["model"] if saved["model"] is None else saved["model"]
        best = Best(saved["epoch"], saved["scores"], weights)
    return Resumed(position, state["early_stopping"], state["curves"], best)


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
