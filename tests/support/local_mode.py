"""A container root laid out as SageMaker's local mode lays it out, and the `train` executable
run in it: the settings, config writer and environment the tests' jobs share."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from segcontainer.tools.demo_data import write_local_mode_config

REPO = Path(__file__).resolve().parents[2]
SAGEMAKER_JOB = "segcontainer-test-job"

# Small, fast settings for a from-scratch model on the CPU.
FAST_HYPERPARAMETERS = {
    "backbone": "resnet-50",
    "algorithm": "fcn",
    "use_pretrained_model": "False",
    "num_classes": "3",
    "epochs": "1",
    "base_size": "48",
    "crop_size": "32",
    "mini_batch_size": "4",
    "validation_mini_batch_size": "4",
    "workers": "0",
    "export": "none",  # exports cost ~1 min on 2 cores: only tests/export/ makes them
}


def write_config(base: Path, **overrides: str) -> None:
    """FAST_HYPERPARAMETERS with ``overrides`` as local mode writes them, host algo-1-x7k2q."""
    write_local_mode_config(base, {**FAST_HYPERPARAMETERS, **overrides}, host="algo-1-x7k2q")


def train_command() -> list[str]:
    """The repository's `train` executable (its shebang finds python3 on PATH, see below)."""
    return [str(REPO / "train")]


def subprocess_env(base: Path, docker_run: bool = False, **extra: str) -> dict[str, str]:
    """The environment SageMaker's local mode gives `train` (TRAINING_JOB_NAME set), or with
    ``docker_run`` a plain `docker run` (no job name: train also writes model.tar.gz)."""
    env = {k: v for k, v in os.environ.items() if k != "TRAINING_JOB_NAME"}
    env.update(SAGEMAKER_BASE_DIR=str(base), PYTHONUNBUFFERED="1", **extra)
    if not docker_run:
        env.setdefault("TRAINING_JOB_NAME", SAGEMAKER_JOB)
    # The executables' `#!/usr/bin/env python3` must find this environment's interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env
