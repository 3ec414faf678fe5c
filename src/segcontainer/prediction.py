"""What runs a trained model and at which scale: ``PredictionSettings``, one object for the
endpoint, ``segcontainer predict`` and ``segcontainer evaluate``, whatever the task. Each task's
predictor (``tasks.task.Predictor``) is opened from a model folder with these settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from segcontainer.config import tta as test_time
from segcontainer.config import variables
from segcontainer.engines import Engine, EngineRequest
from segcontainer.model_folder import Rebuild, open_engine, read_class_names, read_record


@dataclass(frozen=True)
class PredictionSettings:
    """What runs the model and at which scale; None: the model's own value."""

    engine: str = "auto"  # SEGCONTAINER_ENGINE, or a command's --engine
    request: EngineRequest = field(default_factory=EngineRequest)  # for messages
    threads: int = 0  # an ONNX engine's intra-op threads (0: one per physical core)
    device: torch.device | None = None  # PyTorch's device; None: CUDA when present
    inference_size: int | None = None  # SEGCONTAINER_INFERENCE_SIZE; None: base_size
    tile_size: int | None = None  # SEGCONTAINER_TILE_SIZE; None: 2 x crop_size
    tta: test_time.Tta = test_time.NONE  # SEGCONTAINER_TTA, or --tta (segmentation only)

    @classmethod
    def from_env(
        cls,
        *,
        engine: str | None = None,
        request: EngineRequest | None = None,
        threads: int = 0,
        device: torch.device | None = None,
        tta: str | None = None,
        tta_said: str = variables.TTA.name + "={!r}",
    ) -> PredictionSettings:
        """The endpoint's settings from the environment; ``engine`` or ``tta`` given (a
        command's option, named in messages by ``tta_said``) replaces SEGCONTAINER_ENGINE or
        SEGCONTAINER_TTA."""
        if tta is None:
            tta, tta_said = variables.TTA.read(), variables.TTA.name + "={!r}"
        return cls(
            engine=variables.ENGINE.read() if engine is None else engine,
            request=request or EngineRequest(),
            threads=threads,
            device=device,
            inference_size=variables.INFERENCE_SIZE.read(),
            tile_size=variables.TILE_SIZE.read() or None,  # 0: the default too
            tta=test_time.parse(tta, tta_said),
        )


@dataclass(frozen=True)
class OpenedModel:
    """What every task's predictor is built from."""

    engine: Engine
    record: dict  # hyperparams.json
    class_names: list[str]


def open_model(model_dir: Path, settings: PredictionSettings, rebuild: Rebuild) -> OpenedModel:
    """The engine the settings choose for model_dir (``rebuild``: the task's builder, for the
    PyTorch engine), its hyperparams.json and its class names."""
    record = read_record(model_dir, f"The model in {settings.request.model or model_dir}")
    engine = open_engine(
        model_dir,
        settings.engine,
        settings.device,
        settings.threads,
        settings.request,
        rebuild=rebuild,
    )
    return OpenedModel(engine, record, read_class_names(model_dir, record["num_classes"]))
