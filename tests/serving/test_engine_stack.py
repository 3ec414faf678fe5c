"""Each engine behind the endpoint: a model folder from before the exports (auto = PyTorch),
ONNX fp32, and auto on the exported model.tar.gz (int8: a model that learned its task ships
it). Every content type, errors, tiling; the PNG is the argmax of the probabilities that engine
returns, and its tiled answer is the untiled one's.

The auto-exported model runs in the real stack (`serve`: nginx + gunicorn + flask); the other
two in-process (serve's start-up, then the flask app gunicorn's worker would load), as the
stack adds nothing per engine that the real one does not show."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from segcontainer import model_folder
from segcontainer.client import decode_recordio_protobuf
from segcontainer.prediction import PredictionSettings
from segcontainer.serving import server as serve_module
from segcontainer.serving.app import create_app
from segcontainer.serving.settings import ServingSettings
from segcontainer.tasks.segmentation.prediction import Predictor
from tests.support.serving_stack import Server, image_bytes, invoke

ENGINES = {
    # name: (the model folder, SEGCONTAINER_ENGINE or None for the default)
    "before-exports": ("old", None),
    "onnx": ("exported", "onnx"),
    "auto-exported": ("exported", None),
}
REAL_STACK = "auto-exported"
TILE = 32  # SEGCONTAINER_TILE_SIZE for every engine here: below the model input's 64 px


def old_model(trained_base: Path, destination: Path) -> None:
    """trained_base's model/ as a job before the exports wrote it: no export files, no
    "export" hyperparameter, no "exports" record."""
    shutil.copytree(trained_base / "model", destination)
    record = json.loads((destination / model_folder.CONFIG_FILE).read_text())
    record.pop("export")
    (destination / model_folder.CONFIG_FILE).write_text(json.dumps(record))
    assert model_folder.EXPORTS_KEY not in model_folder.read_info(destination)
    assert not list(destination.glob("*.onnx"))


Invoke = Callable[..., tuple[int, dict, bytes]]  # (body, content type, accept=None)


@dataclass(frozen=True)
class Served:
    """One engine behind the endpoint: the engine serve should choose, a way to POST
    /invocations, the start-up log (serve's line and the worker's) and the model folder."""

    engine: str
    invoke: Invoke
    start_log: Callable[[], str]
    model: Path
    workers: int  # pinned (SAGEMAKER_MODEL_SERVER_WORKERS): the same on every host


@pytest.fixture(scope="module", params=list(ENGINES))
def served(request, trained_base, exported_dir, tmp_path_factory) -> Iterator[Served]:
    folder, engine = ENGINES[request.param]
    base = tmp_path_factory.mktemp("engine") / "algo-1-e9g1n"
    if folder == "old":
        old_model(trained_base, base / "model")
    else:
        base.mkdir()
        (base / "model").symlink_to(exported_dir)  # serve only reads it
    # auto on a CPU host serves the int8 file, which a model that learned its task ships.
    expected = {"before-exports": "torch", "onnx": "onnx", "auto-exported": "onnx-int8"}
    # Tiles smaller than the model input (64 px): every engine runs the tiled path.
    env = {"SEGCONTAINER_TILE_SIZE": str(TILE)}
    env |= {"SEGCONTAINER_ENGINE": engine} if engine else {}
    if request.param == REAL_STACK:
        server = Server(base, **env)  # one worker, no GPU (Server's MACHINE_INDEPENDENT)
        server.wait_ready()
        yield Served(
            expected[request.param],
            lambda *args: invoke(server, *args),
            server.full_log,
            base / "model",
            1,
        )
        server.stop()
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SAGEMAKER_BASE_DIR", str(base))
        patch.delenv("SEGCONTAINER_ENGINE", raising=False)
        # in-process no worker starts: two workers cost nothing and show each one's share
        patch.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", "2")
        patch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU host, on any host
        for name, value in env.items():
            patch.setenv(name, value)
        log, client = start_in_process()
        yield Served(expected[request.param], client_invoke(client), lambda: log, base / "model", 2)


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def start_in_process():
    """What serve logs at start (with stand-ins for nginx and gunicorn, which "exit" at once),
    then the flask app a worker loads: (the log, a test client)."""
    gone = subprocess.Popen(["true"])  # a reaped process: its pid names no process group
    gone.wait()
    exited = SimpleNamespace(
        poll=lambda: 0, wait=lambda timeout=None: 0, kill=lambda: None, pid=gone.pid
    )
    root, lines, threads = logging.getLogger(), Lines(), torch.get_num_threads()
    level = root.level
    root.addHandler(lines)
    root.setLevel(logging.INFO)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(serve_module, "start", lambda settings, run_dir: (exited, exited))
            patch.setattr(serve_module.signal, "signal", lambda *args: None)  # pytest's stay
            assert serve_module.main() == 1  # its stand-ins exited: serve stopped
        app = create_app(ServingSettings.from_env(), load_in_background=False)
    finally:
        root.removeHandler(lines)
        root.setLevel(level)
        torch.set_num_threads(threads)  # the app sets its worker's share
    return "\n".join(lines.lines), app.test_client()


def client_invoke(client) -> Invoke:
    def post(body: bytes, content_type: str, accept: str | None = None):
        headers = {"Accept": accept} if accept is not None else {}
        answer = client.post("/invocations", data=body, content_type=content_type, headers=headers)
        return answer.status_code, dict(answer.headers), answer.get_data()

    return post


def test_start_log_names_engine_threads_and_file(served: Served) -> None:
    engine, log = served.engine, served.start_log()
    file = "model.pt" if engine == "torch" else f"model{'.int8' if 'int8' in engine else ''}.onnx"
    # the README: each worker runs as many intra-op threads as its share of the cores (the
    # CPU count divided by the workers), whatever the engine, on a CPU host
    threads = max(1, len(os.sched_getaffinity(0)) // served.workers)
    assert f"engine {engine} (" in log
    assert f"{file}, {threads} intra-op threads in each of {served.workers} workers" in log
    assert f"engine {engine}, {threads} intra-op threads, file" in log  # the worker's line


@pytest.mark.parametrize(("content_type", "fmt"), [("image/jpeg", "JPEG"), ("image/png", "PNG")])
def test_png_protobuf_and_json_agree(served, content_type: str, fmt: str) -> None:
    invoke = served.invoke
    body = image_bytes(fmt, size=(90, 70))  # 64 x 50 at model scale: 32-px tiles
    status, headers, png = invoke(body, content_type, "image/png")
    assert status == 200 and headers["Content-Type"] == "image/png"
    mask = Image.open(io.BytesIO(png))
    assert mask.mode == "P" and mask.size == (90, 70)
    status, headers, record = invoke(body, content_type, "application/x-recordio-protobuf")
    assert status == 200 and headers["Content-Type"] == "application/x-recordio-protobuf"
    probabilities = decode_recordio_protobuf(record)
    assert probabilities.shape == (3, 70, 90)
    assert np.allclose(probabilities.sum(0), 1, atol=1e-5)
    assert np.array_equal(np.array(mask), probabilities.argmax(0))
    status, headers, summary = invoke(body, content_type, "application/json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    pixels = [c["pixels"] for c in json.loads(summary)["classes"]]
    assert pixels == np.bincount(np.array(mask).ravel(), minlength=3).tolist()


def test_tiled_answer_is_the_untiled_answer(served: Served) -> None:
    # The endpoint predicts the 64 x 50 model input in 32-px tiles; the same engine on the
    # same model, untiled (the default tile, 2 x crop_size = 96 px, holds it whole), must
    # give (almost) the same mask: a learned model's three classes, where tiling goes wrong
    # when windows are misplaced or their logits badly averaged.
    body = image_bytes("PNG", size=(90, 70))
    status, _, png = served.invoke(body, "image/png", "image/png")
    assert status == 200
    tiled = np.array(Image.open(io.BytesIO(png)))
    settings = PredictionSettings(engine=served.engine, device=torch.device("cpu"), threads=1)
    untiled = Predictor.open(served.model, settings)
    image = Image.open(io.BytesIO(body)).convert("RGB")
    height, width = untiled.model_input(image).shape[-2:]
    assert TILE < max(height, width) <= untiled.tile_size  # tiled there, whole here
    expected = untiled.class_map(image)
    assert set(np.unique(expected)) == set(np.unique(tiled)) == {0, 1, 2}
    assert (tiled == expected).mean() > 0.85  # 0.92 measured: the tiles' edges differ


@pytest.mark.parametrize(
    ("body", "content_type", "accept", "status"),
    [
        (b"a,b\n1,2\n", "text/csv", "image/png", 415),
        (image_bytes("JPEG"), "image/jpeg", "text/csv", 406),
        (b"", "image/jpeg", "image/png", 400),
        (b"\x00" * 100, "application/x-image", "image/png", 400),
    ],
)
def test_error_statuses(served, body, content_type, accept, status) -> None:
    answer = served.invoke(body, content_type, accept)
    assert answer[0] == status and json.loads(answer[2])["error"]


@pytest.mark.parametrize(
    ("engine", "message"),
    [
        (
            "onnx",
            "SEGCONTAINER_ENGINE=onnx needs {model}/model.onnx, which the model does not hold",
        ),
        ("onnx-int8", "SEGCONTAINER_ENGINE=onnx-int8 needs {model}/model.int8.onnx"),
        ("fastest", "SEGCONTAINER_ENGINE='fastest' is not valid"),
    ],
)
def test_serve_stops_at_start_for_a_missing_or_unknown_engine(
    trained_base, tmp_path, monkeypatch, caplog, engine: str, message: str
) -> None:
    old_model(trained_base, tmp_path / "model")
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    monkeypatch.setenv("SEGCONTAINER_ENGINE", engine)
    monkeypatch.setattr(serve_module, "start", lambda *args: pytest.fail("serve started"))
    assert serve_module.main() == 1
    log = caplog.text
    assert "cannot start: " + message.format(model=tmp_path / "model") in log
    if engine != "fastest":
        assert "segcontainer export MODEL" in log


@pytest.mark.parametrize(("cpus", "workers", "threads"), [(2, None, 2), (8, None, 2), (8, "2", 4)])
def test_each_worker_gets_its_share_of_the_cores(monkeypatch, cpus, workers, threads) -> None:
    # the cores the process may run on (a container's --cpuset-cpus), not the host's 64
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cpus)))
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    monkeypatch.setattr("segcontainer.serving.settings.gpu_count", lambda: 0)
    monkeypatch.delenv("MODEL_SERVER_WORKERS", raising=False)
    monkeypatch.delenv("SAGEMAKER_MODEL_SERVER_WORKERS", raising=False)
    if workers:
        monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", workers)
    settings = ServingSettings.from_env()
    assert settings.cpu_threads == settings.torch_threads == threads
    assert settings.workers * settings.cpu_threads == cpus
