"""The flask app, settings and predictor in-process: readiness, 500s, tiling, resizing."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from segcontainer import inference
from segcontainer.config.variables import EnvironmentVariableError
from segcontainer.inference import tile_starts, tiled_logits, upsampled_bands
from segcontainer.prediction import PredictionSettings
from segcontainer.serving import app as app_module
from segcontainer.serving.app import create_app
from segcontainer.serving.server import nginx_config
from segcontainer.serving.settings import ServingSettings
from segcontainer.tasks.segmentation.prediction import Predictor
from tests.support.models import save_tiny_fcn
from tests.support.serving import settings_for


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Iterator[Path]:
    """An fcn on the tiny test encoder (registered while this module's tests run): the subject
    is the app around the model, not ResNet-50's arithmetic."""
    with pytest.MonkeyPatch.context() as patch:
        folder = save_tiny_fcn(tmp_path_factory.mktemp("model"), patch)
        yield folder


def jpeg(size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_ping_is_503_while_loading_then_200(model_dir: Path, monkeypatch) -> None:
    release = threading.Event()
    original = app_module.ModelSlot.load

    def slow_load(self, *args):
        release.wait(30)
        original(self, *args)

    monkeypatch.setattr(app_module.ModelSlot, "load", slow_load)
    client = create_app(settings_for(model_dir)).test_client()
    answer = client.get("/ping")
    assert answer.status_code == 503 and answer.json["status"] == "loading"
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
    assert answer.status_code == 503 and answer.json["status"] == "failed"
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
    with pytest.raises(
        EnvironmentVariableError,
        match="MODEL_SERVER_TIMEOUT='soon' is not valid: expected an integer >= 1",
    ):
        ServingSettings.from_env()
    monkeypatch.setenv("MODEL_SERVER_TIMEOUT", "90")
    monkeypatch.setenv("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "text/csv")
    with pytest.raises(
        EnvironmentVariableError,
        match="SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT='text/csv' is not valid: expected one of "
        "image/png, ",
    ):
        ServingSettings.from_env()


def test_batch_transform_waits_600_s_by_default_and_endpoints_keep_60(monkeypatch, tmp_path):
    """SAGEMAKER_BATCH=true (set by SageMaker in batch transform, which waits 600 s for each
    invocation unless ModelClientConfig says otherwise): the timeout's default is 600 s; an
    endpoint keeps 60 s; an explicit SAGEMAKER_MODEL_SERVER_TIMEOUT wins in both."""
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    for name in ("SAGEMAKER_MODEL_SERVER_TIMEOUT", "MODEL_SERVER_TIMEOUT", "SAGEMAKER_BATCH"):
        monkeypatch.delenv(name, raising=False)
    endpoint = ServingSettings.from_env()
    assert (endpoint.timeout, endpoint.batch) == (60, False)
    for value in ("true", "True"):  # SageMaker's spelling and the SDK local mode's
        monkeypatch.setenv("SAGEMAKER_BATCH", value)
        batch = ServingSettings.from_env()
        assert (batch.timeout, batch.batch) == (600, True)
        assert nginx_config(batch, tmp_path, tmp_path / "g.sock").count("proxy_read_timeout 600s;")
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_TIMEOUT", "1800")
    assert ServingSettings.from_env().timeout == 1800
    monkeypatch.setenv("SAGEMAKER_BATCH", "yes")
    with pytest.raises(EnvironmentVariableError, match="SAGEMAKER_BATCH='yes' is not valid"):
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
    assert f"if (!-e {tmp_path / 'gunicorn-ready'})" in text  # JSON 503 until a worker is up
    assert "worker_connections 1024;" in text and "server_tokens off;" in text


@pytest.mark.parametrize(
    ("length", "tile", "stride"),
    [(100, 32, 21), (32, 32, 21), (33, 32, 21), (10, 32, 21), (1000, 256, 170)],
)
def test_tile_starts_cover_every_pixel_and_end_flush(length, tile, stride) -> None:
    starts = tile_starts(length, tile, stride)
    covered = np.zeros(length, bool)
    for start in starts:
        covered[start : start + tile] = True
    assert covered.all()
    assert starts[-1] + min(tile, length) == length


def test_model_sees_the_image_at_the_training_scale(model_dir: Path) -> None:
    predictor = Predictor.open(model_dir, PredictionSettings.from_env())
    assert predictor.long_side == 64  # base_size
    assert predictor.model_input(Image.new("RGB", (400, 300))).shape == (1, 3, 48, 64)
    assert predictor.model_input(Image.new("RGB", (20, 40))).shape == (1, 3, 64, 32)


def test_tiled_prediction_keeps_every_pixel_and_the_input_size(model_dir, monkeypatch) -> None:
    monkeypatch.setenv("SEGCONTAINER_INFERENCE_SIZE", "0")  # the image's own size
    monkeypatch.setenv("SEGCONTAINER_TILE_SIZE", "32")
    predictor = Predictor.open(model_dir, PredictionSettings.from_env())
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 100, 3), np.uint8))
    logits = predictor.logits(image)
    assert logits.shape == (3, 70, 100) and torch.isfinite(logits).all()
    probabilities = predictor.probabilities(image)
    assert probabilities.shape == (3, 70, 100)
    assert np.allclose(probabilities.sum(0), 1, atol=1e-5)
    assert np.array_equal(predictor.class_map(image), probabilities.argmax(0))


def test_banded_upsampling_equals_whole_image_interpolation() -> None:
    sizes = [(5, 7, 333, 41), (20, 30, 600, 700), (10, 10, 7, 9), (130, 9, 130, 9)]
    for h, w, height, width in sizes:  # the last: already the answer's size
        logits = torch.randn(3, h, w)
        whole = F.interpolate(
            logits[None], size=(height, width), mode="bilinear", align_corners=False
        )[0]
        banded = torch.empty(3, height, width)
        for rows, band in upsampled_bands(logits, height, width):
            banded[:, rows] = band
        assert torch.allclose(banded, whole, atol=1e-5)


def test_class_map_is_the_argmax_with_ties_to_the_first_class() -> None:
    """Logits already at the answer's size (LR-ASPP upsamples inside) and logits upsampled:
    the class map is argmax's, the lowest class id where classes tie."""
    logits = torch.randn(4, 150, 20)
    logits[2, :70] = logits[1, :70] = logits[:, :70].max(0).values + 1  # 1 and 2 tie
    for height, width in [(150, 20), (301, 33)]:
        up = F.interpolate(logits[None], size=(height, width), mode="bilinear")[0]
        expected = up.argmax(0).to(torch.uint8)
        assert torch.equal(inference.class_map(logits, height, width), expected)
    assert (inference.class_map(logits, 150, 20)[:70] == 1).all()


def test_max_payload_0_means_no_body_limit(model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    monkeypatch.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", "0")
    settings = ServingSettings.from_env()
    assert settings.max_body_bytes is None
    assert settings.execution_parameters()["MaxPayloadInMB"] == 0
    text = nginx_config(settings, tmp_path, tmp_path / "g.sock")
    assert "client_max_body_size 0;" in text  # nginx: 0 disables the check
    app = create_app(settings_for(model_dir, max_payload_mb=0), load_in_background=False)
    assert app.config["MAX_CONTENT_LENGTH"] is None
    big = b"\xff\xd8\xff" + b"\x00" * (7 * 1024 * 1024)
    answer = app.test_client().post("/invocations", data=big, content_type="image/jpeg")
    assert answer.status_code == 400  # read and judged as an image, not refused for its size


def test_each_worker_gets_its_own_gpu(monkeypatch) -> None:
    from types import SimpleNamespace

    from segcontainer.serving import gunicorn_config
    from segcontainer.serving.gunicorn_config import gpu_for_new_worker

    assert [gpu_for_new_worker([], 0), gpu_for_new_worker([None], 0)] == [None, None]
    taken: list[int | None] = []
    for _ in range(4):
        taken.append(gpu_for_new_worker(taken, 4))
    assert taken == [0, 1, 2, 3]
    assert gpu_for_new_worker([0, 1, 3], 4) == 2  # a restarted worker takes the free GPU
    assert gpu_for_new_worker([0, 1], 2) == 0  # more workers than GPUs: spread evenly
    assert gpu_for_new_worker([0, 1, 0], 2) == 1

    # The hooks as gunicorn calls them: master (pre_fork) then the forked worker (post_fork).
    monkeypatch.setenv(gunicorn_config.GPU_COUNT_ENV, "2")
    monkeypatch.delenv("SEGCONTAINER_WORKER_GPU", raising=False)
    log = SimpleNamespace(info=lambda *args: None)
    running = SimpleNamespace(segcontainer_gpu=0)
    server = SimpleNamespace(WORKERS={101: running}, log=log)
    worker = SimpleNamespace(pid=102)
    gunicorn_config.pre_fork(server, worker)
    gunicorn_config.post_fork(server, worker)
    assert worker.segcontainer_gpu == 1
    import os

    assert os.environ["SEGCONTAINER_WORKER_GPU"] == "1"
    # the worker then runs on the GPU it was given, or on the CPU where there is none:
    # both hosts, on any host
    from segcontainer.serving.settings import worker_device

    chosen: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert worker_device() == torch.device("cuda", 1)
    assert chosen == [torch.device("cuda", 1)]  # so nothing lands on cuda:0 by default
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert worker_device() == torch.device("cpu")


@pytest.mark.parametrize(("capability", "dtype"), [((7, 0), "float16"), ((8, 0), "bfloat16")])
def test_serving_uses_bf16_only_where_the_gpu_computes_it(
    model_dir: Path, monkeypatch, capability, dtype
) -> None:
    engine = Predictor.open(model_dir, PredictionSettings(device=torch.device("cpu"))).engine
    engine.device = torch.device("cuda", 0)  # only the choice is tested, on the CPU
    # V100 (7.0) and T4 (7.5) report bf16 as supported, but only emulate it
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert engine.autocast_dtype == getattr(torch, dtype)


def test_tiles_average_to_the_untiled_logits() -> None:
    # A per-pixel model's logits do not depend on the window they are computed in, so tiles
    # with overlaps averaged must give exactly the one-pass logits, pixel for pixel.
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 1)
    inputs = torch.randn(2, 3, 70, 100)
    calls = []

    def forward(window: torch.Tensor) -> torch.Tensor:
        calls.append(window.shape[-2:])
        return model(window)

    with torch.no_grad():
        tiled = tiled_logits(forward, inputs, 32)
        assert len(calls) > 1 and all(h <= 32 and w <= 32 for h, w in calls)
        assert torch.allclose(tiled, model(inputs), atol=1e-6)


def test_a_response_format_is_one_entry_of_the_answers_table(model_dir, monkeypatch) -> None:
    """A new Accept type added to the task's answers table (tasks/segmentation/answers.py
    ANSWERS) is negotiated and answered by the endpoint with no other change (the newcomer's
    'add a response format' in the README)."""
    from segcontainer.tasks.segmentation import answers

    def sizes(predictor, image) -> bytes:
        return f"{image.size[0]}x{image.size[1]}".encode()

    monkeypatch.setitem(answers.ANSWERS, "text/plain", sizes)
    client = create_app(settings_for(model_dir), load_in_background=False).test_client()
    body = jpeg((7, 5))
    answer = client.post(
        "/invocations",
        data=body,
        content_type="image/jpeg",
        headers={"Accept": "text/plain;q=1, image/png"},
    )
    assert (answer.status_code, answer.data, answer.mimetype) == (200, b"7x5", "text/plain")
    refused = client.post(
        "/invocations", data=body, content_type="image/jpeg", headers={"Accept": "text/csv"}
    )
    assert refused.status_code == 406 and "text/plain" in refused.get_json()["error"]
