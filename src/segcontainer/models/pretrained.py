"""Segmentation-pretrained starts (``pretrained_weights=coco-voc``): torchvision's weights trained
on COCO with the 20 Pascal VOC categories, for the whole model (encoder and head), where
torchvision publishes them. From torchvision's local cache like the ImageNet weights (weights.py).

torchvision's segmentation models name their parts ``backbone``, ``classifier`` and
``aux_classifier``; this container's ``encoder``, ``head`` and ``aux_head`` hold the same
modules under the same inner names, so the state dict maps by prefix. The classifier rows are
the exception: the user's classes are not VOC's. Each row of a class whose name is a VOC class
(or a usual alias: person/pedestrian, tvmonitor/tv...) keeps VOC's row; the others keep the
fresh initialisation of the model they are loaded into.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from torchvision.models import WeightsEnum
from torchvision.models.segmentation import (
    DeepLabV3_MobileNet_V3_Large_Weights,
    DeepLabV3_ResNet50_Weights,
    DeepLabV3_ResNet101_Weights,
    FCN_ResNet50_Weights,
    FCN_ResNet101_Weights,
    LRASPP_MobileNet_V3_Large_Weights,
)

from segcontainer.errors import UserError
from segcontainer.models.segmentation import AUX_PREFIX, SegmentationModel
from segcontainer.models.weights import weights_file

log = logging.getLogger(__name__)

PRETRAINED_WEIGHTS = ("imagenet", "coco-voc")  # the hyperparameter's choices

# (algorithm, backbone) -> torchvision's COCO-with-VOC-labels weights for the whole model
COCO_VOC: dict[tuple[str, str], WeightsEnum] = {
    ("fcn", "resnet-50"): FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1,
    ("fcn", "resnet-101"): FCN_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1,
    ("deeplab", "resnet-50"): DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1,
    ("deeplab", "resnet-101"): DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1,
    ("deeplab", "mobilenet-v3-large"): DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1,
    ("lraspp", "mobilenet-v3-large"): LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1,
}

# torchvision's VOC categories (row order of its classifiers), background first
VOC_CLASSES = tuple(LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1.meta["categories"])
ALIASES = {
    "__background__": ("background", "bg", "void"),
    "aeroplane": ("airplane", "plane", "aircraft"),
    "bicycle": ("bike",),
    "diningtable": ("dining table", "table"),
    "motorbike": ("motorcycle",),
    "person": ("pedestrian", "people", "human"),
    "pottedplant": ("potted plant", "plant"),
    "sofa": ("couch",),
    "tvmonitor": ("tv", "monitor", "television", "tv/monitor"),
}
PREFIXES = {"backbone.": "encoder.", "classifier.": "head.", "aux_classifier.": "aux_head."}


def _normalised(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum() or c == "/")


_VOC_ROW = {
    _normalised(alias): row
    for row, name in enumerate(VOC_CLASSES)
    for alias in (name, *ALIASES.get(name, ()))
}


def coco_voc_pairs() -> str:
    """The algorithm/backbone pairs with COCO-with-VOC weights, for messages."""
    return ", ".join(f"{algorithm}/{backbone}" for algorithm, backbone in COCO_VOC)


def voc_rows(class_names: Sequence[str]) -> dict[int, int]:
    """This model's class row -> the VOC row it keeps, for the classes named as VOC's."""
    rows = {i: _VOC_ROW.get(_normalised(name)) for i, name in enumerate(class_names)}
    return {i: row for i, row in rows.items() if row is not None}


def keep_rows(
    fresh: Mapping[str, torch.Tensor],
    earlier: Mapping[str, torch.Tensor],
    keys: Sequence[str],
    rows: Mapping[int, int],
) -> dict[str, torch.Tensor]:
    """The classifier tensors ``keys`` for a new class set: ``fresh``'s (the new model's own
    initialisation), with row i taken from ``earlier``'s row ``rows[i]``."""
    out = {}
    for key in keys:
        tensor = fresh[key].clone()
        for new, old in rows.items():
            tensor[new] = earlier[key][old]
        out[key] = tensor
    return out


def coco_voc_file(algorithm: str, backbone: str) -> WeightsEnum:
    """The pair's weights once their file is in torchvision's cache; else a UserError."""
    weights = COCO_VOC.get((algorithm, backbone))
    if weights is None:
        raise UserError(
            f"pretrained_weights=coco-voc: torchvision publishes no COCO-with-VOC weights for "
            f"{algorithm}/{backbone}; it does for {coco_voc_pairs()}. Choose one of those, or "
            "pretrained_weights=imagenet."
        )
    file = weights_file(weights)
    if not file.is_file():
        raise UserError(
            f"pretrained_weights=coco-voc needs torchvision's COCO-with-VOC weights of "
            f"{algorithm}/{backbone} at {file} (torchvision's cache under TORCH_HOME), and the "
            f"file is absent. Either provide it (the container image downloads {weights.url} at "
            f"build time; or set TORCH_HOME to a folder holding hub/checkpoints/{file.name}), "
            "or set pretrained_weights=imagenet."
        )
    return weights


def load_coco_voc(
    model: SegmentationModel, algorithm: str, backbone: str, class_names: Sequence[str]
) -> None:
    """Load the pair's COCO-with-VOC weights into ``model`` (built without pretrained weights),
    keeping the VOC rows of the classes named as VOC's; the other rows stay as initialised."""
    weights = coco_voc_file(algorithm, backbone)
    try:
        loaded = torch.load(weights_file(weights), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises pickle, zip, OS and runtime errors alike
        raise UserError(
            f"The pretrained weights file {weights_file(weights)} could not be loaded ({exc}). "
            f"Replace it with torchvision's {weights.url}, or set pretrained_weights=imagenet."
        ) from exc
    own = model.state_dict()
    state = {}
    for key, value in loaded.items():
        prefix = next(p for p in PREFIXES if key.startswith(p))  # torchvision's three parts
        mapped = PREFIXES[prefix] + key[len(prefix) :]
        if mapped in own:  # aux_classifier: only when this model trains an auxiliary head
            state[mapped] = value
    classifier = [k for k in model.classifier_keys() if k in state]
    rows = voc_rows(class_names)
    state.update(keep_rows(own, state, classifier, rows))
    missing = [k for k in own if k not in state and not k.startswith(AUX_PREFIX)]
    if missing:  # a layout torchvision changed: say so rather than train half-loaded
        raise RuntimeError(f"{weights.url} does not hold {', '.join(missing[:5])}")
    model.load_state_dict(state, strict=False)
    kept = ", ".join(f"{class_names[i]}={VOC_CLASSES[row]}" for i, row in rows.items())
    log.info(
        "pretrained_weights=coco-voc: %s/%s from %s; classifier rows kept from VOC: %s; the "
        "other classes' rows start fresh",
        algorithm,
        backbone,
        weights_file(weights).name,
        kept or "none (no class_names match VOC's)",
    )
