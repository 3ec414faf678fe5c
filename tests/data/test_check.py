"""Up-front dataset check: every problem is a UserError naming the files, before training."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segcontainer.config.environment import Paths
from segcontainer.data import check
from segcontainer.data.check import SplitSummary, binary_255_hint
from segcontainer.data.label_maps import label_map_lut
from segcontainer.data.splits import find_split
from segcontainer.errors import UserError

SCALE_1 = {"scale": 1}
TRAIN_SIZE = (48, 40)  # small_dataset's (width, height)


def check_split(paths: Paths, split: str, label_map: dict, num_classes: int) -> SplitSummary:
    """Find, pair and check one File-mode split, as prepare() does."""
    lut = label_map_lut(label_map, f"{split}_label_map.json")
    return check.check_split(find_split(paths, split), split, lut, num_classes)


def _mask_file(paths: Paths, index: int, split: str = "train") -> Path:
    return paths.channel(f"{split}_annotation") / f"{split}_{index:04d}.png"


def _image_file(paths: Paths, index: int, split: str = "train") -> Path:
    return paths.channel(split) / f"{split}_{index:04d}.jpg"


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image)


def _write_mask(path: Path, values: np.ndarray) -> None:
    Image.fromarray(values.astype(np.uint8), "L").save(path)


def _check_fails(paths: Paths, label_map: dict = SCALE_1, num_classes: int = 3) -> str:
    with pytest.raises(UserError) as info:
        check_split(paths, "train", label_map, num_classes)
    return str(info.value)


# --- a good dataset ------------------------------------------------------------------------------


@pytest.mark.parametrize(("split", "count"), [("train", 8), ("validation", 4)])
def test_good_dataset_returns_summary(
    paths: Paths, small_dataset: Path, split: str, count: int
) -> None:
    summary = check_split(paths, split, SCALE_1, 3)

    assert isinstance(summary, SplitSummary)
    assert len(summary.samples) == count
    assert [s.image.stem for s in summary.samples] == [s.mask.stem for s in summary.samples]
    assert summary.class_counts.shape == (3,)
    assert summary.class_counts.sum() == count * TRAIN_SIZE[0] * TRAIN_SIZE[1]
    assert (summary.class_counts > 0).all()
    assert summary.ignored_pixels == 0
    assert summary.raw_values == {0, 1, 2}


def test_summary_counts_each_class_and_ignored_pixels(paths: Paths, small_dataset: Path) -> None:
    first = _read(_mask_file(paths, 0))
    first[:5, :7] = 255
    _write_mask(_mask_file(paths, 0), first)
    masks = np.stack([_read(_mask_file(paths, i)) for i in range(8)])

    summary = check_split(paths, "train", SCALE_1, 3)

    expected = [int((masks == label).sum()) for label in range(3)]
    assert summary.class_counts.tolist() == expected
    assert summary.ignored_pixels == 35
    assert summary.class_counts.sum() == int((masks != 255).sum())
    assert summary.raw_values == {0, 1, 2, 255}


def test_scale_label_map_on_scaled_masks_passes(paths: Paths, small_dataset: Path) -> None:
    masks = []
    for i in range(8):
        values = _read(_mask_file(paths, i)) * 3  # 0, 3, 6
        _write_mask(_mask_file(paths, i), values)
        masks.append(values)
    masks_array = np.stack(masks)

    summary = check_split(paths, "train", {"scale": 3}, 3)

    assert summary.raw_values == {0, 3, 6}
    assert summary.class_counts.tolist() == [
        int((masks_array == 3 * label).sum()) for label in range(3)
    ]
    assert summary.ignored_pixels == 0


def test_map_label_map_reading_255_as_class_one(paths: Paths, small_dataset: Path) -> None:
    masks = []
    for i in range(8):
        values = np.where(_read(_mask_file(paths, i)) > 0, 255, 0).astype(np.uint8)
        _write_mask(_mask_file(paths, i), values)
        masks.append(values)
    masks_array = np.stack(masks)

    summary = check_split(paths, "train", {"map": {"0": 0, "1": 255}}, 2)

    assert summary.class_counts.tolist() == [
        int((masks_array == 0).sum()),
        int((masks_array == 255).sum()),
    ]
    assert summary.ignored_pixels == 0


# --- file problems -------------------------------------------------------------------------------


def test_image_without_mask(paths: Paths, small_dataset: Path) -> None:
    _mask_file(paths, 3).unlink()

    message = _check_fails(paths)

    assert "train_0003.jpg" in message
    assert "without a mask" in message


def test_mask_without_image(paths: Paths, small_dataset: Path) -> None:
    _image_file(paths, 5).unlink()

    message = _check_fails(paths)

    assert "train_0005.png" in message
    assert "without an image" in message


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_colour_mask(paths: Paths, small_dataset: Path, mode: str) -> None:
    path = _mask_file(paths, 2)
    Image.fromarray(_read(path), "L").convert(mode).save(path)

    message = _check_fails(paths)

    assert "train_0002.png" in message
    assert mode in message
    assert "single-channel" in message


def test_unreadable_image(paths: Paths, small_dataset: Path) -> None:
    _image_file(paths, 1).write_bytes(b"this is not a JPEG at all" * 10)

    message = _check_fails(paths)

    assert "train_0001.jpg" in message
    assert "cannot read" in message


def test_unreadable_mask(paths: Paths, small_dataset: Path) -> None:
    _mask_file(paths, 6).write_bytes(b"\x89PNG garbage" * 10)

    message = _check_fails(paths)

    assert "train_0006.png" in message
    assert "not readable" in message


def test_truncated_jpeg(paths: Paths, small_dataset: Path) -> None:
    path = _image_file(paths, 4)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    message = _check_fails(paths)

    assert "train_0004.jpg" in message
    assert "truncated" in message


def test_mask_size_differs_from_image(paths: Paths, small_dataset: Path) -> None:
    path = _mask_file(paths, 7)
    _write_mask(path, _read(path)[:20, :24])

    message = _check_fails(paths)

    assert "train_0007.png" in message
    assert "size differs" in message
    assert "24x20" in message
    assert "48x40" in message


def test_label_values_at_or_above_num_classes(paths: Paths, small_dataset: Path) -> None:
    path = _mask_file(paths, 2)
    values = _read(path)
    values[0, 0] = 7
    _write_mask(path, values)

    message = _check_fails(paths, SCALE_1, 3)

    assert re.search(r"train_0002\.png \(pixel values \[7\]\)", message), message
    assert "0..2" in message
    assert "num_classes" in message
    assert "train_0001.png" not in message  # only the offending file is named


def test_every_offending_value_is_named(paths: Paths, small_dataset: Path) -> None:
    path = _mask_file(paths, 0)
    _write_mask(path, _read(path) * 3)  # 0, 3, 6: fine with {"scale": 3}, not with scale 1

    message = _check_fails(paths, SCALE_1, 3)

    assert "train_0000.png" in message
    assert "[3, 6]" in message


def test_values_not_named_by_map_label_map(paths: Paths, small_dataset: Path) -> None:
    label_map = {"map": {"0": 0, "1": 1}}  # pixel value 2 is in every mask, not named

    message = _check_fails(paths, label_map, 3)

    for i in range(5):
        assert f"train_{i:04d}.png (pixel values [2])" in message
    assert "and 3 more" in message


def test_empty_channel(paths: Paths, small_dataset: Path) -> None:
    for channel in ("train", "train_annotation"):
        for file in paths.channel(channel).iterdir():
            file.unlink()

    message = _check_fails(paths)

    assert "'train' is empty" in message


def test_channel_holding_only_hidden_files_is_empty(paths: Paths, small_dataset: Path) -> None:
    for channel in ("train", "train_annotation"):
        for file in paths.channel(channel).iterdir():
            file.unlink()
        (paths.channel(channel) / ".DS_Store").write_bytes(b"junk")

    message = _check_fails(paths)

    assert "empty" in message


@pytest.mark.parametrize(
    ("split", "channel"),
    [
        ("train", "train"),
        ("train", "train_annotation"),
        ("validation", "validation"),
        ("validation", "validation_annotation"),
    ],
)
def test_missing_channel_folder(
    paths: Paths, small_dataset: Path, split: str, channel: str
) -> None:
    shutil.rmtree(paths.channel(channel))

    with pytest.raises(UserError) as info:
        check_split(paths, split, SCALE_1, 3)

    assert f"'{channel}'" in str(info.value)
    assert "missing" in str(info.value)


def test_more_than_five_offending_files_are_abbreviated(paths: Paths, small_dataset: Path) -> None:
    for i in range(7):
        _mask_file(paths, i).unlink()

    message = _check_fails(paths)

    listed = ", ".join(f"train_{i:04d}.jpg" for i in range(5))
    assert (
        f"7 images without a mask of the same base name in train_annotation: {listed} " in message
    )
    assert f"{listed} and 2 more" in message
    assert "train_0005.jpg" not in message
    assert "train_0006.jpg" not in message


def test_exactly_five_offending_files_are_all_listed(paths: Paths, small_dataset: Path) -> None:
    for i in range(5):
        _mask_file(paths, i).unlink()

    message = _check_fails(paths)

    for i in range(5):
        assert f"train_{i:04d}.jpg" in message
    assert "more" not in message


def test_all_problems_are_reported_together(paths: Paths, small_dataset: Path) -> None:
    _mask_file(paths, 0).unlink()
    _image_file(paths, 1).unlink()
    _image_file(paths, 2).write_bytes(b"garbage")
    mask = _mask_file(paths, 3)
    Image.fromarray(_read(mask), "L").convert("RGB").save(mask)

    message = _check_fails(paths)

    for name in ("train_0000.jpg", "train_0001.png", "train_0002.jpg", "train_0003.png"):
        assert name in message


def test_nested_folders_pair_by_relative_path_and_name_lonely_files(paths: Paths) -> None:
    for folder in ("x", "y"):
        for channel in ("train", "train_annotation"):
            (paths.channel(channel) / folder).mkdir(parents=True)
    values = np.zeros((8, 8), dtype=np.uint8)
    for folder, fill in (("x", 1), ("y", 2)):
        Image.new("RGB", (8, 8)).save(paths.channel("train") / folder / "001.jpg")
        _write_mask(paths.channel("train_annotation") / folder / "001.png", values + fill)
    summary = check_split(paths, "train", SCALE_1, 3)

    assert len(summary.samples) == 2  # both 001s, each with its own mask
    assert summary.class_counts.tolist() == [0, 64, 64]

    _write_mask(paths.channel("train_annotation") / "y" / "002.png", values)
    assert "masks without an image of the same base name in train: y/002.png" in _check_fails(paths)


# --- binary 0/255 masks --------------------------------------------------------------------------


def test_binary_255_hint_explains_ignore(paths: Paths, small_dataset: Path) -> None:
    for i in range(8):
        values = np.where(_read(_mask_file(paths, i)) > 0, 255, 0).astype(np.uint8)
        _write_mask(_mask_file(paths, i), values)
    summary = check_split(paths, "train", SCALE_1, 2)  # passes: 255 is "ignore"

    hint = binary_255_hint(summary.raw_values, 2, SCALE_1)

    assert summary.raw_values == {0, 255}
    assert summary.class_counts[1] == 0
    assert hint is not None
    assert "255" in hint
    assert "ignore" in hint


@pytest.mark.parametrize(
    ("raw_values", "num_classes", "label_map"),
    [
        ({0, 255}, 2, {"map": {"0": 0, "1": 255}}),
        ({0, 255}, 3, SCALE_1),
        ({0, 1, 255}, 2, SCALE_1),
        ({0, 1}, 2, SCALE_1),
    ],
)
def test_no_binary_255_hint(raw_values: set[int], num_classes: int, label_map: dict) -> None:
    assert binary_255_hint(raw_values, num_classes, label_map) is None


def test_binary_255_hint_with_string_scale() -> None:
    assert binary_255_hint({0, 255}, 2, {"scale": "1"}) is not None
