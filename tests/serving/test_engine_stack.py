"""The real stack (`serve`: nginx + gunicorn + flask) with each engine: a model folder from
before the exports (auto = PyTorch), ONNX fp32, and auto on the exported model.tar.gz (int8
when its check passed). Every content type, errors, tiling; the PNG is the argmax of the
probabilities that engine returns. One server per engine."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segcontainer import model_folder
from segcontainer.client import decode_recordio_protobuf
from segcontainer.serving import server as serve_module
from segcontainer.serving.settings import ServingSettings
from tests.serving.test_stack import image_bytes, invoke
from tests.serving_stack import Server

ENGINES = {
    # name: (the model folder, SEGCONTAINER_ENGINE or None for the default)
    "before-exports": ("old", None),
    "onnx": ("exported", "onnx"),
    "auto-exported": ("exported", None),
}


def old_model(trained_base: Path, destination: Path) -> None:
    """trained_base's model/ as a job before the exports wrote it: no export files, no
    "export" hyperparameter, no "exports" record."""
    shutil.copytree(trained_base / "model", destination)
    record = json.loads((destination / model_folder.CONFIG_FILE).read_text())
    record.pop("export")
    (destination / model_folder.CONFIG_FILE).write_text(json.dumps(record))
    assert model_folder.EXPORTS_KEY not in model_folder.read_info(destination)
    assert not list(destination.glob("*.onnx"))


@pytest.fixture(scope="module", params=list(ENGINES))
def engine_server(request, trained_base, exported_model, tmp_path_factory):
    folder, engine = ENGINES[request.param]
    base = tmp_path_factory.mktemp("engine") / "algo-1-e9g1n"
    if folder == "old":
        old_model(trained_base, base / "model")
    else:
        tarball, _ = exported_model
        model_folder.extract_model_tarball(tarball, base / "model")
    expected = {"before-exports": "torch", "onnx": "onnx"}.get(request.param)
    if expected is None:
        passed = (base / "model" / model_folder.INT8_FILE).is_file()
        expected = "onnx-int8" if passed else "onnx"
    # Tiles smaller than the model input (48 px): every engine runs the tiled path.
    env = {"SEGCONTAINER_TILE_SIZE": "32"} | ({"SEGCONTAINER_ENGINE": engine} if engine else {})
    server = Server(base, **env)
    server.wait_ready()
    yield server, expected
    server.stop()


def test_start_log_names_engine_threads_and_file(engine_server) -> None:
    server, engine = engine_server
    server.log_file.flush()
    log = Path(server.log_file.name).read_text()  # all of it: /ping retries follow the start
    file = "model.pt" if engine == "torch" else f"model{'.int8' if 'int8' in engine else ''}.onnx"
    settings = ServingSettings.from_env()  # this host's workers and their share of the cores
    threads = settings.torch_threads if engine == "torch" else settings.cpu_threads
    assert f"engine {engine} (" in log
    assert f"{file}, {threads} intra-op threads in each of {settings.workers} workers" in log
    assert f"engine {engine}, " in log and "intra-op threads, file" in log  # the worker's line


@pytest.mark.parametrize(("content_type", "fmt"), [("image/jpeg", "JPEG"), ("image/png", "PNG")])
def test_png_protobuf_and_json_agree(engine_server, content_type: str, fmt: str) -> None:
    server, _ = engine_server
    body = image_bytes(fmt, size=(90, 70))  # 48 x 37 at model scale: tiled in 32-px windows
    status, headers, png = invoke(server, body, content_type, "image/png")
    assert status == 200 and headers["Content-Type"] == "image/png"
    mask = Image.open(io.BytesIO(png))
    assert mask.mode == "P" and mask.size == (90, 70)
    status, headers, record = invoke(server, body, content_type, "application/x-recordio-protobuf")
    assert status == 200 and headers["Content-Type"] == "application/x-recordio-protobuf"
    probabilities = decode_recordio_protobuf(record)
    assert probabilities.shape == (3, 70, 90)
    assert np.allclose(probabilities.sum(0), 1, atol=1e-5)
    assert np.array_equal(np.array(mask), probabilities.argmax(0))
    status, headers, summary = invoke(server, body, content_type, "application/json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    pixels = [c["pixels"] for c in json.loads(summary)["classes"]]
    assert pixels == np.bincount(np.array(mask).ravel(), minlength=3).tolist()


@pytest.mark.parametrize(
    ("body", "content_type", "accept", "status"),
    [
        (b"a,b\n1,2\n", "text/csv", "image/png", 415),
        (image_bytes("JPEG"), "image/jpeg", "text/csv", 406),
        (b"", "image/jpeg", "image/png", 400),
        (b"\x00" * 100, "application/x-image", "image/png", 400),
    ],
)
def test_error_statuses(engine_server, body, content_type, accept, status) -> None:
    server, _ = engine_server
    answer = invoke(server, body, content_type, accept)
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
    monkeypatch.setattr("os.cpu_count", lambda: cpus)
    monkeypatch.setattr("segcontainer.serving.settings.gpu_count", lambda: 0)
    monkeypatch.delenv("MODEL_SERVER_WORKERS", raising=False)
    monkeypatch.delenv("SAGEMAKER_MODEL_SERVER_WORKERS", raising=False)
    if workers:
        monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", workers)
    settings = ServingSettings.from_env()
    assert settings.cpu_threads == settings.torch_threads == threads
    assert settings.workers * settings.cpu_threads == cpus
