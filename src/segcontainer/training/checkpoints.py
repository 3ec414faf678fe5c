"""Checkpoints in /opt/ml/checkpoints (synced with S3 for managed spot training).

One file per save, written atomically, the newest few kept. A checkpoint holds everything
needed to continue bit for bit: model, optimizer, scheduler, gradient scaler, the position
(epoch, and batches already done in it), the epoch's running loss, early-stopping state,
the training curves so far, the global random state (dropout), and the best epoch so far
with its scores and weights (stored once when they are the checkpoint's own weights), from
which a restarted job rewrites model/. Data order and augmentation are functions of
(seed, epoch, sample), so they need no saved state.

A checkpoint is this job's only when it was written under the same resolved configuration
(checkpoint_owner.py: every hyperparameter and what the data set gives the record, except
NOT_COMPARED). The folder may also hold another job's checkpoints (a reused
checkpoint_s3_uri, or a local rerun with new hyperparameters in the same folder): they are
neither resumed from nor pruned, and a name they hold is not overwritten.
"""

from __future__ import annotations

import collections
import copy
import errno
import logging
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from segcontainer.errors import UserError
from segcontainer.files import write_atomically
from segcontainer.metrics import ValidationScores
from segcontainer.training import checkpoint_owner as owner
from segcontainer.training.optim import Trainables

log = logging.getLogger(__name__)
KEEP = 3  # newest checkpoints kept; older ones are deleted after a successful save
# checkpoint-e<epoch>-i<batch>.pt; with -<fingerprint> when that name holds another job's
NAME = re.compile(r"^checkpoint-e(\d+)-i(\d+)(?:-[0-9a-f]{8})?\.pt$")
FORMAT_VERSION = 2  # 2: carries the best model


@dataclass(frozen=True)
class Position:
    """Where training stands: ``iteration`` batches of ``epoch`` are done."""

    epoch: int = 0
    iteration: int = 0
    loss_sum: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Best:
    """The best epoch so far: its number, scores and weights (CPU)."""

    epoch: int
    scores: ValidationScores
    weights: dict[str, torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class Progress:
    """What a checkpoint holds besides the trainables and the random state: where training
    stands and what it found so far."""

    position: Position
    early_stopping: dict  # {"best": the headline score, "stale_epochs": n}: EarlyStopping's state
    curves: list[dict] = field(default_factory=list)  # TrainingCurves.rows
    best: Best | None = None


def save(
    folder: Path,
    *,
    progress: Progress,
    trainables: Trainables,
    record: dict,
    model_is_best: bool = False,
) -> Path:
    """Write a checkpoint atomically, then prune this job's older ones. ``model_is_best``:
    the model's current weights are the best's (stored once, not twice)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = _name_for(folder, progress.position, record)
    best, best_state = progress.best, None
    if best is not None:
        weights = None if model_is_best else best.weights  # None: the same as "model"
        best_state = {"epoch": best.epoch, "scores": best.scores.state(), "model": weights}
    state = {
        "format_version": FORMAT_VERSION,
        "position": vars(progress.position),
        "model": {k: v.detach().cpu() for k, v in trainables.model.state_dict().items()},
        "optimizer": trainables.optimizer.state_dict(),
        "scheduler": trainables.scheduler.state_dict(),
        "scaler": trainables.scaler.state_dict(),
        "early_stopping": progress.early_stopping,
        "curves": progress.curves,
        "best": best_state,
        "rng": torch.get_rng_state(),
        "config": record,
    }
    _write_checkpoint(state, path)
    _prune(folder, record)
    return path


def _write_checkpoint(state: dict, path: Path) -> None:
    """Write through files.write_atomically: a stop mid-write never leaves a half
    checkpoint under the name. Any failure removes the temporary file (SageMaker would sync
    it to S3); a full disk is named as such instead of torch's "enforce fail" message."""

    def write(tmp: Path) -> None:
        # A file of our own, closed on any error: torch's writer would keep its descriptor
        # (and the full disk's space) until the exception's traceback is collected.
        with open(tmp, "wb") as file:
            torch.save(state, file)

    try:
        write_atomically(path, write)
    except BaseException as exc:
        needed = _tensor_bytes(state)
        if isinstance(exc, Exception) and _disk_full(exc, path.parent, needed):
            raise UserError(
                f"the checkpoint folder {path.parent} is full (no space left on device) while "
                f"writing {path.name} (about {needed / 2**20:.0f} MB; "
                f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MB free). Free space there, "
                "or give the job a larger volume (VolumeSizeInGB) or a checkpoint folder "
                "on a larger disk; the unfinished file was removed."
            ) from exc
        raise


def _tensor_bytes(state: object) -> int:
    """The bytes of every tensor in ``state``: about the size of the checkpoint file."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_tensor_bytes(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(_tensor_bytes(v) for v in state)
    return 0


def _disk_full(exc: Exception, folder: Path, needed: int) -> bool:
    # torch reports a failed write as RuntimeError("[enforce fail at inline_container.cc]
    # ... file write failed") without the errno, so the free space decides too.
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(folder).free < needed
    except OSError:
        return False


def _name_for(folder: Path, position: Position, record: dict) -> Path:
    """checkpoint-e<epoch>-i<batch>.pt, or with this configuration's fingerprint when another
    job's checkpoint holds that name (a rerun in the same folder must not overwrite it)."""
    stem = f"checkpoint-e{position.epoch:04d}-i{position.iteration:06d}"
    path = folder / f"{stem}.pt"
    if not path.exists() or owner.foreign_reason(path, record) is None:
        return path
    return folder / f"{stem}-{owner.fingerprint(record)}.pt"


def _prune(folder: Path, record: dict) -> None:
    """Keep this job's newest KEEP checkpoints; leave any other job's alone (a reused
    checkpoint_s3_uri): counting them would delete this job's fresh checkpoints."""
    own = []
    for path in listed(folder):
        reason = owner.foreign_reason(path, record)
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


def listed(folder: Path) -> list[Path]:
    """The checkpoint files in ``folder`` (any job's), newest position first."""
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


def _valid_states(folder: Path, record: dict) -> Iterator[dict]:
    """Checkpoint contents, newest first, leaving out (with a warning) truncated or corrupt
    files and those written for another configuration."""
    for path in listed(folder):
        try:
            state = _load(path)
        except Exception as exc:  # truncated zip, bad pickle, wrong format: try an older one
            log.warning("skipping checkpoint %s: it cannot be read (%s)", path.name, exc)
            continue
        mismatched = owner.differences(state.get("config", {}), record)
        if mismatched:
            log.warning(
                "skipping checkpoint %s: another job's, written with other %s (a checkpoint "
                "is resumed only under the same hyperparameters; this job starts afresh and "
                "leaves it alone)",
                path.name,
                ", ".join(mismatched),
            )
            continue
        state["name"] = path.name
        yield state


class Misfit(ValueError):
    """A part of a checkpoint that does not fit the objects it would be loaded into."""


def apply(state: dict, trainables: Trainables) -> Progress | None:
    """Load a checkpoint's contents into ``trainables``; None, with every object left as it
    was, when a part does not fit: each part is first loaded into a copy or checked."""
    try:
        progress = _checked(state, trainables)
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        log.warning("skipping checkpoint %s: it does not fit this model (%s)", state["name"], exc)
        return None
    trainables.model.load_state_dict(state["model"])
    trainables.optimizer.load_state_dict(state["optimizer"])
    trainables.scheduler.load_state_dict(state["scheduler"])
    trainables.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"])
    log.info(
        "resuming from %s: epoch %d, %d batches done",
        state["name"],
        progress.position.epoch,
        progress.position.iteration,
    )
    return progress


def _checked(state: dict, trainables: Trainables) -> Progress:
    """What resuming from ``state`` gives, after every part was loaded into a copy of its
    object (or compared with it); raises when a part does not fit. Changes no live object."""
    shapes = {k: tuple(v.shape) for k, v in trainables.model.state_dict().items()}
    if {k: tuple(v.shape) for k, v in state["model"].items()} != shapes:
        raise Misfit("its weights have other names or shapes")
    _check_optimizer(state, trainables)
    copy.deepcopy(trainables.scaler).load_state_dict(state["scaler"])
    rng = state["rng"]
    if not (isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8):
        raise Misfit("its random state is not a byte tensor")
    best = None
    if state.get("best"):
        saved = state["best"]
        weights = state["model"] if saved["model"] is None else saved["model"]
        if any(shapes.get(k) != tuple(v.shape) for k, v in weights.items()):
            raise Misfit("its best model's weights have other names or shapes")
        scores = ValidationScores.from_state(saved["scores"])
        best = Best(epoch=saved["epoch"], scores=scores, weights=weights)
    early_stopping = state["early_stopping"]
    if not {"best", "stale_epochs"} <= early_stopping.keys():
        raise Misfit("its early-stopping state is incomplete")
    return Progress(
        # Version-2 checkpoints of earlier releases also hold "steps" (never used): left out.
        position=Position(**{k: v for k, v in state["position"].items() if k != "steps"}),
        early_stopping=early_stopping,
        curves=state["curves"],
        best=best,
    )


def _check_optimizer(state: dict, trainables: Trainables) -> None:
    """Load the optimizer's and the scheduler's states into copies; raise when either does not
    fit."""
    optimizer = trainables.optimizer
    spare = copy.deepcopy(optimizer)
    spare.load_state_dict(state["optimizer"])
    # Optimizers read their group settings only when stepping (Adam's betas, SGD's momentum):
    # a group without one of this optimizer's settings fails at the first step, not here.
    for saved, live in zip(state["optimizer"]["param_groups"], optimizer.param_groups, strict=True):
        if missing := sorted(live.keys() - saved.keys()):
            raise Misfit(f"its optimizer state lacks {', '.join(missing)}: another optimizer's")
    copy.deepcopy(trainables.scheduler, {id(optimizer): spare}).load_state_dict(state["scheduler"])


def resume(
    folder: Path,
    *,
    record: dict,
    trainables: Trainables,
    main: bool = True,
    share: Callable[[dict | None], dict | None] | None = None,
) -> Progress | None:
    """Load the newest valid checkpoint into ``trainables``; None when there is none.

    Data parallel: the ``main`` process reads its folder and ``share`` hands its choice to
    every process, so a host whose checkpoint folder is empty resumes from the same state.
    """
    chosen, progress = None, None
    if main:
        for state in _valid_states(folder, record):
            if progress := apply(state, trainables):
                chosen = state
                break
    if share is None:
        return progress
    chosen = share(chosen)
    if main or chosen is None:
        return progress
    return apply(chosen, trainables)
