"""Exports of a trained model for faster serving: model.onnx, model.int8.onnx, model.ts.

Run at the end of training (``after_training``, formats from the ``export`` hyperparameter)
and by ``segcontainer export`` on an existing model (``export_model``). Every file is
checked against the eager PyTorch model before it is kept; see ``run`` and ``int8``.
"""

from __future__ import annotations

from segcontainer.export.run import export_model
from segcontainer.export.samples import calibration_images
from segcontainer.export.training import after_training

__all__ = ["after_training", "calibration_images", "export_model"]
