"""Image classification model folders for tests, made without a training job: a CIFAR ResNet-20
(tasks.classification.model) saved as train writes model/, and a quick fit on images whose
class is their colour, so that a test can ask whether answers agree on a model that learned.

``register_classification(monkeypatch)`` puts the classification task in the registry for one
test while it is not registered by the product (issue 30: the lead registers it); once it is,
the registered value is used and nothing is patched.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from segcontainer import model_folder, tasks
from segcontainer.metrics import Scores
from segcontainer.tasks.classification import answers, export_check, model
from segcontainer.tasks.classification.hyperparameters import resolve
from segcontainer.tasks.classification.prediction import Predictor
from segcontainer.tasks.classification.transforms import eval_transform

NAME = "image-classification"
# class id -> its colour (RGB): the fixtures' order too (tests/fixtures/classification: cat is
# red, dog green, emu blue, class ids in that order)
COLOURS = ((220, 30, 30), (30, 200, 40), (40, 50, 220))


def register_classification(monkeypatch: pytest.MonkeyPatch) -> tasks.Task:
    """The classification task as the registry holds it; registered for this test only when the
    product does not register it yet: segmentation's value with classification's model, predictor,
    answers and exports (the fields that reading, serving and exporting a model use)."""
    if NAME in tasks.TASKS:
        return tasks.TASKS[NAME]
    task = dataclasses.replace(
        tasks.DEFAULT_TASK,
        name=NAME,
        rebuild_model=model.rebuild,
        open_predictor=Predictor.open,
        answers=answers.ANSWERS,
        default_accept=answers.JSON,
        export_data=export_check.from_training,
        export_calibration=export_check.from_calibration,
        export_check=export_check.check,
    )
    monkeypatch.setitem(tasks.TASKS, NAME, task)
    return task


def config(num_classes: int = 3, side: int = 32, **given: str):
    """A ResNet-20 ClassificationConfig at ``side`` pixels."""
    values = {
        "num_classes": str(num_classes),
        "num_training_samples": "8",
        "mini_batch_size": "4",
        "num_layers": "20",
        "image_shape": f"3,{side},{side}",
        **given,
    }
    return resolve(values)


def save_classifier(folder: Path, network: nn.Module, resolved) -> Path:
    """``network`` saved as train writes a classification model/ (the one place that calls
    save_model for classification tests)."""
    record = {**resolved.as_dict(), "task": NAME}
    record = {k: list(v) if isinstance(v, tuple) else v for k, v in record.items()}
    scores = Scores(0.5, 0.5, (0.5,) * resolved.num_classes)
    model_folder.save_model(folder, network, record, 0, scores, ())
    return folder


def colour_image(label: int, seed: int, size: tuple[int, int] = (40, 36)) -> Image.Image:
    """An image of class ``label``: its colour with noise (a different one per ``seed``)."""
    rng = np.random.default_rng(seed)
    pixels = np.array(COLOURS[label], np.float32) + rng.normal(0, 25, (size[1], size[0], 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def write_list_channels(root: Path, split: str, count: int, seed: int) -> Path:
    """``count`` colour images in ``root/split/`` listed by ``root/split_lst/split.lst``, as
    im2rec.py --list writes it (index, class id, relative path); classes in turn."""
    (root / split).mkdir(parents=True)
    (root / f"{split}_lst").mkdir()
    lines = []
    for index in range(count):
        label = index % len(COLOURS)
        colour_image(label, seed + index).save(root / split / f"{index}.png")
        lines.append(f"{index}\t{label}\t{index}.png")
    (root / f"{split}_lst" / f"{split}.lst").write_text("\n".join(lines) + "\n")
    return root


def learned_resnet20(side: int = 32, steps: int = 30) -> nn.Module:
    """A 3-class ResNet-20 fitted to tell the colours apart (a few seconds on the CPU): its
    answers have margins, as a trained model's do."""
    torch.manual_seed(0)
    network = model.build_network(20, len(COLOURS), False)
    transform = eval_transform((3, side, side), None)
    images = torch.stack([transform(colour_image(i % 3, 1000 + i)) for i in range(24)])
    labels = torch.tensor([i % 3 for i in range(24)])
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    network.train()
    threads = torch.get_num_threads()
    # One thread: on a busy 2-core machine more threads make this 10x slower, not faster.
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            optimizer.zero_grad()
            nn.functional.cross_entropy(network(images), labels).backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return network.eval()
