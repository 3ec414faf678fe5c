"""An image classification training job end to end, in this process, as SageMaker runs it:
`.rec` channels in File mode, the built-in's hyperparameters (so the task is chosen by them),
MXNet's metric lines, the model folder serving answers from, checkpoint_frequency's epochs, a
SIGTERM and spot restart resuming bit for bit, and incremental training from the model channel.

The data is learnable at a glance (each class a dominant colour, 16x16 PNGs), so a model that
learns nothing fails the accuracy asserts; a CIFAR ResNet-20 at 16 px keeps a job ~10 s."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segcontainer.tasks import task_of_model
from segcontainer.tasks.classification import NAME, scores
from segcontainer.tasks.classification.prediction import Predictor
from segcontainer.tools.demo_data import write_local_mode_config
from segcontainer.tools.export import export_command
from segcontainer.training import checkpoints
from segcontainer.training.entry import StopSignal
from tests.support.checkpoints import run_in_process, sigterm_before_batch
from tests.support.classification_data import feed_fifo, rec_bytes, write_rec
from tests.support.serving_stack import Server
from tests.support.serving_stack import request as http
from tests.support.tensorboard import read_events, scalars

COLOURS = ((200, 30, 30), (30, 200, 30), (30, 30, 200))  # class c: colour c
SETTINGS = {
    "num_layers": "20",
    "image_shape": "3,16,16",
    "num_classes": "3",
    "num_training_samples": "48",
    "mini_batch_size": "8",
    "epochs": "3",
    "learning_rate": "0.01",
    "top_k": "2",
    "checkpoint_frequency": "2",
    "workers": "0",
    "seed": "7",
    "export": "none",
    "class_names": "red,green,blue",
}


def coloured(label: int, seed: int) -> bytes:
    """A 16x16 PNG of the class's colour with noise, so no two images are the same."""
    noise = np.random.default_rng(seed).integers(-25, 25, (16, 16, 3))
    pixels = np.clip(np.array(COLOURS[label]) + noise, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def prepare(base: Path, **overrides: str) -> None:
    data = base / "input" / "data"
    for split, count, offset in (
        ("train", int(overrides.get("num_training_samples", SETTINGS["num_training_samples"])), 0),
        ("validation", 9, 100),
    ):
        labels = {offset + i: i % 3 for i in range(count)}
        write_rec(data, split, labels, {i: coloured(c, i) for i, c in labels.items()})
    settings = {**SETTINGS, **overrides}
    write_local_mode_config(base, settings, host=base.name, channels=("train", "validation"))


def metric_values(out: str) -> dict[str, list[float]]:
    return {
        d["Name"]: [float(m.group(1)) for m in re.finditer(d["Regex"], out)]
        for d in scores.METRIC_DEFINITIONS
    }


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[Path, str]:
    """A 3-epoch job that ran straight through; its stdout."""
    base = tmp_path_factory.mktemp("straight") / "algo-1-aaaaa"
    prepare(base)
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        run_in_process(patch, base, 0)
    return base, out.getvalue()


def test_the_job_reports_mxnet_lines_and_learns(straight) -> None:
    base, out = straight
    values = metric_values(out)
    assert len(values["train:accuracy"]) == 3 and len(values["validation:accuracy"]) == 3
    assert len(values["validation:top_k_accuracy"]) == 3  # top_k=2
    assert [int(e) for e in re.findall(r"Epoch\[(\d+)\] Time cost=", out)] == [0, 1, 2]
    assert values["validation:accuracy"][-1] == 1.0  # a dominant colour: learnt in 3 epochs
    assert "#quality_metric" not in out  # segmentation's lines are not classification's


def test_tensorboard_holds_each_epochs_scores_and_no_pictures(straight) -> None:
    base, out = straight
    events = read_events(base / "output" / "tensorboard")
    reported = metric_values(out)
    for metric, tag in (
        ("validation:accuracy", "validation/accuracy"),
        ("validation:top_k_accuracy", "validation/top_k_accuracy_2"),
        ("train:accuracy", "train/accuracy"),
    ):  # the metric lines' 4 decimals
        assert scalars(events, tag) == pytest.approx(dict(enumerate(reported[metric])), abs=1e-4)
    for tag in ("train/loss", "train/learning_rate", "speed/images_per_second"):
        assert set(scalars(events, tag)) == {0, 1, 2}, tag
    assert {f"validation_recall/{n}" for n in ("red", "green", "blue")} <= set(
        events.Tags()["scalars"]
    )
    assert events.Tags()["images"] == []  # the task supplies no pictures


def test_the_model_folder_serves_what_validation_scored(straight) -> None:
    base, _ = straight
    model = base / "model"
    assert task_of_model(model).name == NAME
    record = json.loads((model / "hyperparams.json").read_text())
    assert record["task"] == NAME and record["num_layers"] == 20
    info = json.loads((model / "model_info.json").read_text())
    assert info["task"] == NAME  # what serve and the tools read
    assert info["class_names"] == ["red", "green", "blue"]
    assert info["validation_accuracy"] == 1.0
    assert set(info["validation_per_class_recall"]) == {"red", "green", "blue"}
    # checkpoint_frequency=2: epoch 1 (the second) is kept beside the best model
    assert sorted(p.name for p in model.glob("epoch-*.pt")) == ["epoch-0001.pt"]
    predictor = Predictor.open(model)
    for label in range(3):
        image = Image.open(io.BytesIO(coloured(label, 1000 + label)))
        probabilities = predictor.probabilities(image)
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        assert int(probabilities.argmax()) == label


@pytest.mark.slow  # a second job, twice started
def test_sigterm_then_spot_restart_resumes_bit_for_bit(
    straight, tmp_path: Path, monkeypatch
) -> None:
    base, _ = straight
    interrupted = tmp_path / "interrupted" / "algo-1-bbbbb"
    prepare(interrupted)
    checkpoints_dir = interrupted / "checkpoints"
    sigterm_before_batch(monkeypatch, checkpoints_dir / "checkpoint-e0001-i000000.pt", batch=1)
    run_in_process(monkeypatch, interrupted, 143)
    assert checkpoints.listed(checkpoints_dir)[0].name == "checkpoint-e0001-i000001.pt"
    monkeypatch.setattr(StopSignal, "__call__", lambda self: self.requested)
    shutil.rmtree(interrupted / "model")  # a spot restart: a new instance's empty model/
    run_in_process(monkeypatch, interrupted, 0)
    want = torch.load(base / "model" / "model.pt", weights_only=True)
    got = torch.load(interrupted / "model" / "model.pt", weights_only=True)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[name], got[name]) for name in want)


@pytest.mark.slow  # two more jobs
def test_incremental_training_starts_from_the_model_channel(
    straight, tmp_path: Path, monkeypatch, capsys
) -> None:
    base, _ = straight
    job = tmp_path / "incremental" / "algo-1-ccccc"
    prepare(job, epochs="1", learning_rate="1e-9", seed="3", checkpoint_frequency="1")
    shutil.copytree(base / "model", job / "input" / "data" / "model")
    run_in_process(monkeypatch, job, 0)
    assert "starting from the model channel's weights" in capsys.readouterr().out
    earlier = torch.load(base / "model" / "model.pt", weights_only=True)
    now = torch.load(job / "model" / "model.pt", weights_only=True)
    for name, value in earlier.items():  # at lr 1e-9 the weights stay the channel's
        if value.is_floating_point() and "running" not in name:
            assert torch.allclose(value, now[name], atol=1e-6), name

    mismatch = tmp_path / "mismatch" / "algo-1-ddddd"
    prepare(mismatch, num_layers="32", epochs="1", checkpoint_frequency="1")
    shutil.copytree(base / "model", mismatch / "input" / "data" / "model")
    run_in_process(monkeypatch, mismatch, 1)
    reason = (mismatch / "output" / "failure").read_text()
    assert "num_layers is 20 in the model but 32 in this job" in reason


def jpeg(label: int) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(coloured(label, 2000 + label))).resize((40, 30)).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture(scope="module")
def exported(straight, tmp_path_factory) -> Path:
    """A copy of the trained job with model.onnx and the checked model.int8.onnx, calibrated
    and checked on the job's own channels (``segcontainer export --calibration``)."""
    base = tmp_path_factory.mktemp("exported") / "algo-1-eeeee"
    shutil.copytree(straight[0] / "model", base / "model")
    export_command(base / "model", "onnx,int8", straight[0] / "input" / "data")
    info = json.loads((base / "model" / "model_info.json").read_text())
    assert {"onnx", "int8"} <= {
        name for name, entry in info["exports"].items() if entry.get("file")
    }
    return base


@pytest.mark.parametrize(
    "engine",
    [
        "torch",
        pytest.param("onnx", marks=pytest.mark.slow),
        pytest.param("onnx-int8", marks=pytest.mark.slow),
    ],
)
def test_the_endpoint_answers_in_the_builtins_formats(straight, request, engine) -> None:
    """The real stack (nginx, gunicorn, flask) on the trained model, with each engine: the
    default JSON array, JSON Lines and the verbose form, a 40x30 JPEG of each class answered as
    that class, and a bad request refused as segmentation's endpoint refuses it."""
    base = straight[0] if engine == "torch" else request.getfixturevalue("exported")
    server = Server(base, SEGCONTAINER_ENGINE=engine)
    try:
        server.wait_ready()
        for label in range(3):
            status, headers, body = http(
                server.port, "/invocations", jpeg(label), {"Content-Type": "image/jpeg"}
            )
            assert status == 200 and headers["Content-Type"] == "application/json"
            probabilities = json.loads(body)
            assert len(probabilities) == 3 and sum(probabilities) == pytest.approx(1, abs=1e-4)
            assert int(np.argmax(probabilities)) == label
        _, _, line = http(
            server.port,
            "/invocations",
            jpeg(1),
            {"Content-Type": "application/x-image", "Accept": "application/jsonlines"},
        )
        assert line.endswith(b"\n") and len(json.loads(line)["prediction"]) == 3
        _, _, verbose = http(
            server.port,
            "/invocations",
            jpeg(2),
            {"Content-Type": "image/jpeg", "Accept": "application/json;verbose"},
        )
        answer = json.loads(verbose)
        assert answer["labels"] == ["red", "green", "blue"] and answer["predicted_label"] == "blue"
        status, _, body = http(
            server.port, "/invocations", b"GIF89a no", {"Content-Type": "image/jpeg"}
        )
        assert status == 400 and "not a JPEG or PNG image" in json.loads(body)["error"]
        png_please = {"Content-Type": "image/jpeg", "Accept": "image/png"}
        status, _, _ = http(server.port, "/invocations", jpeg(0), png_please)
        assert status == 406  # segmentation's answers are not a classification model's
    finally:
        assert server.stop() == 0


@pytest.mark.slow  # a job whose channels stream through FIFOs fed by other processes
def test_a_pipe_mode_job_trains_on_record_streams(tmp_path: Path, monkeypatch, capsys) -> None:
    """Pipe mode as SageMaker runs it for the built-in's .rec channels: each epoch's
    ``train_<epoch>`` and the one ``validation_0`` are FIFOs streaming the .rec files' bytes
    (that the streams alone choose the task is test_registry's)."""
    base = tmp_path / "algo-1-fffff"
    data = base / "input" / "data"
    data.mkdir(parents=True)
    streams = {}
    for split, count, offset in (("train", 48, 0), ("validation", 9, 100)):
        labels = {offset + i: i % 3 for i in range(count)}
        streams[split] = rec_bytes(labels, {i: coloured(c, i) for i, c in labels.items()})
    settings = {**SETTINGS, "epochs": "2", "checkpoint_frequency": "1"}
    write_local_mode_config(base, settings, host=base.name, channels=("train", "validation"))
    pipe = {"TrainingInputMode": "Pipe", "ContentType": "application/x-recordio"}
    (base / "input" / "config" / "inputdataconfig.json").write_text(
        json.dumps({"train": pipe, "validation": pipe})
    )
    feeders = [
        feed_fifo(data / "train_0", streams["train"]),
        feed_fifo(data / "train_1", streams["train"]),
        feed_fifo(data / "validation_0", streams["validation"]),
    ]
    try:
        run_in_process(monkeypatch, base, 0)
    finally:
        for feeder in feeders:
            feeder.kill()
    out = capsys.readouterr().out
    assert f"segcontainer training {NAME}" in out
    assert len(metric_values(out)["validation:accuracy"]) == 2
    assert task_of_model(base / "model").name == NAME


def two_colours(left: int, right: int, seed: int) -> bytes:
    """A 16x16 PNG: colour ``left`` on the left half, colour ``right`` on the right, noised."""
    noise = np.random.default_rng(seed).integers(-25, 25, (16, 16, 3))
    pixels = np.zeros((16, 16, 3), np.int64)
    pixels[:, :8], pixels[:, 8:] = COLOURS[left], COLOURS[right]
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.slow  # a second job
def test_a_multi_label_job_learns_which_colours_appear_and_answers_per_class(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """multi_label=1 from .rec records with 0/1 vectors (im2rec --pack-label): BCE training,
    accuracy over (image, class) decisions, and an endpoint whose probabilities are per-class
    sigmoids (an image of two colours gets two probabilities near 1)."""
    base = tmp_path / "algo-1-ggggg"
    data = base / "input" / "data"
    pairs = [(i, j) for i in range(3) for j in range(3)]
    for split, count, offset in (("train", 72, 0), ("validation", 18, 1000)):
        picks = {offset + k: pairs[k % len(pairs)] for k in range(count)}
        labels = {k: [int(c in pair) for c in range(3)] for k, pair in picks.items()}
        write_rec(data, split, labels, {k: two_colours(*pair, k) for k, pair in picks.items()})
    settings = {
        **SETTINGS,
        "multi_label": "1",
        "use_weighted_loss": "1",
        "num_training_samples": "72",
        "epochs": "8",
        "top_k": "none",
        "checkpoint_frequency": "none",
    }
    write_local_mode_config(base, settings, host=base.name, channels=("train", "validation"))
    run_in_process(monkeypatch, base, 0)
    accuracy = metric_values(capsys.readouterr().out)["validation:accuracy"]
    # always answering "present" is right on 5 of 9 decisions (each pair shows 1 or 2 colours)
    assert max(accuracy) > 0.9 > 5 / 9, accuracy
    predictor = Predictor.open(base / "model")
    both = predictor.probabilities(Image.open(io.BytesIO(two_colours(0, 2, 7))))
    assert both[0] > 0.5 and both[2] > 0.5 and both[1] < 0.5, both
    assert both.sum() > 1.0  # sigmoids, not a softmax
