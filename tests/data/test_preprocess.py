"""to_rgb: float and 32-bit integer images scaled to 8 bits, as training and serving see them."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from segcontainer.data.preprocess import to_rgb


def _tiff_round_trip(array: np.ndarray, mode: str) -> Image.Image:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="TIFF")
    image = Image.open(io.BytesIO(buffer.getvalue()))
    assert image.mode == mode  # really a float / 32-bit file, as a user would send it
    return image


def _gray(image: Image.Image) -> np.ndarray:
    rgb = np.asarray(to_rgb(image)).astype(int)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
    return rgb[..., 0]


def test_float_image_in_zero_to_one_is_scaled_by_that_range() -> None:
    array = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)

    gray = _gray(_tiff_round_trip(array, "F"))

    assert np.abs(gray - array * 255).max() <= 1  # not black: 1.0 is white


@pytest.mark.parametrize(
    ("array", "mode"),
    [
        (np.array([[-5.0, 0.0], [7.5, 20.0]], dtype=np.float32), "F"),  # e.g. depth, radiance
        (np.array([[0, 25_000], [50_000, 100_000]], dtype=np.int32), "I"),  # beyond 16 bits
        (np.array([[-1024, 0], [1024, 3072]], dtype=np.int32), "I"),  # e.g. CT values
    ],
)
def test_float_and_32_bit_images_are_stretched_over_their_own_range(
    array: np.ndarray, mode: str
) -> None:
    gray = _gray(_tiff_round_trip(array, mode))

    expected = (array - array.min()) * 255.0 / (array.max() - array.min())
    assert gray[0, 0] == 0 and gray[1, 1] == 255
    assert np.abs(gray - expected).max() <= 1


def test_32_bit_image_of_16_bit_values_is_scaled_as_16_bit() -> None:
    # Pillow may open a 16-bit file as mode I: it must look the same as the 16-bit file does.
    array = np.array([[0, 32768], [65535, 1000]], dtype=np.int32)

    gray = _gray(Image.fromarray(array, "I"))

    assert np.abs(gray - array * 255.0 / 65535).max() <= 1


def test_float_image_with_nan_and_constant_image_decode_without_error() -> None:
    with_nan = np.array([[np.nan, 2.0], [4.0, 6.0]], dtype=np.float32)
    constant = np.full((2, 2), 3.5, dtype=np.float32)

    # NaN decodes as the minimum
    assert _gray(Image.fromarray(with_nan, "F")).tolist() == [[0, 0], [127, 255]]
    assert _gray(Image.fromarray(constant, "F")).tolist() == [[0, 0], [0, 0]]
