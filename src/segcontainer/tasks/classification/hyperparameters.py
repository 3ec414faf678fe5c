"""Image classification's hyperparameters: the built-in's table (IC-Hyperparameter.md) plus this
container's extras shared with segmentation. Each is defined once below with its default and the
reason for it; the parsers and the resolving are config.params'.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from segcontainer.config.params import (
    REQUIRED,
    SHARED,
    Optimization,
    Param,
    TableValues,
    boolean,
    choice,
    class_names_problems,
    epoch_list,
    integer,
    parse_table,
    real,
)

log = logging.getLogger(__name__)

IMAGENET_LAYERS = (18, 34, 50, 101, 152, 200)  # ImageNet-style ResNets (224-px input)
CIFAR_LAYERS = (20, 32, 44, 56, 110)  # three-stage ResNets for small images (He et al. 2016)
NUM_LAYERS = IMAGENET_LAYERS + CIFAR_LAYERS
AUGMENTATIONS = ("crop", "crop_color", "crop_color_transform")
KV_STORES = ("dist_sync", "dist_async", "local", "device")


def num_layers(text: str) -> int:
    value = integer(1)(text)
    if value not in NUM_LAYERS:
        raise ValueError(f"one of {', '.join(map(str, NUM_LAYERS))}")
    return value


def image_shape(text: str) -> tuple[int, int, int]:
    """``channels,height,width``, e.g. ``3,224,224``: 3 channels (RGB), sides of 8 or more."""
    allowed = 'channels,height,width with 3 channels and sides of at least 8, e.g. "3,224,224"'
    try:
        shape = tuple(int(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        raise ValueError(allowed) from None
    if len(shape) != 3 or shape[0] != 3 or min(shape[1:]) < 8:
        raise ValueError(allowed)
    return shape


def optional(parse):
    """A parser that also takes "none" (the built-in's spelling of unset)."""

    def parse_or_none(text: str):
        return None if text.strip().lower() in ("none", "") else parse(text)

    return parse_or_none


SPEC: dict[str, Param] = {
    "num_classes": Param(REQUIRED, integer(2), "depends on the data"),
    "num_training_samples": Param(REQUIRED, integer(1), "required by the built-in"),
    "augmentation_type": Param(
        None, optional(choice(*AUGMENTATIONS)), "none: the built-in trains on plain crops"
    ),
    "beta_1": Param(0.9, real(0, 1, high_open=True), "adam's first-moment decay"),
    "beta_2": Param(0.999, real(0, 1, high_open=True), "adam's second-moment decay"),
    "eps": Param(1e-8, real(0, 1, low_open=True), "adam's and rmsprop's epsilon"),
    "checkpoint_frequency": Param(
        None, optional(integer(1)), "none: model/ keeps the best validation epoch only"
    ),
    "early_stopping": Param(False, boolean, "the built-in trains all epochs unless asked"),
    "early_stopping_min_epochs": Param(10, integer(0), "the built-in's default"),
    "early_stopping_patience": Param(5, integer(0), "the built-in's default"),
    "early_stopping_tolerance": Param(0.0, real(0, 1), "relative accuracy gain that counts"),
    "epochs": Param(30, integer(1), "the built-in's default"),
    "gamma": Param(0.9, real(0, 1), "rmsprop's squared-gradient decay"),
    "image_shape": Param((3, 224, 224), image_shape, "the pretrained models' input size"),
    "kv_store": Param(
        None, optional(choice(*KV_STORES)), "accepted: training is synchronous data parallel"
    ),
    "learning_rate": Param(0.1, real(0, 1, low_open=True), "the built-in's default"),
    "lr_scheduler_factor": Param(0.1, real(0, 1), "lr multiplier at each step epoch"),
    "lr_scheduler_step": Param(None, optional(epoch_list), "none: a constant learning rate"),
    "mini_batch_size": Param(32, integer(1), "the built-in's default, per host"),
    "momentum": Param(0.9, real(0, 1), "sgd and nag momentum"),
    "multi_label": Param(False, boolean, "1: several labels per image (sigmoid, BCE)"),
    "num_layers": Param(152, num_layers, "the built-in's default depth"),
    "optimizer": Param("sgd", choice("sgd", "adam", "rmsprop", "nag"), "the built-in's default"),
    "precision_dtype": Param(
        "float32", choice("float32", "float16"), "float16: mixed precision on a GPU"
    ),
    "resize": Param(None, optional(integer(8)), "none: images are used at their own size"),
    "top_k": Param(None, optional(integer(2)), "none: top-1 accuracy only"),
    "use_pretrained_model": Param(False, boolean, "the built-in trains from scratch unless asked"),
    "use_weighted_loss": Param(False, boolean, "multi-label only: weights by label frequency"),
    "weight_decay": Param(0.0001, real(0, 1, high_open=True), "the built-in's default"),
    **SHARED,  # this container's additions, shared with segmentation's table
}


@dataclass(frozen=True)
class ClassificationConfig(TableValues):
    """The resolved hyperparameters, one typed field per entry of SPEC (same names, same
    order); ``given``: the names the user set."""

    num_classes: int
    num_training_samples: int
    augmentation_type: str | None
    beta_1: float
    beta_2: float
    eps: float
    checkpoint_frequency: int | None
    early_stopping: bool
    early_stopping_min_epochs: int
    early_stopping_patience: int
    early_stopping_tolerance: float
    epochs: int
    gamma: float
    image_shape: tuple[int, int, int]
    kv_store: str | None
    learning_rate: float
    lr_scheduler_factor: float
    lr_scheduler_step: tuple[int, ...] | None
    mini_batch_size: int
    momentum: float
    multi_label: bool
    num_layers: int
    optimizer: str
    precision_dtype: str
    resize: int | None
    top_k: int | None
    use_pretrained_model: bool
    use_weighted_loss: bool
    weight_decay: float
    workers: str | int
    class_names: tuple[str, ...]
    seed: int
    input_pipeline: str
    compile_model: str
    export: tuple[str, ...]
    given: frozenset[str] = field(default=frozenset())
    # The built-in's batch norm is per device: no synchronised batch norm across GPUs.
    syncbn: ClassVar[bool] = False

    @property
    def precision(self) -> str:
        """The container's precision policy (segcontainer.precision) for precision_dtype:
        float16 is mixed precision, in bf16 where the GPU computes it natively (as fast, and
        no overflow), else fp16 with the gradient scaler; float32 is fp32."""
        return "auto" if self.precision_dtype == "float16" else "fp32"

    def divergence_hints(self) -> tuple[str, ...]:
        """This table's settings that can make the loss nan, for the failure message."""
        return ()

    def optimization(self) -> Optimization:
        """The optimizer and schedule settings (training.optim): a step schedule at
        lr_scheduler_step (none: a constant rate), plain rmsprop with gamma as its decay."""
        return Optimization(
            optimizer=self.optimizer,
            learning_rate=self.learning_rate,
            epochs=self.epochs,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            adam_betas=(self.beta_1, self.beta_2),
            eps=self.eps,
            rmsprop_decay=self.gamma,
            schedule="step",
            step_epochs=self.lr_scheduler_step or (),
            factor=self.lr_scheduler_factor,
        )


def resolve(given: Mapping[str, str]) -> ClassificationConfig:
    """SageMaker's string map as typed values, or UserError listing every problem."""
    values = parse_table(SPEC, given, _cross_checks)
    if values["kv_store"] is not None:
        log.info(
            "kv_store=%s: this container trains synchronous data parallel "
            "(torch.distributed all-reduce) whatever the MXNet key-value store named",
            values["kv_store"],
        )
    return ClassificationConfig(**values, given=frozenset(given))


def _cross_checks(values: dict[str, object], given: Mapping[str, str]) -> list[str]:
    problems = []
    classes, batch = values["num_classes"], values["mini_batch_size"]
    if values["num_training_samples"] < batch:
        problems.append(
            f"num_training_samples is {values['num_training_samples']} but mini_batch_size is "
            f"{batch}: the number of input images must be at least mini_batch_size. Give the "
            "real number of training images, or lower mini_batch_size"
        )
    frequency = values["checkpoint_frequency"]
    if frequency is not None and frequency > values["epochs"]:
        problems.append(
            f"checkpoint_frequency is {frequency} but epochs is {values['epochs']}: give a "
            "frequency of at most epochs"
        )
    top_k = values["top_k"]
    if top_k is not None and top_k > classes:
        problems.append(f"top_k is {top_k} but num_classes is {classes}: give at most num_classes")
    if values["use_weighted_loss"] and not values["multi_label"]:
        problems.append("use_weighted_loss applies to multi-label training: set multi_label=1")
    if values["use_pretrained_model"] and values["num_layers"] not in IMAGENET_LAYERS[:-1]:
        problems.append(
            f"use_pretrained_model=1 needs ImageNet weights, which num_layers="
            f"{values['num_layers']} has none of (torchvision publishes them for 18, 34, 50, "
            "101 and 152): choose one of those, or set use_pretrained_model=0"
        )
    return problems + class_names_problems(values["class_names"], classes)
