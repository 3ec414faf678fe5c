"""The exports at the end of a training job, on the best model in model/."""

from __future__ import annotations

import logging

from segcontainer import model_folder
from segcontainer.config.environment import Paths, read_hyperparameters
from segcontainer.config.hyperparameters import Config
from segcontainer.data.loaders import TrainingData
from segcontainer.export.run import export_model
from segcontainer.export.samples import ExportData

log = logging.getLogger(__name__)


def after_training(paths: Paths, config: Config, data: TrainingData) -> None:
    """Write the ``export`` formats into model/. Calibration uses the training images (File
    mode; Pipe mode keeps none), the checks the validation pairs training validated on."""
    if not config.export:
        log.info("export=none: model/ holds the PyTorch model only")
        return
    if not (paths.model_dir / model_folder.WEIGHTS_FILE).is_file():
        return  # no epoch finished: nothing to export
    # Failing the job is for a format the user named; the default only warns.
    explicit = "export" in read_hyperparameters(paths)
    validation_set = data.validation_loader.dataset
    # File mode only: the GPU pipeline holds its samples, a DataLoader its dataset's.
    loader = data.train_loader
    training_samples = getattr(loader, "samples", None) or getattr(
        getattr(loader, "dataset", None), "samples", []
    )
    export_data = ExportData(
        calibration=[sample.image for sample in training_samples],
        validation=validation_set.samples,
        validation_lut=validation_set.lut,
        long_side=config.base_size,
    )
    log.info("exporting the best model as %s", ", ".join(config.export))
    export_model(paths.model_dir, config.export, export_data, explicit)
