"""The image as users drive it: `docker run IMAGE train|serve` (with podman) and the SageMaker
Python SDK 2.x local mode. Run by container_test.sh, which builds IMAGE and starts podman's API
service (DOCKER_HOST); not part of the fast suite.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
LOCAL_TEST = REPO / "container" / "local_test"
TEST_DIR = LOCAL_TEST / "test_dir"
DATA = TEST_DIR / "input" / "data"
SAMPLE = DATA / "validation" / "validation_0000.jpg"
IMAGE = os.environ["IMAGE"]
CHANNELS = ("train", "validation", "train_annotation", "validation_annotation")
# The hyperparameters of test_dir (train_local.sh) are the ones the SDK's Estimator gets: string
# values, as SageMaker writes them.
HYPERPARAMETERS = json.loads((TEST_DIR / "input" / "config" / "hyperparameters.json").read_text())
SIGTERM_GRACE = 30  # SageMaker sends SIGKILL this long after SIGTERM
# The site page (docs/<page>.md) holding each task's metric_definitions (tests/support/readme.py).
METRICS_PAGE = {"segmentation": "training", "image-classification": "image-classification"}
# Image classification: MXNet-written records (3 classes, 2 single-colour 8x8 JPEGs each; see
# make_fixtures.sh there), the built-in's hyperparameters at a tiny size (a CIFAR ResNet-20).
CLASSIFICATION_FIXTURES = REPO / "tests" / "fixtures" / "classification"
CLASSIFICATION_HYPERPARAMETERS = {
    "num_layers": "20",
    "image_shape": "3,32,32",
    "num_classes": "3",
    "num_training_samples": "6",
    "epochs": "1",
    "mini_batch_size": "2",
    "learning_rate": "0.01",
    "top_k": "2",
    "class_names": "cat,dog,emu",
}


def readme_metric_definitions(task: str = "segmentation") -> list[dict]:
    """The metric_definitions the documentation tells users of ``task`` to pass (the test uses
    exactly those): segmentation's on the site's training page, image classification's on its
    own page (tests/docs checks that the README shows the same ones)."""
    text = (REPO / "docs" / f"{METRICS_PAGE[task]}.md").read_text()
    found = re.findall(r'"Name": "([^"]+)",\s*"Regex": r"([^"]+)"', text)
    # the per-class examples (validation:IoU_car, ...) name the page's example classes, not
    # this job's: the definitions every job's log answers are the other three
    found = [(name, regex) for name, regex in found if not name.startswith("validation:IoU_")]
    assert len(found) == 3, f"documented metric_definitions of {task} not found: {found}"
    return [{"Name": name, "Regex": regex} for name, regex in found]


def assert_metric_lines(log: str, epochs: int, task: str = "segmentation") -> None:
    for definition in readme_metric_definitions(task):
        values = re.findall(definition["Regex"], log)
        assert len(values) == epochs, f"{definition['Name']}: {values} in\n{log[-3000:]}"
        assert all(np.isfinite(float(v)) for v in values), values


def run_script(script: str, *args: str, timeout: float, merge: bool = True, **env: str):
    """One of container/local_test's scripts, with podman; stderr into stdout when merge."""
    return subprocess.run(
        [str(LOCAL_TEST / script), *args],
        env={**os.environ, "DOCKER": "podman", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge else subprocess.PIPE,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ping(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def check_answers(png: bytes, probabilities: np.ndarray, classes: int = 3) -> None:
    """The PNG mask has the request's size and is the argmax of the probabilities."""
    width, height = Image.open(SAMPLE).size
    mask = np.array(Image.open(io.BytesIO(png)))
    assert mask.shape == (height, width)
    assert probabilities.shape == (classes, height, width)
    assert np.allclose(probabilities.sum(axis=0), 1, atol=1e-3)
    assert np.array_equal(mask, probabilities.argmax(axis=0))


# ----------------------------------------------------------------------------- the image itself


def test_image_metadata_and_contents():
    inspect = subprocess.run(
        ["podman", "image", "inspect", "--format",
         "{{json .Config.Labels}} {{json .Config.ExposedPorts}} {{json .Config.Entrypoint}}"
         " {{json .Config.Env}}", IMAGE],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert '"com.amazonaws.sagemaker.capabilities.accept-bind-to-port":"true"' in inspect
    assert '"8080/tcp"' in inspect
    assert "PYTHONUNBUFFERED=TRUE" in inspect and "TORCH_HOME=/opt/torch" in inspect
    entrypoint = inspect.split()[2]
    assert entrypoint in ("null", "[]"), entrypoint
    probe = (
        "import shutil, segcontainer; from importlib.metadata import version as v; "
        "print(v('torch'), v('torchvision')); "
        "print([t for t in ('train', 'serve', 'nginx') if not shutil.which(t)]); "
        "print([t for t in ('gcc', 'cc', 'g++') if shutil.which(t)])"
    )
    result = subprocess.run(
        ["podman", "run", "--rm", IMAGE, "sh", "-c",
         f"python3 -c \"{probe}\"; ls /root/.cache/pip /tmp/build /opt/ml 2>&1 | head -3"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout.splitlines()  # fmt: skip
    # The base's torch pair, not reinstalled: container_test.sh builds on torch 2.14.1.
    assert result[0] == "2.14.1 0.29.1", result
    assert result[1] == "[]", f"missing on PATH: {result}"
    assert result[2] == "[]", f"compilers in the image: {result}"
    assert all("No such file" in line for line in result[3:]), result


def test_image_holds_the_working_trees_code():
    """A rebuild after a code change installs the new code (a cached install step once kept
    the old one): every module of the installed package equals the working tree's."""
    probe = (
        "import hashlib, pathlib, segcontainer; root = pathlib.Path(segcontainer.__file__).parent; "
        "[print(p.relative_to(root), hashlib.sha256(p.read_bytes()).hexdigest()) "
        "for p in sorted(root.rglob('*.py'))]"
    )
    installed = subprocess.run(
        ["podman", "run", "--rm", IMAGE, "python3", "-c", probe],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout.split()  # fmt: skip
    source = REPO / "src" / "segcontainer"
    expected = []
    for path in sorted(source.rglob("*.py")):
        expected += [str(path.relative_to(source)), hashlib.sha256(path.read_bytes()).hexdigest()]
    assert installed == expected


# ------------------------------------------------------------------ docker run IMAGE train|serve


@pytest.fixture(scope="module")
def docker_run_training(tmp_path_factory):
    """train_local.sh on a copy of test_dir (the repository's copy stays clean)."""
    base = tmp_path_factory.mktemp("docker-run") / "opt_ml"
    shutil.copytree(TEST_DIR, base)
    started = time.monotonic()
    result = run_script("train_local.sh", IMAGE, timeout=600, TEST_DIR=str(base))
    print(f"docker-run training: {time.monotonic() - started:.0f} s")
    return result.returncode, result.stdout.decode(errors="replace"), base


def test_docker_run_train(docker_run_training):
    status, log, base = docker_run_training
    assert status == 0, log[-5000:]
    assert_metric_lines(log, epochs=int(HYPERPARAMETERS["epochs"]))
    assert {"model.pt", "hyperparams.json", "model_info.json"} <= {
        p.name for p in (base / "model").iterdir()
    }, log[-3000:]
    # No TRAINING_JOB_NAME under plain docker run: the image packs model/ itself.
    assert (base / "output" / "model.tar.gz").is_file()
    assert (base / "output" / "success").is_file()
    assert not (base / "output" / "failure").exists()


def test_docker_run_serve(docker_run_training, tmp_path):
    status, _, base = docker_run_training
    assert status == 0, "training failed: see test_docker_run_train"
    port, name = free_port(), f"segcontainer-ci-serve-{os.getpid()}"
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [str(LOCAL_TEST / "serve_local.sh"), IMAGE, "--name", name],
            env={**os.environ, "DOCKER": "podman", "PORT": str(port), "TEST_DIR": str(base)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 240  # SageMaker's limit for the first passing ping
        while ping(port) != 200:
            assert server.poll() is None, f"serve exited:\n{log_path.read_text()[-5000:]}"
            assert time.monotonic() < deadline, f"no ping:\n{log_path.read_text()[-5000:]}"
            time.sleep(1)

        answers = {}
        for accept in ("image/png", "application/x-recordio-protobuf"):
            result = run_script(
                "predict.sh", str(SAMPLE), accept, timeout=120, merge=False, PORT=str(port)
            )
            assert result.returncode == 0, (accept, result.stdout[-2000:], result.stderr)
            answers[accept] = result.stdout
        from segcontainer.client import decode_recordio_protobuf

        probabilities = decode_recordio_protobuf(answers["application/x-recordio-protobuf"])
        check_answers(answers["image/png"], probabilities)

        # `docker stop`: SIGTERM, SIGKILL after the grace period; serve must exit 0 before it.
        started = time.monotonic()
        subprocess.run(
            ["podman", "stop", "-t", str(SIGTERM_GRACE), name], check=True, capture_output=True
        )
        status = server.wait(timeout=SIGTERM_GRACE + 30)
        elapsed = time.monotonic() - started
        assert status == 0, f"exit {status} after SIGTERM:\n{log_path.read_text()[-5000:]}"
        assert elapsed < SIGTERM_GRACE, f"SIGTERM took {elapsed:.0f} s"
        print(f"serve stopped {elapsed:.1f} s after SIGTERM")
    except BaseException:
        print(f"----- serve log -----\n{log_path.read_text()[-10000:]}")
        raise
    finally:
        if server.poll() is None:
            subprocess.run(["podman", "rm", "-f", "-t", "0", name], capture_output=True)
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)


# ------------------------------------------------------------------------ SageMaker SDK local


@pytest.fixture(scope="module")
def sdk_session(tmp_path_factory):
    """A LocalSession that talks to nothing but podman: dummy credentials and region, telemetry
    off, file:// channels and output."""
    root = tmp_path_factory.mktemp("sdk")
    patch = pytest.MonkeyPatch()
    patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    patch.setenv("AWS_ACCESS_KEY_ID", "local")
    patch.setenv("AWS_SECRET_ACCESS_KEY", "local")
    patch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    from sagemaker.local import LocalSession

    session = LocalSession(
        sagemaker_config={
            "SchemaVersion": "1.0",
            "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}},
        }
    )
    (root / "containers").mkdir()
    session.config = {"local": {"local_code": True, "container_root": str(root / "containers")}}
    yield session, root
    patch.undo()


def fit(session, root: Path, instance_count: int = 1):
    """Estimator.fit in local mode on the test_dir dataset; returns the estimator.
    (instance_count=2 runs algo-1 and algo-2 on the compose network.)"""
    from sagemaker.estimator import Estimator

    estimator = Estimator(
        image_uri=IMAGE,
        role="arn:aws:iam::111111111111:role/SageMakerRole",
        instance_count=instance_count,
        instance_type="local",
        output_path=f"file://{root}/output",
        sagemaker_session=session,
        metric_definitions=readme_metric_definitions(),
        hyperparameters=HYPERPARAMETERS,
    )
    estimator.fit({channel: f"file://{DATA / channel}" for channel in CHANNELS})
    return estimator


def image_containers() -> list[str]:
    return subprocess.run(
        ["podman", "ps", "-q", "--filter", f"ancestor={IMAGE}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip


def test_sdk_local_mode_fit_deploy_predict(sdk_session, capfd):
    from sagemaker.deserializers import BytesDeserializer, RecordDeserializer
    from sagemaker.serializers import IdentitySerializer

    session, root = sdk_session
    started = time.monotonic()
    estimator = fit(session, root)
    log = capfd.readouterr().out
    print(log[-3000:])
    print(f"SDK fit: {time.monotonic() - started:.0f} s")
    assert_metric_lines(log, epochs=int(HYPERPARAMETERS["epochs"]))
    model_data = estimator.model_data
    assert model_data.startswith("file://") and model_data.endswith("model.tar.gz"), model_data
    assert Path(model_data[len("file://") :]).is_file()

    started = time.monotonic()
    predictor = estimator.deploy(
        1, "local", wait=False, serializer=IdentitySerializer("image/jpeg")
    )
    try:
        print(f"SDK deploy: {time.monotonic() - started:.0f} s")
        jpeg = SAMPLE.read_bytes()
        predictor.deserializer = BytesDeserializer(accept="image/png")
        png = predictor.predict(jpeg)
        predictor.deserializer = RecordDeserializer(accept="application/x-recordio-protobuf")
        records = predictor.predict(jpeg)
        assert len(records) == 1
        features = records[0].features
        shape = tuple(features["shape"].int32_tensor.values)
        assert shape[:2] == (1, 3), shape
        values = np.array(features["target"].float32_tensor.values, dtype=np.float32)
        check_answers(png, values.reshape(shape)[0])
    finally:
        predictor.delete_endpoint()
    deadline = time.monotonic() + 60
    while image_containers():
        assert time.monotonic() < deadline, "serving container still running after delete"
        time.sleep(1)


def test_sdk_local_mode_image_classification_fit_deploy_predict(sdk_session, capfd, tmp_path):
    """The built-in Image Classification's way through the SDK: `.rec` channels with the
    RecordIO content type, its hyperparameters (they make the job image classification), the
    documentation's metric_definitions reading the log, then an endpoint answering a JPEG with a
    JSON array of class probabilities."""
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.estimator import Estimator
    from sagemaker.inputs import TrainingInput
    from sagemaker.serializers import IdentitySerializer

    session, root = sdk_session
    channels = {}
    for split in ("train", "validation"):
        (tmp_path / split).mkdir()
        shutil.copy(CLASSIFICATION_FIXTURES / "single.rec", tmp_path / split / f"{split}.rec")
        channels[split] = TrainingInput(
            f"file://{tmp_path / split}", content_type="application/x-recordio"
        )
    estimator = Estimator(
        image_uri=IMAGE,
        role="arn:aws:iam::111111111111:role/SageMakerRole",
        instance_count=1,
        instance_type="local",
        output_path=f"file://{root}/classification",
        sagemaker_session=session,
        metric_definitions=readme_metric_definitions("image-classification"),
        hyperparameters=CLASSIFICATION_HYPERPARAMETERS,
    )
    started = time.monotonic()
    estimator.fit(channels)
    log = capfd.readouterr().out
    print(log[-3000:])
    print(f"SDK image classification fit: {time.monotonic() - started:.0f} s")
    assert_metric_lines(log, epochs=1, task="image-classification")
    with tarfile.open(estimator.model_data[len("file://") :]) as tar:
        record = json.load(tar.extractfile("hyperparams.json"))
    assert record["task"] == "image-classification" and record["num_layers"] == 20, record

    started = time.monotonic()
    predictor = estimator.deploy(
        1,
        "local",
        wait=False,
        serializer=IdentitySerializer("image/jpeg"),
        deserializer=JSONDeserializer(),
    )
    try:
        print(f"SDK image classification deploy: {time.monotonic() - started:.0f} s")
        probabilities = predictor.predict(
            (CLASSIFICATION_FIXTURES / "images/dog/0.jpg").read_bytes()
        )
        assert isinstance(probabilities, list) and len(probabilities) == 3, probabilities
        assert all(isinstance(p, float) and 0 <= p <= 1 for p in probabilities), probabilities
        assert abs(sum(probabilities) - 1) < 1e-4, probabilities
    finally:
        predictor.delete_endpoint()
    deadline = time.monotonic() + 60
    while image_containers():
        assert time.monotonic() < deadline, "serving container still running after delete"
        time.sleep(1)


def test_sdk_local_mode_two_instances_train_as_one_job(sdk_session, capfd):
    """instance_count=2: algo-1 and algo-2 rendezvous on the compose network by host name and
    train as one data-parallel job; only rank 0 (the first host) logs the metric lines and
    writes model/, so model.tar.gz holds its model."""
    session, root = sdk_session
    started = time.monotonic()
    estimator = fit(session, root, instance_count=2)
    log = capfd.readouterr().out
    print(log[-4000:])
    print(f"SDK fit with 2 instances: {time.monotonic() - started:.0f} s")
    assert "joined 2 processes on 2 hosts (gloo)" in log, log[-4000:]
    # One set of metric lines per epoch for the job, not one per host.
    assert_metric_lines(log, epochs=int(HYPERPARAMETERS["epochs"]))
    archive = Path(estimator.model_data[len("file://") :])
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        info = json.load(tar.extractfile("model_info.json"))
    assert {"model.pt", "hyperparams.json", "model_info.json"} <= names, names
    trained_on = info["trained_on"]
    assert trained_on["world_size"] == 2 and len(trained_on["hosts"]) == 2, trained_on
    assert trained_on["written_by"] == f"rank 0 on {sorted(trained_on['hosts'])[0]}", trained_on
