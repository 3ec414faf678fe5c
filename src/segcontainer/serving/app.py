"""The flask app: /ping, /invocations, /execution-parameters.

request -> decode -> predict -> encode. The model loads in a background thread at start-up
(once per gunicorn worker), so /ping answers 503 until it is ready, 200 after, and 503 with
the reason logged if loading failed. No bad request may crash or hang a worker.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import torch
from flask import Flask, Response, jsonify, request

from segcontainer.serving import codecs
from segcontainer.serving.predictor import Predictor, warm_up
from segcontainer.serving.protobuf_record import encode_probabilities
from segcontainer.serving.settings import ServingSettings

log = logging.getLogger(__name__)


class ModelSlot:
    """Holds the predictor once loaded; remembers why loading failed."""

    def __init__(self) -> None:
        self.predictor: Predictor | None = None
        self.error: str | None = None

    def load(self, model_dir: Path) -> None:
        try:
            start = time.monotonic()
            predictor = Predictor(model_dir)
            warm_up(predictor)
            self.predictor = predictor
            log.info(
                "model from %s ready on %s in %.1f s (pid %d)",
                model_dir,
                predictor.device,
                time.monotonic() - start,
                os.getpid(),
            )
        except Exception as exc:  # any failure must leave /ping at 503, not kill the worker
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("loading the model from %s failed", model_dir)


def create_app(settings: ServingSettings | None = None, load_in_background: bool = True) -> Flask:
    settings = settings or ServingSettings.from_env()
    torch.set_num_threads(settings.torch_threads)
    slot = ModelSlot()
    if load_in_background:
        threading.Thread(target=slot.load, args=(settings.model_dir,), daemon=True).start()
    else:
        slot.load(settings.model_dir)

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
            image = codecs.decode_image(request.get_data(cache=False), request.content_type)
        except codecs.RequestError as exc:
            return jsonify(error=str(exc)), exc.status
        if accept in codecs.PROBABILITY_TYPES:
            body = encode_probabilities(predictor.probabilities(image))
        elif accept == codecs.JSON:
            body = codecs.encode_json(predictor.class_map(image), predictor.class_names)
        else:
            body = codecs.encode_png(predictor.class_map(image))
        return Response(body, status=200, mimetype=accept)

    @app.errorhandler(413)
    def too_large(_error) -> tuple[Response, int]:
        limit = settings.max_body_bytes // (1024 * 1024)
        return jsonify(error=f"request body larger than {limit} MB"), 413

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> tuple[Response, int]:
        if hasattr(error, "code") and hasattr(error, "description"):  # werkzeug HTTP errors
            return jsonify(error=error.description), error.code
        log.exception("unexpected error in /invocations")
        return jsonify(error=f"internal error: {type(error).__name__}"), 500

    return app
