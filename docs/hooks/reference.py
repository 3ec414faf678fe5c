"""MkDocs hook: the reference tables that must not drift from the code are generated from it at
build time, and the included READMEs are found from the repository root. A page line
`<!-- generated: environment-variables -->` becomes the table of every variable of
segcontainer.config.variables.VARIABLES (name, older names, default, what is allowed, why), so
the site can never list a variable the container does not read or miss one it does."""

from __future__ import annotations

import re
from pathlib import Path

MARKER = re.compile(r"^<!-- generated: ([\w-]+) -->$", re.M)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*").replace("\n", " ")


def environment_variables() -> str:
    """The markdown table of every user-facing environment variable, in definition order."""
    from segcontainer.config.variables import VARIABLES, Choice, Integer

    rows = ["| variable | older names | default | allowed | why |", "| --- " * 5 + "|"]
    for variable in VARIABLES:
        if variable.internal:
            continue
        if isinstance(variable, Choice):
            allowed = variable.allowed() if variable.choices else "one of the task's choices"
        elif isinstance(variable, Integer):
            allowed = variable.allowed
        else:
            allowed = "any text"
        aliases = ", ".join(f"`{alias}`" for alias in variable.aliases) or ""
        rows.append(
            f"| `{variable.name}` | {aliases} | {_cell(variable.documented_default)} "
            f"| {_cell(allowed)} | {_cell(variable.reason)} |"
        )
    return "\n".join(rows)


GENERATORS = {"environment-variables": environment_variables}


def expand(markdown: str) -> str:
    """``markdown`` with every generated-table marker replaced by its table; an unknown marker
    is an error, so a typo fails the build instead of leaving a hole in the page."""

    def table(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"unknown generated table {name!r}: one of {', '.join(GENERATORS)}")
        return GENERATORS[name]()

    return MARKER.sub(table, markdown)


def on_config(config, **kwargs):
    """The snippets' base path is the repository root (where mkdocs.yml is), not the folder
    mkdocs was started from: `mkdocs build -f ../repo/mkdocs.yml` finds the included READMEs."""
    root = str(Path(config.config_file_path).resolve().parent)
    config.mdx_configs.setdefault("pymdownx.snippets", {})["base_path"] = [root]
    return config


def on_page_markdown(markdown: str, **kwargs) -> str:
    return expand(markdown)
