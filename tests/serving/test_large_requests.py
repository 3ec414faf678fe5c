"""Large requests through the real `serve` stack under each mode's settings (docs/serving.md,
"Asynchronous inference"): an asynchronous endpoint's settings answer a 6000x4000 JPEG as a
PNG within the documented memory while /ping answers; real-time settings refuse it as before
(413 over the body limit, 504 past the timeout); batch transform's environment answers a 4K
frame. SageMaker sets no variable of its own for an asynchronous endpoint: its settings are
the ones the page tells users to set."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from segcontainer.config.hyperparameters import resolve
from segcontainer.metrics import Scores
from segcontainer.model_folder import model_config, save_model
from segcontainer.models import build_model
from tests.support.serving_stack import (
    Server,
    invoke,
    memory_kib,
    request,
    reset_peak_memory,
)

# The page's promise: a PNG answer costs a worker about 15 bytes a pixel beyond its warm-up.
PNG_BYTES_PER_PIXEL = 15
ASYNC = {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "0", "SAGEMAKER_MODEL_SERVER_TIMEOUT": "3600"}
# What SageMaker sets in a batch transform job's container when the job sets MaxPayloadInMB,
# BatchStrategy and MaxConcurrentTransforms (DG your-algorithms-batch-code); no timeout.
BATCH = {
    "SAGEMAKER_BATCH": "true",
    "SAGEMAKER_MAX_PAYLOAD_IN_MB": "10",
    "SAGEMAKER_BATCH_STRATEGY": "SINGLE_RECORD",
    "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "1",
}


@pytest.fixture(scope="module")
def model_base(tmp_path_factory) -> Path:
    """An untrained 3-class LR-ASPP MobileNetV3 at base_size 512 (the model's quality is not
    the subject: the sizes, times and memory are)."""
    base = tmp_path_factory.mktemp("large") / "algo-1-l4rge"
    given = {"num_classes": "3", "base_size": "512", "crop_size": "512"}
    given = {**given, "algorithm": "lraspp", "backbone": "mobilenet-v3-large"}
    config = resolve({**given, "use_pretrained_model": "False"})
    model = build_model("lraspp", "mobilenet-v3-large", 3)
    scores = Scores(0.5, 0.5, (0.5,) * 3)
    save_model(base / "model", model, model_config(config, {"train": {"scale": 1}}), 0, scores, ())
    return base


def photo_jpeg(width: int, height: int, noise: int) -> bytes:
    """A JPEG of a scene with grain: ``noise`` sets its size in bytes (0: a few hundred KB at
    6000x4000; 40: about 8 MB, past real-time's 6 MB)."""
    image = Image.new("RGB", (width, height), (120, 120, 120))
    draw = ImageDraw.Draw(image)
    draw.rectangle((width // 12, height // 7, width // 2, height // 2), fill=(200, 40, 40))
    draw.ellipse((width // 2, height // 2, width - 100, height - 100), fill=(40, 60, 200))
    pixels = np.asarray(image)
    if noise:
        pixels = pixels + np.random.default_rng(0).integers(0, noise, pixels.shape, np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def answer_while_pinging(server: Server, body: bytes) -> tuple[tuple, list[int], float]:
    """POST body for a PNG while /ping is asked every 0.2 s with SageMaker's 2 s timeout (a
    slower /ping raises): (the answer, the pings' statuses, the seconds the answer took)."""
    answers: list = []
    thread = threading.Thread(
        target=lambda: answers.append(invoke(server, body, "image/jpeg", "image/png"))
    )
    started = time.monotonic()
    thread.start()
    pings = []
    while thread.is_alive():
        pings.append(request(server.port, "/ping", timeout=2)[0])
        time.sleep(0.2)
    thread.join()
    return answers[0], pings, time.monotonic() - started


def assert_png_within_memory(server: Server, body: bytes, size: tuple[int, int]) -> None:
    [worker] = server.worker_pids()
    before = reset_peak_memory(worker)  # after loading and warm-up
    (status, headers, png), pings, _ = answer_while_pinging(server, body)
    assert status == 200, png[:300]
    assert headers["Content-Type"] == "image/png"
    mask = Image.open(io.BytesIO(png))
    assert mask.mode == "P" and mask.size == size
    assert len(pings) >= 2 and set(pings) == {200}, pings
    growth = (memory_kib(worker) - before) * 1024
    assert growth < PNG_BYTES_PER_PIXEL * size[0] * size[1], growth / 2**20


@pytest.mark.slow  # its own stack and a 24-megapixel request (~15 s on one core)
def test_async_settings_answer_a_6000x4000_jpeg_as_png_while_ping_answers(model_base) -> None:
    body = photo_jpeg(6000, 4000, noise=40)
    assert len(body) > 6 * 2**20  # more than a real-time endpoint takes
    server = Server(model_base, **ASYNC)
    try:
        server.wait_ready()
        assert "timeout 3600 s, body limit none" in server.full_log()
        assert_png_within_memory(server, body, (6000, 4000))
    finally:
        server.stop()


@pytest.mark.slow  # its own stack and a request that runs past its timeout (~15 s)
def test_realtime_settings_still_refuse_over_the_limit_and_past_the_timeout(model_base) -> None:
    """Real-time's 6 MB body limit, and its timeout scaled from 60 s to 2 s so that a request
    predicted in 64-pixel tiles (hundreds of passes) runs past it: 413 and 504, both JSON from
    nginx, and /ping answers afterwards."""
    server = Server(
        model_base,
        SAGEMAKER_MAX_PAYLOAD_IN_MB="6",
        SAGEMAKER_MODEL_SERVER_TIMEOUT="2",
        SEGCONTAINER_INFERENCE_SIZE="0",
        SEGCONTAINER_TILE_SIZE="64",
    )
    try:
        server.wait_ready()
        status, _, body = invoke(server, photo_jpeg(6000, 4000, noise=40), "image/jpeg")
        assert status == 413
        assert "larger than 6 MB (SAGEMAKER_MAX_PAYLOAD_IN_MB)" in json.loads(body)["error"]
        started = time.monotonic()
        status, _, body = invoke(server, photo_jpeg(1200, 1200, noise=0), "image/jpeg")
        elapsed = time.monotonic() - started
        assert status == 504, body[:300]
        message = json.loads(body)["error"]
        assert "2 s" in message and "SAGEMAKER_MODEL_SERVER_TIMEOUT" in message
        assert 2 <= elapsed < 10, elapsed
        assert request(server.port, "/ping", timeout=2)[0] == 200
    finally:
        server.stop()


@pytest.mark.slow  # its own stack and a 4K request (~10 s)
def test_batch_transform_environment_answers_a_4k_frame(model_base) -> None:
    """A manifest's 3840x2160 JPEG, the case that failed for built-in users: batch transform
    posts each listed object as one request, with SageMaker's batch environment and no
    timeout of its own; the timeout is then 600 s, SageMaker's default wait."""
    body = photo_jpeg(3840, 2160, noise=40)
    assert 2**20 < len(body) < 10 * 2**20
    server = Server(model_base, **BATCH)
    try:
        server.wait_ready()
        assert "timeout 600 s, batch transform, body limit 10m" in server.full_log()
        status, _, parameters = request(server.port, "/execution-parameters")
        assert status == 200
        assert json.loads(parameters) == {
            "MaxConcurrentTransforms": 1,
            "BatchStrategy": "SINGLE_RECORD",
            "MaxPayloadInMB": 10,
        }
        assert_png_within_memory(server, body, (3840, 2160))
    finally:
        server.stop()
