"""The README's promises about `serve` as a whole, on the real nginx + gunicorn stack: if nginx
dies, gunicorn is stopped and `serve` exits 1 (SageMaker then replaces the container); a request
running past SAGEMAKER_MODEL_SERVER_TIMEOUT gets nginx's JSON 504 after that many seconds."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.serving_stack import Server, _children, _cmdline, request


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow  # a real serving stack of its own
def test_serve_exits_1_when_nginx_dies_and_stops_gunicorn(trained_base: Path) -> None:
    server = Server(trained_base)
    try:
        server.wait_ready()
        gunicorn = server.gunicorn_master()
        [nginx] = [pid for pid in _children(server.process.pid) if "nginx" in _cmdline(pid)]
        os.kill(nginx, signal.SIGKILL)
        assert server.process.wait(timeout=60) == 1
        deadline = time.monotonic() + 30
        while alive(gunicorn) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(gunicorn)  # stopped with it, not left holding the model
        with pytest.raises(OSError):
            request(server.port, "/ping", timeout=2)
    finally:
        server.stop()


def large_jpeg(side: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.slow  # a real serving stack of its own, and a prediction that runs for long
def test_request_past_the_configured_timeout_gets_json_504_after_that_time(trained_base):
    """SAGEMAKER_MODEL_SERVER_TIMEOUT=2 (the README's variable): a 1200x1200 image predicted at
    its own size in 64-pixel tiles (hundreds of ResNet-50 passes) is answered 504 after 2 s,
    not after the default 60; the endpoint answers /ping again afterwards."""
    server = Server(
        trained_base,
        SAGEMAKER_MODEL_SERVER_TIMEOUT="2",
        SEGCONTAINER_INFERENCE_SIZE="0",
        SEGCONTAINER_MAX_IMAGE_PIXELS="2000000",
    )
    try:
        server.wait_ready()
        started = time.monotonic()
        status, headers, body = request(
            server.port,
            "/invocations",
            large_jpeg(1200),
            {"Content-Type": "image/jpeg", "Accept": "image/png"},
            timeout=30,
        )
        elapsed = time.monotonic() - started
        assert status == 504, body[:300]
        assert headers["Content-Type"].startswith("application/json")
        message = json.loads(body)["error"]
        assert "2 s" in message and "SAGEMAKER_MODEL_SERVER_TIMEOUT" in message
        assert 2 <= elapsed < 10
        assert request(server.port, "/ping", timeout=2)[0] == 200
    finally:
        server.stop()
