"""A File-mode split's samples: the one way training, the data check, the exports and the
tools list them (a manifest, or an image folder paired with its annotation folder)."""

from __future__ import annotations

from segcontainer.config.environment import Paths
from segcontainer.data import manifest
from segcontainer.data.channels import FoundSamples, find_samples


def find_split(paths: Paths, split: str) -> FoundSamples:
    """A File-mode split's samples, found and paired once: a manifest, or two folders."""
    found = manifest.find_manifest_samples(paths, split)
    return found if found is not None else find_samples(paths, split)
