"""Label maps: the scale and map forms, as look-up tables, read from the label_map channel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segcontainer.config.environment import Paths
from segcontainer.data.label_maps import (
    IGNORE_INDEX,
    UNMAPPED,
    identity_lut,
    label_map_lut,
    read_label_map_folder,
    read_label_map_stream,
)
from segcontainer.data.recordio import frame
from segcontainer.errors import UserError

# --- label_map_lut -------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [3, "3", 3.0])
def test_scale_label_map_divides_pixel_values(scale: object) -> None:
    lut = label_map_lut({"scale": scale}, "train_label_map.json")

    assert lut.shape == (256,)
    assert lut[[0, 3, 6]].tolist() == [0, 1, 2]
    assert lut[[1, 2, 4, 5, 7, 8]].tolist() == [0, 0, 1, 1, 2, 2]  # rounded down
    assert lut[IGNORE_INDEX] == IGNORE_INDEX


def test_scale_one_is_identity() -> None:
    lut = label_map_lut({"scale": "1"}, "train_label_map.json")

    assert np.array_equal(lut, identity_lut())


def test_map_label_map_maps_pixel_values_to_labels() -> None:
    lut = label_map_lut({"map": {"0": 5, "1": 0, "2": 2}}, "train_label_map.json")

    assert lut[5] == 0
    assert lut[0] == 1
    assert lut[2] == 2
    others = [v for v in range(255) if v not in (0, 2, 5)]
    assert set(lut[others].tolist()) == {UNMAPPED}
    assert lut[IGNORE_INDEX] == IGNORE_INDEX


def test_map_label_map_can_read_255_as_a_class() -> None:
    lut = label_map_lut({"map": {"0": 0, "1": 255}}, "train_label_map.json")

    assert lut[0] == 0
    assert lut[255] == 1
    assert lut[1] == UNMAPPED


@pytest.mark.parametrize(
    "spec",
    [
        {"scale": 2, "map": {"0": 0}},
        {"scale": 0},
        {"scale": "x"},
        {"scale": None},
        {"scale": -3},
        {"map": {}},
        {"map": ["0", "1"]},
        {"map": {"0": "x"}},
        {"map": {"a": 1}},
        {"map": {"0": None}},
        {"map": {"0": 300}},
        {"map": {"-1": 3}},
        {"map": {"0": 1.5}},
        {"map": {"0": "abc"}},
        {"map": {"0": True}},
        {"map": {"1.5": 2}},
        {},
        {"offset": 1},
        [1, 2],
        "scale",
    ],
    ids=lambda spec: json.dumps(spec),
)
def test_bad_label_map_specs_raise_user_error(spec: object) -> None:
    with pytest.raises(UserError, match="train_label_map.json"):
        label_map_lut(spec, "train_label_map.json")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pixel", "entry"),
    [(1.5, '"1": 1.5'), ("abc", '"1": "abc"'), (True, '"1": true'), ([2], '"1": [2]')],
)
def test_non_integer_pixel_value_names_the_entry(pixel: object, entry: str) -> None:
    with pytest.raises(UserError) as info:
        label_map_lut({"map": {"0": 0, "1": pixel}}, "train_label_map.json")

    assert f"train_label_map.json: map entry {entry} must be integers" in str(info.value)


def test_two_labels_for_one_pixel_value_name_both_entries() -> None:
    with pytest.raises(UserError) as info:
        label_map_lut({"map": {"0": 0, "1": 5, "2": 5}}, "train_label_map.json")

    message = str(info.value)
    assert 'map entries "1": 5 and "2": 5 give pixel value 5 two labels' in message


def test_integral_pixel_values_may_be_strings_or_whole_floats() -> None:
    lut = label_map_lut({"map": {"0": "5", "1": 7.0}}, "train_label_map.json")

    assert lut[5] == 0 and lut[7] == 1


# --- read_label_maps -----------------------------------------------------------------------------


def _write_label_map(paths: Paths, name: str, content: str) -> Path:
    folder = paths.channel("label_map")
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / name
    file.write_text(content)
    return file


def read_label_maps(paths: Paths) -> dict[str, dict]:
    """Each split's label map as given, read from the File-mode channel folder."""
    maps = read_label_map_folder(paths.channel("label_map"))
    for label_map in maps.values():  # the look-up table comes with the spec it was made from
        assert np.array_equal(label_map.lut, label_map_lut(label_map.spec, "x"))
    return {split: label_map.spec for split, label_map in maps.items()}


def test_read_label_maps_without_channel_is_identity_for_both_splits(paths: Paths) -> None:
    maps = read_label_maps(paths)

    assert maps == {"train": {"scale": 1}, "validation": {"scale": 1}}
    for spec in maps.values():
        assert np.array_equal(label_map_lut(spec, "x"), identity_lut())


def test_read_label_maps_validation_falls_back_to_train_map(paths: Paths) -> None:
    _write_label_map(paths, "train_label_map.json", json.dumps({"scale": "3"}))

    maps = read_label_maps(paths)

    assert maps == {"train": {"scale": "3"}, "validation": {"scale": "3"}}


def test_read_label_maps_reads_both_files(paths: Paths) -> None:
    _write_label_map(paths, "train_label_map.json", json.dumps({"scale": 3}))
    _write_label_map(paths, "validation_label_map.json", json.dumps({"map": {"0": 0, "1": 9}}))

    maps = read_label_maps(paths)

    assert maps == {"train": {"scale": 3}, "validation": {"map": {"0": 0, "1": 9}}}


def test_read_label_maps_folder_without_recognised_file_raises(paths: Paths) -> None:
    _write_label_map(paths, "labels.json", json.dumps({"scale": 1}))

    with pytest.raises(UserError, match="train_label_map.json"):
        read_label_maps(paths)


def test_read_label_maps_invalid_json_names_the_file(paths: Paths) -> None:
    file = _write_label_map(paths, "train_label_map.json", '{"scale": 3,')

    with pytest.raises(UserError) as info:
        read_label_maps(paths)

    assert str(file) in str(info.value)
    assert "JSON" in str(info.value)


def test_read_label_maps_non_utf8_file_raises_user_error(paths: Paths) -> None:
    folder = paths.channel("label_map")
    folder.mkdir(parents=True)
    file = folder / "train_label_map.json"
    file.write_bytes(b'{"scale": "\xff"}')  # JSON must be UTF-8 (RFC 8259)

    with pytest.raises(UserError) as info:
        read_label_maps(paths)

    assert str(file) in str(info.value)


def test_read_label_maps_invalid_spec_in_file_raises(paths: Paths) -> None:
    _write_label_map(paths, "validation_label_map.json", json.dumps({"scale": 0}))

    with pytest.raises(UserError, match="validation_label_map.json"):
        read_label_maps(paths)


# --- Pipe mode: the label_map_0 stream -----------------------------------------------------------

MAP_255 = {"map": {"0": 0, "1": 255}}


def read_stream(data: bytes) -> dict[str, dict]:
    maps = read_label_map_stream(data, "label_map_0")
    return {split: label_map.spec for split, label_map in maps.items()}


@pytest.mark.parametrize("wrap", [lambda data: data, frame], ids=["plain", "RecordIO"])
def test_stream_holding_one_label_map_is_used_for_both_splits(wrap) -> None:
    maps = read_label_map_stream(wrap(json.dumps(MAP_255).encode()), "label_map_0")

    assert {split: m.spec for split, m in maps.items()} == {"train": MAP_255, "validation": MAP_255}
    assert maps["train"].lut[255] == 1 and maps["validation"].lut[255] == 1


def test_stream_keyed_by_split_gives_each_split_its_map() -> None:
    both = {"train": {"scale": 3}, "validation": MAP_255}
    only_train = {"train": {"scale": 3}}

    assert read_stream(frame(json.dumps(both).encode())) == both
    assert read_stream(json.dumps(only_train).encode()) == {
        "train": {"scale": 3},
        "validation": {"scale": 3},
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "is empty"),
        (frame(b'{"scale": 1}') + frame(b'{"scale": 2}'), "holds 2 files"),
        (b'{"scale": 1}{"scale": 2}', "not valid UTF-8 JSON: Extra data"),
        (b'{"labels": [0, 1]}', "is not a label map"),
        (b"[1, 2]", "is not a label map"),
        (frame(b'{"scale": 1}')[:-3], "is corrupt"),
    ],
    ids=["empty", "two records", "two documents", "other object", "list", "truncated"],
)
def test_unusable_stream_is_refused_with_the_accepted_forms(data: bytes, message: str) -> None:
    with pytest.raises(UserError) as info:
        read_label_map_stream(data, "label_map_0")

    assert "label_map_0" in str(info.value) and message in str(info.value)


def test_bad_map_in_stream_names_the_split() -> None:
    data = json.dumps({"train": {"scale": 1}, "validation": {"map": {"0": 1.5}}}).encode()

    with pytest.raises(UserError, match=r"label_map_0 \(validation\): map entry \"0\": 1.5"):
        read_label_map_stream(data, "label_map_0")
