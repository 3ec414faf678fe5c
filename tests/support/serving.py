"""Serving settings for in-process apps and hand-started stacks, without the environment."""

from __future__ import annotations

from pathlib import Path

from segcontainer.prediction import PredictionSettings
from segcontainer.serving.settings import ServingSettings


def settings_for(model_dir: Path, **changes) -> ServingSettings:
    """One worker, one thread, port 8080, 6 MB bodies, PNG answers, the torch engine's
    defaults; ``changes`` replace any field."""
    values = dict(
        model_dir=model_dir,
        port=8080,
        workers=1,
        timeout=60,
        max_payload_mb=6,
        default_accept="image/png",
        torch_threads=1,
        prediction=PredictionSettings(threads=1),
    )
    return ServingSettings(**{**values, **changes})
