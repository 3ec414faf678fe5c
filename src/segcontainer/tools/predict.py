"""``segcontainer predict``: masks for a folder of images, without a server.

    segcontainer predict model.tar.gz photos/ masks/ --overlay

Writes ``<name>.png`` (palette PNG of class ids, the endpoint's image/png answer) and with
``--overlay`` ``<name>_overlay.jpg`` (the mask's colours blended over the photo). The engine
is the endpoint's: SEGCONTAINER_ENGINE, ``auto`` by default.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from segcontainer.data.channels import load_image
from segcontainer.errors import UserError
from segcontainer.model_folder import WEIGHTS_FILE, extract_model_tarball
from segcontainer.serving.codecs import mask_image
from segcontainer.serving.predictor import Predictor
from segcontainer.serving.settings import ENGINE_ENV

OVERLAY_ALPHA = 0.5


def overlay(image: Image.Image, mask: Image.Image) -> Image.Image:
    return Image.blend(image, mask.convert("RGB"), OVERLAY_ALPHA)


def predict_folder(model: Path, inputs: Path, outputs: Path, with_overlay: bool) -> int:
    """Predict every image in ``inputs``; return how many failed to decode."""
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = model
        if model.is_file():
            model_dir = extract_model_tarball(model, Path(scratch))
        if not (model_dir / WEIGHTS_FILE).is_file():
            raise UserError(f"{model} is neither a model folder nor a model.tar.gz from train.")
        predictor = Predictor(model_dir, engine=os.environ.get(ENGINE_ENV) or "auto")
        files = sorted(p for p in inputs.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise UserError(f"{inputs} holds no images.")
        outputs.mkdir(parents=True, exist_ok=True)
        failed = 0
        for file in tqdm(files, desc="predict", unit="image"):
            try:
                image = load_image(file)
            except Exception as exc:  # keep going: one bad file must not lose the others
                tqdm.write(f"skipped {file.name}: {exc}")
                failed += 1
                continue
            mask = mask_image(predictor.class_map(image))
            mask.save(outputs / f"{file.stem}.png")
            if with_overlay:
                overlay(image, mask).save(outputs / f"{file.stem}_overlay.jpg", quality=90)
        return failed
