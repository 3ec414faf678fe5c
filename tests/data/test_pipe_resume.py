"""Pipe mode across a spot restart: the resumed job replays the interrupted epoch's stream up to
where it stopped, so it ends with the weights of a job that ran straight through, bit for bit
(in-process, on the tiny test encoder; streams as files, each holding the same dataset, as
SageMaker streams the channel's objects again for every epoch and for a new instance)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from segcontainer.data.recordio import frame
from segcontainer.tools.demo_data import make_dataset
from segcontainer.training import checkpoints
from segcontainer.training.entry import StopSignal, main
from tests.support.local_mode import SAGEMAKER_JOB, write_config
from tests.training.test_checkpoints import sigterm_before_batch

CHANNELS = ("train", "train_annotation", "validation", "validation_annotation")
PIPE = {"TrainingInputMode": "Pipe", "RecordWrapperType": "RecordIO"}


def pipe_job(base: Path, backbone: str) -> None:
    """A one-epoch Pipe-mode job: four plain channels, 8 training pairs (batches of 4)."""
    data = base / "input" / "data"
    make_dataset(data, train=8, validation=4, size=(48, 40))
    write_config(base, backbone=backbone, num_training_samples="8", seed="3")
    (base / "input" / "config" / "inputdataconfig.json").write_text(
        json.dumps({name: PIPE for name in CHANNELS})
    )
    for channel in CHANNELS:
        files = sorted(p for p in (data / channel).iterdir() if p.is_file())
        stream = b"".join(frame(file.read_bytes()) for file in files)
        (data / f"{channel}_0").write_bytes(stream)


def run(monkeypatch: pytest.MonkeyPatch, base: Path, code: int) -> None:
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(base))
    monkeypatch.setenv("TRAINING_JOB_NAME", SAGEMAKER_JOB)
    assert main() == code


def last_weights(base: Path) -> dict[str, torch.Tensor]:
    newest = checkpoints.listed(base / "checkpoints")[0]
    assert newest.name == "checkpoint-e0001-i000000.pt"
    return torch.load(newest, weights_only=True)["model"]


def test_pipe_mode_resume_replays_the_interrupted_epochs_stream(
    tmp_path: Path, monkeypatch, capsys, tiny
) -> None:
    straight = tmp_path / "straight" / "algo-1-aaaaa"
    pipe_job(straight, **tiny)
    run(monkeypatch, straight, 0)

    interrupted = tmp_path / "interrupted" / "algo-1-bbbbb"
    pipe_job(interrupted, **tiny)
    sigterm_before_batch(monkeypatch, interrupted, batch=1)  # after one of the two batches
    run(monkeypatch, interrupted, 143)
    assert checkpoints.listed(interrupted / "checkpoints")[0].name == "checkpoint-e0000-i000001.pt"
    capsys.readouterr()

    # A new instance: its FIFOs start again at train_0, model/ and output/ are empty.
    monkeypatch.setattr(StopSignal, "__call__", lambda self: self.requested)
    shutil.rmtree(interrupted / "output")
    run(monkeypatch, interrupted, 0)
    out = capsys.readouterr().out
    assert "resuming from checkpoint-e0000-i000001.pt: epoch 0, 1 batches done" in out
    assert "streamed" not in out  # the whole stream was read, its first half not trained on

    expected, actual = last_weights(straight), last_weights(interrupted)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
