"""The flask app, settings and predictor in-process: readiness, 500s, tiling, resizing."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from segcontainer.config.hyperparameters import resolve
from segcontainer.metrics import Scores
from segcontainer.model_folder import model_config, save_model
from segcontainer.models import build_model
from segcontainer.serving import app as app_module
from segcontainer.serving.app import create_app
from segcontainer.serving.predictor import Predictor, _starts
from segcontainer.serving.server import nginx_config
from segcontainer.serving.settings import ServingSettings


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    config = resolve({"num_classes": "3", "base_size": "64", "crop_size": "32"})
    torch.manual_seed(0)
    model = build_model("fcn", "resnet-50", 3)
    save_model(
        folder,
        model,
        model_config(config, {"train": {"scale": 1}}),
        0,
        Scores(0.5, 0.5, (0.5, 0.5, 0.5)),
        (),
    )
    return folder


def settings_for(model_dir: Path, **changes) -> ServingSettings:
    values = dict(
        model_dir=model_dir,
        port=8080,
        workers=1,
        timeout=60,
        max_payload_mb=6,
        default_accept="image/png",
        torch_threads=1,
    )
    return ServingSettings(**{**values, **changes})


def jpeg(size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_ping_is_503_while_loading_then_200(model_dir: Path, monkeypatch) -> None:
    release = threading.Event()
    original = app_module.ModelSlot.load

    def slow_load(self, folder):
        release.wait(30)
        original(self, folder)

    monkeypatch.setattr(app_module.ModelSlot, "load", slow_load)
    client = create_app(settings_for(model_dir)).test_client()
    answer = client.get("/ping")
    assert answer.status_code == 503 and answer.json == {"status": "loading"}
    assert client.post("/invocations", data=jpeg(), content_type="image/jpeg").status_code == 503
    release.set()
    slot = client.application.extensions["segcontainer_model"]
    for _ in range(600):
        if slot.predictor is not None:
            break
        threading.Event().wait(0.05)
    assert client.get("/ping").status_code == 200


def test_ping_is_503_when_loading_failed(tmp_path: Path, caplog) -> None:
    client = create_app(settings_for(tmp_path / "nothing-here"), load_in_background=False)
    answer = client.test_client().get("/ping")
    assert answer.status_code == 503 and answer.json == {"status": "failed"}
    assert "loading the model" in caplog.text


def test_unexpected_error_is_500_json_and_the_next_request_works(model_dir, monkeypatch) -> None:
    client = create_app(settings_for(model_dir), load_in_background=False).test_client()
    predictor = client.application.extensions["segcontainer_model"].predictor
    monkeypatch.setattr(predictor, "class_map", lambda image: 1 / 0)
    answer = client.post("/invocations", data=jpeg(), content_type="image/jpeg")
    assert answer.status_code == 500
    assert answer.json == {"error": "internal error: ZeroDivisionError"}
    monkeypatch.undo()
    answer = client.post("/invocations", data=jpeg(), content_type="image/jpeg")
    assert answer.status_code == 200 and Image.open(io.BytesIO(answer.data)).size == (40, 30)


def test_default_accept_comes_from_the_environment(model_dir: Path) -> None:
    settings = settings_for(model_dir, default_accept="application/json")
    client = create_app(settings, load_in_background=False).test_client()
    answer = client.post(
        "/invocations", data=jpeg(), content_type="image/jpeg", headers={"Accept": "*/*"}
    )
    assert answer.status_code == 200 and answer.mimetype == "application/json"


def test_settings_from_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    monkeypatch.setenv("MODEL_SERVER_WORKERS", "3")
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", "2")
    monkeypatch.setenv("MODEL_SERVER_TIMEOUT", "90")
    monkeypatch.setenv("SAGEMAKER_BIND_TO_PORT", "9001")
    monkeypatch.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", "50")
    settings = ServingSettings.from_env()
    assert (settings.workers, settings.timeout, settings.port) == (2, 90, 9001)
    assert settings.model_dir == tmp_path / "model"
    assert settings.max_body_bytes == 50 * 1024 * 1024
    assert settings.execution_parameters() == {
        "MaxConcurrentTransforms": 2,
        "BatchStrategy": "SINGLE_RECORD",
        "MaxPayloadInMB": 50,
    }
    monkeypatch.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", "1")
    assert ServingSettings.from_env().max_body_bytes == 6 * 1024 * 1024  # real-time limit
    monkeypatch.setenv("MODEL_SERVER_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="MODEL_SERVER_TIMEOUT='soon' is not valid"):
        ServingSettings.from_env()
    monkeypatch.setenv("MODEL_SERVER_TIMEOUT", "90")
    monkeypatch.setenv("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "text/csv")
    with pytest.raises(ValueError, match="SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"):
        ServingSettings.from_env()


def test_nginx_config_carries_port_body_limit_and_timeout(tmp_path: Path) -> None:
    text = nginx_config(
        settings_for(tmp_path, port=8123, timeout=77, max_payload_mb=30),
        tmp_path,
        tmp_path / "g.sock",
    )
    assert "listen 8123 deferred;" in text
    assert "client_max_body_size 30m;" in text
    assert "proxy_read_timeout 77s;" in text
    assert f"server unix:{tmp_path / 'g.sock'};" in text
    assert "location ~ ^/(ping|invocations|execution-parameters)$ {" in text


@pytest.mark.parametrize(
    ("length", "tile", "stride"),
    [(100, 32, 21), (32, 32, 21), (33, 32, 21), (10, 32, 21), (1000, 256, 170)],
)
def test_tile_starts_cover_every_pixel_and_end_flush(length, tile, stride) -> None:
    starts = _starts(length, tile, stride)
    covered = np.zeros(length, bool)
    for start in starts:
        covered[start : start + tile] = True
    assert covered.all()
    assert starts[-1] + min(tile, length) == length


def test_model_sees_the_image_at_the_training_scale(model_dir: Path) -> None:
    predictor = Predictor(model_dir)
    assert predictor.long_side == 64  # base_size
    assert predictor._model_input(Image.new("RGB", (400, 300))).shape == (1, 3, 48, 64)
    assert predictor._model_input(Image.new("RGB", (20, 40))).shape == (1, 3, 64, 32)


def test_tiled_prediction_keeps_every_pixel_and_the_input_size(model_dir, monkeypatch) -> None:
    monkeypatch.setenv("SEGCONTAINER_INFERENCE_SIZE", "0")  # the image's own size
    monkeypatch.setenv("SEGCONTAINER_TILE_SIZE", "32")
    predictor = Predictor(model_dir)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 100, 3), np.uint8))
    logits = predictor.logits(image)
    assert logits.shape == (3, 70, 100) and torch.isfinite(logits).all()
    probabilities = predictor.probabilities(image)
    assert probabilities.shape == (3, 70, 100)
    assert np.allclose(probabilities.sum(0), 1, atol=1e-5)
    assert np.array_equal(predictor.class_map(image), probabilities.argmax(0))


def test_banded_upsampling_equals_whole_image_interpolation(model_dir: Path) -> None:
    predictor = Predictor(model_dir)
    for h, w, height, width in [(5, 7, 333, 41), (20, 30, 600, 700), (10, 10, 7, 9)]:
        logits = torch.randn(3, h, w)
        whole = F.interpolate(
            logits[None], size=(height, width), mode="bilinear", align_corners=False
        )[0]
        banded = torch.empty(3, height, width)
        for rows, band in predictor._bands(logits, height, width):
            banded[:, rows] = band
        assert torch.allclose(banded, whole, atol=1e-5)
