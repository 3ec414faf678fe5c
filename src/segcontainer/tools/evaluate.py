"""``segcontainer evaluate``: score a trained model on labelled images as the endpoint answers.

    segcontainer evaluate model.tar.gz data/ report/

MODEL is a ``model/`` folder or a model.tar.gz. DATA is a layout root (its ``validation/``
and ``validation_annotation/`` are scored) or one channel folder whose masks are in the
``<channel>_annotation`` folder beside it (``data/train`` with ``data/train_annotation``).

Each image is predicted as the endpoint predicts it: ``data.preprocess`` resizes its long side
to the model's ``base_size`` (or ``SEGCONTAINER_INFERENCE_SIZE``) and normalises it,
``inference`` predicts it in tiles of 2 x ``crop_size`` (or ``SEGCONTAINER_TILE_SIZE``) and
upsamples the logits to the mask's size band by band, through an ``engines`` engine, with the
endpoint's test-time augmentation (``SEGCONTAINER_TTA``, or ``--tta``; the report records it).
Masks are read through the model's own validation label map, and pixels are counted by ``metrics``'
confusion matrix, as the trainer's validation counts them: on the model's validation images,
with ``--engine torch``, mIoU and per-class IoU are those of its model_info.json
(``validation:mIOU``). The default engine is the one ``serve`` runs on this host (on a CPU
host the checked int8 file, whose numbers differ slightly); the report names the engine.

The overlays mark mistakes relative to a background class: ``--background none|ID|NAME``,
by default the class whose name is "background" (any case, underscores around it, as
labelme's ``_background_``), else none (every labelled pixel is marked right or wrong).

OUT receives metrics.json, confusion_matrix.png, overlays/<image>.jpg and report.html
(``report``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from segcontainer import model_tarball
from segcontainer.data import check
from segcontainer.data.channels import FoundSamples, Sample, load_image, load_mask, pair_samples
from segcontainer.data.label_maps import label_map_lut
from segcontainer.engines import EngineRequest
from segcontainer.errors import UserError
from segcontainer.metrics import ConfusionMatrix, Scores, class_rates
from segcontainer.prediction import PredictionSettings
from segcontainer.tasks.segmentation.prediction import Predictor
from segcontainer.tools import report
from segcontainer.tools.classification_data import data_is_classification, model_is_classification
from segcontainer.tools.evaluate_classification import ClassEvaluation, evaluate_classification

OVERLAY_DIR = "overlays"


TRAINING_ENGINE = "torch"  # training's validation runs the eager PyTorch model


def engine_note(engine: str, chosen: str, tta: str = "none") -> str:
    """Which engine produced the numbers, and whether they are training's validation:mIOU."""
    how = "auto, what serve runs on this host" if chosen == "auto" else f"--engine {chosen}"
    if tta != "none":  # training validates without test-time augmentation
        return (
            f"Numbers from engine {engine} ({how}) with test-time augmentation {tta}: they "
            "differ from training's validation:mIOU, which is measured without it; --tta none "
            "--engine torch reproduces validation:mIOU on the model's own validation images."
        )
    if engine == TRAINING_ENGINE:
        return (
            f"Numbers from engine {engine} ({how}): the model runs as training's validation "
            "runs it, so on the model's own validation images mIoU and per-class IoU equal "
            "validation:mIOU and model_info.json's."
        )
    return (
        f"Numbers from engine {engine} ({how}): they can differ slightly from training's "
        "validation:mIOU; --engine torch reproduces validation:mIOU exactly on the model's "
        "own validation images."
    )


@dataclass(frozen=True)
class Background:
    """The class the overlays treat as background (id None: none), and why."""

    id: int | None
    name: str | None
    chosen_by: str


def _is_background(name: str) -> bool:
    return name.strip("_ ").lower() == "background"


def choose_background(option: str | None, names: list[str]) -> Background:
    """--background none|ID|NAME; by default the class named background, else none."""
    if option is None:
        found = [i for i, name in enumerate(names) if _is_background(name)]
        if found:
            index = found[0]
            return Background(index, names[index], "the model's class named background")
        return Background(None, None, "no class of the model is named background")
    if option.strip().lower() == "none":
        return Background(None, None, "--background none")
    if option.strip().isdigit():
        index = int(option)
        if index >= len(names):
            raise UserError(
                f"--background {option} is not a class of the model (ids 0..{len(names) - 1})."
            )
        return Background(index, names[index], f"--background {option}")
    matches = [i for i, name in enumerate(names) if name.lower() == option.strip().lower()]
    if not matches:
        raise UserError(
            f"--background {option!r} is not a class of the model: give none, an id "
            f"0..{len(names) - 1} or one of {', '.join(names)}."
        )
    return Background(matches[0], names[matches[0]], f"--background {option}")


@dataclass(frozen=True)
class Evaluation:
    """What evaluate printed about: the files written and the headline numbers."""

    out: Path
    metrics: dict

    def lines(self) -> list[str]:
        m = self.metrics
        out = [
            f"evaluated {m['model']} on {m['images']} images of {m['data']} ({m['engine']}, "
            f"test-time augmentation {m['inference']['tta']}):",
            f"  {m['engine_note']}",
            f"  mIoU {m['mIOU']:.4f}, pixel accuracy {m['pixel_accuracy']:.4f}",
            "  per class: IoU / precision / recall",
        ]
        for c in m["per_class"]:
            values = " / ".join(
                "-" if c[k] is None else f"{c[k]:.4f}" for k in ("IOU", "precision", "recall")
            )
            out.append(f"    {c['id']:3d} {c['name']:<20} {values}")
        if m["per_image"]:
            worst = m["per_image"][0]
            out.append(f"  worst image: {worst['name']} (mIoU {worst['mIOU']:.4f})")
        out.append(f"report: {self.out / 'report.html'} (metrics.json beside it)")
        return out


def channel_pair(data: Path) -> tuple[Path, Path]:
    """(images, masks) of DATA: a layout root's validation pair, or a channel and its
    ``_annotation`` sibling."""
    if (data / "input" / "data" / "validation").is_dir():  # a folder laid out like /opt/ml
        data = data / "input" / "data"
    if (data / "validation").is_dir():
        images, masks = data / "validation", data / "validation_annotation"
        if not masks.is_dir():
            raise UserError(f"{masks} is missing: the masks of {images} belong there.")
        return images, masks
    sibling = data.parent / f"{data.name}_annotation"
    if data.is_dir() and sibling.is_dir():
        return data, sibling
    raise UserError(
        f"{data} is neither a layout root with validation/ and validation_annotation/ nor a "
        f"channel folder with its masks in {sibling.name}/ beside it. Give e.g. data/ or "
        "data/validation."
    )


def _samples(images: Path, masks: Path, lut: np.ndarray, num_classes: int) -> list[Sample]:
    """The pairs, checked as training checks them (every problem named, files included)."""
    samples, lonely_images, lonely_masks = pair_samples(images, masks)
    found = FoundSamples(
        samples,
        [p.relative_to(images).as_posix() for p in lonely_images],
        [p.relative_to(masks).as_posix() for p in lonely_masks],
    )
    if not samples and not found.lonely_images and not found.lonely_masks:
        raise UserError(f"{images} and {masks} hold no image/mask pairs.")
    with tqdm(total=len(samples), desc="check", unit="pair") as bar:
        # Named after the images' channel, so messages name its _annotation folder.
        check.check_split(found, images.name, lut, num_classes, bar.update)
    return samples


def _class_table(matrix: torch.Tensor, names: list[str]) -> list[dict]:
    iou = Scores.from_matrix(matrix).per_class_iou
    rates = class_rates(matrix)
    true, predicted = matrix.sum(1).tolist(), matrix.sum(0).tolist()
    return [
        {
            "id": index,
            "name": name,
            "IOU": iou[index],
            "precision": rates["precision"][index],
            "recall": rates["recall"][index],
            "false_positive_rate": rates["false_positive_rate"][index],
            "true_pixels": int(true[index]),
            "predicted_pixels": int(predicted[index]),
        }
        for index, name in enumerate(names)
    ]


def _score_image(
    predictor: Predictor,
    sample: Sample,
    name: str,
    lut: np.ndarray,
    total: ConfusionMatrix,
    out: Path,
    background: int | None,
) -> dict:
    """Predict one image as the endpoint does, add it to ``total``, write its overlay; its
    entry of metrics.json's per_image."""
    image = load_image(sample.image)
    truth = torch.from_numpy(load_mask(sample.mask, lut))
    prediction = torch.from_numpy(predictor.class_map(image))
    total.update(truth, prediction)
    single = ConfusionMatrix(total.num_classes)
    single.update(truth, prediction)
    scores = single.scores()
    overlay = f"{OVERLAY_DIR}/{name}.jpg"
    (out / overlay).parent.mkdir(parents=True, exist_ok=True)
    picture = report.overlay_image(image, truth.numpy(), prediction.numpy(), background)
    # 4:4:4 JPEG: chroma subsampling would smear thin red and blue edges.
    picture.save(out / overlay, quality=90, subsampling=0)
    return {
        "name": name,
        "mIOU": scores.miou,
        "pixel_accuracy": scores.pixel_accuracy,
        "labelled_pixels": int(single.matrix.sum()),
        "overlay": overlay,
    }


def evaluate(
    model: Path,
    data: Path,
    out: Path,
    engine: str = "auto",
    background: str | None = None,
    top_k: int | None = None,
    tta: str | None = None,
) -> Evaluation | ClassEvaluation:
    """Score MODEL on DATA by the model's task (its hyperparams.json); OUT gets the report.
    ``tta``: --tta (None: SEGCONTAINER_TTA, as the endpoint answers)."""
    if out.exists() and any(out.iterdir()):
        raise UserError(
            f"{out} already holds files; write to a new OUT folder (or empty it), so the "
            "report shows this run's images only."
        )
    with model_tarball.opened(model) as model_dir:
        if model_is_classification(model_dir):
            if background is not None:
                raise UserError("--background applies to segmentation models' overlays only.")
            if tta is not None:
                raise UserError("--tta applies to semantic segmentation models only.")
            out.mkdir(parents=True, exist_ok=True)
            return evaluate_classification(model, model_dir, data, out, engine, top_k)
        if top_k is not None:
            raise UserError("--top-k applies to image classification models only.")
        if data_is_classification(data):
            raise UserError(
                f"{data} holds image classification data (.lst or .rec files) but {model} is a "
                "semantic segmentation model: evaluate it on images with masks."
            )
        settings = _settings(model, engine, tta)
        return _evaluate_segmentation(model, model_dir, data, out, settings, background)


def _settings(model: Path, engine: str, tta: str | None) -> PredictionSettings:
    """The endpoint's resize, tiles and test-time augmentation (SEGCONTAINER_INFERENCE_SIZE,
    SEGCONTAINER_TILE_SIZE, SEGCONTAINER_TTA unless --tta is given) with the engine --engine
    names."""
    request = EngineRequest(asked_as="--engine {}", model=str(model))
    return PredictionSettings.from_env(
        engine=engine, request=request, tta=tta, tta_said="--tta {!r}"
    )


def _evaluate_segmentation(
    model: Path,
    model_dir: Path,
    data: Path,
    out: Path,
    settings: PredictionSettings,
    background: str | None,
) -> Evaluation:
    images_dir, masks_dir = channel_pair(data)
    predictor = Predictor.open(model_dir, settings)
    num_classes, names = predictor.num_classes, list(predictor.class_names)
    marked = choose_background(background, names)
    spec = predictor.record.get("label_maps", {}).get("validation", {"scale": 1})
    lut = label_map_lut(spec, f"the validation label map of {model}")
    samples = _samples(images_dir, masks_dir, lut, num_classes)
    total = ConfusionMatrix(num_classes)
    per_image = []
    (out / OVERLAY_DIR).mkdir(parents=True, exist_ok=True)
    for sample in tqdm(samples, desc="evaluate", unit="image"):
        name = sample.image.relative_to(images_dir).with_suffix("").as_posix()
        per_image.append(_score_image(predictor, sample, name, lut, total, out, marked.id))
    matrix = total.matrix
    scores = Scores.from_matrix(matrix)
    per_image.sort(key=lambda item: (item["mIOU"], item["pixel_accuracy"], item["name"]))
    metrics = {
        "model": str(model),
        "data": str(images_dir),
        "engine": predictor.engine.name,
        "engine_note": engine_note(predictor.engine.name, settings.engine, predictor.tta.name),
        "background": asdict(marked),
        "inference": {
            "long_side": predictor.long_side,
            "tile_size": predictor.tile_size,
            "tta": predictor.tta.name,  # test-time augmentation: none, flip, flip,scales=...
            "tta_forward_cost": predictor.tta.forward_cost,  # x the forward without it
        },
        "images": len(samples),
        "labelled_pixels": int(matrix.sum()),
        "mIOU": scores.miou,
        "pixel_accuracy": scores.pixel_accuracy,
        "per_class": _class_table(matrix, names),
        "confusion_matrix": {
            "rows": "true class",
            "columns": "predicted class",
            "class_names": names,
            "matrix": matrix.tolist(),
        },
        "per_image_order": "per-image mIoU, lowest first; ties by pixel accuracy",
        "per_image": per_image,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    report.confusion_plot(matrix.numpy(), names, out / report.PLOT_FILE)
    report.write_html(out, metrics)
    return Evaluation(out, metrics)
