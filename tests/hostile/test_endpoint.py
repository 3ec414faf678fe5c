"""The endpoint under floods, slow clients and hostile requests (issue 26, items 6 to 9; issue
27, items 8, 9 and 11).

nginx's own behaviour (JSON errors, slow bodies, start-up 503) is tested against nginx with
this container's configuration in front of a stand-in upstream (milliseconds to start, and
the upstream's answers and delays are chosen by the test); the flood runs the real stack.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import select
import shutil
import socket
import socketserver
import subprocess
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segcontainer.config.hyperparameters import resolve
from segcontainer.config.variables import EnvironmentVariableError
from segcontainer.data import preprocess
from segcontainer.errors import RequestError
from segcontainer.metrics import Scores
from segcontainer.model_folder import model_config, save_model
from segcontainer.models import build_model
from segcontainer.serving import codecs
from segcontainer.serving.app import create_app
from segcontainer.serving.server import READY_FILE, nginx_config
from segcontainer.serving.settings import ServingSettings
from segcontainer.tasks.segmentation.answers import ANSWERS
from tests.support.network import free_port
from tests.support.serving import settings_for
from tests.support.serving_stack import Server, request

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


# ---------------------------------------------------------------- requests, in-process


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    config = resolve({"num_classes": "3", "base_size": "64", "crop_size": "32"})
    scores = Scores(0.5, 0.5, (0.5,) * 3)
    save_model(folder, build_model("fcn", "resnet-50", 3), model_config(config, {}), 0, scores, ())
    return folder


def test_image_over_the_pixel_limit_is_refused_from_its_header(small_model, monkeypatch) -> None:
    # A 16-bit 9000x9000 PNG of one colour is 157 KB and once cost 2.8 GB to decode.
    body = png_bytes(Image.new("I;16", (9000, 9000)))
    assert len(body) < 1 << 20

    def no_decoding(image):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(codecs, "to_rgb", no_decoding)
    settings = settings_for(small_model, max_image_pixels=40_000_000)
    client = create_app(settings, load_in_background=False).test_client()
    reply = client.post("/invocations", data=body, content_type="image/png")
    assert reply.status_code == 413
    message = reply.json["error"]
    assert "9000x9000" in message and "81,000,000" in message and "40,000,000" in message
    assert "SEGCONTAINER_MAX_IMAGE_PIXELS" in message


def test_pixel_limit_comes_from_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    assert ServingSettings.from_env().max_image_pixels == 40_000_000
    monkeypatch.setenv("SEGCONTAINER_MAX_IMAGE_PIXELS", "1000")
    assert ServingSettings.from_env().max_image_pixels == 1000
    with pytest.raises(RequestError, match="40x30 = 1,200 pixels, more than the 1,000"):
        codecs.decode_image(png_bytes(Image.new("RGB", (40, 30))), "image/png", 1000)
    monkeypatch.setenv("SEGCONTAINER_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(
        EnvironmentVariableError,
        match="SEGCONTAINER_MAX_IMAGE_PIXELS='lots' is not valid: expected an integer >= 1",
    ):
        ServingSettings.from_env()


def test_deep_image_is_converted_without_float64_copies() -> None:
    # 16 M pixels of 16-bit: the float64 image alone is 128 MiB; numpy's arrays are traced.
    side = 4000
    values = (np.arange(side * side, dtype=np.uint32) % 65536).astype(np.uint16)
    body = png_bytes(Image.frombytes("I;16", (side, side), values.tobytes()))
    del values
    tracemalloc.start()
    try:
        image = codecs.decode_image(body, "image/png")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.mode == "RGB" and image.size == (side, side)
    assert peak / (side * side) < 4, f"{peak / 2**20:.0f} MiB at the peak"


@pytest.mark.filterwarnings("ignore:overflow encountered")  # the infinities, as before
@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_deep_images_convert_the_same_band_by_band(monkeypatch, mode: str) -> None:
    rng = np.random.default_rng(3)
    if mode == "F":
        array = rng.normal(size=(97, 61)).astype(np.float32)
        array[5, 7], array[50, 3], array[90, 60] = np.nan, np.inf, -np.inf
        image = Image.fromarray(array, "F")
    elif mode == "I":
        image = Image.fromarray(rng.integers(-3000, 90000, (97, 61)).astype(np.int32), "I")
    else:
        values = rng.integers(0, 65536, (97, 61)).astype(np.uint16)
        image = Image.frombytes("I;16", (61, 97), values.tobytes())
    whole = np.asarray(preprocess.to_rgb(image))
    monkeypatch.setattr(preprocess, "BAND_PIXELS", 100)  # bands of one row, then 2 and 3
    assert np.array_equal(np.asarray(preprocess.to_rgb(image)), whole)
    monkeypatch.setattr(preprocess, "BAND_PIXELS", 150)
    assert np.array_equal(np.asarray(preprocess.to_rgb(image)), whole)


class ProbabilityStub:
    """The predictor's probability interface, numpy only (tracemalloc sees numpy's memory, not
    torch's): uniform probabilities for 21 classes."""

    num_classes = 21

    def probabilities(self, image: Image.Image, out: np.ndarray | None = None) -> np.ndarray:
        width, height = image.size
        if out is None:
            out = np.empty((self.num_classes, height, width), np.float32)
        out[...] = 1 / self.num_classes
        return out


def test_protobuf_answer_is_built_without_copies_of_it() -> None:
    from segcontainer.client import decode_recordio_protobuf

    image = Image.new("RGB", (400, 300))
    size = 4 * 21 * 300 * 400  # 10 MB of probabilities
    tracemalloc.start()
    try:
        body = ANSWERS["application/x-recordio-protobuf"](ProbabilityStub(), image)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.2 * size, f"peak {peak / size:.1f} answers"
    probabilities = decode_recordio_protobuf(bytes(body))
    assert probabilities.shape == (21, 300, 400)
    assert np.allclose(probabilities, 1 / 21)


def test_curl_data_and_tiff_as_jpeg_get_messages_that_say_the_fix(small_model) -> None:
    client = create_app(settings_for(small_model), load_in_background=False).test_client()
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(jpeg, format="JPEG")
    stripped = jpeg.getvalue().replace(b"\n", b"").replace(b"\r", b"")  # what curl -d sends
    for content_type in ("image/jpeg", "application/x-image"):
        reply = client.post("/invocations", data=stripped, content_type=content_type)
        assert reply.status_code == 400
        message = reply.json["error"]
        assert "--data-binary" in message
        assert " at 0x" not in message and "<_io" not in message, message
    tiff = io.BytesIO()
    Image.new("RGB", (64, 48)).save(tiff, format="TIFF")
    reply = client.post("/invocations", data=tiff.getvalue(), content_type="image/jpeg")
    assert reply.status_code == 400
    assert "application/x-image" in reply.json["error"]
    assert "Pillow" in reply.json["error"]
    reply = client.post("/invocations", data=tiff.getvalue(), content_type="application/x-image")
    assert reply.status_code == 200


# ---------------------------------------------------------------- nginx, stand-in upstream


class StandIn(socketserver.BaseRequestHandler):
    """gunicorn's stand-in on the unix socket: reads the request, then answers as its path
    says: /ping 200 at once, /invocations after ``hang`` seconds or never (closing)."""

    hang: float = 0.0
    close_without_answer = False

    def handle(self) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.request.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            rest += self.request.recv(65536)
        if head.startswith(b"POST /invocations"):
            if self.close_without_answer:
                return
            time.sleep(self.hang)
        body = b'{"ok": true}'
        with contextlib.suppress(OSError):  # nginx gave up (504) and closed
            self.request.sendall(
                b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )


class Nginx:
    """nginx with serve's configuration (body limit 6 MB, timeout 2 s) before a stand-in."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.settings = settings_for(run_dir, timeout=2, port=free_port())
        self.port = self.settings.port
        socket_path = run_dir / "gunicorn.sock"
        self.upstream = socketserver.ThreadingUnixStreamServer(str(socket_path), StandIn)
        self.upstream.daemon_threads = True
        threading.Thread(target=self.upstream.serve_forever, daemon=True).start()
        config = run_dir / "nginx.conf"
        config.write_text(nginx_config(self.settings, run_dir, socket_path, 4096))
        self.log = open(run_dir / "nginx.log", "w")  # noqa: SIM115
        self.process = subprocess.Popen(
            [NGINX, "-c", str(config), "-p", str(run_dir)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                request(self.port, "/ping", timeout=2)
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError((run_dir / "nginx.log").read_text())

    def ready(self) -> None:
        """What the first gunicorn worker does once it accepts (gunicorn_config)."""
        (self.run_dir / READY_FILE).touch()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.upstream.shutdown()
        self.upstream.server_close()
        self.log.close()


@pytest.fixture
def nginx(tmp_path: Path):
    server = Nginx(tmp_path)
    yield server
    server.stop()


def assert_json_error(status: int, headers: dict, body: bytes, expected: int) -> str:
    assert status == expected, body[:300]
    assert headers["Content-Type"] == "application/json", body[:300]
    assert headers["Server"] == "nginx"  # server_tokens off: no version
    return json.loads(body)["error"]


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def test_nginx_answers_json_503_until_gunicorn_is_up_without_errors_in_its_log(nginx) -> None:
    for path in ("/ping", "/invocations"):
        body = b"x" if path == "/invocations" else None
        status, headers, reply = request(nginx.port, path, body, timeout=2)
        assert "starting" in assert_json_error(status, headers, reply, 503)
        assert headers["Retry-After"] == "1"
    nginx.ready()
    assert request(nginx.port, "/ping", timeout=2)[0] == 200
    log = (nginx.run_dir / "nginx.log").read_text()
    assert "[crit]" not in log and "connect()" not in log, log


def test_every_error_nginx_answers_itself_is_json(nginx) -> None:
    nginx.ready()
    port = nginx.port
    assert "not found" in assert_json_error(*request(port, "/elsewhere"), 404)
    too_large = b"\xff\xd8\xff" + b"\0" * (7 << 20)
    message = assert_json_error(*request(port, "/invocations", too_large), 413)
    assert "6 MB" in message and "SAGEMAKER_MAX_PAYLOAD_IN_MB" in message
    big_header = {"X-Padding": "a" * 20000}
    assert "8 KB" in assert_json_error(*request(port, "/ping", None, big_header), 400)
    reply = raw_request(port, b"NOT HTTP AT ALL\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400") and b"application/json" in reply
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]
    StandIn.hang = 5.0  # longer than the 2 s timeout
    try:
        message = assert_json_error(*request(port, "/invocations", b"x", timeout=10), 504)
        assert "2 s" in message and "SAGEMAKER_MODEL_SERVER_TIMEOUT" in message
    finally:
        StandIn.hang = 0.0
    StandIn.close_without_answer = True
    try:
        assert "see the log" in assert_json_error(*request(port, "/invocations", b"x"), 502)
    finally:
        StandIn.close_without_answer = False
    assert request(port, "/invocations", b"x")[0] == 200


def answered_or_closed(sock: socket.socket) -> bool:
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)  # 408 bytes, or b"" once closed
    except BlockingIOError:
        return False
    except OSError:  # reset
        pass
    return True


@pytest.mark.slow  # moved to the slow tier: the fast suite's 5-minute budget
def test_ping_answers_while_1100_slow_bodies_are_open_and_trickles_are_cut(nginx) -> None:
    # 1,100 clients each send a header and one byte of a 1 MB body, then nothing (a trickle
    # of a byte every 20 s sends nothing more within this test): they once exhausted nginx's
    # 1024 connections and /ping was refused.
    nginx.ready()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1300:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    head = (
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: 1048576\r\n\r\n\xff"
    )
    slow = []
    try:
        for _ in range(1100):
            sock = socket.create_connection(("127.0.0.1", nginx.port), timeout=10)
            sock.sendall(head)
            slow.append(sock)
        start = time.monotonic()
        while time.monotonic() - start < 3:
            begin = time.monotonic()
            assert request(nginx.port, "/ping", timeout=2)[0] == 200
            assert time.monotonic() - begin < 2
            time.sleep(0.2)
        # client_body_timeout: silent for 10 s, each is answered 408 (JSON) or closed.
        time.sleep(max(0.0, 12 - (time.monotonic() - start)))
        open_ones = [sock for sock in slow if not answered_or_closed(sock)]
        assert not open_ones, f"{len(open_ones)} slow connections still open after 12 s"
        assert request(nginx.port, "/ping", timeout=2)[0] == 200
    finally:
        for sock in slow:
            sock.close()


# ---------------------------------------------------------------- the real stack


@pytest.fixture(scope="module")
def flooded_stack(tmp_path_factory):
    """The real stack, one worker, on an untrained model that sees 512x512 (seconds a request
    on 2 cores), with /ping's answers during start-up recorded."""
    base = tmp_path_factory.mktemp("flood") / "algo-1-fl00d"
    config = resolve({"num_classes": "3", "base_size": "512", "crop_size": "512"})
    model = build_model("fcn", "resnet-50", 3)
    scores = Scores(0.5, 0.5, (0.5,) * 3)
    save_model(base / "model", model, model_config(config, {}), 0, scores, ())
    server = Server(
        base,
        SAGEMAKER_MODEL_SERVER_WORKERS="1",
        SEGCONTAINER_ENGINE="torch",
        SEGCONTAINER_TILE_SIZE="512",
    )
    startup = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and server.process.poll() is None:
        try:
            status, _, body = request(server.port, "/ping", timeout=2)
        except OSError as error:  # refused until serve has started nginx
            status, body = type(error).__name__, b""
        if not startup or startup[-1][0] != status:
            startup.append((status, body))
        if status == 200:
            break
        time.sleep(0.1)
    yield server, startup
    server.stop()


def whole_log(server: Server) -> str:
    server.log_file.flush()
    return Path(server.log_file.name).read_text()


@pytest.mark.slow
def test_ping_during_start_up_is_json_503_until_the_model_is_loaded(flooded_stack) -> None:
    server, startup = flooded_stack
    statuses = [status for status, _ in startup]
    assert statuses[-1] == 200, server.log()
    before = [(status, body) for status, body in startup[:-1] if status != "URLError"]
    assert before, startup  # the 503s were seen
    for status, body in before:
        assert status == 503, startup
        assert json.loads(body)["error"]
    # refused only before nginx runs: never again once it answered
    first_answer = next(i for i, status in enumerate(statuses) if status != "URLError")
    assert "URLError" not in statuses[first_answer:], startup
    log = whole_log(server)
    assert "[crit]" not in log and "connect()" not in log, log[-3000:]


def jpeg_bytes(side: int) -> bytes:
    array = np.random.default_rng(0).integers(0, 255, (side, side, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.slow
def test_flood_of_20_on_one_worker_gets_503s_ping_stays_fast_and_abandoned_work_is_dropped(
    flooded_stack,
) -> None:
    server, _ = flooded_stack
    body = jpeg_bytes(2048)
    head = (
        f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    admitted = 1 + 7  # the README: one predicts, "up to 7 requests per worker wait"
    flood = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
    received = {sock: b"" for sock in flood}
    replies: dict[socket.socket, bytes] = {}  # whole answers: nginx closes after each
    pings = []
    try:
        for sock in flood:
            sock.sendall(head + body)
        start = time.monotonic()
        while len(replies) < 20 - admitted and time.monotonic() - start < 10:
            waiting = [sock for sock in flood if sock not in replies]
            for sock in select.select(waiting, [], [], 0.1)[0]:
                chunk = sock.recv(65536)
                received[sock] += chunk
                if not chunk:
                    replies[sock] = received[sock]
            begin = time.monotonic()
            ping = request(server.port, "/ping", timeout=2)
            assert ping[0] == 200, ping
            pings.append(time.monotonic() - begin)
        refused = [reply for reply in replies.values() if b" 503 " in reply.split(b"\r\n")[0]]
        computed = [reply for reply in replies.values() if b" 200 " in reply.split(b"\r\n")[0]]
        # one runs, 7 wait, the other 12 are refused at once (one fewer
        # if the first finished while the 20 were arriving)
        assert len(refused) >= 20 - admitted - 1, list(replies.values())
        assert len(refused) + len(computed) == len(replies)
        for reply in refused:
            head_lines, _, json_body = reply.partition(b"\r\n\r\n")
            assert b"Retry-After: 1" in head_lines and b"application/json" in head_lines
            assert "busy" in json.loads(json_body)["error"]
        assert len(pings) >= 2 and max(pings) < 2, pings
    finally:
        for sock in flood:
            sock.close()  # the clients give up: the waiting requests must not be computed
    # Every admitted request that had not started when its client left is dropped: all but
    # those answered and the one running.
    expected = admitted - len(computed) - 1
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and whole_log(server).count("dropped a waiting") < expected:
        time.sleep(0.2)
    assert whole_log(server).count("dropped a waiting") >= expected, whole_log(server)[-3000:]
    # the worker is free again: after at most the one that was running, a request is answered
    deadline = time.monotonic() + 120
    status = 503
    while status == 503 and time.monotonic() < deadline:
        status, _, _ = request(server.port, "/invocations", body, {"Content-Type": "image/jpeg"})
        time.sleep(0.5)
    assert status == 200
    # bodies of megabytes went through nginx without its warning for each (issue 27 item 9)
    assert "buffered to a temporary file" not in whole_log(server)
