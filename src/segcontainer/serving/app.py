"""The flask app: /ping, /invocations, /execution-parameters.

request -> decode -> predict -> encode. The model loads in a background thread at start-up
(once per gunicorn worker), so /ping answers 503 until it is ready, 200 after, and 503 with
the reason logged if loading failed. No bad request may crash or hang a worker.

Each worker runs several threads (gunicorn gthread) but predicts one request at a time (a
lock): /ping is answered by another thread while a long prediction runs (torch, Pillow and
numpy release the GIL in their kernels), and the worker's torch threads keep its share of the
cores instead of two predictions competing for them.

Back-pressure: at most MAX_WAITING_REQUESTS wait behind the running one; more get 503 with
Retry-After at once, so threads stay free for /ping whatever the flood. A waiting request
whose client has gone (nginx closed the connection: the client left, or nginx answered 504)
or that has waited past the timeout is dropped before it is computed.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

import torch
from flask import Flask, Response, jsonify, request
from PIL import Image

from segcontainer.errors import RequestError, UserError
from segcontainer.serving import codecs
from segcontainer.serving.settings import MAX_WAITING_REQUESTS, ServingSettings, worker_device
from segcontainer.tasks import task_of_model
from segcontainer.tasks.task import Answer, Predictor, Task

log = logging.getLogger(__name__)
RETRY_AFTER_SECONDS = 1  # SageMaker retries a 503; a prediction takes about this long
POLL_SECONDS = 0.25  # how often a waiting request checks whether its client is still there
SEND_BYTES = 1 << 20  # a bytearray answer is sent in slices of this size


class ModelSlot:
    """Holds the predictor once loaded, with its task's answers; remembers why loading
    failed."""

    def __init__(self) -> None:
        self.predictor: Predictor | None = None
        self.answers: Mapping[str, Answer] = {}  # the model's task's, by Accept type
        self.default_accept = ""  # SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT, else the task's
        self.error: str | None = None
        self.busy = threading.Lock()  # one prediction at a time per worker
        self._count = threading.Lock()
        self.in_flight = 0  # /invocations admitted: the running one and those waiting

    def admit(self) -> bool:
        """Count one more request in, unless MAX_WAITING_REQUESTS already wait."""
        with self._count:
            if self.in_flight > MAX_WAITING_REQUESTS:
                return False
            self.in_flight += 1
            return True

    def leave(self) -> None:
        with self._count:
            self.in_flight -= 1

    def wait_turn(self, gone: Callable[[], bool], deadline: float) -> bool:
        """Take the prediction lock, or False once the client is gone or ``deadline``
        (monotonic) has passed: nobody would read that answer."""
        while not self.busy.acquire(timeout=POLL_SECONDS):
            if gone() or time.monotonic() > deadline:
                return False
        if gone():
            self.busy.release()
            return False
        return True

    def load(self, settings: ServingSettings, device: torch.device | None = None) -> None:
        model_dir = settings.model_dir
        try:
            start = time.monotonic()
            task = task_of_model(model_dir)
            self.answers = task.answers
            self.default_accept = chosen_default(settings.default_accept, task)
            predictor = task.open_predictor(model_dir, replace(settings.prediction, device=device))
            predictor.warm_up()
            self.predictor = predictor
            engine = predictor.engine
            log.info(
                "model from %s ready on %s in %.1f s (pid %d): engine %s, %d intra-op "
                "threads, file %s, test-time augmentation %s",
                model_dir,
                predictor.device,
                time.monotonic() - start,
                os.getpid(),
                engine.name,
                engine.threads,
                engine.file,
                predictor.augmentation,
            )
        except Exception as exc:  # any failure must leave /ping at 503, not kill the worker
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("loading the model from %s failed", model_dir)


def create_app(settings: ServingSettings | None = None, load_in_background: bool = True) -> Flask:
    settings = settings or ServingSettings.from_env()
    torch.set_num_threads(settings.torch_threads)
    slot = ModelSlot()
    device = worker_device()
    if load_in_background:
        threading.Thread(target=slot.load, args=(settings, device), daemon=True).start()
    else:
        slot.load(settings, device)

    # Our pixel limit refuses large images from their header (codecs.decode_image); Pillow's
    # own check (a warning past its limit, an error past twice it) must not come first.
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < settings.max_image_pixels:
        Image.MAX_IMAGE_PIXELS = settings.max_image_pixels

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["segcontainer_model"] = slot
    routes = Routes(slot, settings)
    app.get("/ping")(routes.ping)
    app.get("/execution-parameters")(routes.execution_parameters)
    app.post("/invocations")(routes.invocations)
    app.register_error_handler(413, routes.too_large)
    app.register_error_handler(Exception, unexpected)
    return app


def chosen_default(configured: str | None, task: Task) -> str:
    """The answer type for Accept */* or none: SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT when set
    (one the model's task answers), else the task's default."""
    if configured is None:
        return task.default_accept
    if configured not in task.answers:
        raise UserError(
            f"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT={configured} is not an answer of a "
            f"{task.name} model: use one of {', '.join(task.answers)}, or unset it."
        )
    return configured


class Routes:
    """The endpoint's answers, over one worker's model slot and settings."""

    def __init__(self, slot: ModelSlot, settings: ServingSettings):
        self.slot, self.settings = slot, settings

    def ping(self) -> Response:
        if self.slot.predictor is not None:
            return Response(status=200)
        if self.slot.error is None:
            return jsonify(status="loading", error="the model is loading; retry shortly"), 503
        return jsonify(status="failed", error="loading the model failed; see the log"), 503

    def execution_parameters(self) -> Response:
        return jsonify(self.settings.execution_parameters())

    def invocations(self) -> Response:
        slot, settings = self.slot, self.settings
        predictor = slot.predictor
        if predictor is None:
            drain_body()
            return busy("the model is not loaded yet")
        if not slot.admit():
            drain_body()  # nginx may still be sending it: closing now could turn this into 502
            return busy(
                f"this worker is busy: one request running and {MAX_WAITING_REQUESTS} waiting, "
                "the most it queues"
            )
        try:
            deadline = time.monotonic() + settings.timeout  # nginx answers 504 by then
            accept = codecs.choose_accept(
                request.headers.get("Accept"), slot.default_accept, tuple(slot.answers)
            )
            body = request.get_data(cache=False)
            gone = client_gone_check(request.environ)
            if not slot.wait_turn(gone, deadline):
                log.info(
                    "dropped a waiting request: its client is gone or it waited past %d s",
                    settings.timeout,
                )
                return busy("dropped: the client left or the request waited past the timeout")
            try:  # decoding and encoding use the cores too: all inside the lock
                image = codecs.decode_image(body, request.content_type, settings.max_image_pixels)
                del body
                return response(slot.answers[accept](predictor, image), accept)
            finally:
                slot.busy.release()
        except RequestError as exc:
            return jsonify(error=str(exc)), exc.status
        finally:
            slot.leave()

    def too_large(self, _error) -> tuple[Response, int]:
        limit = (self.settings.max_body_bytes or 0) // (1024 * 1024)
        return jsonify(error=f"request body larger than {limit} MB"), 413


def unexpected(error: Exception) -> tuple[Response, int]:
    if hasattr(error, "code") and hasattr(error, "description"):  # werkzeug HTTP errors
        return jsonify(error=error.description), error.code
    log.exception("unexpected error in /invocations")
    return jsonify(error=f"internal error: {type(error).__name__}"), 500


def busy(message: str) -> tuple[Response, int, dict]:
    """503 with Retry-After: SageMaker and clients retry it."""
    return jsonify(error=message), 503, {"Retry-After": str(RETRY_AFTER_SECONDS)}


def drain_body(chunk: int = 1 << 16) -> None:
    """Read and discard the request body a chunk at a time (no copy of it is kept)."""
    while request.stream.read(chunk):
        pass


def client_gone_check(environ: dict) -> Callable[[], bool]:
    """A check whether nginx has closed this request's connection (its client left, or it
    answered 504): a peek at the socket reads end-of-file. The body is read by then, so the
    peek sees nothing else."""
    sock = environ.get("gunicorn.socket")

    def gone() -> bool:
        if sock is None:
            return False
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:  # open, nothing to read: the client is waiting
            return False
        except OSError:
            return True

    return gone


def response(body: bytes | bytearray, mimetype: str) -> Response:
    """A 200 answer. gunicorn writes only ``bytes``: an answer built in a bytearray (the
    probabilities) goes out a slice at a time, not as one more whole copy of itself."""
    if isinstance(body, bytes):
        return Response(body, status=200, mimetype=mimetype)
    view = memoryview(body)
    slices = (bytes(view[i : i + SEND_BYTES]) for i in range(0, len(view), SEND_BYTES))
    reply = Response(slices, status=200, mimetype=mimetype)
    reply.headers["Content-Length"] = str(len(body))
    return reply
