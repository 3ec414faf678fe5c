"""The learnable end-to-end job (`train` as SageMaker's local mode runs it, on a synthetic
task a from-scratch ResNet-50 learns in 4 epochs) and what its tests read from it."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

from segcontainer.config.hyperparameters import resolve
from segcontainer.data.channels import pair_samples
from segcontainer.data.label_maps import identity_lut
from segcontainer.data.loaders import build_validation_loader
from segcontainer.precision import Precision
from segcontainer.tasks.segmentation.validation import evaluate
from segcontainer.tools.demo_data import make_dataset, write_local_mode_config
from tests.support.local_mode import subprocess_env, train_command
from tests.support.readme import metric_regexes

HOST = "algo-1-x7k2q"
LEARNABLE = {
    "use_pretrained_model": "False",
    "num_classes": "3",
    "num_training_samples": "16",
    "epochs": "4",
    "base_size": "64",
    "crop_size": "48",
    "mini_batch_size": "4",
    "validation_mini_batch_size": "4",
    "optimizer": "adam",
    "learning_rate": "0.001",
}


@dataclass(frozen=True)
class Job:
    """A finished `train` run: its container root (input/, model/, output/) and its log."""

    base: Path
    stdout: str
    stderr: str

    @property
    def data(self) -> Path:
        return self.base / "input" / "data"


def run_learnable_job(
    root: Path, *, algorithm: str, backbone: str, under_sagemaker: bool, **extra: str
) -> Job:
    """`train` on 16 training and 4 validation pairs (64x48) of the demo task with LEARNABLE's
    settings plus ``extra``; asserts that it exits 0."""
    base = root / HOST
    make_dataset(base / "input" / "data", train=16, validation=4, size=(64, 48), seed=1)
    hyperparameters = {**LEARNABLE, "algorithm": algorithm, "backbone": backbone, **extra}
    write_local_mode_config(base, hyperparameters, host=HOST)
    env = subprocess_env(base, docker_run=not under_sagemaker)
    result = subprocess.run(train_command(), env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return Job(base, result.stdout, result.stderr)


def validation_miou(model: torch.nn.Module, data: Path, settings: dict = LEARNABLE) -> float:
    """One process's mIoU at the scale of the job's ``settings`` (base_size, crop_size)."""
    samples, _, _ = pair_samples(data / "validation", data / "validation_annotation")
    config = resolve(settings)
    loader = build_validation_loader(samples, identity_lut(), config)
    cpu = torch.device("cpu")
    return evaluate(model, loader, config, Precision.choose("fp32", cpu), cpu).miou


def readme_metric_regexes() -> dict[str, str]:
    """The metric_definitions exactly as the documentation gives them to segmentation's users
    (the training page; tests/docs checks the README shows the same)."""
    return metric_regexes("segmentation")


def parse_metrics(stdout: str) -> dict[str, list[tuple[int, float]]]:
    """(epoch, value) per metric, found with the README's metric_definitions regexes."""
    found: dict[str, list[tuple[int, float]]] = {}
    for name, regex in readme_metric_regexes().items():
        for line in stdout.splitlines():
            if match := re.search(regex, line):
                epoch = int(re.search(r"epoch=(\d+)", line).group(1))
                assert f"host={HOST}," in line
                found.setdefault(name, []).append((epoch, float(match.group(1))))
    return found
