"""The model behind /invocations and the predict command, with bounded memory.

The procedure (resize to the training ``base_size``, tiles, banded upsampling back to the
input's size) is ``segcontainer.inference``, which validation shares, so ``validation:mIOU``
measures these answers. Memory beyond the model input grows only with the answer itself (a
uint8 mask, or the float32 probabilities the client asked for) and a band of rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from segcontainer import inference
from segcontainer.data.preprocess import model_input_transform, tile_size
from segcontainer.model_folder import open_engine, read_info, read_record
from segcontainer.serving.settings import env_int


class Predictor:
    """Loads model/ once; ``class_map`` and ``probabilities`` answer for one RGB image.

    ``engine``: SEGCONTAINER_ENGINE's value (model_folder.open_engine: PyTorch on ``device``,
    or ONNX Runtime on the CPU with ``threads`` intra-op threads); every engine goes through
    the same resizing, tiling and banded upsampling."""

    def __init__(
        self,
        model_dir: Path,
        device: torch.device | None = None,
        engine: str = "auto",
        threads: int = 0,
    ):
        record = read_record(model_dir, f"The model in {model_dir}")
        self.engine = open_engine(model_dir, engine, device, threads)
        self.device = self.engine.device
        self.num_classes: int = record["num_classes"]
        self.class_names: list[str] = read_info(model_dir).get("class_names") or [
            f"class_{i}" for i in range(self.num_classes)
        ]
        # SEGCONTAINER_INFERENCE_SIZE: long side the model sees (0 = the image's own size).
        self.long_side = env_int(("SEGCONTAINER_INFERENCE_SIZE",), record["base_size"])
        # SEGCONTAINER_TILE_SIZE: larger inputs (after resizing) are predicted in tiles.
        requested = env_int(("SEGCONTAINER_TILE_SIZE",), 0) or None
        self.tile_size = tile_size(record["crop_size"], requested)
        self.transform = model_input_transform(self.long_side)

    def _model_input(self, image: Image.Image) -> torch.Tensor:
        tensor = tv_tensors.Image(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
        return self.transform(tensor).as_subclass(torch.Tensor).unsqueeze(0)

    @torch.inference_mode()
    def logits(self, image: Image.Image) -> torch.Tensor:
        """(C, h, w) logits at model scale on the engine's device, tiled when larger than
        tile_size."""
        inputs = self._model_input(image).to(self.device)
        return inference.tiled_logits(self.engine.on_device, inputs, self.tile_size)[0]

    @torch.inference_mode()
    def class_map(self, image: Image.Image) -> np.ndarray:
        """(H, W) uint8 class ids at the input's size."""
        width, height = image.size
        return inference.class_map(self.logits(image), height, width).cpu().numpy()

    @torch.inference_mode()
    def probabilities(self, image: Image.Image, out: np.ndarray | None = None) -> np.ndarray:
        """(C, H, W) float32 softmax probabilities at the input's size, written into ``out``
        when given (the answer's own buffer: protobuf_record.probability_answer)."""
        width, height = image.size
        logits = self.logits(image)
        if out is None:
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
