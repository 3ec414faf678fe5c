"""A File-mode split's samples: the one way training, the data check, the exports and the
tools list them (a manifest, or an image folder paired with its annotation folder)."""

from __future__ import annotations

from collections.abc import Callable

from segcontainer.config.environment import Paths
from segcontainer.data import manifest
from segcontainer.data.channels import FoundSamples, find_samples

Finder = Callable[[Paths, str], "FoundSamples | None"]

# The File-mode input formats, tried in order: each returns the split's samples, or None when
# the split is not in its format. A new input format is one function and one entry here; the
# last, the built-in's image + annotation folders, answers for every split (or names what is
# missing).
FILE_FORMATS: tuple[Finder, ...] = (manifest.find_manifest_samples, find_samples)


def find_split(paths: Paths, split: str) -> FoundSamples:
    """A File-mode split's samples, found and paired once, in the first format that has them."""
    for finder in FILE_FORMATS:
        found = finder(paths, split)
        if found is not None:
            return found
    raise AssertionError("find_samples, the last format, always answers")  # pragma: no cover
