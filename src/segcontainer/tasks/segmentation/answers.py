"""What a segmentation model's /invocations answers, by Accept type: one table, one entry per
response format.

- ``image/png``: a palette (P) PNG of class ids, index i = class i, PASCAL VOC colours;
- ``application/x-recordio-protobuf`` / ``application/x-protobuf``: softmax probabilities
  (see ``protobuf_record``);
- ``application/json``: a summary (shape, pixels and fraction per class, class names).

As the SageMaker inference toolkit's ``{content type: encoder}`` map: a new response format is
a function ``(predictor, image) -> body`` and one ``ANSWERS`` entry; the Accept negotiation
(serving.app), the error listing the supported types and the
SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT check all read the table.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
from PIL import Image

from segcontainer.data.palette import mask_image
from segcontainer.errors import RequestError
from segcontainer.tasks.segmentation.prediction import Predictor
from segcontainer.tasks.segmentation.protobuf_record import (
    RECORD_LIMIT,
    answer_bytes,
    probability_answer,
)
from segcontainer.tasks.task import Answer

PNG = "image/png"
JSON = "application/json"


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


def encode_png(class_map: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    mask_image(class_map).save(buffer, format="PNG", compress_level=1)  # speed over bytes
    return buffer.getvalue()


def encode_json(class_map: np.ndarray, class_names: list[str]) -> bytes:
    counts = np.bincount(class_map.ravel(), minlength=len(class_names))
    total = int(class_map.size)
    return json.dumps(
        {
            "height": int(class_map.shape[0]),
            "width": int(class_map.shape[1]),
            "num_classes": len(class_names),
            "classes": [
                {"id": i, "name": name, "pixels": int(n), "fraction": round(int(n) / total, 6)}
                for i, (name, n) in enumerate(zip(class_names, counts.tolist(), strict=False))
            ],
        }
    ).encode()


ANSWERS: dict[str, Answer] = {
    PNG: class_map_png,
    "application/x-recordio-protobuf": probability_record,
    "application/x-protobuf": probability_record,
    JSON: class_summary_json,
}
