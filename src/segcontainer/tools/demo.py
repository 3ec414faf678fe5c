"""``segcontainer demo``: the whole path on a generated dataset, in a local folder.

train (as SageMaker's local mode lays out /opt/ml) -> serve the model with nginx + gunicorn
-> one image to /invocations for a PNG mask and for probabilities -> stop the server.
``--task classification``: coloured shapes in the image + list channels (demo_classification),
a ResNet-20 trained on them, and one image's label and probabilities from the endpoint.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from segcontainer.client import decode_recordio_protobuf
from segcontainer.tools import demo_classification
from segcontainer.tools.demo_data import CLASS_NAMES, make_dataset, write_local_mode_config

SEGMENTATION, CLASSIFICATION = "semantic-segmentation", "image-classification"
TASKS = {"segmentation": SEGMENTATION, "classification": CLASSIFICATION}  # --task's short names

DEMO_HYPERPARAMETERS = {
    "backbone": "resnet-50",
    "algorithm": "fcn",
    "use_pretrained_model": "False",  # no network here: the demo trains from scratch
    "num_classes": str(len(CLASS_NAMES)),
    "num_training_samples": "32",
    "epochs": "3",
    "base_size": "96",
    "crop_size": "64",
    "mini_batch_size": "8",
    "validation_mini_batch_size": "8",
    "learning_rate": "0.001",
    "optimizer": "adam",
    "class_names": ",".join(CLASS_NAMES),
}


# From scratch, MobileNetV3 needs a larger step than the ResNets on the demo's few images.
LEARNING_RATES = {"mobilenet-v3-large": "0.01"}


def segmentation_settings(epochs: int, algorithm: str, backbone: str) -> dict[str, str]:
    """The demo's hyperparameters for ``algorithm`` on ``backbone``."""
    return {
        **DEMO_HYPERPARAMETERS,
        "algorithm": algorithm,
        "backbone": backbone,
        "learning_rate": LEARNING_RATES.get(backbone, DEMO_HYPERPARAMETERS["learning_rate"]),
        "epochs": str(epochs),
    }


def _run_logged(command: list[str], env: dict, log_file: Path) -> int:
    with open(log_file, "w") as log:
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in process.stdout:
            sys.stdout.write(line)
            log.write(line)
        return process.wait()


def _post(port: int, body: bytes, accept: str) -> bytes:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=body,
        headers={"Content-Type": "image/jpeg", "Accept": accept},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.read()


def _ask_segmentation(base: Path, folder: Path) -> Callable[[int], tuple[str, list[str]]]:
    """One validation image to /invocations for a PNG mask and for probabilities."""

    def ask(port: int) -> tuple[str, list[str]]:
        image = sorted((base / "input" / "data" / "validation").iterdir())[0]
        body = image.read_bytes()
        (folder / "prediction.png").write_bytes(_post(port, body, "image/png"))
        record = _post(port, body, "application/x-recordio-protobuf")
        (folder / "prediction.recordio-protobuf").write_bytes(record)
        shape = decode_recordio_protobuf(record).shape
        return image.name, [
            f"  PNG mask (image/png):                  {folder / 'prediction.png'}",
            f"  probabilities {shape} (recordio-protobuf): "
            f"{folder / 'prediction.recordio-protobuf'}",
        ]

    return ask


def _ask_classification(base: Path, folder: Path) -> Callable[[int], tuple[str, list[str]]]:
    """One validation image to /invocations for its label and probabilities."""

    def ask(port: int) -> tuple[str, list[str]]:
        image = demo_classification.first_validation_image(base / "input" / "data")
        answer = _post(port, image.read_bytes(), demo_classification.ACCEPT)
        return image.name, demo_classification.describe_answer(answer, folder)

    return ask


def _serve_and_predict(env: dict, folder: Path, ask: Callable[[int], tuple[str, list[str]]]) -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log_file = folder / "serve.log"
    with open(log_file, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "segcontainer.cli", "serve"],
            env={**env, "SAGEMAKER_BIND_TO_PORT": str(port)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and server.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                        break
                except (urllib.error.URLError, OSError):
                    time.sleep(0.5)
            else:
                print(f"serve did not become ready; see {log_file}")
                return 1
            image_name, lines = ask(port)
        finally:
            server.terminate()
            server.wait(timeout=60)
    print(f"\nserved the model on port {port} and sent {image_name} to /invocations:")
    print("\n".join(lines))
    print(f"  server log:                            {log_file}")
    return 0


def run_demo(
    folder: Path,
    epochs: int,
    task: str = SEGMENTATION,
    algorithm: str = "fcn",
    backbone: str = "resnet-50",
) -> int:
    """Generate ``task``'s demo data, train on it, serve the model and ask it once
    (segmentation: ``algorithm`` on ``backbone``)."""
    folder = folder.resolve()
    base = folder / "opt_ml"
    if base.exists():
        shutil.rmtree(base)
    if TASKS.get(task, task) == CLASSIFICATION:
        demo_classification.make_dataset(base / "input" / "data")
        values = demo_classification.hyperparameters(48, epochs)
        write_local_mode_config(base, values, channels=demo_classification.CHANNELS)
        ask = _ask_classification(base, folder)
    else:
        make_dataset(base / "input" / "data")
        write_local_mode_config(base, segmentation_settings(epochs, algorithm, backbone))
        ask = _ask_segmentation(base, folder)
    print(f"demo dataset and SageMaker config files written under {base}", flush=True)
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "PYTHONUNBUFFERED": "1"}
    env.pop("TRAINING_JOB_NAME", None)
    code = _run_logged(
        [sys.executable, "-m", "segcontainer.cli", "train"], env, folder / "train.log"
    )
    print(f"\ntrain exited with {code}.")
    print(f"  model folder (SageMaker packs it): {base / 'model'}")
    print(f"  model.tar.gz to deploy:            {base / 'output' / 'model.tar.gz'}")
    print(f"  training curves:                   {base / 'output' / 'data'}")
    print(f"  log:                               {folder / 'train.log'}")
    if code:
        print(f"  failure reason:                    {base / 'output' / 'failure'}")
        return code
    return _serve_and_predict(env, folder, ask)
