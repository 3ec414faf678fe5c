"""Channels: pairing files, label maps, decoding images and masks, the torch Dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segcontainer.data.channels import (
    Sample,
    load_image,
    load_mask,
    load_mask_pixels,
    pair_samples,
)
from segcontainer.data.dataset import SegmentationDataset
from segcontainer.data.label_maps import IGNORE_INDEX, identity_lut, label_map_lut
from segcontainer.data.preprocess import validation_transform
from segcontainer.errors import UserError
from tests.support.exif import assert_corners, displayed_size, quadrant_jpeg

WIDTH, HEIGHT = 20, 16


def _touch_image(path: Path, size: tuple[int, int] = (WIDTH, HEIGHT)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    Image.new("RGB", size, (10, 20, 30)).save(path, format=fmt)
    return path


def _touch_mask(path: Path, size: tuple[int, int] = (WIDTH, HEIGHT)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, 0).save(path)
    return path


# --- pair_samples -------------------------------------------------------------------------------


def test_pair_samples_pairs_by_base_name_across_extensions(tmp_path: Path) -> None:
    images, masks = tmp_path / "train", tmp_path / "train_annotation"
    _touch_image(images / "a.jpg")
    _touch_image(images / "b.png")
    _touch_mask(masks / "a.png")
    _touch_mask(masks / "b.png")

    pairs, lonely_images, lonely_masks = pair_samples(images, masks)

    assert pairs == [
        Sample(images / "a.jpg", masks / "a.png"),
        Sample(images / "b.png", masks / "b.png"),
    ]
    assert [p.name for p in pairs] == ["a", "b"]
    assert lonely_images == []
    assert lonely_masks == []


def test_pair_samples_reports_images_without_masks_and_masks_without_images(
    tmp_path: Path,
) -> None:
    images, masks = tmp_path / "train", tmp_path / "train_annotation"
    _touch_image(images / "both.jpg")
    _touch_image(images / "only_image.jpg")
    _touch_mask(masks / "both.png")
    _touch_mask(masks / "only_mask.png")

    pairs, lonely_images, lonely_masks = pair_samples(images, masks)

    assert pairs == [Sample(images / "both.jpg", masks / "both.png")]
    assert lonely_images == [images / "only_image.jpg"]
    assert lonely_masks == [masks / "only_mask.png"]


def test_pair_samples_ignores_hidden_files(tmp_path: Path) -> None:
    images, masks = tmp_path / "train", tmp_path / "train_annotation"
    _touch_image(images / "a.jpg")
    _touch_mask(masks / "a.png")
    (images / ".DS_Store").write_bytes(b"\x00\x01junk")
    _touch_image(images / ".hidden.jpg")
    _touch_mask(masks / ".other.png")

    pairs, lonely_images, lonely_masks = pair_samples(images, masks)

    assert pairs == [Sample(images / "a.jpg", masks / "a.png")]
    assert lonely_images == []
    assert lonely_masks == []


def test_pair_samples_pairs_nested_files_by_relative_path(tmp_path: Path) -> None:
    images, masks = tmp_path / "train", tmp_path / "train_annotation"
    for folder in ("x", "y"):  # the same base name in two sub-folders: two samples
        _touch_image(images / folder / "001.jpg")
        _touch_mask(masks / folder / "001.png")
    _touch_image(images / "x" / "002.jpg")
    _touch_mask(masks / "y" / "002.png")  # same base name, other folder: no partner

    pairs, lonely_images, lonely_masks = pair_samples(images, masks)

    assert pairs == [
        Sample(images / "x" / "001.jpg", masks / "x" / "001.png"),
        Sample(images / "y" / "001.jpg", masks / "y" / "001.png"),
    ]
    assert lonely_images == [images / "x" / "002.jpg"]
    assert lonely_masks == [masks / "y" / "002.png"]


def test_pair_samples_refuses_two_files_of_one_name_naming_them(tmp_path: Path) -> None:
    images, masks = tmp_path / "train", tmp_path / "train_annotation"
    _touch_image(images / "a.jpg")
    _touch_image(images / "a.png")  # which one is a.png's image?
    _touch_mask(masks / "a.png")
    _touch_mask(masks / "x" / "b.png")
    _touch_mask(masks / "x" / "b.PNG")
    _touch_image(images / "x" / "b.jpg")

    with pytest.raises(UserError) as info:
        pair_samples(images, masks)

    message = str(info.value)
    assert "train: a.jpg and a.png" in message
    assert "train_annotation: x/b.PNG and x/b.png" in message
    assert "ambiguous" in message


# --- load_image ----------------------------------------------------------------------------------


def _rgb_array() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("mode", "suffix"),
    [
        ("L", ".png"),
        ("LA", ".png"),
        ("RGB", ".png"),
        ("RGB", ".jpg"),
        ("RGBA", ".png"),
        ("P", ".png"),
        ("1", ".png"),
        ("CMYK", ".jpg"),
    ],
)
def test_load_image_returns_rgb_of_the_right_size(tmp_path: Path, mode: str, suffix: str) -> None:
    path = tmp_path / f"image{suffix}"
    Image.fromarray(_rgb_array(), "RGB").convert(mode).save(path)
    with Image.open(path) as saved:
        assert saved.mode == mode  # the file really is in that mode

    image = load_image(path)

    assert image.mode == "RGB"
    assert image.size == (WIDTH, HEIGHT)


def test_load_image_keeps_rgb_values(tmp_path: Path) -> None:
    array = _rgb_array()
    path = tmp_path / "image.png"
    Image.fromarray(array, "RGB").save(path)

    assert np.array_equal(np.asarray(load_image(path)), array)


def test_load_image_applies_palette(tmp_path: Path) -> None:
    image = Image.new("P", (WIDTH, HEIGHT), 1)
    image.putpalette([0, 0, 0, 200, 40, 10] + [0] * (256 * 3 - 6))
    path = tmp_path / "palette.png"
    image.save(path)

    pixels = np.asarray(load_image(path))

    assert (pixels == np.array([200, 40, 10], dtype=np.uint8)).all()


def test_load_image_scales_16_bit_values_instead_of_clipping(tmp_path: Path) -> None:
    array = np.zeros((HEIGHT, WIDTH), dtype=np.uint16)
    array[:, : WIDTH // 2] = 65535
    array[:, WIDTH // 2 :] = 32768
    array[0, 0] = 0
    path = tmp_path / "sixteen.png"
    Image.fromarray(array).save(path)
    with Image.open(path) as saved:
        assert saved.mode.startswith("I")  # really a 16-bit file

    image = load_image(path)
    pixels = np.asarray(image).astype(int)

    assert image.mode == "RGB"
    assert image.size == (WIDTH, HEIGHT)
    assert (pixels[1:, : WIDTH // 2] == 255).all()
    assert (np.abs(pixels[:, WIDTH // 2 :] - 128) <= 1).all()
    assert (pixels[0, 0] == 0).all()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_load_image_applies_exif_orientation(tmp_path: Path, orientation: int) -> None:
    path = quadrant_jpeg(tmp_path / "rotated.jpg", orientation)

    image = load_image(path)

    assert image.mode == "RGB"
    assert image.size == displayed_size(orientation)
    assert_corners(np.asarray(image), orientation)  # turned the right way, not just resized


# --- masks ---------------------------------------------------------------------------------------


def _mask_values() -> np.ndarray:
    values = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    values[:, 5:10] = 1
    values[:, 10:15] = 2
    values[:, 15:] = 255
    return values


def test_load_mask_pixels_reads_palette_indices_not_colours(tmp_path: Path) -> None:
    mask = Image.fromarray(_mask_values(), "P")
    mask.putpalette([0, 0, 0, 255, 255, 255, 10, 20, 30] + [0] * (256 * 3 - 9))  # 1 -> white
    path = tmp_path / "mask.png"
    mask.save(path)
    with Image.open(path) as saved:
        assert saved.mode == "P"

    pixels = load_mask_pixels(path)

    assert pixels.dtype == np.uint8
    assert pixels.shape == (HEIGHT, WIDTH)
    assert np.array_equal(pixels, _mask_values())


def test_load_mask_pixels_reads_grayscale_values(tmp_path: Path) -> None:
    path = tmp_path / "mask.png"
    Image.fromarray(_mask_values(), "L").save(path)

    pixels = load_mask_pixels(path)

    assert pixels.dtype == np.uint8
    assert np.array_equal(pixels, _mask_values())


def test_load_mask_pixels_reads_bilevel_masks_as_zero_and_one(tmp_path: Path) -> None:
    path = tmp_path / "mask.png"
    Image.fromarray(np.array([[0, 255, 0], [255, 255, 0]], dtype=np.uint8)).convert("1").save(path)

    pixels = load_mask_pixels(path)

    assert pixels.dtype == np.uint8
    assert pixels.tolist() == [[0, 1, 0], [1, 1, 0]]


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_load_mask_pixels_rejects_colour_masks(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "colour_mask.png"
    Image.fromarray(_mask_values(), "L").convert(mode).save(path)

    with pytest.raises(UserError, match="single-channel") as info:
        load_mask_pixels(path)

    assert "colour_mask.png" in str(info.value)


def test_load_mask_applies_lut_and_ignores_unmapped_values(tmp_path: Path) -> None:
    path = tmp_path / "mask.png"
    Image.fromarray(_mask_values(), "L").save(path)
    lut = label_map_lut({"map": {"0": 2, "1": 0}}, "train_label_map.json")  # pixel 1 unmapped

    labels = load_mask(path, lut)

    expected = np.full((HEIGHT, WIDTH), IGNORE_INDEX, dtype=np.uint8)
    expected[:, :5] = 1  # pixel 0 -> label 1
    expected[:, 10:15] = 0  # pixel 2 -> label 0
    assert labels.dtype == np.uint8
    assert np.array_equal(labels, expected)


def test_load_mask_with_scale_keeps_ignore(tmp_path: Path) -> None:
    values = np.array([[0, 3, 6, 255]], dtype=np.uint8)
    path = tmp_path / "mask.png"
    Image.fromarray(values, "L").save(path)

    labels = load_mask(path, label_map_lut({"scale": 3}, "train_label_map.json"))

    assert labels.tolist() == [[0, 1, 2, 255]]


# --- Dataset -------------------------------------------------------------------------------------


def test_dataset_returns_float_image_and_uint8_mask_tensors(tmp_path: Path) -> None:
    images, masks = tmp_path / "train", tmp_path / "train_annotation"
    images.mkdir()
    masks.mkdir()
    Image.fromarray(_rgb_array(), "RGB").save(images / "a.jpg")
    Image.fromarray(_mask_values(), "L").save(masks / "a.png")
    Image.fromarray(_rgb_array()[:10, :12], "RGB").convert("L").save(images / "b.png")
    Image.fromarray(_mask_values()[:10, :12], "L").save(masks / "b.png")
    samples, _, _ = pair_samples(images, masks)
    dataset = SegmentationDataset(samples, identity_lut(), validation_transform())

    assert len(dataset) == 2
    for index, (height, width) in enumerate([(HEIGHT, WIDTH), (10, 12)]):
        image, mask = dataset[index]
        assert type(image) is torch.Tensor
        assert type(mask) is torch.Tensor
        assert image.dtype == torch.float32
        assert image.shape == (3, height, width)
        assert mask.dtype == torch.uint8
        assert mask.shape == (height, width)
        assert np.array_equal(mask.numpy(), _mask_values()[:height, :width])


def test_an_input_format_is_one_entry_of_the_file_formats(tmp_path: Path, monkeypatch) -> None:
    """data.splits.FILE_FORMATS is tried in order, the folders last: a new File-mode input
    format is one finder there (the README's 'add an input format'), seen by training, the
    data check, the exports and the tools alike through find_split."""
    from segcontainer.config.environment import Paths
    from segcontainer.data import splits
    from segcontainer.data.channels import FoundSamples, Sample

    paths = Paths(tmp_path)
    with pytest.raises(UserError, match="Channel 'train' is missing"):
        splits.find_split(paths, "train")  # no format has it: the folders name what is missing
    sample = Sample(tmp_path / "a.tif", tmp_path / "a.png")

    def tif_list(paths: Paths, split: str) -> FoundSamples | None:
        return FoundSamples([sample]) if split == "train" else None

    monkeypatch.setattr(splits, "FILE_FORMATS", (tif_list, *splits.FILE_FORMATS))
    assert splits.find_split(paths, "train").samples == [sample]
