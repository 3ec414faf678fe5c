"""Incremental training from the ``model`` channel (contract §2.5).

The channel holds a model.tar.gz from an earlier run of this container (or its extracted
files). It is unpacked safely; algorithm, backbone, crop_size and num_classes must match this
job's, and training starts from its weights.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch
from torch import nn

from segcontainer.config.environment import Paths
from segcontainer.config.hyperparameters import Config
from segcontainer.errors import UserError
from segcontainer.model_folder import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    extract_model_tarball,
    read_record,
)

log = logging.getLogger(__name__)
MUST_MATCH = ("algorithm", "backbone", "crop_size", "num_classes")


def _model_folder(channel: Path, scratch: Path) -> Path:
    tarballs = sorted(p for p in channel.rglob("*.tar.gz") if p.is_file())
    if len(tarballs) > 1:
        raise UserError(
            f"The model channel holds {len(tarballs)} .tar.gz files "
            f"({', '.join(p.name for p in tarballs)}); give exactly one."
        )
    if tarballs:
        return extract_model_tarball(tarballs[0], scratch)
    if (channel / WEIGHTS_FILE).is_file() or (channel / CONFIG_FILE).is_file():
        return channel  # already extracted (read_record tells whether it is one of ours)
    raise UserError(
        f"The model channel ({channel}) holds no model.tar.gz. Give the "
        "model.tar.gz of an earlier training job of this container."
    )


def start_from_model_channel(paths: Paths, config: Config, model: nn.Module) -> bool:
    """Load the model channel's weights into ``model``; False when there is no such channel."""
    channel = paths.channel("model")
    if not channel.is_dir():
        return False
    with tempfile.TemporaryDirectory() as scratch:
        folder = _model_folder(channel, Path(scratch))
        earlier = read_record(folder, "The model channel's model")
        mismatches = [
            f"{key} is {earlier.get(key)!r} in the model but {getattr(config, key)!r} in this job"
            for key in MUST_MATCH
            if earlier.get(key) != getattr(config, key)
        ]
        if mismatches:
            raise UserError(
                "Incremental training needs the same algorithm, backbone, crop_size "
                "and num_classes as the earlier model: "
                + "; ".join(mismatches)
                + ". Change the hyperparameters or the model channel."
            )
        state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    log.info(
        "incremental training: starting from the model channel's weights (%s/%s, %d classes)",
        config.algorithm,
        config.backbone,
        config.num_classes,
    )
    return True
