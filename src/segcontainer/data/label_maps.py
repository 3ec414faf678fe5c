"""Label maps: read once, from the ``label_map`` channel, and turned into look-up tables once.

Contract §2.4: ``{"scale": k}`` (label = pixel value // k) or ``{"map": {label: pixel}}``.
File mode: ``label_map/train_label_map.json`` and ``validation_label_map.json``. Pipe mode
streams the channel through ``label_map_0`` with no file names, so it must hold one JSON
document (RecordIO-wrapped or not): a label map (``scale``/``map``), used for both splits,
or an object keyed by split, ``{"train": {...}, "validation": {...}}``.
A split without a map of its own uses the train map; without any, the identity.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segcontainer.data.recordio import MAGIC_BYTES, RecordIOError, iter_records
from segcontainer.errors import UserError

IGNORE_INDEX = 255
UNMAPPED = -1  # look-up-table entry for a pixel value the label map does not name
SPLITS = ("train", "validation")
IDENTITY = {"scale": 1}
FORMS = '{"scale": k} or {"map": {"<label>": <pixel value>, ...}}'


@dataclass(frozen=True)
class LabelMap:
    """A split's label map as given (saved with the model) and its look-up table."""

    spec: dict
    lut: np.ndarray = field(repr=False)  # 256 entries: pixel value -> label, or UNMAPPED

    @classmethod
    def from_spec(cls, spec: dict, source: str) -> LabelMap:
        return cls(spec, label_map_lut(spec, source))


def identity_lut() -> np.ndarray:
    return np.arange(256, dtype=np.int16)


def label_map_lut(spec: dict, source: str) -> np.ndarray:
    """A 256-entry look-up table: pixel value -> training label (UNMAPPED if not named).

    ``scale`` divides every value except 255, which stays "ignore". ``map`` names each label's
    pixel value explicitly; it may map 255 to a class (binary 0/255 masks), and values it does
    not name are reported by the dataset check.
    """
    if not isinstance(spec, dict) or not ({"scale", "map"} & spec.keys()):
        raise UserError(f"{source} must be {FORMS}.")
    if "scale" in spec and "map" in spec:
        raise UserError(f"{source} gives both 'scale' and 'map'; use one of them.")
    if "scale" in spec:
        try:
            scale = float(spec["scale"])
        except (TypeError, ValueError):
            scale = -1.0
        if not scale >= 1:
            raise UserError(f"{source}: 'scale' must be a number >= 1, got {spec['scale']!r}.")
        lut = (np.arange(256) // scale).astype(np.int16)
        lut[IGNORE_INDEX] = IGNORE_INDEX
        return lut
    mapping = spec["map"]
    if not isinstance(mapping, dict) or not mapping:
        raise UserError(f"{source}: 'map' must be a non-empty object of label -> pixel value.")
    lut = np.full(256, UNMAPPED, dtype=np.int16)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    named: dict[int, str] = {}  # pixel value -> the entry that gave it a label
    for label, pixel in mapping.items():
        entry = f"{json.dumps(label)}: {json.dumps(pixel)}"
        label_i, pixel_i = _integer(label), _integer(pixel)
        if label_i is None or pixel_i is None:
            raise UserError(f"{source}: map entry {entry} must be integers (label: pixel value).")
        if not (0 <= label_i < 255 and 0 <= pixel_i <= 255):
            raise UserError(f"{source}: map entry {entry} is out of 0..255.")
        if pixel_i in named:
            raise UserError(
                f"{source}: map entries {named[pixel_i]} and {entry} give pixel value {pixel_i} "
                "two labels; a pixel value can stand for one label only."
            )
        named[pixel_i] = entry
        lut[pixel_i] = label_i
    return lut


def _integer(value: object) -> int | None:
    """An integer written as a JSON number or a decimal string ("3"); None for 1.5, "abc",
    true (a bool would pass int()), null."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
        return int(value)
    return None


def _resolve(given: dict[str, tuple[object, str]]) -> dict[str, LabelMap]:
    """Each split's LabelMap from the specs given as (spec, source for messages).

    ``validation`` falls back to the train map when only that one is given, because both
    splits come from the same annotation tool.
    """
    maps = {split: LabelMap.from_spec(*given[split]) for split in SPLITS if split in given}
    train = maps.get("train") or LabelMap.from_spec(IDENTITY, "the identity label map")
    return {"train": train, "validation": maps.get("validation", train)}


def _json(data: bytes, source: str, advice: str = "") -> object:
    try:
        return json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{source} is not valid UTF-8 JSON: {exc}.{advice}") from exc


def read_label_map_folder(folder: Path) -> dict[str, LabelMap]:
    """File mode: ``{split}_label_map.json`` in the channel folder (identity when absent)."""
    given = {}
    for split in SPLITS:
        file = folder / f"{split}_label_map.json"
        if file.is_file():
            given[split] = (_json(file.read_bytes(), str(file)), str(file))
    if folder.is_dir() and not given:
        raise UserError(
            f"The label_map channel ({folder}) has neither train_label_map.json nor "
            "validation_label_map.json. Name the files that way, or drop the channel."
        )
    return _resolve(given)


def read_label_map_stream(data: bytes, name: str) -> dict[str, LabelMap]:
    """Pipe mode: the whole ``label_map_0`` stream, one JSON document (see the module doc)."""
    records = [data]
    if data.startswith(MAGIC_BYTES):  # JSON cannot start with these bytes: RecordIO-wrapped
        try:
            records = list(iter_records(io.BytesIO(data)))
        except RecordIOError as exc:
            raise UserError(f"The Pipe-mode stream {name} is corrupt: {exc}.") from exc
    accepted = (
        f"In Pipe mode the label_map channel must stream one JSON file: a label map ({FORMS}) "
        'for both splits, or {"train": <label map>, "validation": <label map>}.'
    )
    if not any(record.strip() for record in records):
        raise UserError(f"The Pipe-mode stream {name} is empty. {accepted}")
    if len(records) != 1:
        raise UserError(f"The Pipe-mode stream {name} holds {len(records)} files. {accepted}")
    document = _json(records[0], f"The Pipe-mode stream {name}", f" {accepted}")
    if isinstance(document, dict) and document and document.keys() <= set(SPLITS):
        return _resolve({split: (spec, f"{name} ({split})") for split, spec in document.items()})
    if not isinstance(document, dict) or not ({"scale", "map"} & document.keys()):
        raise UserError(f"The Pipe-mode stream {name} is not a label map. {accepted}")
    return _resolve({"train": (document, name)})
