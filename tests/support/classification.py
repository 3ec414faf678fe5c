"""Classification model folders for the tools' tests, without training: a tiny CIFAR ResNet-20
written by model_folder.save_model as training writes it (hyperparams.json with the task,
model_info.json with the class names). ``logits`` makes the model answer the same logits for
every image (its classifier's weights zero, its bias those logits), so a test knows the right
probabilities, and every number made of them, without running the model.

Only this module calls save_model for classification in tests: when save_model's ``scores``
argument changes, ``_scores`` is the one place to follow it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from segcontainer import model_folder
from segcontainer.tasks.classification.hyperparameters import resolve
from segcontainer.tasks.classification.model import build_network

TASK = "image-classification"


def _scores(num_classes: int):
    """Validation scores as save_model takes them: the task-free ValidationScores where the
    epoch loop keeps them (accuracy first, as classification's validation reports), else
    segmentation's Scores of the base this was written on."""
    try:
        from segcontainer.metrics import ValidationScores
    except ImportError:
        from segcontainer.metrics import Scores

        return Scores(miou=0.0, pixel_accuracy=0.0, per_class_iou=(None,) * num_classes)
    return ValidationScores((("accuracy", 0.0),), (None,) * num_classes, "accuracy")


def classification_record(num_classes: int, size: int = 16, **hyperparameters: str) -> dict:
    """hyperparams.json of a ResNet-20 at ``size`` px, as training writes it."""
    config = resolve(
        {
            "num_classes": str(num_classes),
            "num_training_samples": "8",
            "mini_batch_size": "4",
            "num_layers": "20",
            "image_shape": f"3,{size},{size}",
            **hyperparameters,
        }
    )
    return {**config.as_dict(), "task": TASK}


def save_classification_model(
    model_dir: Path,
    class_names: tuple[str, ...],
    *,
    size: int = 16,
    logits: tuple[float, ...] | None = None,
    seed: int = 0,
    **hyperparameters: str,
) -> Path:
    """A classification model folder; ``logits``: what it answers for every image."""
    record = classification_record(len(class_names), size, **hyperparameters)
    torch.manual_seed(seed)
    model = build_network(20, len(class_names), False).eval()
    if logits is not None:
        with torch.no_grad():
            model.fc.weight.zero_()
            model.fc.bias.copy_(torch.tensor(logits))
    model_dir.mkdir(parents=True, exist_ok=True)
    model_folder.save_model(model_dir, model, record, 0, _scores(len(class_names)), class_names)
    return model_dir


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "classification"
FIXTURE_NAMES = ("cat", "dog", "emu")  # the MXNet-written fixtures' classes, by id


def fixture_layout(root: Path, form: str = "lst", labels: str = "single") -> Path:
    """The MXNet-written fixtures (8-px JPEGs, one colour per class) as both splits of a layout
    root: ``form`` "lst" (images + ``<split>_lst/<labels>.lst``) or "rec"
    (``<split>/<labels>.rec``); ``labels`` "single" or "multi". Returns root."""
    for split in ("train", "validation"):
        if form == "rec":
            (root / split).mkdir(parents=True)
            shutil.copy(FIXTURES / f"{labels}.rec", root / split / f"{labels}.rec")
        else:
            shutil.copytree(FIXTURES / "images", root / split)
            (root / f"{split}_lst").mkdir(parents=True)
            shutil.copy(FIXTURES / f"{labels}.lst", root / f"{split}_lst" / f"{labels}.lst")
    return root
