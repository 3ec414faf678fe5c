"""The best epoch so far: kept by the main process (its weights on the CPU, for the
checkpoints) and written to model/, the folder the job delivers."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from segcontainer import model_folder
from segcontainer.metrics import ValidationScores
from segcontainer.training.checkpoints import Best
from segcontainer.training.distributed import Rank

log = logging.getLogger(__name__)


class BestModel:
    """The best epoch so far (``best``; None before the first, and on the ranks other than
    the main one unless resumed) and whether the model's current weights are its own
    (``is_current``: a checkpoint then stores them once)."""

    def __init__(
        self,
        *,
        model_dir: Path,
        record: dict,
        class_names: tuple[str, ...],
        rank: Rank,
        started_from: dict | None = None,
    ) -> None:
        self.model_dir = model_dir
        self.record = record  # the resolved configuration, written as hyperparams.json
        self.class_names = class_names
        self.started_from = started_from  # the model channel's model it started from, if any
        self.rank = rank
        self.best: Best | None = None
        self.is_current = False

    def restore(self, best: Best) -> None:
        """After a resume, model/ holds the best model so far before training goes on: a
        spot restart starts with an empty /opt/ml/model, and no later epoch may beat the best."""
        self.best = best
        if not self.rank.is_main:
            return
        self._write(best)
        log.info(
            "wrote the best model so far (epoch %d, %s %.4f) from the checkpoint to %s",
            best.epoch,
            best.scores.headline,
            best.scores.score,
            self.model_dir,
        )

    def keep(self, model: torch.nn.Module, epoch: int, scores: ValidationScores) -> None:
        """``model``'s weights after ``epoch`` are the best so far."""
        self.is_current = True
        if self.rank.is_main:  # only the main process keeps the best weights and writes model/
            weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            self.best = Best(epoch=epoch, scores=scores, weights=weights)
            self._write(self.best)
        log.info(
            "epoch %d is the best so far (%s %.4f): saved to %s",
            epoch,
            scores.headline,
            scores.score,
            self.model_dir,
        )

    def _write(self, best: Best) -> None:
        model_folder.save_model(
            self.model_dir,
            best.weights,
            self.record,
            best.epoch,
            best.scores,
            self.class_names,
            self._trained_on(),
            self.started_from,
        )

    def _trained_on(self) -> dict:
        world = self.rank.world
        return {
            "hosts": list(world.hosts),
            "processes_per_host": world.local_size,
            "world_size": world.size,
            "written_by": f"rank 0 on {world.host}",
        }
