"""Image classification's labels in an augmented manifest, as Ground Truth writes them and the
built-in reads them: the label attribute holds one class id (``"class": 0`` or ``"0"``), or for
multi-label a list, read by the channel's ``label-format`` (its ContentType parameter):
``multi-hot`` (the default: one 0/1 per class, ``"[1, 0, 1]"``) or ``class-id`` (the ids
present, ``"[0, 2]"``). Every problem names the manifest's line and what to change."""

from __future__ import annotations

import json
from collections.abc import Sequence

from segcontainer.errors import UserError
from segcontainer.tasks.classification.records import class_ids

LABEL_FORMATS = ("multi-hot", "class-id")


def label_format(content_type: str | None) -> str:
    """The ``label-format`` parameter of a channel's ContentType (multi-hot when absent)."""
    for part in (content_type or "").split(";")[1:]:
        name, _, value = part.partition("=")
        if name.strip().lower() == "label-format":
            chosen = value.strip().lower()
            if chosen not in LABEL_FORMATS:
                raise UserError(
                    f"ContentType {content_type!r}: label-format={value.strip()} is not one of "
                    f"{', '.join(LABEL_FORMATS)}."
                )
            return chosen
    return "multi-hot"


def manifest_classes(
    value: object, num_classes: int, multi_label: bool, fmt: str, where: str
) -> tuple[int, ...]:
    """The classes a manifest line's label attribute names (``value`` as parsed from JSON; a
    string holding a number or a JSON list is read as Ground Truth writes them)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise UserError(f"{where}: the label {value!r} is not a number or a list.") from None
    if isinstance(value, bool) or not isinstance(value, (int, float, list)):
        raise UserError(f"{where}: the label {value!r} is not a number or a list.")
    values: Sequence = value if isinstance(value, list) else [value]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise UserError(f"{where}: the label list {value!r} must hold numbers only.")
    if multi_label and fmt == "class-id":
        ids = tuple(sorted({class_ids([v], num_classes, False, where)[0] for v in values}))
        if not ids:
            raise UserError(f"{where}: the class-id list is empty; list the image's classes.")
        return ids
    return class_ids(values, num_classes, multi_label, where)
