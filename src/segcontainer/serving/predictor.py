"""The model behind /invocations and the predict command, with bounded memory.

The procedure (resize to the training ``base_size``, tiles, banded upsampling back to the
input's size) is ``segcontainer.inference``, which validation shares, so ``validation:mIOU``
measures these answers. Memory beyond the model input grows only with the answer itself (a
uint8 mask, or the float32 probabilities the client asked for) and a band of rows.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from segcontainer import inference
from segcontainer.data.preprocess import model_input_transform, tile_size
from segcontainer.model_folder import INFO_FILE, load_model
from segcontainer.models import native_bf16
from segcontainer.serving.settings import env_int


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
        requested = env_int(("SEGCONTAINER_TILE_SIZE",), 0) or None
        self.tile_size = tile_size(record["crop_size"], requested)
        self.transform = model_input_transform(self.long_side)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        # bf16 where the GPU computes it natively; fp16 on older GPUs (V100, T4), where
        # emulated bf16 is slower and fp16 inference is safe (no gradients to scale).
        dtype = torch.bfloat16 if native_bf16(self.device) else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def _model_input(self, image: Image.Image) -> torch.Tensor:
        tensor = tv_tensors.Image(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
        return self.transform(tensor).as_subclass(torch.Tensor).unsqueeze(0)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            return self.model(batch).float()

    @torch.inference_mode()
    def logits(self, image: Image.Image) -> torch.Tensor:
        """(C, h, w) logits at model scale, tiled when larger than tile_size."""
        inputs = self._model_input(image).to(self.device)
        return inference.tiled_logits(self._forward, inputs, self.tile_size)[0]

    @torch.inference_mode()
    def class_map(self, image: Image.Image) -> np.ndarray:
        """(H, W) uint8 class ids at the input's size."""
        width, height = image.size
        return inference.class_map(self.logits(image), height, width).cpu().numpy()

    @torch.inference_mode()
    def probabilities(self, image: Image.Image) -> np.ndarray:
        """(C, H, W) float32 softmax probabilities at the input's size."""
        width, height = image.size
        logits = self.logits(image)
        out = np.empty((self.num_classes, height, width), dtype=np.float32)
        for rows, band in inference.upsampled_bands(logits, height, width):
            out[:, rows] = band.softmax(0).cpu().numpy()
        return out


def warm_up(predictor: Predictor) -> None:
    """One forward pass at start-up, so the first request does not pay for lazy set-up. A
    square image is the largest model input (or tile) a request can bring, so the worker
    reserves its forward-pass memory here, once, and requests add only their own data."""
    side = predictor.long_side or 256
    predictor.class_map(Image.new("RGB", (side, side)))
