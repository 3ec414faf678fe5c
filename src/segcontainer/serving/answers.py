"""What /invocations answers, by Accept type: one table, one entry per response format.

As the SageMaker inference toolkit's ``{content type: encoder}`` map: a new response format is
a function ``(predictor, image) -> body`` and one ``ANSWERS`` entry; the Accept negotiation,
the error listing the supported types and the SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT check all
read the table.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from PIL import Image

from segcontainer.prediction import Predictor
from segcontainer.serving.codecs import JSON, PNG, RequestError, encode_json, encode_png
from segcontainer.serving.protobuf_record import RECORD_LIMIT, answer_bytes, probability_answer

Answer = Callable[[Predictor, Image.Image], bytes | bytearray]


def class_map_png(predictor: Predictor, image: Image.Image) -> bytes:
    """A palette PNG of class ids (the built-in's default answer)."""
    return encode_png(predictor.class_map(image))


def class_summary_json(predictor: Predictor, image: Image.Image) -> bytes:
    """Shape, pixels and fraction per class, with the class names."""
    return encode_json(predictor.class_map(image), predictor.class_names)


def probability_record(predictor: Predictor, image: Image.Image) -> bytearray:
    """Softmax probabilities in one RecordIO-protobuf record (the built-in's format); one too
    large for a record is refused (413) before anything is computed."""
    width, height = image.size
    classes = predictor.num_classes
    size = answer_bytes(classes, height, width)
    if size > RECORD_LIMIT:
        side = math.isqrt((RECORD_LIMIT - answer_bytes(0, 0, 0)) // (4 * classes))
        raise RequestError(
            413,
            f"the probability answer for this {width}x{height} image would be "
            f"{size / 2**20:.0f} MiB ({classes} classes x {height} x {width} "
            f"x 4 bytes), more than the {RECORD_LIMIT / 2**20:.0f} MiB one RecordIO record "
            f"can hold. Ask for Accept: image/png or application/json (class ids), or send "
            f"a smaller image (at most {side}x{side} pixels, or the same pixel count, with "
            f"{classes} classes).",
        )
    # The predictor writes into the answer itself: one copy of the probabilities.
    body, values = probability_answer(classes, height, width)
    predictor.probabilities(image, out=values)
    return body


ANSWERS: dict[str, Answer] = {
    PNG: class_map_png,
    "application/x-recordio-protobuf": probability_record,
    "application/x-protobuf": probability_record,
    JSON: class_summary_json,
}
ACCEPT_TYPES = tuple(ANSWERS)


def answer(predictor: Predictor, image: Image.Image, accept: str) -> bytes | bytearray:
    """The response body for ``accept``, one of ``ACCEPT_TYPES``."""
    return ANSWERS[accept](predictor, image)


def choose_accept(header: str | None, default: str) -> str:
    """The response type: the first supported type listed in Accept; */* or none -> default."""
    parts = (header or "").split(",")
    listed = [part.split(";")[0].strip().lower() for part in parts if part.strip()]
    if not listed:
        return default
    for media in listed:
        if media in ANSWERS:
            return media
        if media in ("*/*", "image/*"):
            return default if media == "*/*" else PNG
    raise RequestError(406, f"Accept '{header}' is not supported; use one of {', '.join(ANSWERS)}")
