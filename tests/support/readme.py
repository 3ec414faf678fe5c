"""The README's parts that tests hold to the code: a task's part of the README, its hyperparameter
table's rows and its metric_definitions' regexes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from segcontainer.config.params import REQUIRED, Param

README = Path(__file__).resolve().parents[2] / "README.md"
CLASSIFICATION_HEADING = "\n## Image classification\n"


def task_part(task: str) -> str:
    """Segmentation's part (the README without image classification's section) or image
    classification's section, for ``task`` "segmentation" or "image-classification"."""
    text = README.read_text()
    before, section = text.split(CLASSIFICATION_HEADING, 1)
    section, after = section.split("\n## ", 1)
    return section if task == "image-classification" else before + "\n## " + after


def metric_regexes(task: str) -> dict[str, str]:
    """The metric_definitions exactly as the README's part of ``task`` gives them to users."""
    found = re.findall(r'"Name":\s*"([^"]+)",\s*"Regex":\s*r?"([^"]+)"', task_part(task))
    return {name: regex.replace("\\\\", "\\") for name, regex in found}


def table_rows(text: str) -> list[tuple[str, str]]:
    """(name, default cell) of each row of the first `| name | allowed | default |` table."""
    table = text.split("\n\n| name |", 1)[1].split("\n\n")[0]
    return re.findall(r"^\| `(\w+)`[^|]*\| [^|]* \| (.*) \|$", table, re.M)


def assert_table_is_spec(rows: list[tuple[str, str]], spec: Mapping[str, Param]) -> None:
    """The rows name SPEC's parameters in its order, each default cell beginning with the
    parameter's default ("required", "none"/"optional", `a,b` for a tuple, else the value)."""
    assert [name for name, _ in rows] == list(spec)
    for name, default in rows:
        expected = spec[name].default
        if expected is REQUIRED:
            assert default == "required", name
        elif expected is None or expected == ():
            assert default.startswith(("none", "optional")), name
        elif isinstance(expected, tuple):
            assert default.startswith(f"`{','.join(map(str, expected))}`"), name
        else:
            token = re.match(r"`?([^`\s:]+)", default).group(1)
            if isinstance(expected, (bool, str)):
                assert token == str(expected), name
            else:
                assert float(token) == expected, name
