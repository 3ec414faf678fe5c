"""The exports at the end of a training job, on the best model in model/."""

from __future__ import annotations

import logging

from segcontainer import model_folder
from segcontainer.config.environment import Paths
from segcontainer.config.hyperparameters import Config
from segcontainer.data.loaders import TrainingData
from segcontainer.errors import TrainingStopped, UserError
from segcontainer.export.run import caused_by_stop, export_model, exporting
from segcontainer.tasks import task_of_model

log = logging.getLogger(__name__)


def after_training(paths: Paths, config: Config, data: TrainingData) -> None:
    """Write the ``export`` formats into model/. Calibration uses the training images (File
    mode; Pipe mode keeps none), the checks the validation images training validated on: the
    model's task (recorded in model/) says how they are read from ``data``
    (``Task.export_data``).

    The policy (README, "Exports"): model.pt is complete before this runs, so with the default
    ``export`` any failure here is a warning and the job succeeds; a format the user named
    that fails fails the job with the reason (UserError). SIGTERM still stops the job."""
    if not config.export:
        log.info("export=none: model/ holds the PyTorch model only")
        return
    if not (paths.model_dir / model_folder.WEIGHTS_FILE).is_file():
        return  # no epoch finished: nothing to export
    explicit = "export" in config.given
    log.info(
        "exporting the best model as %s (%s)",
        ", ".join(config.export),
        "asked for: a failure fails the job" if explicit else "the default: a failure only warns",
    )
    try:
        task = exporting(task_of_model(paths.model_dir))
        export_model(paths.model_dir, config.export, task.export_data(config, data), explicit)
    except (UserError, TrainingStopped):
        raise  # an explicit format's failure, already worded; or SIGTERM
    except Exception as exc:  # anything outside the per-format steps (reading the data, ...)
        if caused_by_stop(exc):  # SIGTERM inside a library that re-worded it
            raise TrainingStopped("stopped during the exports") from exc
        reason = f"{type(exc).__name__}: {exc}"
        if explicit:
            raise UserError(
                f"The export asked for by the export hyperparameter ({','.join(config.export)}) "
                f"failed: {reason}. model.pt in {paths.model_dir} is complete; set export=none, "
                "or add the files later with `segcontainer export`."
            ) from exc
        log.warning("the exports failed (model.pt is complete): %s", reason, exc_info=True)
