"""config/variables.py: one definition per environment variable, one error type, and the
documentation's tables of variables (README.md and docs/) in agreement with the definitions."""

from __future__ import annotations

import re

import pytest

from segcontainer.config import variables
from segcontainer.config.variables import VARIABLES, EnvironmentVariableError
from segcontainer.errors import UserError
from tests.support.readme import docs_text


def readme_variables() -> dict[str, tuple[tuple[str, ...], str]]:
    """name -> (aliases, default cell) of every row of the `| variable | default |` tables of
    README.md and the site's pages (each variable in one row of one of them)."""
    found: dict[str, tuple[tuple[str, ...], str]] = {}
    in_table = False
    for line in docs_text().splitlines():
        if line.startswith("| variable | default |"):
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
        if not in_table or line.startswith("| ---"):
            continue
        first, default = (cell.strip() for cell in line.strip("|").split("|", 1))
        names = re.findall(r"`([A-Z][A-Z0-9_]*)`", first)
        assert names and names[0] not in found, line
        found[names[0]] = (tuple(names[1:]), default.split("|")[0].strip())
    return found


def test_readme_tables_name_every_variable_and_its_default() -> None:
    documented = readme_variables()
    expected = {v.name: v for v in VARIABLES if not v.internal}
    assert sorted(documented) == sorted(expected)
    for name, (aliases, cell) in documented.items():
        variable = expected[name]
        assert aliases == variable.aliases, name
        default = variable.documented_default
        assert re.match(re.escape(default) + r"(?![\w])", cell), (name, default, cell)


def test_every_variable_is_defined_once_with_a_reason() -> None:
    names = [name for v in VARIABLES for name in (v.name, *v.aliases)]
    assert len(names) == len(set(names))
    assert all(v.reason for v in VARIABLES)
    module = {v for v in vars(variables).values() if isinstance(v, variables.Variable)}
    assert module == set(VARIABLES)


def test_values_aliases_and_empty_values(monkeypatch) -> None:
    timeout = variables.MODEL_SERVER_TIMEOUT
    monkeypatch.delenv(timeout.name, raising=False)
    monkeypatch.delenv("MODEL_SERVER_TIMEOUT", raising=False)
    assert timeout.read() == 60
    monkeypatch.setenv("MODEL_SERVER_TIMEOUT", "90")  # the older name
    assert timeout.read() == 90
    monkeypatch.setenv(timeout.name, " 30 ")  # the SageMaker name wins
    assert timeout.read() == 30
    monkeypatch.setenv(timeout.name, "  ")  # empty counts as unset
    assert timeout.read() == 90
    monkeypatch.setenv(variables.ENGINE.name, " ONNX ")
    assert variables.ENGINE.read() == "onnx"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            variables.TILE_SIZE,
            "-1",
            "SEGCONTAINER_TILE_SIZE='-1' is not valid: expected an integer >= 0",
        ),
        (
            variables.BIND_TO_PORT,
            "http",
            "SAGEMAKER_BIND_TO_PORT='http' is not valid: expected an integer >= 1",
        ),
        (
            variables.ENGINE,
            "tensorrt",
            "SEGCONTAINER_ENGINE='tensorrt' is not valid: expected one of auto, torch, onnx, "
            "onnx-int8 (auto: ",
        ),
    ],
)
def test_one_error_names_the_variable_its_value_and_what_is_allowed(
    monkeypatch, variable, value, message
) -> None:
    monkeypatch.setenv(variable.name, value)
    with pytest.raises(EnvironmentVariableError) as error:
        variable.read()
    assert str(error.value).startswith(message)
    assert isinstance(error.value, UserError)
    assert (error.value.name, error.value.value) == (variable.name, value)
