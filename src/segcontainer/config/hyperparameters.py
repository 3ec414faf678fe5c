"""The hyperparameters: the built-in's 24 (contract §2.2) plus a few of this project's.

Each one is defined once below with its default and the reason for it (``config.params``: the
parsers). SageMaker sends every value as a string; every violation names the parameter, the
value received and what is allowed.
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
    class_weights,
    epoch_list,
    integer,
    parse_table,
    real,
    registered,
)
from segcontainer.models import COCO_VOC, ENCODERS, HEADS, PRETRAINED_WEIGHTS, coco_voc_pairs
from segcontainer.precision import PRECISIONS

log = logging.getLogger(__name__)

# The training losses (tasks.segmentation.losses); "a+b" is their sum.
LOSSES = ("cross_entropy", "dice", "focal", "lovasz", "cross_entropy+dice")

# --- the hyperparameters ---------------------------------------------------------------------

BUILTIN: dict[str, Param] = {
    "backbone": Param("resnet-50", registered(ENCODERS), "the built-in's default encoder"),
    "algorithm": Param("fcn", registered(HEADS), "the built-in's default decoder"),
    "use_pretrained_model": Param(True, boolean, "ImageNet encoders converge far faster"),
    "num_classes": Param(
        REQUIRED, integer(2, 254), "depends on the data; 255 is reserved for ignore"
    ),
    "num_training_samples": Param(None, integer(1), "optional here: the trainer counts the files"),
    "base_size": Param(520, integer(17), "long side before the 0.5-2.0 random rescale"),
    "crop_size": Param(240, integer(17), "training crop; rounded up to a multiple of 8"),
    "early_stopping": Param(False, boolean, "the built-in trains all epochs unless asked"),
    "early_stopping_min_epochs": Param(5, integer(0), "let the schedule warm up before judging"),
    "early_stopping_patience": Param(
        4, integer(0), "epochs without enough mIoU gain before stopping"
    ),
    "early_stopping_tolerance": Param(
        0.0, real(0, 1), "relative mIoU gain that counts as improved"
    ),
    "epochs": Param(10, integer(1), "the built-in's default"),
    "gamma1": Param(0.9, real(0, 1), "rmsprop squared-gradient decay"),
    "gamma2": Param(0.9, real(0, 1), "rmsprop momentum"),
    "learning_rate": Param(0.001, real(0, 1, low_open=True), "the built-in's default"),
    "lr_scheduler": Param(
        "poly", choice("poly", "step", "cosine"), "poly is the segmentation norm"
    ),
    "lr_scheduler_factor": Param(0.1, real(0, 1), "lr multiplier at each step epoch"),
    "lr_scheduler_step": Param(None, epoch_list, "needed only by the step scheduler"),
    "mini_batch_size": Param(16, integer(1), "the built-in's default, per host"),
    "momentum": Param(0.9, real(0, 1, low_open=True), "sgd and nag momentum"),
    "optimizer": Param(
        "sgd", choice("sgd", "nag", "adam", "adagrad", "rmsprop"), "built-in default"
    ),
    "syncbn": Param(False, boolean, "batch-norm statistics across GPUs; needs several GPUs"),
    "validation_mini_batch_size": Param(
        16, integer(1), "whole validation images, padded per batch"
    ),
    "weight_decay": Param(0.0001, real(0, 1, low_open=True, high_open=True), "sgd and nag only"),
}

# This project's additions; each default keeps the built-in's behaviour.
EXTRA: dict[str, Param] = {
    "precision": Param(
        "auto", choice(*PRECISIONS), "auto: bf16 (fp16 before Ampere) on GPU, fp32 on CPU"
    ),
    "workers": SHARED["workers"],
    "loss": Param(
        "cross_entropy", choice(*LOSSES), "the built-in's; the others favour rare classes"
    ),
    "class_weights": Param("none", class_weights, "none: plain cross-entropy, as the built-in"),
    "class_names": SHARED["class_names"],
    "seed": SHARED["seed"],
    "input_pipeline": SHARED["input_pipeline"],
    "compile_model": SHARED["compile_model"],
    "aux_loss_weight": Param(
        0.0, real(0, 10), "auxiliary FCN head on layer3 while training; 0 = off, as the built-in"
    ),
    "export": SHARED["export"],
    "pretrained_weights": Param(
        "imagenet",
        choice(*PRETRAINED_WEIGHTS),
        "imagenet: the built-in's meaning of use_pretrained_model (encoder only); coco-voc: "
        "torchvision's whole-model segmentation weights, where published",
    ),
    "incremental_new_classes": Param(
        False,
        boolean,
        "the built-in refuses a model channel with another class set; opting in keeps encoder "
        "and decoder and re-initialises the classifier",
    ),
}

SPEC: dict[str, Param] = {**BUILTIN, **EXTRA}


@dataclass(frozen=True)
class Config(TableValues):
    """The resolved hyperparameters, one typed field per entry of SPEC (same names, same order;
    SPEC holds the defaults and the reasons).

    ``given``: the names the user set, as opposed to those left at their default (the export
    policy depends on it: a format asked for explicitly that fails fails the job)."""

    backbone: str
    algorithm: str
    use_pretrained_model: bool
    num_classes: int
    num_training_samples: int | None
    base_size: int
    crop_size: int
    early_stopping: bool
    early_stopping_min_epochs: int
    early_stopping_patience: int
    early_stopping_tolerance: float
    epochs: int
    gamma1: float
    gamma2: float
    learning_rate: float
    lr_scheduler: str
    lr_scheduler_factor: float
    lr_scheduler_step: tuple[int, ...] | None
    mini_batch_size: int
    momentum: float
    optimizer: str
    syncbn: bool
    validation_mini_batch_size: int
    weight_decay: float
    # this project's additions
    precision: str
    workers: str | int
    loss: str
    class_weights: str | tuple[float, ...]
    class_names: tuple[str, ...]
    seed: int
    input_pipeline: str
    compile_model: str
    aux_loss_weight: float
    export: tuple[str, ...]
    pretrained_weights: str
    incremental_new_classes: bool
    given: frozenset[str] = field(default=frozenset())
    # The built-in keeps the best epoch only (image classification's checkpoint_frequency
    # keeps more); the epoch loop reads this of any task's config.
    checkpoint_frequency: ClassVar[None] = None

    def divergence_hints(self) -> tuple[str, ...]:
        """This table's settings that can make the loss nan, for the failure message."""
        return (f"class_weights too large (this job: {self.class_weights})",)

    def optimization(self) -> Optimization:
        """The optimizer and schedule settings (training.optim)."""
        return Optimization(
            optimizer=self.optimizer,
            learning_rate=self.learning_rate,
            epochs=self.epochs,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            rmsprop_decay=self.gamma1,
            rmsprop_momentum=self.gamma2,
            schedule=self.lr_scheduler,
            step_epochs=self.lr_scheduler_step or (),
            factor=self.lr_scheduler_factor,
        )


def resolve(given: Mapping[str, str]) -> Config:
    """Turn SageMaker's string map into typed values, or raise UserError listing every problem."""
    values = parse_table(SPEC, given, _cross_checks)
    if values["crop_size"] % 8:
        rounded = -(-values["crop_size"] // 8) * 8
        log.info("crop_size %d rounded up to %d (a multiple of 8)", values["crop_size"], rounded)
        values["crop_size"] = rounded
    if values["lr_scheduler"] != "step" and values["lr_scheduler_step"] is not None:
        log.warning("lr_scheduler_step is ignored: lr_scheduler is %s", values["lr_scheduler"])
    if values["optimizer"] not in ("sgd", "nag") and (
        "momentum" in given or "weight_decay" in given
    ):
        log.warning(
            "momentum and weight_decay apply to sgd and nag only; ignored for %s",
            values["optimizer"],
        )
    return Config(**values, given=frozenset(given))


def _cross_checks(values: dict[str, object], given: Mapping[str, str]) -> list[str]:
    problems = []
    if values["lr_scheduler"] == "step" and values["lr_scheduler_step"] is None:
        problems.append(
            "lr_scheduler=step needs lr_scheduler_step, the epochs after which the learning rate "
            'is multiplied by lr_scheduler_factor, e.g. "10, 20"'
        )
    weights = values["class_weights"]
    if isinstance(weights, tuple) and len(weights) != values["num_classes"]:
        problems.append(
            f"class_weights has {len(weights)} numbers but num_classes is {values['num_classes']}: "
            "give one weight per class, or 'auto'"
        )
    samples = values["num_training_samples"]
    if samples is not None and samples < values["mini_batch_size"]:
        problems.append(
            f"num_training_samples is {samples} but mini_batch_size is "
            f"{values['mini_batch_size']}: not one full batch per epoch (the last partial batch "
            "is dropped). Give the real number of training pairs, or lower mini_batch_size"
        )
    return (
        problems
        + _pretrained_problems(values)
        + class_names_problems(values["class_names"], values["num_classes"])
    )


def _pretrained_problems(values: dict[str, object]) -> list[str]:
    if values["pretrained_weights"] != "coco-voc":
        return []
    if not values["use_pretrained_model"]:
        return [
            "pretrained_weights=coco-voc loads pretrained weights but use_pretrained_model is "
            "False (train from scratch): set use_pretrained_model=True, or leave "
            "pretrained_weights at imagenet"
        ]
    if (values["algorithm"], values["backbone"]) not in COCO_VOC:
        return [
            f"pretrained_weights=coco-voc: torchvision publishes no COCO-with-VOC weights for "
            f"algorithm={values['algorithm']} with backbone={values['backbone']}; it does for "
            f"{coco_voc_pairs()}. Choose one of those pairs, or pretrained_weights=imagenet"
        ]
    return []
