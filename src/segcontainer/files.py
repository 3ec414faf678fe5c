"""Writing a file so that a reader never sees half of it (bottom layer: no package imports)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write`` on a temporary file beside ``path`` (a dot name, which the model folder,
    the checkpoint listing and SageMaker's packing all pass over), fsync it and rename it to
    ``path``: a stop or a full disk mid-write leaves the old file whole. Any failure removes the
    temporary file and re-raises (callers name a full disk in their own terms)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())  # the data is on disk before the name points to it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
