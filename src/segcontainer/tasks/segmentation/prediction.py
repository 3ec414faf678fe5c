"""How a segmentation model answers for one image: the endpoint, ``segcontainer predict`` and
``segcontainer evaluate`` all predict through ``Predictor``, built from one
``PredictionSettings``.

The procedure (resize to the training ``base_size``, tiles, banded upsampling back to the
input's size) is ``segcontainer.inference`` over ``data.preprocess.model_input``, which
training's validation shares (batched on its device; ``validation.evaluate``), so
``validation:mIOU`` measures these answers. Memory beyond the model input grows only with the
answer itself (a uint8 mask, or the float32 probabilities the client asked for) and a band of
rows.

Test-time augmentation (``config.tta``: SEGCONTAINER_TTA, ``--tta``) averages logits, not
probabilities: tiles already average logits where they overlap, and the one averaged array then
goes through the one banded upsampling to both answers, so the PNG stays the argmax of the
probabilities. It stays inside the same bounds, one forward of at most one tile at a time:
``flip`` predicts the mirrored model input in its own tiles, each window mirrored on its own
(``inference.tiled_logits``), so the answer is exactly the average of the answers for the image
and for its mirror; each of ``scales`` prepares the image at that multiple of the long side,
predicts it in the same tiles and resizes its logits to the plain model input's size before they
are summed. Memory beyond the forwards is model-scale logits, never the request image's size:
the sum and one view's (2x the plain logits with flip; about 3.6x at scale 1.25, whose logits
are 1.5625x and are resized to a 1x copy). Training's validation runs without it, as the
endpoint does by default.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segcontainer import inference
from segcontainer.data.preprocess import model_input, resized_size, tile_size
from segcontainer.engines import Engine
from segcontainer.prediction import PredictionSettings, open_model
from segcontainer.tasks.segmentation.model import rebuild


class Predictor:
    """One model's answers for one RGB image: ``class_map`` and ``probabilities``.

    ``engine``: any ``engines.Engine`` (``open`` opens the one the settings choose: PyTorch
    on ``device``, or ONNX Runtime on the CPU); every engine goes through the same resizing,
    tiling and banded upsampling."""

    def __init__(
        self,
        engine: Engine,
        record: dict,
        class_names: list[str],
        settings: PredictionSettings | None = None,
    ):
        settings = settings or PredictionSettings()
        self.engine = engine
        self.device = engine.device
        self.record = record  # hyperparams.json
        self.num_classes: int = record["num_classes"]
        self.class_names = class_names
        size = settings.inference_size
        self.long_side: int = record["base_size"] if size is None else size
        self.tile_size = tile_size(record["crop_size"], settings.tile_size)
        self.tta = settings.tta
        self.augmentation = self.tta.name  # for the start-up log

    @classmethod
    def open(cls, model_dir: Path, settings: PredictionSettings | None = None) -> Predictor:
        """The predictor for a model folder (``model_tarball.opened`` for a tarball too)."""
        settings = settings or PredictionSettings()
        opened = open_model(model_dir, settings, rebuild)
        return cls(opened.engine, opened.record, opened.class_names, settings)

    @torch.inference_mode()
    def warm_up(self) -> None:
        """One forward pass at start-up, so the first request does not pay for lazy set-up,
        over the largest model input a request can bring: one tile (tiling bounds every
        forward), or the resized image's square when that is smaller. The worker reserves its
        forward-pass memory here, once, and start-up stays quick whatever the inference size
        (a whole 6000x6000 image would be minutes of tiles before /ping answers 200)."""
        side = self.largest_input_side
        self.engine.on_device(torch.zeros(1, 3, side, side))

    @property
    def largest_input_side(self) -> int:
        """The longest side of any one forward's input: a tile, or the longest side an image
        is resized to (at test-time augmentation's largest scale) when that is smaller (0, the
        image's own size: a tile)."""
        if not self.long_side:
            return self.tile_size
        return min(self.tile_size, max(self.tta.long_sides(self.long_side)))

    def model_input(self, image: Image.Image) -> torch.Tensor:
        """(1, 3, h, w): the image as the model sees it (data.preprocess.model_input)."""
        return model_input(image, self.long_side)

    @torch.inference_mode()
    def logits(self, image: Image.Image) -> torch.Tensor:
        """(C, h, w) logits at model scale (the model input's size) on the engine's device,
        tiled when larger than tile_size; with test-time augmentation, the average of its
        views' logits."""
        long_side = self.long_side or max(image.size)
        height, width = resized_size(image.height, image.width, long_side)
        forward, total, views = self.engine.on_device, None, 0
        for side in self.tta.long_sides(long_side):
            inputs = model_input(image, side).to(self.device)
            for mirrored in (False, True) if self.tta.flip else (False,):
                logits = inference.tiled_logits(forward, inputs, self.tile_size, mirrored)
                logits = inference.resized_logits(logits, height, width)
                total = logits if total is None else total.add_(logits)
                views += 1
        return total[0] if views == 1 else total[0].div_(views)

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
