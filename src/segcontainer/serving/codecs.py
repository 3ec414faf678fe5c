"""Request decoding for /invocations, whatever the task: one image, ``image/jpeg``,
``image/png`` or ``application/x-image``; the bytes are checked, not only the header. What the
answer holds is the model's task's (``tasks.task.Task.answers``).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

from PIL import Image, UnidentifiedImageError

from segcontainer.config import variables
from segcontainer.data.preprocess import to_rgb
from segcontainer.errors import RequestError

CONTENT_TYPES = ("image/jpeg", "image/jpg", "image/png", "application/x-image")
JPEG_MAGIC, PNG_MAGIC = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
MAX_PIXELS_ENV = variables.MAX_IMAGE_PIXELS.name  # read in settings.py


def _media_type(header: str | None) -> str:
    return (header or "").split(";")[0].strip().lower()


def decode_image(
    body: bytes, content_type: str | None, max_pixels: int | None = None
) -> Image.Image:
    """The request body as an RGB image (EXIF orientation applied), or RequestError. An image
    of more than ``max_pixels`` pixels is refused (413) from its header, before its pixels
    are decoded: Image.open reads only the header."""
    media = _media_type(content_type)
    if media not in CONTENT_TYPES:
        raise RequestError(
            415,
            f"Content-Type '{content_type}' is not supported; send one image as "
            "image/jpeg, image/png or application/x-image",
        )
    if not body:
        raise RequestError(400, "the request body is empty; send the image bytes")
    if media != "application/x-image" and not body.startswith((JPEG_MAGIC, PNG_MAGIC)):
        raise RequestError(
            400,
            f"the body is not a JPEG or PNG image (Content-Type {media}); send other formats "
            "(TIFF, BMP, WebP, ...) as Content-Type application/x-image, which accepts any "
            f"image Pillow reads.{CURL_HINT}",
        )
    try:
        with Image.open(io.BytesIO(body)) as image:
            check_pixels(image.size, max_pixels)
            return to_rgb(image)
    except RequestError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own check, past twice its limit
        raise RequestError(413, f"image too large: {_without_reprs(exc)}") from exc
    except UnidentifiedImageError as exc:
        raise RequestError(
            400, f"the body is not an image Pillow can read ({media}).{CURL_HINT}"
        ) from exc
    except Exception as exc:  # Pillow raises several types for broken or truncated files
        raise RequestError(
            400, f"the image could not be decoded ({_without_reprs(exc)}).{CURL_HINT}"
        ) from exc


# curl's -d/--data strips newlines (0x0a, 0x0d) from a file, which breaks any binary image.
CURL_HINT = " With curl, send the file with --data-binary @FILE (-d/--data strips newlines)."


def check_pixels(size: tuple[int, int], max_pixels: int | None) -> None:
    """RequestError 413 when a ``size`` (width, height) image has more than ``max_pixels``."""
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise RequestError(
            413,
            f"the image is {width}x{height} = {width * height:,} pixels, more than the "
            f"{max_pixels:,} this endpoint decodes ({MAX_PIXELS_ENV}); send a smaller image "
            f"(or tiles of it), or raise {MAX_PIXELS_ENV} where the instance has the memory",
        )


def _without_reprs(error: Exception) -> str:
    """The error's message without Python object reprs ("<_io.BytesIO object at 0x7f…>"),
    which mean nothing to the client."""
    return re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(error)).strip() or type(error).__name__


def choose_accept(header: str | None, default: str, answered: Sequence[str]) -> str:
    """The response type: the first type in Accept that the model's task answers (``answered``,
    its table's keys), matched with its parameters first (``application/json;verbose``), then
    without them (a q-value or charset does not matter); */* or none -> ``default``; image/* ->
    the task's first image type."""
    parts = (header or "").split(",")
    listed = [_parameters_kept(part) for part in parts if part.strip()]
    if not listed:
        return default
    images = [media for media in answered if media.startswith("image/")]
    for media in listed:
        base = media.split(";")[0]
        for candidate in (media, base):
            if candidate in answered:
                return candidate
        if base == "*/*":
            return default
        if base == "image/*" and images:
            return images[0]
    raise RequestError(406, f"Accept '{header}' is not supported; use one of {', '.join(answered)}")


def _parameters_kept(media: str) -> str:
    """A media range lower-cased, without spaces and without its q-value: "Application/JSON;
    verbose; q=0.9" -> "application/json;verbose"."""
    parts = [part.strip().lower() for part in media.split(";")]
    return ";".join([parts[0], *(p for p in parts[1:] if p and not p.startswith("q="))])
