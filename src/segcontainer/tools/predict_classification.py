"""``segcontainer predict`` with an image classification model: per image the class
probabilities and the predicted label, as the endpoint's ``application/json;verbose`` answer
gives them (tasks.classification.answers, through the same Predictor), gathered in one file:

    OUT/predictions.json = {"model": ..., "labels": [class names], "multi_label": false,
        "predictions": [{"file": "a.jpg", "probabilities": [...], "predicted_label": "dog",
                         "predicted_class": 1}, ...],
        "skipped": [{"file": "b.jpg", "reason": "..."}]}

A multi-label model's entries also hold ``predicted_labels``: every class whose probability is
0.5 or more. An existing OUT/predictions.json is never overwritten.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from segcontainer.data.channels import load_image
from segcontainer.engines import EngineRequest
from segcontainer.errors import UserError
from segcontainer.prediction import PredictionSettings
from segcontainer.tasks.classification.answers import verbose_json
from segcontainer.tasks.classification.prediction import Predictor

PREDICTIONS_FILE = "predictions.json"
THRESHOLD = 0.5  # a multi-label class is predicted at this probability or above


def predict_classes(model: Path, model_dir: Path, files: list[Path], outputs: Path) -> int:
    """Write OUT/predictions.json for ``files``; return how many could not be read."""
    target = outputs / PREDICTIONS_FILE
    if target.exists():
        raise UserError(
            f"{target} already exists and this run would overwrite it. Write to a new output "
            "folder, or move that file away."
        )
    settings = PredictionSettings.from_env(request=EngineRequest(model=str(model)))
    predictor = Predictor.open(model_dir, settings)
    predictions, skipped = [], []
    for file in tqdm(files, desc="predict", unit="image"):
        try:
            image = load_image(file)
        except Exception as exc:  # keep going: one bad file must not lose the others
            tqdm.write(f"skipped {file.name}: {exc}")
            skipped.append({"file": file.name, "reason": str(exc)})
            continue
        answer = json.loads(verbose_json(predictor, image))  # the endpoint's own answer
        entry = {
            "file": file.name,
            "probabilities": answer["probabilities"],
            "predicted_label": answer["predicted_label"],
            "predicted_class": answer["labels"].index(answer["predicted_label"]),
        }
        if predictor.multi_label:
            entry["predicted_labels"] = [
                name
                for name, p in zip(answer["labels"], answer["probabilities"], strict=True)
                if p >= THRESHOLD
            ]
        predictions.append(entry)
    result = {
        "model": str(model),
        "labels": list(predictor.class_names),
        "multi_label": predictor.multi_label,
        "predictions": predictions,
        "skipped": skipped,
    }
    outputs.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2) + "\n")
    return len(skipped)
