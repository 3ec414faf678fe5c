"""``segcontainer predict``: masks for a folder of images, without a server.

    segcontainer predict model.tar.gz photos/ masks/ --overlay

Writes ``<name>.png`` (palette PNG of class ids, the endpoint's image/png answer) and with
``--overlay`` ``<name>_overlay.jpg`` (the mask's colours blended over the photo). The engine
is the endpoint's: SEGCONTAINER_ENGINE, ``auto`` by default. It never overwrites: an output
folder that is the input folder, that already holds a file it would write, or two inputs of
one base name are refused before anything is written.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from tqdm import tqdm

from segcontainer import model_folder
from segcontainer.data.channels import load_image, visible_files
from segcontainer.data.palette import mask_image
from segcontainer.engines import EngineRequest
from segcontainer.errors import UserError
from segcontainer.prediction import PredictionSettings
from segcontainer.tasks.segmentation.prediction import Predictor

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


def predict_folder(model: Path, inputs: Path, outputs: Path, with_overlay: bool) -> int:
    """Predict every image in ``inputs``; return how many failed to decode."""
    if not inputs.is_dir():
        raise UserError(f"{inputs} is not a folder of images.")
    files = visible_files(inputs, recursive=False)
    if not files:
        raise UserError(f"{inputs} holds no images.")
    planned = output_names(files, with_overlay)
    check_outputs(inputs, outputs, planned)
    with model_folder.opened(model) as model_dir:
        settings = PredictionSettings.from_env(request=EngineRequest(model=str(model)))
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
