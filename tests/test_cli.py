"""Start-up checks of the command line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torchvision

from segcontainer.cli import MINIMUM_VERSIONS, main, version_problem
from tests.conftest import REPO


@pytest.mark.parametrize("command", ["train", "serve"])
def test_too_old_torch_is_refused_at_start_up(base_dir: Path, monkeypatch, capsys, command):
    monkeypatch.setattr(torch, "__version__", "2.4.1+cu121")
    monkeypatch.setattr(torchvision, "__version__", "0.19.1+cu121")
    assert main([command]) == 1
    message = (
        "segcontainer needs torch >= 2.6 and torchvision >= 0.21; "
        "found torch 2.4.1+cu121, torchvision 0.19.1+cu121"
    )
    assert message in capsys.readouterr().err
    if command == "train":
        assert message in (base_dir / "output" / "failure").read_text()


def test_the_installed_pair_passes() -> None:
    assert version_problem() is None


def test_declared_minimums_match_the_start_up_check() -> None:
    """pyproject.toml's lower bounds are the versions the start-up check enforces."""
    declared = dict(
        re.findall(r'"(torch|torchvision)>=([\d.]+)"', (REPO / "pyproject.toml").read_text())
    )
    for name, minimum in MINIMUM_VERSIONS.items():
        assert declared[name] == ".".join(map(str, minimum)), name


def test_help_shows_the_whole_description(capsys) -> None:
    """`segcontainer --help` names every command in its description, which ends a sentence
    (it was once cut off mid-list)."""
    with pytest.raises(SystemExit):
        main(["--help"])
    printed = capsys.readouterr().out
    commands = re.search(r"\{([a-z,]+)\}", printed).group(1).split(",")
    description = " ".join(printed.split("positional arguments:")[0].split("...", 1)[1].split())
    assert len(commands) >= 11
    for command in commands:
        assert re.search(rf"\b{command}\b", description), (command, description)
    assert description.endswith(".")
