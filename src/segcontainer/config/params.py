"""The machinery of a hyperparameter table, shared by every task's: ``Param`` (default, parser,
reason) and the parsers. SageMaker sends every value as a string, so each parser takes a string
and raises ValueError naming what is allowed (the table's resolver adds the name and the value).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

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
