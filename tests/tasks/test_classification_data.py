"""Image classification's File-mode datasets and transforms, on the MXNet-written fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segcontainer.errors import UserError
from segcontainer.tasks.classification.dataset import ListDataset, RecordDataset
from segcontainer.tasks.classification.records import ListEntry, read_list, scan_offsets
from segcontainer.tasks.classification.transforms import eval_transform, train_transform

FIXTURES = Path(__file__).parents[1] / "fixtures" / "classification"
SHAPE = (3, 8, 8)
# Pure red, green and blue after ImageNet normalisation, by hand: (value - mean) / std
RED = ((1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0 - 0.406) / 0.225)
GREEN = ((0 - 0.485) / 0.229, (1 - 0.456) / 0.224, (0 - 0.406) / 0.225)
BLUE = ((0 - 0.485) / 0.229, (0 - 0.456) / 0.224, (1 - 0.406) / 0.225)
CLASS_COLOUR = {0: RED, 1: GREEN, 2: BLUE}
JPEG_SLACK = 10 / 255 / 0.224  # a few levels of JPEG error, normalised


def channel_means(tensor: torch.Tensor) -> tuple[float, ...]:
    return tuple(tensor.mean(dim=(1, 2)).tolist())


def test_a_list_dataset_gives_the_normalised_image_and_class_id() -> None:
    entries = read_list(FIXTURES / "single.lst", 3, False)
    dataset = ListDataset(FIXTURES / "images", entries, eval_transform(SHAPE, None), 3, False)
    assert len(dataset) == 6
    for image, label in dataset:
        assert image.shape == SHAPE and label.dtype == torch.int64
        assert channel_means(image) == pytest.approx(CLASS_COLOUR[int(label)], abs=JPEG_SLACK)


def test_a_record_dataset_reads_each_record_by_its_offset() -> None:
    listed = {e.index: e.classes[0] for e in read_list(FIXTURES / "single.lst", 3, False)}
    dataset = RecordDataset(FIXTURES / "single.rec", eval_transform(SHAPE, None), 3, False)
    labels = [int(label) for _, label in dataset]
    # im2rec packs the records in the list's order
    assert labels == [listed[e.index] for e in read_list(FIXTURES / "single.lst", 3, False)]
    image, label = dataset[3]
    assert channel_means(image) == pytest.approx(CLASS_COLOUR[int(label)], abs=JPEG_SLACK)


def test_multi_label_targets_are_multi_hot_vectors() -> None:
    dataset = RecordDataset(FIXTURES / "multi.rec", eval_transform(SHAPE, None), 3, True)
    assert [label.tolist() for _, label in dataset] == [[1, 0, 1], [0, 1, 1], [0, 0, 1]]


def test_offsets_skip_the_parts_of_a_split_record() -> None:
    # split.rec: a record in two parts (8 + 28 bytes, then 8 + 4), then a whole one at byte 48
    with open(FIXTURES / "split.rec", "rb") as stream:
        assert scan_offsets(stream, "split.rec") == [0, 48]


def test_a_broken_image_names_the_file_and_its_list_index(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    entry = ListEntry(index=4, classes=(1,), path=Path("a.jpg"))
    dataset = ListDataset(tmp_path, [entry], eval_transform(SHAPE, None), 3, False)
    with pytest.raises(UserError, match=r"a.jpg \(list index 4\) is not an image"):
        dataset[0]


def test_evaluation_resizes_the_shorter_side_and_takes_the_centre() -> None:
    # 40 wide, 20 high: red and blue bands of 4 columns at the sides, green between them
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :4, 0], pixels[:, 4:36, 1], pixels[:, 36:, 2] = 255, 255, 255
    image = Image.fromarray(pixels)
    # shorter side 20 -> 8: 16 wide with the bands in columns 0-1.6 and 14.4-16; centre 4-12
    out = eval_transform(SHAPE, None)(image)
    assert out.shape == SHAPE
    assert channel_means(out) == pytest.approx(GREEN, abs=1e-3)
    wide = eval_transform(SHAPE, 16)(image)  # shorter side 16: 32 wide, centre 8 of the green
    assert channel_means(wide) == pytest.approx(GREEN, abs=1e-3)


@pytest.mark.parametrize("augmentation", ["crop", "crop_color", "crop_color_transform"])
def test_each_augmentation_gives_the_input_shape_and_varies(augmentation: str) -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (30, 50, 3), dtype=np.uint8))
    transform = train_transform((3, 16, 16), 24, augmentation)
    torch.manual_seed(0)
    first, second = transform(image), transform(image)
    assert first.shape == second.shape == (3, 16, 16)
    assert not torch.equal(first, second)


def test_without_augmentation_training_sees_what_validation_sees() -> None:
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (30, 50, 3), dtype=np.uint8))
    assert torch.equal(train_transform(SHAPE, 12, None)(image), eval_transform(SHAPE, 12)(image))
