"""The flask app: /ping, /invocations, /execution-parameters.

request -> decode -> predict -> encode. The model loads in a background thread at start-up
(once per gunicorn worker), so /ping answers 503 until it is ready, 200 after, and 503 with
the reason logged if loading failed. No bad request may crash or hang a worker.

Each worker runs several threads (gunicorn gthread) but predicts one request at a time (a
lock): /ping is answered by another thread while a long prediction runs (torch, Pillow and
numpy release the GIL in their kernels), and the worker's torch threads keep its share of the
cores instead of two predictions competing for them.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time

import torch
from flask import Flask, Response, jsonify, request

from segcontainer.serving import codecs
from segcontainer.serving.predictor import Predictor, warm_up
from segcontainer.serving.protobuf_record import RECORD_LIMIT, answer_bytes, encode_probabilities
from segcontainer.serving.settings import ServingSettings, worker_device

log = logging.getLogger(__name__)


class ModelSlot:
    """Holds the predictor once loaded; remembers why loading failed."""

    def __init__(self) -> None:
        self.predictor: Predictor | None = None
        self.error: str | None = None
        self.busy = threading.Lock()  # one prediction at a time per worker

    def load(self, settings: ServingSettings, device: torch.device | None = None) -> None:
        model_dir = settings.model_dir
        try:
            start = time.monotonic()
            predictor = Predictor(model_dir, device, settings.engine, settings.cpu_threads)
            warm_up(predictor)
            self.predictor = predictor
            engine = predictor.engine
            log.info(
                "model from %s ready on %s in %.1f s (pid %d): engine %s, %d intra-op "
                "threads, file %s",
                model_dir,
                predictor.device,
                time.monotonic() - start,
                os.getpid(),
                engine.name,
                engine.threads,
                engine.file,
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

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["segcontainer_model"] = slot

    @app.get("/ping")
    def ping() -> Response:
        if slot.predictor is not None:
            return Response(status=200)
        status = {"status": "loading"} if slot.error is None else {"status": "failed"}
        return jsonify(status), 503

    @app.get("/execution-parameters")
    def execution_parameters() -> Response:
        return jsonify(settings.execution_parameters())

    @app.post("/invocations")
    def invocations() -> Response:
        predictor = slot.predictor
        if predictor is None:
            return jsonify(error="the model is not loaded yet"), 503
        try:
            accept = codecs.choose_accept(request.headers.get("Accept"), settings.default_accept)
            body = request.get_data(cache=False)
            with slot.busy:  # decoding and encoding use the cores too: all inside the lock
                image = codecs.decode_image(body, request.content_type)
                del body
                return Response(answer(predictor, image, accept), status=200, mimetype=accept)
        except codecs.RequestError as exc:
            return jsonify(error=str(exc)), exc.status

    @app.errorhandler(413)
    def too_large(_error) -> tuple[Response, int]:
        limit = (settings.max_body_bytes or 0) // (1024 * 1024)
        return jsonify(error=f"request body larger than {limit} MB"), 413

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> tuple[Response, int]:
        if hasattr(error, "code") and hasattr(error, "description"):  # werkzeug HTTP errors
            return jsonify(error=error.description), error.code
        log.exception("unexpected error in /invocations")
        return jsonify(error=f"internal error: {type(error).__name__}"), 500

    return app


def answer(predictor: Predictor, image, accept: str) -> bytes:
    """The response body for ``accept``; a probability answer too large for one RecordIO
    record is refused (413) before anything is computed."""
    if accept in codecs.PROBABILITY_TYPES:
        width, height = image.size
        size = answer_bytes(predictor.num_classes, height, width)
        if size > RECORD_LIMIT:
            side = math.isqrt((RECORD_LIMIT - answer_bytes(0, 0, 0)) // (4 * predictor.num_classes))
            raise codecs.RequestError(
                413,
                f"the probability answer for this {width}x{height} image would be "
                f"{size / 2**20:.0f} MiB ({predictor.num_classes} classes x {height} x {width} "
                f"x 4 bytes), more than the {RECORD_LIMIT / 2**20:.0f} MiB one RecordIO record "
                f"can hold. Ask for Accept: image/png or application/json (class ids), or send "
                f"a smaller image (at most {side}x{side} pixels, or the same pixel count, with "
                f"{predictor.num_classes} classes).",
            )
        return encode_probabilities(predictor.probabilities(image))
    if accept == codecs.JSON:
        return codecs.encode_json(predictor.class_map(image), predictor.class_names)
    return codecs.encode_png(predictor.class_map(image))
