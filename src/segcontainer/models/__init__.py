"""Segmentation models: registered encoders (the ``backbone`` hyperparameter) and heads (the
``algorithm`` hyperparameter), put together by ``build_model``.

- ``encoders``: ``ENCODERS``/``register_encoder``; an encoder reports its feature levels and
  their channels (``out_channels``); the dilated ResNet-50/101 (output stride 8) and
  MobileNetV3-Large (output stride 16).
- ``heads``: ``HEADS``/``register_head``; a head declares the levels it reads and is built
  from the encoder's channels there; FCN, PSP, DeepLabV3, LR-ASPP, DeepLabV3+
  and the auxiliary FCN head.
- ``segmentation``: ``SegmentationModel`` and ``build_model``.
- ``pretrained``: torchvision's COCO-with-VOC weights for whole models (``pretrained_weights``),
  and the classifier rows a new class set keeps.
"""

from segcontainer.models.encoders import (
    ENCODERS,
    LEVELS,
    EncoderEntry,
    build_encoder,
    pretrained_weights_file,
    register_encoder,
)
from segcontainer.models.heads import HEADS, HeadEntry, PoolBatchNorm, register_head
from segcontainer.models.pretrained import (
    COCO_VOC,
    PRETRAINED_WEIGHTS,
    coco_voc_pairs,
    keep_rows,
    load_coco_voc,
    voc_rows,
)
from segcontainer.models.segmentation import (
    AUX_PREFIX,
    SegmentationModel,
    build_model,
)

__all__ = [
    "AUX_PREFIX",
    "COCO_VOC",
    "PRETRAINED_WEIGHTS",
    "ENCODERS",
    "HEADS",
    "LEVELS",
    "EncoderEntry",
    "HeadEntry",
    "PoolBatchNorm",
    "SegmentationModel",
    "build_encoder",
    "build_model",
    "coco_voc_pairs",
    "keep_rows",
    "load_coco_voc",
    "pretrained_weights_file",
    "register_encoder",
    "register_head",
    "voc_rows",
]
