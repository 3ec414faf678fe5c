"""TensorBoard's event files as TensorBoard itself reads them (the tensorboard package's
EventAccumulator), for the tests of training's writer."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_events(folder: Path) -> EventAccumulator:
    """Every event file in ``folder``, every value kept (the default keeps a sample)."""
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def scalars(events: EventAccumulator, tag: str) -> dict[int, float]:
    """step (the epoch) -> value of one scalar."""
    return {event.step: event.value for event in events.Scalars(tag)}


def pictures(events: EventAccumulator, tag: str) -> dict[int, np.ndarray]:
    """step (the epoch) -> the decoded (H, W, 3) picture of one image tag."""
    return {
        event.step: np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
        for event in events.Images(tag)
    }
