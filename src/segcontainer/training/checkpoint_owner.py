"""Whose a checkpoint is: this job's when it was written under the same resolved
configuration (the record), apart from the entries NOT_COMPARED. The checkpoint folder may
hold another job's (a reused checkpoint_s3_uri, or a local rerun with new hyperparameters in
the same folder)."""

from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path

import torch

from segcontainer.tasks import DEFAULT_TASK, TASK_KEY

# The one list of record entries a checkpoint may differ in and still be this job's: they
# cannot change the weights training produces. Everything else in the record (every other
# hyperparameter, the label maps, the normalisation) must be equal; a spot restart of the same
# job always is.
NOT_COMPARED = {
    "export": "the exports are made from model/ after training",
    "workers": "data order and augmentation depend on (seed, epoch, sample), not on the "
    "number of loading processes",
    "class_names": "names for the logs, model_info.json and serving only",
}


def fingerprint(record: dict) -> str:
    """A short hash of the record's compared entries: names a checkpoint apart from another
    job's of the same position."""
    compared = {k: v for k, v in record.items() if k not in NOT_COMPARED}
    text = json.dumps(compared, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def differences(saved: dict, record: dict) -> list[str]:
    """The record entries (hyperparameters, label maps, ...) a checkpoint was written with
    that differ from this job's, outside NOT_COMPARED, each with both values. A checkpoint
    from before tasks were recorded is the default task's (segmentation's)."""
    saved = {TASK_KEY: DEFAULT_TASK.name, **saved} if TASK_KEY in record else saved
    names = sorted((saved.keys() | record.keys()) - NOT_COMPARED.keys())
    return [
        f"{name} ({_short(saved, name)} in the checkpoint, {_short(record, name)} now)"
        for name in names
        if saved.get(name, _ABSENT) != record.get(name, _ABSENT)
    ]


_ABSENT = object()


def _short(values: dict, name: str) -> str:
    if name not in values:
        return "absent"
    text = repr(values[name])
    return text if len(text) <= 40 else text[:37] + "..."


def foreign_reason(path: Path, record: dict) -> str | None:
    """Why the checkpoint at ``path`` is not this job's; None when it is."""
    try:  # mmap: only the small pickle is read, not the weights
        with torch.serialization.safe_globals([collections.Counter]):
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        why = differences(state.get("config", {}), record)
        return f"written with other {', '.join(why)}" if why else None
    except Exception as exc:  # unreadable: not ours to delete either
        return f"it cannot be read ({exc})"
