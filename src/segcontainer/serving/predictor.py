"""The model behind /invocations and the predict command, with bounded memory.

The image is resized so its long side is the training ``base_size`` (the centre of the
training scale range, 0.5-2.0 x base_size), so the model sees objects at the scale it learned.
At that scale an image larger than ``tile_size`` on a side is predicted in overlapping tiles
whose logits are averaged. Logits are then brought to the input's full size a band of rows at
a time, so memory beyond the model input grows only with the output itself (a uint8 mask, or
the float32 probabilities the client asked for).
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import tv_tensors

from segcontainer.data.preprocess import validation_transform
from segcontainer.model_folder import INFO_FILE, load_model
from segcontainer.serving.settings import env_int

BAND_ROWS = 256  # output rows upsampled at once
TILE_OVERLAP = 1 / 3


class Predictor:
    """Loads model/ once; ``class_map`` and ``probabilities`` answer for one RGB image."""

    def __init__(self, model_dir: Path, device: torch.device | None = None):
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, record = load_model(model_dir)
        self.model = model.eval().to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.num_classes: int = record["num_classes"]
        info_file = model_dir / INFO_FILE
        info = json.loads(info_file.read_text()) if info_file.exists() else {}
        self.class_names: list[str] = info.get("class_names") or [
            f"class_{i}" for i in range(self.num_classes)
        ]
        # SEGCONTAINER_INFERENCE_SIZE: long side the model sees (0 = the image's own size).
        self.long_side = env_int(("SEGCONTAINER_INFERENCE_SIZE",), record["base_size"])
        # SEGCONTAINER_TILE_SIZE: larger inputs (after resizing) are predicted in tiles.
        self.tile_size = max(env_int(("SEGCONTAINER_TILE_SIZE",), 2 * record["crop_size"]), 32)
        self.transform = validation_transform()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _model_input(self, image: Image.Image) -> torch.Tensor:
        width, height = image.size
        if self.long_side and max(width, height) != self.long_side:
            scale = self.long_side / max(width, height)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = image.resize(size, Image.Resampling.BILINEAR)
        tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
        return self.transform(tv_tensors.Image(tensor)).as_subclass(torch.Tensor).unsqueeze(0)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device)
        if self.device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            return self.model(batch).float()

    @torch.inference_mode()
    def logits(self, image: Image.Image) -> torch.Tensor:
        """(C, h, w) logits at model scale, tiled when larger than tile_size."""
        inputs = self._model_input(image)
        height, width = inputs.shape[-2:]
        tile = self.tile_size
        if height <= tile and width <= tile:
            return self._forward(inputs)[0].cpu()
        stride = max(1, int(tile * (1 - TILE_OVERLAP)))
        total = torch.zeros(self.num_classes, height, width)
        count = torch.zeros(1, height, width)
        for top in _starts(height, tile, stride):
            for left in _starts(width, tile, stride):
                window = inputs[..., top : top + tile, left : left + tile]
                h, w = window.shape[-2:]
                total[:, top : top + h, left : left + w] += self._forward(window)[0].cpu()
                count[:, top : top + h, left : left + w] += 1
        return total / count

    def _bands(self, logits: torch.Tensor, height: int, width: int):
        """Yield (row slice, (C, rows, width) logits) bilinearly upsampled to height x width,
        exactly as F.interpolate(align_corners=False) would, one band of rows at a time."""
        wide = F.interpolate(
            logits[None], size=(logits.shape[1], width), mode="bilinear", align_corners=False
        )[0]  # width first: small, rows stay few
        source_rows = logits.shape[1]
        for top in range(0, height, BAND_ROWS):
            rows = torch.arange(top, min(top + BAND_ROWS, height), dtype=torch.float64)
            src = ((rows + 0.5) * (source_rows / height) - 0.5).clamp(min=0)
            low = src.floor().long().clamp(max=source_rows - 1)
            high = (low + 1).clamp(max=source_rows - 1)
            weight = (src - low).float()[None, :, None]
            band = wide[:, low, :] * (1 - weight) + wide[:, high, :] * weight
            yield slice(top, top + len(rows)), band

    def class_map(self, image: Image.Image) -> np.ndarray:
        """(H, W) uint8 class ids at the input's size."""
        width, height = image.size
        logits = self.logits(image)
        out = np.empty((height, width), dtype=np.uint8)
        for rows, band in self._bands(logits, height, width):
            out[rows] = band.argmax(0).numpy()
        return out

    def probabilities(self, image: Image.Image) -> np.ndarray:
        """(C, H, W) float32 softmax probabilities at the input's size."""
        width, height = image.size
        logits = self.logits(image)
        out = np.empty((self.num_classes, height, width), dtype=np.float32)
        for rows, band in self._bands(logits, height, width):
            out[:, rows] = band.softmax(0).numpy()
        return out


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Window offsets covering [0, length): regular strides, the last one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile] if starts[-1] != length - tile else starts


def warm_up(predictor: Predictor) -> None:
    """One forward pass at start-up, so the first request does not pay for lazy set-up."""
    side = predictor.long_side or 256
    predictor.class_map(Image.new("RGB", (side, max(1, math.ceil(side * 0.75)))))
