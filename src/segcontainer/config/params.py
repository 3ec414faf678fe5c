"""The machinery of a hyperparameter table, shared by every task's: ``Param`` (default, parser,
reason) and the parsers. SageMaker sends every value as a string, so each parser takes a string
and raises ValueError naming what is allowed (the table's resolver adds the name and the value).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

from segcontainer.errors import UserError

REQUIRED = object()  # sentinel: the parameter has no default


@dataclass(frozen=True)
class Param:
    default: object
    parse: Callable[[str], object]  # str -> value; raises ValueError with the allowed values
    reason: str  # why this default, one line


# --- parsers ---------------------------------------------------------------------------------


def choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ValueError(f"one of {', '.join(options)}")
        return value

    return parse


def registered(registry: Mapping[str, object]) -> Callable[[str], str]:
    """A choice among a registry's names (models.ENCODERS, models.HEADS), read when a value is
    parsed: the registry is the one list of what exists."""

    def parse(text: str) -> str:
        return choice(*registry)(text)

    return parse


def boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise ValueError("True or False (case-insensitive)")


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    allowed = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"

    def parse(text: str) -> int:
        try:
            number = float(text.strip())  # "16.0" is what some tuners send for integers
        except ValueError:
            raise ValueError(allowed) from None
        if not number.is_integer() or number < low or (high is not None and number > high):
            raise ValueError(allowed)
        return int(number)

    return parse


def real(low: float, high: float, low_open: bool = False, high_open: bool = False):
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    allowed = f"a number in {lo}{low}, {high}{hi}"

    def parse(text: str) -> float:
        try:
            number = float(text.strip())
        except ValueError:
            raise ValueError(allowed) from None
        too_low = number <= low if low_open else number < low
        too_high = number >= high if high_open else number > high
        if math.isnan(number) or too_low or too_high:
            raise ValueError(allowed)
        return number

    return parse


def epoch_list(text: str) -> tuple[int, ...]:
    allowed = 'comma-separated, increasing epoch numbers > 0, e.g. "10, 20"'
    try:
        steps = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(allowed) from None
    if not steps or any(s <= 0 for s in steps) or list(steps) != sorted(set(steps)):
        raise ValueError(allowed)
    return steps


def class_weights(text: str) -> str | tuple[float, ...]:
    allowed = 'none, auto (median-frequency balancing) or one positive number per class, e.g. "1,5"'
    value = text.strip().lower()
    if value in ("none", "auto"):
        return value
    try:
        weights = tuple(float(part) for part in value.split(","))
    except ValueError:
        raise ValueError(allowed) from None
    if any(not (w > 0 and math.isfinite(w)) for w in weights):
        raise ValueError(allowed)
    return weights


def workers(text: str) -> str | int:
    value = text.strip().lower()
    if value == "auto":
        return value
    try:
        return integer(0, 64)(value)
    except ValueError:
        raise ValueError("auto or an integer from 0 to 64") from None


EXPORT_FORMATS = ("onnx", "int8", "torchscript")


def export_formats(text: str) -> tuple[str, ...]:
    """``none`` or a comma-separated list of EXPORT_FORMATS, in that canonical order."""
    allowed = (
        "none or a comma-separated list of onnx, int8, torchscript (int8 is quantized from "
        'the ONNX model, so it needs onnx too), e.g. "onnx,int8"'
    )
    value = text.strip().lower()
    if value == "none":
        return ()
    chosen = {part.strip() for part in value.split(",") if part.strip()}
    if not chosen or chosen - set(EXPORT_FORMATS) or ("int8" in chosen and "onnx" not in chosen):
        raise ValueError(allowed)
    return tuple(f for f in EXPORT_FORMATS if f in chosen)


def name_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@dataclass(frozen=True, kw_only=True)
class Optimization:
    """What the optimizer and the learning-rate schedule are built from (training.optim):
    each task's config maps its own hyperparameters onto these."""

    optimizer: str  # sgd, nag, adam, adagrad, rmsprop
    learning_rate: float
    epochs: int
    momentum: float = 0.9  # sgd and nag
    weight_decay: float = 0.0  # sgd and nag
    adam_betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8  # adam and the plain rmsprop
    rmsprop_decay: float = 0.9  # the squared gradient's moving-average decay
    rmsprop_momentum: float | None = None  # set: MXNet's centered rmsprop with this momentum
    schedule: str = "step"  # poly, cosine or step
    step_epochs: tuple[int, ...] = ()  # step: the epochs after which the rate is multiplied
    factor: float = 0.1  # step: the multiplier


class TableValues:
    """Mixed into a task's frozen config dataclass: its values as a dict."""

    def as_dict(self) -> dict[str, object]:
        """name -> value of every hyperparameter, in the table's order (``given`` left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "given"}

    def describe(self) -> str:
        """One line per hyperparameter, for the start-of-job log."""
        return describe_values(self.as_dict())


def class_names_problems(names: tuple[str, ...], num_classes: int) -> list[str]:
    """class_names (when given) must name every class: a cross-check of every task's table."""
    if names and len(names) != num_classes:
        return [
            f"class_names has {len(names)} names but num_classes is {num_classes}: "
            "give one name per class"
        ]
    return []


# (values, given) -> problems no single value shows (one table's rules across its values)
CrossChecks = Callable[[dict[str, object], Mapping[str, str]], list[str]]


def parse_table(
    table: Mapping[str, Param], given: Mapping[str, str], cross_checks: CrossChecks
) -> dict[str, object]:
    """Every hyperparameter of ``table``, typed: the given value parsed, else its default; or
    UserError listing every problem at once (an unknown name with the closest known one, a
    value outside what is allowed, a required one missing, then the table's cross-checks)."""
    problems: list[str] = []
    values: dict[str, object] = {}
    for name, text in given.items():
        if name not in table:
            close = difflib.get_close_matches(name, table, n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            problems.append(f"unknown hyperparameter '{name}'.{hint} Valid: {', '.join(table)}")
            continue
        try:
            values[name] = table[name].parse(text)
        except ValueError as exc:
            problems.append(f"hyperparameter '{name}' = '{text}' is not valid: expected {exc}")
    for name, param in table.items():
        if name not in values and name not in given:
            if param.default is REQUIRED:
                problems.append(f"hyperparameter '{name}' is required ({param.reason})")
            else:
                values[name] = param.default
    if not problems:
        problems += cross_checks(values, given)
    if problems:
        raise UserError("Invalid hyperparameters: " + "; ".join(problems) + ".")
    return values


def describe_values(values: Mapping[str, object]) -> str:
    """One line per hyperparameter, for the start-of-job log."""
    width = max(map(len, values))
    return "\n".join(f"  {name:<{width}} = {value!r}" for name, value in values.items())


# This container's additions that every task's table holds (each task places them in its own
# order); each default keeps the built-ins' behaviour.
SHARED: dict[str, Param] = {
    "workers": Param("auto", workers, "auto: data-loading processes from the CPU count"),
    "class_names": Param((), name_list, "optional names for logs, model info and answers"),
    "seed": Param(0, integer(0), "fixed seed: two runs with the same data give the same model"),
    "input_pipeline": Param(
        "auto", choice("auto", "cpu"), "auto: JPEGs decoded and augmented on the GPU if any"
    ),
    "compile_model": Param(
        "auto", choice("auto", "true", "false"), "auto: torch.compile on a GPU, where it pays"
    ),
    "export": Param(
        ("onnx", "int8"), export_formats, "CPU endpoints serve ONNX/int8 files ~3x faster"
    ),
}
