"""The real serving stack (the `serve` executable: nginx + gunicorn + flask) against a model
trained in the test: /ping, every content and accept type, errors, a 4K image, SIGTERM."""

from __future__ import annotations

import io
import json
import os
import signal
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from segcontainer import cli
from segcontainer.client import decode_recordio_protobuf
from segcontainer.config.hyperparameters import resolve
from segcontainer.metrics import Scores
from segcontainer.model_folder import model_config, save_model
from segcontainer.models import build_model
from segcontainer.tools.demo_data import synthetic_pair
from tests.support.palette import VOC_COLOURS
from tests.support.serving_stack import (
    Server,
    both_workers_busy,
    image_bytes,
    invoke,
    memory_kib,
    request,
    reset_peak_memory,
)

PROBABILITIES = ("application/x-recordio-protobuf", "application/x-protobuf")


@pytest.fixture(scope="module")
def server(trained_base: Path):
    """`serve` on trained_base's learned model; the module's last test ends it (gunicorn
    killed)."""
    server = Server(trained_base, SAGEMAKER_MAX_PAYLOAD_IN_MB="6")
    server.wait_ready()
    yield server
    server.stop()


def assert_good_request_works(server: Server) -> None:
    status, _, body = invoke(server, image_bytes("JPEG"), "image/jpeg", "image/png")
    assert status == 200
    assert Image.open(io.BytesIO(body)).size == (60, 44)


def test_ping_and_execution_parameters(server: Server) -> None:
    assert request(server.port, "/ping")[0] == 200
    status, headers, body = request(server.port, "/execution-parameters")
    assert status == 200
    assert json.loads(body) == {
        "MaxConcurrentTransforms": 1,
        "BatchStrategy": "SINGLE_RECORD",
        "MaxPayloadInMB": 6,
    }
    assert request(server.port, "/elsewhere")[0] == 404


@pytest.mark.parametrize(
    ("content_type", "fmt"),
    [
        ("image/jpeg", "JPEG"),
        ("image/png", "PNG"),
        ("application/x-image", "JPEG"),
        ("application/x-image", "BMP"),
    ],
)
def test_png_answer_is_a_palette_mask_equal_to_the_argmax(server, content_type, fmt) -> None:
    body = image_bytes(fmt)
    status, headers, png = invoke(server, body, content_type, "image/png")
    assert status == 200 and headers["Content-Type"] == "image/png"
    mask = Image.open(io.BytesIO(png))
    assert mask.mode == "P" and mask.size == (60, 44)
    palette = mask.getpalette()
    for index, colour in VOC_COLOURS.items():
        assert tuple(palette[3 * index : 3 * index + 3]) == colour, index
    status, headers, record = invoke(server, body, content_type, "application/x-protobuf")
    assert status == 200
    probabilities = decode_recordio_protobuf(record)
    assert probabilities.shape == (3, 44, 60)
    assert np.array_equal(np.array(mask), probabilities.argmax(0))


@pytest.mark.parametrize("accept", PROBABILITIES)
def test_probabilities_decode_with_the_sagemaker_sdk_reader(server, accept: str) -> None:
    from sagemaker.amazon.common import read_records
    from sagemaker.deserializers import RecordDeserializer

    status, headers, body = invoke(server, image_bytes("PNG", mode="RGBA"), "image/png", accept)
    assert status == 200 and headers["Content-Type"] == accept
    records = read_records(io.BytesIO(body))
    assert len(records) == 1
    values = records[0].features["target"].float32_tensor.values
    shape = records[0].features["shape"].int32_tensor.values
    assert list(shape) == [1, 3, 44, 60]
    # the sample notebook's reshape
    probabilities = np.squeeze(np.reshape(values, np.squeeze(shape)), axis=0)
    assert probabilities.shape == (3, 44, 60)
    assert np.allclose(probabilities.sum(0), 1, atol=1e-5)
    assert np.array_equal(probabilities, decode_recordio_protobuf(body))
    deserialized = RecordDeserializer().deserialize(io.BytesIO(body), accept)
    assert list(deserialized[0].features["shape"].int32_tensor.values) == [1, 3, 44, 60]


def test_json_summary(server: Server) -> None:
    status, headers, body = invoke(server, image_bytes("JPEG"), "image/jpeg", "application/json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    summary = json.loads(body)
    assert (summary["height"], summary["width"], summary["num_classes"]) == (44, 60, 3)
    assert [c["name"] for c in summary["classes"]] == ["bg", "rect", "ellipse"]
    assert sum(c["pixels"] for c in summary["classes"]) == 44 * 60
    assert sum(c["fraction"] for c in summary["classes"]) == pytest.approx(1, abs=1e-4)


@pytest.mark.parametrize("accept", [None, "*/*", "image/*", "text/html, image/png;q=0.9"])
def test_missing_or_wildcard_accept_gives_png(server: Server, accept) -> None:
    status, headers, body = invoke(server, image_bytes("JPEG"), "image/jpeg", accept)
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(body)).mode == "P"


ORIGINAL = image_bytes("JPEG")
BAD_REQUESTS = {
    "unsupported content type": (b"a,b\n1,2\n", "text/csv", "image/png", 415),
    "unsupported accept": (ORIGINAL, "image/jpeg", "text/csv", 406),
    "empty body": (b"", "image/jpeg", "image/png", 400),
    "truncated image": (ORIGINAL[: len(ORIGINAL) // 3], "image/jpeg", "image/png", 400),
    "not an image": (b"GIF89a not really", "image/jpeg", "image/png", 400),
    "undecodable x-image": (b"\x00" * 100, "application/x-image", "image/png", 400),
    "over the size limit": (
        b"\xff\xd8\xff" + b"\x00" * (7 * 1024 * 1024),
        "image/jpeg",
        "image/png",
        413,
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_status_then_a_good_request_works(server: Server, case: str) -> None:
    body, content_type, accept, expected = BAD_REQUESTS[case]
    status, _, answer = invoke(server, body, content_type, accept)
    assert status == expected, answer[:300]
    assert json.loads(answer)["error"]  # JSON also where nginx answers itself (413)
    assert_good_request_works(server)


def jpeg_4k(side: int = 4096) -> bytes:
    image = Image.new("RGB", (side, side), (120, 120, 120))
    draw = ImageDraw.Draw(image)
    draw.rectangle((500, 600, 2500, 2200), fill=(200, 40, 40))
    draw.ellipse((2600, 2400, 3900, 3900), fill=(40, 60, 200))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_4k_image_gives_the_classes_of_the_same_picture_at_model_scale(server: Server) -> None:
    body = jpeg_4k()
    status, _, answer = invoke(server, body, "image/jpeg", "image/png")
    assert status == 200
    mask = np.array(Image.open(io.BytesIO(answer)))
    assert mask.shape == (4096, 4096)
    # the model learned the task: the rectangle, the ellipse and the background, each found
    assert set(np.unique(mask)) == {0, 1, 2}
    assert (mask[1400, 1500], mask[3150, 3250], mask[100, 100]) == (1, 2, 0)  # their centres
    # the same picture at 512 px gives the same classes (the model sees both at one scale)
    small = io.BytesIO()
    Image.open(io.BytesIO(body)).resize((512, 512), Image.Resampling.BILINEAR).save(small, "PNG")
    status, _, small_body = invoke(server, small.getvalue(), "image/png", "image/png")
    small_mask = np.array(Image.open(io.BytesIO(small_body)))
    assert set(np.unique(small_mask)) == {0, 1, 2}
    assert (mask[4::8, 4::8] == small_mask).mean() > 0.97
    assert_good_request_works(server)


@pytest.fixture(scope="module")
def server_21_classes(tmp_path_factory) -> Server:
    """An (untrained) 21-class model at base_size 512, as a PASCAL VOC model is served."""
    base = tmp_path_factory.mktemp("voc") / "algo-1-v0c21"
    config = resolve({"num_classes": "21", "base_size": "512", "crop_size": "512"})
    model = build_model("fcn", "resnet-50", 21)
    scores = Scores(0.5, 0.5, (0.5,) * 21)
    save_model(base / "model", model, model_config(config, {"train": {"scale": 1}}), 0, scores, ())
    server = Server(base)
    server.wait_ready()
    yield server
    server.stop()


@pytest.mark.slow  # a second server, on a 21-class model, and a 4K answer (~25 s)
def test_4k_png_answer_with_21_classes_adds_under_400_mib(server_21_classes: Server) -> None:
    server = server_21_classes
    [worker] = server.worker_pids()
    before = reset_peak_memory(worker)  # after loading and warm-up
    status, _, body = invoke(server, jpeg_4k(), "image/jpeg", "image/png")
    assert status == 200
    assert Image.open(io.BytesIO(body)).size == (4096, 4096)
    growth_mib = (memory_kib(worker) - before) / 1024
    # the README's promise: decoded RGB 48 MiB, the uint8 mask 16 MiB, PNG encoding and a
    # band of rows; 21-class logits upsampled to the whole image would be 1.3 GiB
    assert growth_mib < 400, growth_mib


def test_probabilities_too_large_for_recordio_are_refused_before_predicting(
    server_21_classes: Server,
) -> None:
    server = server_21_classes
    image = Image.new("RGB", (2600, 2600), (10, 120, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    [worker] = server.worker_pids()
    before = reset_peak_memory(worker)
    status, _, body = invoke(server, buffer.getvalue(), "image/jpeg", PROBABILITIES[0])
    assert status == 413
    message = json.loads(body)["error"]
    assert "2600x2600" in message and "21 classes" in message and "512 MiB" in message
    assert "image/png" in message and "application/json" in message
    side = int(message.split("at most ")[1].split("x")[0])
    assert 4 * 21 * side * side < 2**29 < 4 * 21 * (side + 1) ** 2
    # refused up front: the 542 MiB of probabilities were never computed
    assert (memory_kib(worker) - before) / 1024 < 200
    assert_good_request_works(server)


@pytest.mark.slow  # a two-worker server and two long requests (~15-20 s)
def test_two_workers_both_predict_and_ping_answers_within_2_s_while_both_are_busy_then_sigterm(
    trained_base: Path,
) -> None:
    # The model sees 512x512 in one piece: seconds per request on 2 cores, in production code.
    # Two workers, each busy with its own request: /ping can only be answered by a busy
    # worker's other thread (the README's promise "with any number of workers").
    server = Server(
        trained_base,
        SAGEMAKER_MODEL_SERVER_WORKERS="2",
        SEGCONTAINER_INFERENCE_SIZE="512",
        SEGCONTAINER_TILE_SIZE="512",
        SAGEMAKER_MAX_PAYLOAD_IN_MB="0",  # no body limit (tested below)
    )
    try:
        server.wait_ready()
        workers = server.wait_workers_loaded(2)  # loading burns CPU too
        parameters = json.loads(request(server.port, "/execution-parameters")[2])
        assert parameters["MaxConcurrentTransforms"] == 2  # batch transform sends 2 at once
        answers, pings = both_workers_busy(server, workers)
        assert [status for status, _, _ in answers] == [200] * len(answers)
        assert len(pings) >= 2 and set(pings) == {200}, pings
        # SAGEMAKER_MAX_PAYLOAD_IN_MB=0: no limit, as SageMaker defines it (nginx and flask)
        assert parameters["MaxPayloadInMB"] == 0
        status, _, body = invoke(server, b"\xff\xd8\xff" + b"\x00" * (7 << 20), "image/jpeg")
        assert status == 400 and "Pillow can read" in json.loads(body)["error"]
        # SIGTERM stops nginx and gunicorn (and both workers); serve exits 0
        assert server.stop(timeout=60) == 0
        assert all(not Path(f"/proc/{pid}").exists() for pid in workers)
        with pytest.raises(OSError):
            request(server.port, "/ping", timeout=2)
    finally:
        server.stop()


# `segcontainer predict` runs in-process (cli.main): its exit status is main's return value.


def test_predict_command_writes_masks_and_overlays(trained_base: Path, tmp_path: Path, capsys):
    model_tar = trained_base / "output" / "model.tar.gz"
    images = tmp_path / "images"
    images.mkdir()
    for name, size in (("a", (64, 48)), ("b", (33, 71))):
        synthetic_pair(np.random.default_rng(1), size)[0].save(images / f"{name}.jpg")
    (images / "broken.jpg").write_bytes(b"nope")
    out = tmp_path / "out"
    code = cli.main(["predict", str(model_tar), str(images), str(out), "--overlay"])
    output = capsys.readouterr()
    assert code == 1, output.err  # one file could not be read
    assert "skipped broken.jpg" in output.out + output.err
    for name, size in (("a", (64, 48)), ("b", (33, 71))):
        mask = Image.open(out / f"{name}.png")
        assert mask.mode == "P" and mask.size == size
        assert Image.open(out / f"{name}_overlay.jpg").size == size


def test_unsafe_model_tarball_is_refused(trained_base: Path, tmp_path: Path, capsys) -> None:
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as archive:
        archive.add(trained_base / "model" / "hyperparams.json", arcname="../escape.json")
    assert cli.main(["predict", str(evil), str(tmp_path), str(tmp_path / "out")]) == 1
    assert "unsafe member" in capsys.readouterr().err
    assert not (tmp_path.parent / "escape.json").exists()


def test_serve_exits_non_zero_when_gunicorn_dies(server: Server) -> None:
    # This test ends the module's server: it must stay the module's last test.
    assert_good_request_works(server)
    os.kill(server.gunicorn_master(), signal.SIGKILL)
    assert server.process.wait(timeout=60) == 1
    server.stop()
    with pytest.raises(OSError):  # nginx went down with it
        request(server.port, "/ping", timeout=2)
