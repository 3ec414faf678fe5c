"""The README's training settings run end to end in a File-mode job (in-process, on the tiny
test encoder: what is tested is what the settings do to a run, not ResNet-50's arithmetic):
early_stopping=True ends a run early, class_weights=auto weights the loss by median frequency of
the training masks (and is refused in Pipe mode), and a num_training_samples that differs from
the channel's count is warned about, the count winning."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segcontainer.data.recordio import frame
from segcontainer.metrics import Scores
from segcontainer.tasks import TASKS
from segcontainer.tasks.segmentation import SEGMENTATION, loss, validation
from segcontainer.training import checkpoints
from segcontainer.training.entry import main
from tests.support.local_mode import write_config


def metric_epochs(out: str) -> list[int]:
    return [int(e) for e in re.findall(r"epoch=(\d+), validation mIOU", out)]


def test_early_stopping_true_ends_the_run_after_patience_stale_epochs(
    base_dir: Path, small_dataset, tiny, monkeypatch, capsys
) -> None:
    """epochs=6, min 2, patience 1: validation mIoUs 0.5 then 0.4 (scripted, so the stop is
    certain) stop the job after its second epoch, exit 0, the best epoch's model kept, and the
    last checkpoint records the job as finished (a spot restart trains nothing more)."""
    write_config(
        base_dir,
        **tiny,
        epochs="6",
        early_stopping="True",
        early_stopping_min_epochs="2",
        early_stopping_patience="1",
    )
    scripted = iter([0.5, 0.4, 0.45, 0.6, 0.7, 0.8])
    real_evaluate = validation.evaluate

    def evaluate(*args, **kwargs):
        real = real_evaluate(*args, **kwargs)
        return Scores(next(scripted), real.pixel_accuracy, real.per_class_iou)

    # the job validates through its task: the registry hands it this task
    scripted_task = dataclasses.replace(SEGMENTATION, validate=evaluate)
    monkeypatch.setitem(TASKS, SEGMENTATION.name, scripted_task)
    assert main() == 0
    out = capsys.readouterr().out
    assert metric_epochs(out) == [0, 1]
    assert "early stopping after epoch 1" in out
    info = json.loads((base_dir / "model" / "model_info.json").read_text())
    assert info["best_epoch"] == 0 and info["validation_mIOU"] == 0.5
    assert (base_dir / "output" / "success").exists()
    assert checkpoints.listed(base_dir / "checkpoints")[0].name == "checkpoint-e0006-i000000.pt"


def training_class_counts(data: Path, num_classes: int) -> np.ndarray:
    """Labelled pixels per class over the train masks, counted from the files."""
    counts = np.zeros(256, dtype=np.int64)
    for mask in sorted((data / "train_annotation").glob("*.png")):
        counts += np.bincount(np.asarray(Image.open(mask)).ravel(), minlength=256)
    return counts[:num_classes]


@pytest.fixture
def weights_per_step(monkeypatch) -> list[torch.Tensor | None]:
    """The class weight of every training loss computed from here on (one per step)."""
    seen: list[torch.Tensor | None] = []
    real_loss = loss.segmentation_loss

    def spy(logits, target, weight, *args, **kwargs):
        seen.append(weight)
        return real_loss(logits, target, weight, *args, **kwargs)

    monkeypatch.setattr(loss, "segmentation_loss", spy)
    return seen


def test_class_weights_auto_and_a_differing_num_training_samples_in_file_mode(
    base_dir: Path, small_dataset: Path, tiny, weights_per_step, capsys
) -> None:
    """class_weights=auto: every step's loss gets median(freq) / freq of the training masks'
    classes. num_training_samples=4 but 8 pairs in the channel: a warning, and the epoch trains
    on the 8 (two batches of 4, not one), the schedule sized for them. One job for both (the
    fast suite's budget)."""
    write_config(base_dir, **tiny, class_weights="auto", num_training_samples="4")
    assert main() == 0
    out = capsys.readouterr().out
    warning = "num_training_samples is 4 but the train channel holds 8 image/mask pairs; using 8"
    assert warning in out
    assert "the schedule assumed" not in out
    pixels = training_class_counts(small_dataset, 3)
    assert pixels.min() > 0  # every class present: no weight falls back to 1
    frequency = pixels / pixels.sum()
    expected = np.median(frequency) / frequency
    assert len(set(np.round(expected, 6))) == 3  # three different weights, the median's 1
    assert len(weights_per_step) == 2
    for weight in weights_per_step:
        assert weight is not None
        np.testing.assert_allclose(weight.cpu().numpy(), expected, rtol=1e-5)


def test_class_weights_auto_is_refused_in_pipe_mode(base_dir: Path, small_dataset, tiny) -> None:
    write_config(base_dir, **tiny, class_weights="auto", num_training_samples="8")
    config = base_dir / "input" / "config" / "inputdataconfig.json"
    channels = json.loads(config.read_text())
    for channel in channels.values():
        channel.update(TrainingInputMode="Pipe", RecordWrapperType="RecordIO")
    config.write_text(json.dumps(channels))
    for split in ("train", "validation"):  # each channel's first stream, as files
        images = sorted((small_dataset / split).glob("*.jpg"))
        masks = sorted((small_dataset / f"{split}_annotation").glob("*.png"))
        for channel, files in ((split, images), (f"{split}_annotation", masks)):
            stream = b"".join(frame(file.read_bytes()) for file in files)
            (small_dataset / f"{channel}_0").write_bytes(stream)
    assert main() == 1
    reason = (base_dir / "output" / "failure").read_text().split("\n\n")[0]
    assert "class_weights=auto" in reason and "Pipe mode" in reason
    assert "give one weight per class instead" in reason
    assert not (base_dir / "checkpoints").exists()
