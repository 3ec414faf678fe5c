"""How the converters split images into train and validation (whole groups at a time), and
the options they share on the command line.

A split is assigned per group of images (per image unless ``--group-by`` names a pattern), never
per tile or per file, so near-identical neighbours cannot end up on both sides.
"""

from __future__ import annotations

import argparse
import random
import re
from dataclasses import dataclass

from segcontainer.errors import UserError

DEFAULT_FRACTION = 0.2


@dataclass(frozen=True)
class SplitOptions:
    """The options every converter takes: the validation share (None: keep the input's own
    split, ``tile`` only), the split's seed, the ``--group-by`` pattern, and where OUT will be
    uploaded (the manifests' ``s3://`` prefix; None: paths relative to OUT)."""

    validation_fraction: float | None = DEFAULT_FRACTION
    seed: int = 0
    group_by: re.Pattern[str] | None = None
    manifest_prefix: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SplitOptions:
        """From the command line; a bad ``--group-by`` is refused before anything is read."""
        return cls(
            validation_fraction=args.validation_fraction,
            seed=args.seed,
            group_by=compile_group_by(args.group_by),
            manifest_prefix=args.manifest_prefix,
        )

    def assign(self, names: list[str]) -> tuple[dict[str, str], list[str]]:
        """assign_splits with these options (validation_fraction must be set)."""
        return assign_splits(names, self.validation_fraction, self.seed, self.group_by)


def group_key(name: str, pattern: re.Pattern[str] | None) -> str | None:
    """The group a name belongs to: the pattern's first group (or whole match); None when the
    pattern does not match (the caller keeps the name as its own group)."""
    if pattern is None:
        return name
    match = pattern.search(name)
    if match is None:
        return None
    return match.group(1) if pattern.groups else match.group(0)


def compile_group_by(regex: str | None) -> re.Pattern[str] | None:
    if regex is None:
        return None
    try:
        return re.compile(regex)
    except re.error as exc:
        raise UserError(f"--group-by {regex!r} is not a valid regular expression: {exc}") from exc


def assign_splits(
    names: list[str], fraction: float, seed: int, pattern: re.Pattern[str] | None = None
) -> tuple[dict[str, str], list[str]]:
    """name -> "train" | "validation", whole groups at a time, deterministic for a seed.

    Groups are shuffled with ``seed`` and moved to validation until it holds about
    ``fraction`` of the images; train keeps at least one group. Returns the assignment and the
    names the pattern did not match (each is then a group of its own).
    """
    if not 0 <= fraction < 1:
        raise UserError(f"--validation-fraction must be in [0, 1), got {fraction}.")
    unmatched = [n for n in names if group_key(n, pattern) is None]
    groups: dict[str, list[str]] = {}
    for name in names:
        key = group_key(name, pattern)
        groups.setdefault(name if key is None else f"group:{key}", []).append(name)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    target = round(fraction * len(names))
    if fraction > 0 and len(order) > 1:
        target = max(target, 1)
    assignment: dict[str, str] = {}
    in_validation = 0
    for index, key in enumerate(order):
        room = index < len(order) - 1  # the last group always trains
        split = "validation" if in_validation < target and room else "train"
        in_validation += len(groups[key]) if split == "validation" else 0
        for name in groups[key]:
            assignment[name] = split
    return assignment, unmatched


def unmatched_notes(unmatched: list[str]) -> list[str]:
    if not unmatched:
        return []
    return [
        f"  note: --group-by matched no part of {len(unmatched)} names, each kept as its own "
        f"group: {', '.join(unmatched[:5])}"
    ]
