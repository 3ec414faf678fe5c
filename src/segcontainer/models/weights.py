"""ImageNet weights from torchvision's local cache, never downloaded: the image bakes them in at
build time (DOWNLOAD_WEIGHTS) and a job has no network. One check for every model that offers
``use_pretrained_model``: the file must be there, or a UserError says where and what to do."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.models import WeightsEnum

from segcontainer.errors import UserError


def weights_file(weights: WeightsEnum) -> Path:
    """Where torchvision's weights API looks for ``weights`` (TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def cached(weights: WeightsEnum, model: str) -> WeightsEnum:
    """``weights``, once their file is in the cache; else UserError naming ``model``, the file
    and both ways out (provide it, or train from scratch)."""
    file = weights_file(weights)
    if not file.is_file():
        # Without this check torchvision would try to download, and there is no network.
        raise UserError(
            f"use_pretrained_model=True needs the ImageNet weights of {model} at {file} "
            f"(torchvision's cache under TORCH_HOME), and the file is absent. Either provide "
            f"it (the container image downloads {weights.url} at build time; or set "
            f"TORCH_HOME to a folder holding hub/checkpoints/{file.name}), or set "
            f"use_pretrained_model=False to train {model} from scratch."
        )
    return weights


def unreadable(weights: WeightsEnum, exc: Exception) -> UserError:
    """The error for a cached weights file that torch cannot load."""
    return UserError(
        f"The pretrained weights file {weights_file(weights)} could not be loaded ({exc}). "
        f"Replace it with torchvision's {weights.url}, or set use_pretrained_model=False."
    )
