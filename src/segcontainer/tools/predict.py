"""``segcontainer predict``: masks for a folder of images, without a server (an image
classification model's probabilities and labels: predict_classification.py).

    segcontainer predict model.tar.gz photos/ masks/ --overlay

Writes ``<name>.png`` (palette PNG of class ids, the endpoint's image/png answer) and with
``--overlay`` ``<name>_overlay.jpg`` (the mask's colours blended over the photo). The engine
is the endpoint's: SEGCONTAINER_ENGINE, ``auto`` by default; so is the test-time augmentation,
SEGCONTAINER_TTA unless ``--tta`` gives one. It never overwrites: an output
folder that is the input folder, that already holds a file it would write, or two inputs of
one base name are refused before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from segcontainer import model_tarball
from segcontainer.data.channels import load_image, visible_files
from segcontainer.data.palette import mask_image
from segcontainer.engines import EngineRequest
from segcontainer.errors import UserError
from segcontainer.prediction import PredictionSettings
from segcontainer.tasks.segmentation.prediction import Predictor
from segcontainer.tools.classification_data import model_is_classification
from segcontainer.tools.predict_classification import PREDICTIONS_FILE, predict_classes

OVERLAY_ALPHA = 0.5


def overlay(image: Image.Image, mask: Image.Image) -> Image.Image:
    return Image.blend(image, mask.convert("RGB"), OVERLAY_ALPHA)


def output_names(files: list[Path], with_overlay: bool) -> dict[Path, list[str]]:
    """The files predict writes for each input: ``<stem>.png`` and the overlay."""
    return {
        file: [f"{file.stem}.png", *([f"{file.stem}_overlay.jpg"] if with_overlay else [])]
        for file in files
    }


def check_outputs(inputs: Path, outputs: Path, planned: dict[Path, list[str]]) -> None:
    """Refuse, before anything is written: the input folder as output, two inputs with one
    output name (street.jpg and street.png), and outputs that would replace existing files."""
    if outputs.resolve() == inputs.resolve():
        raise UserError(
            f"the output folder {outputs} is the input folder: masks would replace or mix with "
            "the images. Give another output folder, e.g. masks/."
        )
    writers: dict[str, Path] = {}
    for file, names in planned.items():
        for name in names:
            if name in writers:
                raise UserError(
                    f"{writers[name].name} and {file.name} in {inputs} would both be written as "
                    f"{name}: masks are named after the base name. Rename one of them (or move "
                    "it to another folder)."
                )
            writers[name] = file
    existing = sorted(name for name in writers if (outputs / name).exists())
    if existing:
        shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if existing[5:] else "")
        raise UserError(
            f"{outputs} already holds {shown}, which this run would overwrite. Write to a new "
            "output folder, or move those files away."
        )


@dataclass(frozen=True)
class Predicted:
    """What predict wrote (said in a sentence) and how many files it skipped."""

    written: str
    failed: int


def predict_folder(
    model: Path, inputs: Path, outputs: Path, with_overlay: bool, tta: str | None = None
) -> Predicted:
    """Predict every image in ``inputs`` by the model's task: masks for a segmentation model,
    predictions.json for an image classification model. ``tta``: --tta (None:
    SEGCONTAINER_TTA, as the endpoint)."""
    if not inputs.is_dir():
        raise UserError(f"{inputs} is not a folder of images.")
    files = visible_files(inputs, recursive=False)
    if not files:
        raise UserError(f"{inputs} holds no images.")
    with model_tarball.opened(model) as model_dir:
        if model_is_classification(model_dir):
            if with_overlay:
                raise UserError("--overlay draws masks: an image classification model has none.")
            if tta is not None:
                raise UserError("--tta applies to semantic segmentation models only.")
            failed = predict_classes(model, model_dir, files, outputs)
            return Predicted(f"predictions written to {outputs / PREDICTIONS_FILE}", failed)
        return Predicted(
            f"masks written to {outputs}",
            _masks(model, model_dir, files, inputs, outputs, with_overlay, tta),
        )


def _masks(
    model: Path,
    model_dir: Path,
    files: list[Path],
    inputs: Path,
    outputs: Path,
    with_overlay: bool,
    tta: str | None,
) -> int:
    """Segmentation's masks (and overlays) for ``files``; how many failed to decode."""
    planned = output_names(files, with_overlay)
    check_outputs(inputs, outputs, planned)
    request = EngineRequest(model=str(model))
    settings = PredictionSettings.from_env(request=request, tta=tta, tta_said="--tta {!r}")
    predictor = Predictor.open(model_dir, settings)
    outputs.mkdir(parents=True, exist_ok=True)
    failed = 0
    for file in tqdm(files, desc="predict", unit="image"):
        try:
            image = load_image(file)
        except Exception as exc:  # keep going: one bad file must not lose the others
            tqdm.write(f"skipped {file.name}: {exc}")
            failed += 1
            continue
        mask_name, *overlay_name = planned[file]
        mask = mask_image(predictor.class_map(image))
        mask.save(outputs / mask_name)
        if overlay_name:
            overlay(image, mask).save(outputs / overlay_name[0], quality=90)
    return failed
