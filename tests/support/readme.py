"""The documentation's parts that tests hold to the code: README.md and the site's pages under
docs/ (one per topic), a task's page, its hyperparameter table's rows and its metric_definitions'
regexes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from segcontainer.config.params import REQUIRED, Param

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"
# The page that holds each task's metric_definitions and hyperparameter table.
METRICS_PAGE = {"segmentation": "training", "image-classification": "image-classification"}
TABLE_PAGE = {"segmentation": "hyperparameters", "image-classification": "image-classification"}


def page(name: str) -> str:
    """The markdown source of the site's page docs/<name>.md."""
    return (DOCS / f"{name}.md").read_text()


def pages() -> dict[str, str]:
    """name -> markdown source of every page of the site."""
    return {path.stem: path.read_text() for path in sorted(DOCS.glob("*.md"))}


def docs_text() -> str:
    """README.md and every page of the site, one after the other: what a user can read."""
    return "\n\n".join([README.read_text(), *pages().values()])


def find_metric_regexes(text: str) -> dict[str, str]:
    """name -> regex of every metric definition written in ``text`` as the SDK takes them."""
    found = re.findall(r'"Name":\s*"([^"]+)",\s*"Regex":\s*r?"([^"]+)"', text)
    return {name: regex.replace("\\\\", "\\") for name, regex in found}


def metric_regexes(task: str) -> dict[str, str]:
    """The metric_definitions exactly as the documentation of ``task`` gives them to users
    (the page of its metric lines)."""
    return find_metric_regexes(page(METRICS_PAGE[task]))


def table_rows(text: str) -> list[tuple[str, str, str, str]]:
    """(name, allowed, default, why) of each row of the first `| name | allowed | default |`
    table."""
    table = text.split("\n\n| name |", 1)[1].split("\n\n")[0]
    return re.findall(r"^\| `(\w+)`[^|]*\| ([^|]*) \| ([^|]*) \| ([^|]*) \|$", table, re.M)


def parser_choices(param: Param) -> list[str]:
    """The values a choice parser allows, from its own error message ("one of a, b"), or []."""
    try:
        param.parse("\x00not a value")
    except ValueError as error:
        if str(error).startswith("one of "):
            return str(error).removeprefix("one of ").rstrip(".").split(", ")
    return []


def assert_default_cell(name: str, default: str, param: Param) -> None:
    """A table's default cell begins with ``param``'s default ("required", "none"/"optional",
    `a,b` for a tuple, else the value)."""
    expected = param.default
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


def assert_table_is_spec(rows: list[tuple[str, str, str, str]], spec: Mapping[str, Param]) -> None:
    """The rows name SPEC's parameters in its order; each default cell begins with the
    parameter's default; the allowed cell names every choice a choice parser accepts; the why
    cell is its reason."""
    assert [row[0] for row in rows] == list(spec)
    for name, allowed, default, why in rows:
        assert why == spec[name].reason, name
        for option in parser_choices(spec[name]):
            assert f"`{option}`" in allowed, (name, option)
        assert_default_cell(name, default, spec[name])


RUNNABLE = re.compile(r"^<!-- runnable(?:: (.*?))? -->\n```(\w+)\n(.*?)\n```$", re.M | re.S)


def runnable_blocks() -> list[tuple[str, str, str, str]]:
    """(where, kind, language, code) of every fenced block marked runnable in README.md and
    the site: the line `<!-- runnable -->` (fast), `<!-- runnable: slow -->` or
    `<!-- runnable: needs WHAT -->` (skipped with that reason) just before the fence."""
    sources = {"README.md": README.read_text()}
    sources.update({f"docs/{name}.md": text for name, text in pages().items()})
    found = []
    for file, text in sources.items():
        for match in RUNNABLE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{file}:{line}", match.group(1) or "", match.group(2), match.group(3)))
    return found
