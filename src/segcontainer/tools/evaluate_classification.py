"""``segcontainer evaluate`` for an image classification model: each labelled image predicted
through tasks.classification.prediction.Predictor, as the endpoint predicts it (the evaluation
transform training's validation uses), then scored.

Single-label: accuracy (top-1), top-k accuracy (k from --top-k, else the model's top_k), per
class precision and recall, and the confusion matrix (rows: true class, columns: predicted).
Multi-label: a class is predicted when its probability is at least 0.5; accuracy is the share
of right image-class decisions (training's validation:accuracy), exact-match accuracy the
share of images with every class right; per class precision and recall. The images are
ranked by the probability the model gives their truth (single-label: the true class's
probability; multi-label: the lowest over the classes of the probability of the right
decision), lowest first.

OUT receives metrics.json, confusion_matrix.png (single-label), images/ (the worst images, small)
and report.html (report_classification).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segcontainer.engines import EngineRequest
from segcontainer.errors import UserError
from segcontainer.prediction import PredictionSettings
from segcontainer.tasks.classification.prediction import Predictor
from segcontainer.tools import report, report_classification
from segcontainer.tools.classification_data import Item, split_items

THRESHOLD = 0.5  # a multi-label class is predicted at this probability or above
TRAINING_ENGINE = "torch"


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator else None


def per_class(truth: np.ndarray, predicted: np.ndarray, names: list[str]) -> list[dict]:
    """Precision and recall of each class from (N, C) 0/1 truth and prediction."""
    hits = (truth & predicted).sum(0)
    return [
        {
            "id": index,
            "name": name,
            "precision": _ratio(hits[index], predicted[:, index].sum()),
            "recall": _ratio(hits[index], truth[:, index].sum()),
            "true_images": int(truth[:, index].sum()),
            "predicted_images": int(predicted[:, index].sum()),
        }
        for index, name in enumerate(names)
    ]


def single_label_scores(
    probabilities: np.ndarray, truth: np.ndarray, names: list[str], top_k: int | None
) -> dict:
    """Accuracy, top-k accuracy, per-class precision/recall and the confusion matrix; ``truth``
    holds the class ids (N,)."""
    count, classes = probabilities.shape
    predicted = probabilities.argmax(1)
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    one_hot = np.eye(classes, dtype=bool)
    scores = {
        "accuracy": float((predicted == truth).mean()),
        "per_class": per_class(one_hot[truth], one_hot[predicted], names),
        "confusion_matrix": {
            "rows": "true class",
            "columns": "predicted class",
            "class_names": names,
            "matrix": matrix.tolist(),
        },
        "truth_probability": probabilities[np.arange(count), truth],
        "predicted": [[int(p)] for p in predicted],
    }
    if top_k is not None:
        best = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
        scores["top_k"] = {"k": top_k, "accuracy": float((best == truth[:, None]).any(1).mean())}
    return scores


def multi_label_scores(probabilities: np.ndarray, truth: np.ndarray, names: list[str]) -> dict:
    """Accuracy (right decisions, as training's), exact-match accuracy and per-class
    precision/recall; ``truth`` (N, C) 0/1."""
    truth = truth.astype(bool)
    predicted = probabilities >= THRESHOLD
    right = np.where(truth, probabilities, 1 - probabilities)
    return {
        "threshold": THRESHOLD,
        "accuracy": float((predicted == truth).mean()),
        "exact_match_accuracy": float((predicted == truth).all(1).mean()),
        "per_class": per_class(truth, predicted, names),
        "truth_probability": right.min(1),
        "predicted": [np.flatnonzero(row).tolist() for row in predicted],
    }


def engine_note(engine: str, chosen: str) -> str:
    how = "auto, what serve runs on this host" if chosen == "auto" else f"--engine {chosen}"
    if engine == TRAINING_ENGINE:
        return (
            f"Numbers from engine {engine} ({how}): the model runs as training's validation runs "
            "it, so on the model's own validation images accuracy is validation:accuracy."
        )
    return (
        f"Numbers from engine {engine} ({how}): they can differ slightly from training's "
        "validation:accuracy; --engine torch runs the model as training's validation does."
    )


@dataclass(frozen=True)
class ClassEvaluation:
    out: Path
    metrics: dict

    def lines(self) -> list[str]:
        m = self.metrics
        out = [
            f"evaluated {m['model']} on {m['images']} images of {m['data']} ({m['engine']}):",
            f"  {m['engine_note']}",
            f"  accuracy {m['accuracy']:.4f}"
            + (f", exact match {m['exact_match_accuracy']:.4f}" if m["multi_label"] else ""),
        ]
        if m.get("top_k"):
            out.append(f"  top-{m['top_k']['k']} accuracy {m['top_k']['accuracy']:.4f}")
        out.append("  per class: precision / recall (true images)")
        for c in m["per_class"]:
            values = " / ".join(
                "-" if c[k] is None else f"{c[k]:.4f}" for k in ("precision", "recall")
            )
            out.append(f"    {c['id']:3d} {c['name']:<20} {values} ({c['true_images']})")
        if m["per_image"]:
            worst = m["per_image"][0]
            out.append(
                f"  worst image: {worst['name']} "
                f"(truth probability {worst['truth_probability']:.4f})"
            )
        out.append(f"report: {self.out / 'report.html'} (metrics.json beside it)")
        return out


def _top_k(option: int | None, record: dict, classes: int) -> int | None:
    k = option if option is not None else record.get("top_k")
    if k is not None and not 1 <= k <= classes:
        raise UserError(f"--top-k {k} must be between 1 and num_classes ({classes}).")
    return k


def evaluate_classification(
    model: Path,
    model_dir: Path,
    data: Path,
    out: Path,
    engine: str = "auto",
    top_k: int | None = None,
) -> ClassEvaluation:
    """Score the classification model in model_dir (``model``: as the user named it)."""
    request = EngineRequest(asked_as="--engine {}", model=str(model))
    predictor = Predictor.open(
        model_dir, PredictionSettings.from_env(engine=engine, request=request)
    )
    names, classes = list(predictor.class_names), predictor.num_classes
    k = None if predictor.multi_label else _top_k(top_k, predictor.record, classes)
    source, items = split_items(data, classes, predictor.multi_label)
    if not items:
        raise UserError(f"{source} holds no labelled images to evaluate.")
    probabilities = np.stack(
        [
            predictor.probabilities(item.load())
            for item in tqdm(items, desc="evaluate", unit="image")
        ]
    ).astype(np.float64)
    if predictor.multi_label:
        truth = np.zeros((len(items), classes), dtype=bool)
        for row, item in enumerate(items):
            truth[row, list(item.classes)] = True
        scores = multi_label_scores(probabilities, truth, names)
    else:
        scores = single_label_scores(
            probabilities, np.array([i.classes[0] for i in items]), names, k
        )
    per_image = _per_image(
        items, probabilities, scores.pop("truth_probability"), scores.pop("predicted"), names
    )
    metrics = {
        "model": str(model),
        "data": source,
        "task": "image-classification",
        "multi_label": predictor.multi_label,
        "engine": predictor.engine.name,
        "engine_note": engine_note(predictor.engine.name, engine),
        "images": len(items),
        **scores,
        "per_image_order": "probability of the truth, lowest first; ties by name",
        "per_image": per_image,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if "confusion_matrix" in metrics:
        matrix = np.array(metrics["confusion_matrix"]["matrix"])
        report.confusion_plot(matrix, names, out / report.PLOT_FILE, unit="images")
    by_name = {item.name: item for item in items}
    report_classification.write_html(out, metrics, lambda name: by_name[name].load())
    return ClassEvaluation(out, metrics)


def _per_image(
    items: list[Item], probabilities: np.ndarray, truth_probability, predicted, names: list[str]
) -> list[dict]:
    rows = [
        {
            "name": item.name,
            "truth": [names[c] for c in item.classes],
            "predicted": [names[c] for c in predicted[row]],
            "truth_probability": float(truth_probability[row]),
            "probabilities": [round(float(p), 6) for p in probabilities[row]],
        }
        for row, item in enumerate(items)
    ]
    return sorted(rows, key=lambda r: (r["truth_probability"], r["name"]))
