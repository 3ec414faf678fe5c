"""segcontainer.hyperparameters.resolve, fed strings as SageMaker sends them (§1.3, §2.2)."""

from __future__ import annotations

import dataclasses

import pytest

from segcontainer.config import hyperparameters
from segcontainer.config.hyperparameters import resolve
from segcontainer.errors import UserError

DEFAULTS = {
    "backbone": "resnet-50",
    "algorithm": "fcn",
    "use_pretrained_model": True,
    "num_training_samples": None,
    "base_size": 520,
    "crop_size": 240,
    "early_stopping": False,
    "early_stopping_min_epochs": 5,
    "early_stopping_patience": 4,
    "early_stopping_tolerance": 0.0,
    "epochs": 10,
    "gamma1": 0.9,
    "gamma2": 0.9,
    "learning_rate": 0.001,
    "lr_scheduler": "poly",
    "lr_scheduler_factor": 0.1,
    "lr_scheduler_step": None,
    "mini_batch_size": 16,
    "momentum": 0.9,
    "optimizer": "sgd",
    "syncbn": False,
    "validation_mini_batch_size": 16,
    "weight_decay": 0.0001,
    # this project's additions
    "precision": "auto",
    "workers": "auto",
    "loss": "cross_entropy",
    "class_weights": "none",
    "class_names": (),
    "seed": 0,
    "input_pipeline": "auto",
    "compile_model": "auto",
    "aux_loss_weight": 0.0,
    "export": ("onnx", "int8"),
    "pretrained_weights": "imagenet",
    "incremental_new_classes": False,
}


def resolve_with(**given: str) -> hyperparameters.Config:
    """resolve() with num_classes "3" unless the caller gives its own."""
    return resolve({"num_classes": "3", **given})


def error_of(given: dict[str, str]) -> str:
    with pytest.raises(UserError) as info:
        resolve(given)
    return str(info.value)


# --- the table itself -------------------------------------------------------------------------


def test_builtin_has_exactly_the_24_contract_names():
    assert len(hyperparameters.BUILTIN) == 24
    assert set(hyperparameters.BUILTIN) == CONTRACT_NAMES


# Every hyperparameter in the order hyperparams.json and the start-up log list them: the
# contract's 24 (§2.2), then this project's additions (the README's table).
SPEC_ORDER = [
    "backbone",
    "algorithm",
    "use_pretrained_model",
    "num_classes",
    "num_training_samples",
    "base_size",
    "crop_size",
    "early_stopping",
    "early_stopping_min_epochs",
    "early_stopping_patience",
    "early_stopping_tolerance",
    "epochs",
    "gamma1",
    "gamma2",
    "learning_rate",
    "lr_scheduler",
    "lr_scheduler_factor",
    "lr_scheduler_step",
    "mini_batch_size",
    "momentum",
    "optimizer",
    "syncbn",
    "validation_mini_batch_size",
    "weight_decay",
    "precision",
    "workers",
    "loss",
    "class_weights",
    "class_names",
    "seed",
    "input_pipeline",
    "compile_model",
    "aux_loss_weight",
    "export",
    "pretrained_weights",
    "incremental_new_classes",
]
CONTRACT_NAMES = set(SPEC_ORDER[:24])  # the built-in algorithm's 24 (contract §2.2)


def test_spec_is_the_contract_names_then_the_additions():
    assert list(hyperparameters.SPEC) == SPEC_ORDER
    assert set(SPEC_ORDER[24:]) == set(DEFAULTS) - CONTRACT_NAMES


def test_config_fields_are_the_table_names_in_order():
    """One typed field per hyperparameter, named as in SPEC, plus ``given``."""
    names = [f.name for f in dataclasses.fields(hyperparameters.Config)]
    assert names == [*hyperparameters.SPEC, "given"]


def test_resolved_keys_are_spec_keys_in_order():
    config = resolve({"num_classes": "21"})
    assert list(config.as_dict()) == list(hyperparameters.SPEC)


def test_resolved_keys_keep_spec_order_whatever_the_given_order():
    config = resolve({"seed": "3", "epochs": "2", "num_classes": "21", "backbone": "resnet-101"})
    assert list(config.as_dict()) == list(hyperparameters.SPEC)
    assert config.given == {"seed", "epochs", "num_classes", "backbone"}


def test_config_is_frozen():
    config = resolve({"num_classes": "21"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3


@pytest.mark.parametrize(("name", "expected"), DEFAULTS.items(), ids=list(DEFAULTS))
def test_default_when_only_num_classes_is_given(name, expected):
    value = getattr(resolve({"num_classes": "21"}), name)
    assert value == expected
    assert type(value) is type(expected)


def test_defaults_cover_every_parameter_but_num_classes():
    assert set(DEFAULTS) | {"num_classes"} == set(hyperparameters.SPEC)


def test_config_allows_attribute_access():
    config = resolve_with(epochs="7")
    assert config.epochs == 7
    assert config.num_classes == 3
    with pytest.raises(AttributeError):
        _ = config.no_such_parameter


# --- good values ------------------------------------------------------------------------------

GOOD = [
    ("num_classes", "2", 2),
    ("num_classes", "254", 254),
    ("num_classes", "21", 21),
    ("num_classes", "16.0", 16),
    ("num_classes", " 4 ", 4),
    ("use_pretrained_model", "True", True),
    ("use_pretrained_model", "true", True),
    ("use_pretrained_model", "TRUE", True),
    ("use_pretrained_model", "1", True),
    ("use_pretrained_model", "False", False),
    ("use_pretrained_model", "false", False),
    ("use_pretrained_model", "FALSE", False),
    ("use_pretrained_model", "0", False),
    ("early_stopping", "True", True),
    ("early_stopping", "false", False),
    ("syncbn", "True", True),
    ("syncbn", "False", False),
    ("backbone", "resnet-50", "resnet-50"),
    ("backbone", "resnet-101", "resnet-101"),
    ("backbone", "ResNet-101", "resnet-101"),
    ("algorithm", "fcn", "fcn"),
    ("algorithm", "psp", "psp"),
    ("algorithm", "deeplab", "deeplab"),
    ("algorithm", "FCN", "fcn"),
    ("algorithm", "DeepLab", "deeplab"),
    ("optimizer", "sgd", "sgd"),
    ("optimizer", "nag", "nag"),
    ("optimizer", "adam", "adam"),
    ("optimizer", "adagrad", "adagrad"),
    ("optimizer", "rmsprop", "rmsprop"),
    ("optimizer", "RMSProp", "rmsprop"),
    ("lr_scheduler", "poly", "poly"),
    ("lr_scheduler", "cosine", "cosine"),
    ("lr_scheduler", "Cosine", "cosine"),
    ("precision", "fp32", "fp32"),
    ("precision", "bf16", "bf16"),
    ("precision", "fp16", "fp16"),
    ("precision", "AUTO", "auto"),
    ("learning_rate", "1", 1.0),
    ("learning_rate", "0.0001", 0.0001),
    ("learning_rate", "1e-05", 1e-05),
    ("momentum", "1", 1.0),
    ("momentum", "0.99", 0.99),
    ("weight_decay", "1e-05", 1e-05),
    ("weight_decay", "0.5", 0.5),
    ("gamma1", "0", 0.0),
    ("gamma1", "1", 1.0),
    ("gamma2", "0", 0.0),
    ("gamma2", "1", 1.0),
    ("early_stopping_tolerance", "0", 0.0),
    ("early_stopping_tolerance", "1", 1.0),
    ("early_stopping_tolerance", "0.05", 0.05),
    ("lr_scheduler_factor", "0", 0.0),
    ("lr_scheduler_factor", "1", 1.0),
    ("base_size", "17", 17),
    ("base_size", "520", 520),
    ("crop_size", "240", 240),
    ("epochs", "1", 1),
    ("epochs", "30", 30),
    ("mini_batch_size", "1", 1),
    ("mini_batch_size", "16", 16),
    ("validation_mini_batch_size", "8", 8),
    ("num_training_samples", "16", 16),
    ("num_training_samples", "1464", 1464),
    ("early_stopping_min_epochs", "0", 0),
    ("early_stopping_min_epochs", "10", 10),
    ("early_stopping_patience", "0", 0),
    ("early_stopping_patience", "2", 2),
    ("lr_scheduler_step", "10, 20", (10, 20)),
    ("lr_scheduler_step", "10,20", (10, 20)),
    ("lr_scheduler_step", "5", (5,)),
    ("workers", "auto", "auto"),
    ("workers", "0", 0),
    ("workers", "4", 4),
    ("class_weights", "auto", "auto"),
    ("class_weights", "none", "none"),
    ("class_weights", "1,2,3", (1.0, 2.0, 3.0)),
    ("class_weights", "0.5, 1, 2.5", (0.5, 1.0, 2.5)),
    ("class_names", "background, cat, dog", ("background", "cat", "dog")),
    ("seed", "0", 0),
    ("seed", "42", 42),
]


@pytest.mark.parametrize(("name", "text", "expected"), GOOD)
def test_good_value_is_accepted_and_typed(name, text, expected):
    value = getattr(resolve_with(**{name: text}), name)
    assert value == expected
    assert type(value) is type(expected)


# --- bad values -------------------------------------------------------------------------------

BAD = [
    ("num_classes", "1", "2 to 254"),
    ("num_classes", "255", "2 to 254"),
    ("num_classes", "abc", "2 to 254"),
    ("num_classes", "3.5", "2 to 254"),
    ("num_classes", "", "2 to 254"),
    ("use_pretrained_model", "maybe", "True or False"),
    ("early_stopping", "yes please", "True or False"),
    ("syncbn", "2", "True or False"),
    ("backbone", "resnet-152", "resnet-50, resnet-101"),
    ("backbone", "resnet50", "resnet-50, resnet-101"),
    ("algorithm", "unet", "fcn, psp, deeplab"),
    ("optimizer", "adadelta", "sgd, nag, adam, adagrad, rmsprop"),
    ("lr_scheduler", "linear", "poly, step, cosine"),
    ("precision", "fp64", "auto, fp32, bf16, fp16"),
    ("learning_rate", "0", "(0, 1]"),
    ("learning_rate", "1.5", "(0, 1]"),
    ("learning_rate", "nan", "(0, 1]"),
    ("learning_rate", "-0.001", "(0, 1]"),
    ("learning_rate", "fast", "(0, 1]"),
    ("momentum", "0", "(0, 1]"),
    ("momentum", "1.01", "(0, 1]"),
    ("weight_decay", "0", "(0, 1)"),
    ("weight_decay", "1", "(0, 1)"),
    ("gamma1", "-0.1", "[0, 1]"),
    ("gamma1", "1.1", "[0, 1]"),
    ("gamma2", "-0.1", "[0, 1]"),
    ("gamma2", "1.1", "[0, 1]"),
    ("early_stopping_tolerance", "-0.1", "[0, 1]"),
    ("early_stopping_tolerance", "1.1", "[0, 1]"),
    ("lr_scheduler_factor", "-0.1", "[0, 1]"),
    ("lr_scheduler_factor", "1.1", "[0, 1]"),
    ("lr_scheduler_factor", "nan", "[0, 1]"),
    ("base_size", "16", ">= 17"),
    ("crop_size", "16", ">= 17"),
    ("crop_size", "240.5", ">= 17"),
    ("epochs", "0", ">= 1"),
    ("epochs", "-3", ">= 1"),
    ("mini_batch_size", "0", ">= 1"),
    ("validation_mini_batch_size", "0", ">= 1"),
    ("num_training_samples", "0", ">= 1"),
    ("early_stopping_min_epochs", "-1", ">= 0"),
    ("early_stopping_patience", "-1", ">= 0"),
    ("seed", "-1", ">= 0"),
    ("lr_scheduler_step", "20,10", "increasing epoch numbers"),
    ("lr_scheduler_step", "10,10", "increasing epoch numbers"),
    ("lr_scheduler_step", "0", "increasing epoch numbers"),
    ("lr_scheduler_step", "a", "increasing epoch numbers"),
    ("lr_scheduler_step", "", "increasing epoch numbers"),
    ("class_weights", "0,1,1", "one positive number per class"),
    ("class_weights", "-1,1,1", "one positive number per class"),
    ("class_weights", "heavy", "one positive number per class"),
    ("class_weights", "1,nan,1", "one positive number per class"),
    # an infinite weight turns the weighted cross-entropy into nan (inf / inf)
    ("class_weights", "inf,1,1", "one positive number per class"),
    ("class_weights", "1,1e999,1", "one positive number per class"),
    ("workers", "-1", "auto or an integer from 0 to 64"),
    ("workers", "65", "auto or an integer from 0 to 64"),
    ("workers", "many", "auto or an integer from 0 to 64"),
]


@pytest.mark.parametrize(("name", "text", "allowed"), BAD)
def test_bad_value_error_names_parameter_value_and_allowed(name, text, allowed):
    message = error_of({"num_classes": "3", name: text})
    assert f"'{name}' = '{text}'" in message
    assert allowed in message


def test_bad_value_error_is_a_single_line_starting_with_a_summary():
    message = error_of({"num_classes": "1"})
    assert message.startswith("Invalid hyperparameters: ")
    assert "\n" not in message


# --- crop_size rounding -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("240", 240), ("241", 248), ("247", 248), ("248", 248), ("17", 24), ("24", 24)],
)
def test_crop_size_is_rounded_up_to_a_multiple_of_8(text, expected):
    assert resolve_with(crop_size=text).crop_size == expected


def test_base_size_is_not_rounded():
    assert resolve_with(base_size="241").base_size == 241


# --- the step scheduler -----------------------------------------------------------------------


def test_step_scheduler_without_steps_is_an_error_naming_lr_scheduler_step():
    message = error_of({"num_classes": "3", "lr_scheduler": "step"})
    assert "lr_scheduler_step" in message


def test_step_scheduler_with_steps_parses_them():
    config = resolve_with(lr_scheduler="step", lr_scheduler_step="10, 20")
    assert config.lr_scheduler == "step"
    assert config.lr_scheduler_step == (10, 20)


def test_steps_without_step_scheduler_are_kept_but_harmless():
    config = resolve_with(lr_scheduler="poly", lr_scheduler_step="10, 20")
    assert config.lr_scheduler == "poly"
    assert config.lr_scheduler_step == (10, 20)


# --- class weights and names against num_classes ----------------------------------------------


def test_class_weights_count_must_match_num_classes():
    message = error_of({"num_classes": "3", "class_weights": "1,2"})
    assert "class_weights" in message
    assert "2 numbers" in message
    assert "num_classes is 3" in message


def test_num_training_samples_below_the_batch_size_is_refused():
    """Pipe mode sizes the schedule from it: below one batch the schedule would be empty."""
    message = error_of({"num_classes": "3", "num_training_samples": "8", "mini_batch_size": "16"})
    assert "num_training_samples is 8 but mini_batch_size is 16" in message
    assert "not one full batch" in message
    resolve_with(num_training_samples="16", mini_batch_size="16")  # one batch is enough


def test_class_names_count_must_match_num_classes():
    message = error_of({"num_classes": "3", "class_names": "background,cat"})
    assert "class_names" in message
    assert "num_classes is 3" in message


def test_class_names_matching_num_classes_are_accepted():
    config = resolve_with(class_names="background,cat,dog")
    assert config.class_names == ("background", "cat", "dog")


# --- required and unknown names ---------------------------------------------------------------


def test_missing_num_classes_is_reported_as_required():
    message = error_of({"epochs": "10"})
    assert "'num_classes' is required" in message


def test_empty_map_reports_num_classes_required():
    assert "'num_classes' is required" in error_of({})


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [
        ("epoch", "epochs"),
        ("learningrate", "learning_rate"),
        ("minibatch_size", "mini_batch_size"),
        ("use_pretrained", "use_pretrained_model"),
    ],
)
def test_unknown_name_suggests_the_closest_valid_name(typo, suggestion):
    message = error_of({"num_classes": "3", typo: "1"})
    assert f"unknown hyperparameter '{typo}'" in message
    assert f"Did you mean '{suggestion}'?" in message


def test_unknown_name_without_close_match_lists_valid_names_and_no_guess():
    message = error_of({"num_classes": "3", "zzzzqqq": "1"})
    assert "unknown hyperparameter 'zzzzqqq'" in message
    assert "Did you mean" not in message
    assert "num_classes" in message and "learning_rate" in message


def test_several_problems_are_reported_in_one_error():
    message = error_of(
        {"num_classes": "1", "epochs": "0", "backbone": "vgg", "learningrate": "0.1"}
    )
    assert "'num_classes' = '1'" in message
    assert "'epochs' = '0'" in message
    assert "'backbone' = 'vgg'" in message
    assert "'learningrate'" in message


def test_missing_required_and_bad_value_are_reported_together():
    message = error_of({"epochs": "0"})
    assert "'num_classes' is required" in message
    assert "'epochs' = '0'" in message


# --- a realistic job --------------------------------------------------------------------------


def test_sample_notebook_hyperparameters_resolve_to_typed_values():
    given = {
        "backbone": "resnet-50",
        "algorithm": "fcn",
        "use_pretrained_model": "True",
        "crop_size": "240",
        "num_classes": "21",
        "epochs": "10",
        "learning_rate": "0.0001",
        "optimizer": "rmsprop",
        "lr_scheduler": "poly",
        "mini_batch_size": "16",
        "validation_mini_batch_size": "16",
        "early_stopping": "True",
        "early_stopping_patience": "2",
        "early_stopping_min_epochs": "10",
        "num_training_samples": "1464",
    }
    config = resolve(given)
    expected = {
        "backbone": "resnet-50",
        "algorithm": "fcn",
        "use_pretrained_model": True,
        "crop_size": 240,
        "num_classes": 21,
        "epochs": 10,
        "learning_rate": 0.0001,
        "optimizer": "rmsprop",
        "lr_scheduler": "poly",
        "mini_batch_size": 16,
        "validation_mini_batch_size": 16,
        "early_stopping": True,
        "early_stopping_patience": 2,
        "early_stopping_min_epochs": 10,
        "num_training_samples": 1464,
    }
    assert {name: getattr(config, name) for name in expected} == expected
    assert config.use_pretrained_model is True and config.early_stopping is True
    # everything not given keeps its default
    assert {name: getattr(config, name) for name in DEFAULTS if name not in given} == {
        name: value for name, value in DEFAULTS.items() if name not in given
    }


def test_describe_lists_every_hyperparameter_once():
    config = resolve({"num_classes": "21"})
    lines = config.describe().splitlines()
    assert len(lines) == len(hyperparameters.SPEC)
    assert any("num_classes" in line and "21" in line for line in lines)


def test_model_choices_are_the_model_registries(monkeypatch):
    """backbone and algorithm accept what models.ENCODERS/HEADS hold, registered later too."""
    from segcontainer.models import ENCODERS, HEADS
    from tests.support.models import register_tiny_encoder

    assert error_of({"num_classes": "3", "backbone": "x"}).endswith(
        f"one of {', '.join(ENCODERS)}."
    )
    assert error_of({"num_classes": "3", "algorithm": "x"}).endswith(f"one of {', '.join(HEADS)}.")
    name = register_tiny_encoder(monkeypatch)
    assert resolve_with(backbone=name, use_pretrained_model="False").backbone == name


def test_the_readme_table_lists_each_hyperparameter_with_its_default() -> None:
    """The documentation's hyperparameter table (docs/hyperparameters.md) agrees with the one
    definition, SPEC: the same names in the same order, each default as the table's default
    column begins, every choice named, each reason as SPEC gives it."""
    from tests.support.readme import assert_table_is_spec, page, table_rows

    assert_table_is_spec(table_rows(page("hyperparameters")), hyperparameters.SPEC)
