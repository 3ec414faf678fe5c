"""The architecture page's Layout section (docs/architecture.md) stays true: the tree names
every module of the package, and every file the newcomer's four changes point to exists."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.readme import page

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "segcontainer"


def _layout() -> str:
    return page("architecture").split("\n## Layout\n", 1)[1]


def test_the_layout_tree_lists_every_module() -> None:
    tree = _layout().split("```", 2)[1]
    listed = set(re.findall(r"^\s+([\w/]+\.py|[\w]+/)\s", tree, re.M))
    modules = {
        path.name
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py" and not path.name.endswith("_pb2.py")
    }
    assert sorted(modules - listed) == []


def test_the_newcomer_changes_name_files_that_exist() -> None:
    changes = _layout().split("Five changes a newcomer makes", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"`((?:src|tests)/[\w/.]+\.py)`", changes)
    assert len(named) >= 6
    assert [name for name in named if not (REPO / name).is_file()] == []
