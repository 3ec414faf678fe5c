"""Shared by the training benchmarks: run the real `train` executable on a data set laid out
as SageMaker channels, the way SageMaker's local mode does, and read what it logged.

The data is linked, never copied (CamVid stays in ../shared/data/camvid). ``repeat_to``
makes a training channel of N images by linking frames more than once under new names, for
the seed workload's 676 images.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "data" / "camvid"
CHANNELS = ("train", "train_annotation", "validation", "validation_annotation")
EPOCH_LINE = re.compile(r"epoch (\d+): ([\d.]+) s, ([\d.]+) img/s")
MIOU_LINE = re.compile(r"epoch=(\d+), validation mIOU <score>=(\S+)")


def lay_out(data: Path, base: Path, repeat_to: int | None = None) -> Path:
    """An /opt/ml tree under ``base`` whose channels link to ``data``'s files."""
    for channel in CHANNELS:
        target = base / "input" / "data" / channel
        target.mkdir(parents=True, exist_ok=True)
        files = sorted(p for p in (data / channel).iterdir() if p.is_file())
        count = repeat_to if repeat_to and channel.startswith("train") else len(files)
        for i in range(count):
            source = files[i % len(files)]
            copy = i // len(files)
            name = source.name if copy == 0 else f"{source.stem}_r{copy}{source.suffix}"
            link = target / name
            if not link.exists():
                link.symlink_to(source.resolve())
    (base / "input" / "config").mkdir(parents=True, exist_ok=True)
    return base


@dataclass
class JobResult:
    returncode: int
    seconds: float
    log: str
    epochs: list[dict] = field(default_factory=list)  # epoch, seconds, img/s, mIoU

    @property
    def best_miou(self) -> float:
        return max((e.get("miou", 0.0) for e in self.epochs), default=0.0)


def run_train(
    base: Path,
    hyperparameters: dict,
    budget_s: float | None = None,
    env: dict | None = None,
    script: Path = REPO / "train",
) -> JobResult:
    """Run `train` on ``base``; with ``budget_s`` it gets SIGTERM when the budget is spent
    (as SageMaker's MaxRuntimeInSeconds does) and keeps the best model so far."""
    config = base / "input" / "config"
    config.joinpath("hyperparameters.json").write_text(
        json.dumps({k: str(v) for k, v in hyperparameters.items()})
    )
    config.joinpath("resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]})
    )
    environment = {
        **os.environ,
        "SAGEMAKER_BASE_DIR": str(base),
        "TRAINING_JOB_NAME": "benchmark",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    start = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, str(script)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    deadline = start + budget_s if budget_s else None
    stopped = False
    # BENCHMARK_LOG_FILE: every job's log appended there as it runs (for a run that is cut off).
    copy = (
        open(os.environ["BENCHMARK_LOG_FILE"], "a")
        if os.environ.get("BENCHMARK_LOG_FILE")
        else None
    )  # noqa: SIM115
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if copy:
            copy.write(line)
            copy.flush()
        if deadline and not stopped and time.monotonic() > deadline:
            process.send_signal(signal.SIGTERM)
            stopped = True
    process.wait()
    if copy:
        copy.close()
    log = "".join(lines)
    return JobResult(process.returncode, time.monotonic() - start, log, parse_epochs(log))


def parse_epochs(log: str) -> list[dict]:
    epochs: dict[int, dict] = {}
    for match in EPOCH_LINE.finditer(log):
        epochs.setdefault(int(match[1]), {})
        epochs[int(match[1])].update(seconds=float(match[2]), images_per_second=float(match[3]))
    for match in MIOU_LINE.finditer(log):
        epochs.setdefault(int(match[1]), {})["miou"] = float(match[2])
    return [{"epoch": k, **v} for k, v in sorted(epochs.items())]


def device_line() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"CPU ({os.cpu_count()} cores), torch {torch.__version__}"


def log_lines(log: str, *needles: str) -> list[str]:
    return [line for line in log.splitlines() if any(n in line for n in needles)]
