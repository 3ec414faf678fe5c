"""What an image classification model's /invocations answers, by Accept type (the built-in's
formats; one entry per response format, as segmentation's table):

- ``application/json`` (default): a JSON array of the class probabilities, in class order;
- ``application/jsonlines``: ``{"prediction": [...]}`` on one line (batch transform);
- ``application/json;verbose``: ``{"probabilities", "labels", "predicted_label"}`` (the JumpStart
  form), the labels from ``class_names`` when the job gave them.
"""

from __future__ import annotations

import json

from PIL import Image

from segcontainer.tasks.classification.prediction import Predictor
from segcontainer.tasks.task import Answer

JSON = "application/json"
JSON_LINES = "application/jsonlines"
VERBOSE_JSON = "application/json;verbose"


def _rounded(predictor: Predictor, image: Image.Image) -> list[float]:
    # float32 probabilities printed as float32 (not float64's 17 digits)
    return [float(f"{value:.7g}") for value in predictor.probabilities(image)]


def probabilities_json(predictor: Predictor, image: Image.Image) -> bytes:
    return json.dumps(_rounded(predictor, image)).encode()


def prediction_line(predictor: Predictor, image: Image.Image) -> bytes:
    return (json.dumps({"prediction": _rounded(predictor, image)}) + "\n").encode()


def verbose_json(predictor: Predictor, image: Image.Image) -> bytes:
    values = _rounded(predictor, image)
    best = max(range(len(values)), key=values.__getitem__)
    labels = predictor.class_names
    return json.dumps(
        {"probabilities": values, "labels": labels, "predicted_label": labels[best]}
    ).encode()


ANSWERS: dict[str, Answer] = {
    JSON: probabilities_json,
    JSON_LINES: prediction_line,
    VERBOSE_JSON: verbose_json,
}
