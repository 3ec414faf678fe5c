"""How an image classification model answers for one image: the endpoint and the tools predict
through ``Predictor``, with the evaluation transform training's validation uses (transforms.py),
so the endpoint reproduces the validation accuracy. Probabilities: softmax over the classes, or
a per-class sigmoid for a multi-label model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segcontainer.engines import Engine
from segcontainer.prediction import PredictionSettings, open_model
from segcontainer.tasks.classification.model import rebuild
from segcontainer.tasks.classification.transforms import eval_transform


class Predictor:
    """One model's class probabilities for one RGB image, on any ``engines.Engine``."""

    def __init__(
        self, engine: Engine, record: dict, class_names: list[str], asked_tta: str = "none"
    ):
        self.engine, self.device = engine, engine.device
        # SEGCONTAINER_TTA is segmentation's: a classification model answers without it.
        self.augmentation = "none" + (
            "" if asked_tta == "none" else f" (image classification ignores {asked_tta})"
        )
        self.record = record  # hyperparams.json
        self.num_classes: int = record["num_classes"]
        self.multi_label = bool(record["multi_label"])
        self.shape = tuple(record["image_shape"])
        self.transform = eval_transform(self.shape, record["resize"])
        self.class_names = class_names

    @classmethod
    def open(cls, model_dir: Path, settings: PredictionSettings | None = None) -> Predictor:
        """The predictor for a model folder (``model_tarball.opened`` for a tarball too)."""
        settings = settings or PredictionSettings()
        opened = open_model(model_dir, settings, rebuild)
        return cls(opened.engine, opened.record, opened.class_names, settings.tta.name)

    def warm_up(self) -> None:
        """One forward pass at start-up (every request's input has this one size)."""
        _, height, width = self.shape
        self.probabilities(Image.new("RGB", (width, height)))

    @torch.inference_mode()
    def probabilities(self, image: Image.Image) -> np.ndarray:
        """(num_classes,) float32: softmax, or per-class sigmoid for a multi-label model."""
        logits = self.engine(self.transform(image).unsqueeze(0))[0].float()
        scores = logits.sigmoid() if self.multi_label else logits.softmax(0)
        return scores.cpu().numpy()
