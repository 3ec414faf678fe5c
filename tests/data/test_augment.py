"""Augmentation invariants: shapes, label values, padding, joint flips, resize, collation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from segcontainer.data.augment import RandomLongSideResize, SizeGroupCollate, train_transform
from segcontainer.data.preprocess import to_tensors, validation_transform

SEEDS = range(8)
# ImageNet's channel mean and std (torchvision's pretrained weights), which the README says
# every image is normalised with: written here, not imported from the code under test.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _random_mask(width: int, height: int, labels: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(np.array(labels, dtype=np.uint8), size=(height, width))


def _halves(width: int = 32, height: int = 16) -> tuple[Image.Image, np.ndarray]:
    """Left half red with label 1, right half blue with label 2."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    mask = np.full((height, width), 2, dtype=np.uint8)
    mask[:, : width // 2] = 1
    return Image.fromarray(pixels, "RGB"), mask


# --- train_transform -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "base_size", "crop_size"),
    [
        (20, 16, 20, 32),  # rescaled image mostly smaller than the crop: padded
        (16, 20, 12, 40),  # always smaller than the crop, portrait
        (60, 40, 200, 32),  # always larger than the crop: cropped
        (40, 60, 64, 48),  # either, depending on the drawn scale
    ],
)
@pytest.mark.parametrize("seed", SEEDS)
def test_train_transform_output_shape_and_dtype(
    width: int, height: int, base_size: int, crop_size: int, seed: int
) -> None:
    image, mask = to_tensors(
        _random_image(width, height, seed), _random_mask(width, height, (0, 1, 2), seed)
    )
    torch.manual_seed(seed)

    out_image, out_mask = train_transform(base_size, crop_size)(image, mask)

    assert out_image.dtype == torch.float32
    assert out_image.shape == (3, crop_size, crop_size)
    assert out_mask.dtype == torch.uint8
    assert out_mask.shape == (crop_size, crop_size)


@pytest.mark.parametrize(
    ("width", "height", "base_size", "crop_size"),
    [(20, 16, 20, 32), (20, 16, 60, 24), (30, 18, 40, 40)],
)
def test_train_transform_never_invents_label_values(
    width: int, height: int, base_size: int, crop_size: int
) -> None:
    labels = (0, 3, 7)
    seen: set[int] = set()
    for seed in SEEDS:
        image, mask = to_tensors(
            _random_image(width, height, seed), _random_mask(width, height, labels, seed)
        )
        torch.manual_seed(seed)

        _, out_mask = train_transform(base_size, crop_size)(image, mask)

        values = set(out_mask.unique().tolist())
        assert values <= {*labels, 255}, f"seed {seed}: {sorted(values)}"
        seen |= values
    assert set(labels) <= seen


@pytest.mark.parametrize("seed", SEEDS)
def test_padding_uses_ignore_for_masks_and_mean_colour_for_images(seed: int) -> None:
    pixels = np.zeros((16, 20, 3), dtype=np.uint8)
    pixels[..., 0] = 255  # pure red, far from the mean colour
    image, mask = to_tensors(Image.fromarray(pixels, "RGB"), np.ones((16, 20), dtype=np.uint8))
    torch.manual_seed(seed)

    out_image, out_mask = train_transform(20, 64)(image, mask)  # long side <= 40 < 64

    padded = out_mask == 255
    assert padded.any()
    assert (~padded).any()
    assert set(out_mask.unique().tolist()) == {1, 255}
    # The padded image area is the mean colour, which normalises to about 0 ...
    assert out_image[:, padded].abs().max() < 0.02
    # ... and covers exactly the padded mask area (image and mask padded alike).
    red = torch.tensor([(1 - MEAN[0]) / STD[0], -MEAN[1] / STD[1], -MEAN[2] / STD[2]])
    assert torch.allclose(out_image[:, ~padded], red[:, None], atol=0.02)


def test_flip_moves_image_and_mask_together() -> None:
    orientations = set()
    for seed in range(20):
        image, mask = to_tensors(*_halves(64, 16))
        torch.manual_seed(seed)

        out_image, out_mask = train_transform(40, 96)(image, mask)  # long side <= 80: all in crop

        red_minus_blue = out_image[0] - out_image[2]
        left, right = out_mask == 1, out_mask == 2
        assert left.any() and right.any()
        # Only the column at the colour boundary may be blended by the image's resampling.
        assert (red_minus_blue[left] > 0).float().mean() > 0.8, f"seed {seed}"
        assert (red_minus_blue[right] < 0).float().mean() > 0.8, f"seed {seed}"
        columns = torch.arange(out_mask.shape[1]).expand_as(out_mask).float()
        flipped = columns[left].mean() > columns[right].mean()
        orientations.add(bool(flipped))
    assert orientations == {False, True}


@pytest.mark.parametrize("seed", range(12))
def test_flip_and_crop_keep_colours_with_labels_when_cropping(seed: int) -> None:
    image, mask = to_tensors(*_halves())
    torch.manual_seed(seed)

    out_image, out_mask = train_transform(64, 16)(image, mask)  # crop inside the image

    red_minus_blue = out_image[0] - out_image[2]
    for label, sign in ((1, 1), (2, -1)):
        where = out_mask == label
        if where.any():
            assert (sign * red_minus_blue[where] > 0).float().mean() > 0.9
    assert not (out_mask == 255).any()


# --- RandomLongSideResize ------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(30, 20), (20, 30), (25, 25), (40, 12)])
def test_long_side_resize_keeps_aspect_and_range(width: int, height: int) -> None:
    base_size = 40
    resize = RandomLongSideResize(base_size)
    long_sides = set()
    for seed in range(16):
        image, mask = to_tensors(
            _random_image(width, height, seed), _random_mask(width, height, (0, 1), seed)
        )
        torch.manual_seed(seed)

        out_image, out_mask = resize(image, mask)

        new_height, new_width = out_image.shape[-2:]
        assert out_mask.shape == (new_height, new_width)
        long_side = max(new_height, new_width)
        assert base_size * 0.5 <= long_side <= base_size * 2.0
        scale = long_side / max(width, height)
        assert abs(new_height - height * scale) <= 1
        assert abs(new_width - width * scale) <= 1
        assert (new_width >= new_height) == (width >= height)
        long_sides.add(long_side)
    assert len(long_sides) > 1  # the scale is drawn per sample


def test_long_side_resize_resamples_masks_with_nearest() -> None:
    labels = (0, 3, 7)
    image, mask = to_tensors(_random_image(20, 16), _random_mask(20, 16, labels))
    for seed in range(6):
        torch.manual_seed(seed)
        _, out_mask = RandomLongSideResize(40)(image, mask)
        assert set(out_mask.unique().tolist()) <= set(labels)


# --- validation and collation --------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(20, 16), (7, 13)])
def test_validation_transform_keeps_size_and_normalises(width: int, height: int) -> None:
    source = _random_image(width, height)
    labels = _random_mask(width, height, (0, 1, 255))
    image, mask = to_tensors(source, labels)

    out_image, out_mask = validation_transform()(image, mask)

    assert out_image.dtype == torch.float32
    assert out_image.shape == (3, height, width)
    assert out_mask.dtype == torch.uint8
    assert np.array_equal(out_mask.numpy(), labels)
    expected = (
        torch.from_numpy(np.array(source)).permute(2, 0, 1).float() / 255
        - torch.tensor(MEAN)[:, None, None]
    ) / torch.tensor(STD)[:, None, None]
    assert torch.allclose(out_image, expected, atol=1e-5)


def test_validation_batches_group_equal_sizes_without_padding() -> None:
    pairs = [
        (torch.rand(3, 10, 12), torch.ones(20, 24, dtype=torch.uint8)),
        (torch.rand(3, 16, 8), torch.full((31, 15), 2, dtype=torch.uint8)),
        (torch.rand(3, 10, 12), torch.zeros(10, 12, dtype=torch.uint8)),
    ]

    batch = SizeGroupCollate(tile_size=64)(pairs)

    assert batch.tile_size == 64
    assert [inputs.shape for inputs, _ in batch.groups] == [(2, 3, 10, 12), (1, 3, 16, 8)]
    (first, first_masks), (second, second_masks) = batch.groups
    assert torch.equal(first, torch.stack([pairs[0][0], pairs[2][0]]))
    assert torch.equal(second[0], pairs[1][0])
    # masks keep their own sizes: scores are taken at the mask's resolution
    assert [m.shape for m in first_masks + second_masks] == [(20, 24), (10, 12), (31, 15)]
