"""/invocations applies a photo's EXIF orientation (the README: "EXIF orientation applied"; every
answer has the input's height and width as displayed): the answer to a tagged photo is the
answer to the same pixels turned by hand as the EXIF specification says, in size and in
direction. In-process app on the tiny test encoder: the subject is the request's decoding."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from segcontainer.client import decode_recordio_protobuf
from segcontainer.serving.app import create_app
from tests.support.models import save_tiny_fcn
from tests.support.serving import settings_for

ORIENTATION = 0x0112
# EXIF 2.32, tag 0x0112: how the stored pixels must be turned for display, written as PIL's
# counter-clockwise transposes (3: rotate 180; 6: rotate 90 clockwise; 8: 90 anticlockwise).
DISPLAY_TURN = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_270,
    8: Image.Transpose.ROTATE_90,
}
PROBABILITIES = "application/x-recordio-protobuf"


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator:
    with pytest.MonkeyPatch.context() as patch:
        folder = save_tiny_fcn(tmp_path_factory.mktemp("model"), patch)
        yield create_app(settings_for(folder), load_in_background=False).test_client()


def stored_photo(fmt: str, orientation: int) -> bytes:
    """A 48x30 noise picture (no symmetry to hide a wrong turn) tagged with ``orientation``."""
    pixels = np.random.default_rng(orientation).integers(0, 256, (30, 48, 3), np.uint8)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, exif=exif)
    return buffer.getvalue()


def turned_by_hand(photo: bytes, turn: Image.Transpose) -> bytes:
    """The photo's stored pixels (PIL does not apply EXIF on open) turned, as a lossless PNG
    without any EXIF."""
    with Image.open(io.BytesIO(photo)) as stored:
        buffer = io.BytesIO()
        stored.convert("RGB").transpose(turn).save(buffer, format="PNG")
    return buffer.getvalue()


def probabilities(client, body: bytes, content_type: str) -> np.ndarray:
    answer = client.post(
        "/invocations", data=body, content_type=content_type, headers={"Accept": PROBABILITIES}
    )
    assert answer.status_code == 200, answer.data[:300]
    return decode_recordio_protobuf(answer.data)


@pytest.mark.parametrize("orientation", sorted(DISPLAY_TURN))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_invocations_answer_the_photo_as_displayed(client, fmt: str, orientation: int) -> None:
    photo = stored_photo(fmt, orientation)
    answer = probabilities(client, photo, f"image/{fmt.lower()}")
    displayed = probabilities(client, turned_by_hand(photo, DISPLAY_TURN[orientation]), "image/png")
    expected_size = (30, 48) if orientation == 3 else (48, 30)  # (height, width) as displayed
    assert answer.shape == (3, *expected_size)
    np.testing.assert_allclose(answer, displayed, atol=1e-6)
    # The other way round gives another answer: the comparison above can tell directions.
    opposite = {
        3: Image.Transpose.FLIP_TOP_BOTTOM,
        6: Image.Transpose.ROTATE_90,
        8: Image.Transpose.ROTATE_270,
    }
    wrong = probabilities(client, turned_by_hand(photo, opposite[orientation]), "image/png")
    assert wrong.shape != answer.shape or not np.allclose(wrong, answer, atol=1e-3)
