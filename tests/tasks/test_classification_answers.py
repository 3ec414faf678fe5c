"""Image classification's predictor and answers (the endpoint's formats), on a small model
folder written here, and the Accept negotiation of a parameterised type."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segcontainer.errors import RequestError
from segcontainer.serving.codecs import choose_accept
from segcontainer.tasks.classification.answers import ANSWERS
from segcontainer.tasks.classification.model import build_network
from segcontainer.tasks.classification.prediction import Predictor
from segcontainer.tasks.classification.transforms import eval_transform


def model_folder(folder: Path, multi_label: bool, class_names: list[str] | None = None) -> Path:
    """A CIFAR ResNet-20 for 3 classes at 16x16, as hyperparams.json + model.pt + names."""
    torch.manual_seed(0)
    folder.mkdir()
    torch.save(build_network(20, 3).state_dict(), folder / "model.pt")
    record = {"num_layers": 20, "num_classes": 3, "image_shape": [3, 16, 16], "resize": None,
              "multi_label": multi_label, "task": "image-classification"}  # fmt: skip
    (folder / "hyperparams.json").write_text(json.dumps(record))
    if class_names:
        (folder / "model_info.json").write_text(json.dumps({"class_names": class_names}))
    return folder


@pytest.fixture
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))


def test_probabilities_are_the_models_softmax_on_the_evaluation_input(tmp_path, image) -> None:
    predictor = Predictor.open(model_folder(tmp_path / "m", multi_label=False))
    probabilities = predictor.probabilities(image)
    model = build_network(20, 3).eval()
    model.load_state_dict(torch.load(tmp_path / "m" / "model.pt", weights_only=True))
    with torch.no_grad():
        expected = model(eval_transform((3, 16, 16), None)(image)[None])[0].softmax(0)
    assert probabilities == pytest.approx(expected.numpy(), abs=1e-6)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-6)


def test_a_multi_label_model_answers_a_sigmoid_per_class(tmp_path, image) -> None:
    predictor = Predictor.open(model_folder(tmp_path / "m", multi_label=True))
    single = Predictor.open(model_folder(tmp_path / "s", multi_label=False))
    logits = np.log(single.probabilities(image))  # softmax's logits, up to a constant
    sigmoid = predictor.probabilities(image)
    assert ((sigmoid > 0) & (sigmoid < 1)).all()
    # the same weights: the sigmoids are ordered as the softmax probabilities are
    assert np.argsort(sigmoid).tolist() == np.argsort(logits).tolist()
    assert sigmoid.sum() != pytest.approx(1.0, abs=1e-3)


def test_each_answer_format(tmp_path, image) -> None:
    predictor = Predictor.open(model_folder(tmp_path / "m", False, ["cat", "dog", "emu"]))
    probabilities = predictor.probabilities(image).tolist()
    array = json.loads(ANSWERS["application/json"](predictor, image))
    assert array == pytest.approx(probabilities, abs=1e-6)
    line = ANSWERS["application/jsonlines"](predictor, image)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["prediction"] == pytest.approx(probabilities, abs=1e-6)
    verbose = json.loads(ANSWERS["application/json;verbose"](predictor, image))
    assert verbose["labels"] == ["cat", "dog", "emu"]
    assert verbose["predicted_label"] == ["cat", "dog", "emu"][int(np.argmax(probabilities))]
    assert verbose["probabilities"] == pytest.approx(probabilities, abs=1e-6)


def test_without_class_names_the_labels_are_class_ids_named(tmp_path, image) -> None:
    predictor = Predictor.open(model_folder(tmp_path / "m", False))
    verbose = json.loads(ANSWERS["application/json;verbose"](predictor, image))
    assert verbose["labels"] == ["class_0", "class_1", "class_2"]


@pytest.mark.parametrize(
    ("header", "chosen"),
    [
        ("application/json;verbose", "application/json;verbose"),
        ("Application/JSON; verbose; q=0.9", "application/json;verbose"),
        ("application/json", "application/json"),
        ("application/json; charset=utf-8", "application/json"),
        ("application/jsonlines", "application/jsonlines"),
        ("*/*", "application/json"),
        (None, "application/json"),
        ("text/csv, application/jsonlines", "application/jsonlines"),
    ],
)
def test_accept_is_negotiated_with_its_parameters(header, chosen) -> None:
    assert choose_accept(header, "application/json", tuple(ANSWERS)) == chosen


def test_an_image_accept_is_refused_by_a_classification_model() -> None:
    with pytest.raises(RequestError) as refused:
        choose_accept("image/png", "application/json", tuple(ANSWERS))
    assert refused.value.status == 406 and "application/jsonlines" in str(refused.value)
    with pytest.raises(RequestError):
        choose_accept("image/*", "application/json", tuple(ANSWERS))
