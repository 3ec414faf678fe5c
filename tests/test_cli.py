"""The command line: start-up checks, --help, the executables and the documented commands."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from segcontainer.cli import MINIMUM_VERSIONS, main, version_problem
from segcontainer.tools.demo_data import make_dataset
from tests.support.local_mode import FAST_HYPERPARAMETERS, REPO
from tests.support.readme import docs_text, page


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


def test_readme_states_the_start_up_checks_minimums() -> None:
    """Every "torch >= X" / "torchvision >= X" in the README and the site is the enforced
    minimum (it once said 2.4 in the image section and 2.6 in the set-up)."""
    said = re.findall(r"`?(torch|torchvision)`? >= ([\d.]+)", docs_text())
    assert {name for name, _ in said} == set(MINIMUM_VERSIONS)
    for name, version in said:
        assert version == ".".join(map(str, MINIMUM_VERSIONS[name])), (name, version)


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


@pytest.mark.parametrize("command", ["train", "serve"])
def test_executables_without_segcontainer_say_how_to_fix_it(command: str) -> None:
    """`./train` started by a python3 that lacks segcontainer (the venv not activated) says
    what to do instead of a bare ModuleNotFoundError traceback."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # -I -S: no site-packages and no PYTHONPATH, as a system python3 without the package.
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(REPO / command)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"{command}: {sys.executable} cannot import segcontainer" in result.stderr
    assert "`. .venv/bin/activate`" in result.stderr


def documented_commands(name: str, heading: str) -> list[str]:
    """The lines of the first bash block under ``heading`` in the site's page ``name``."""
    section = page(name).split(f"\n{heading}\n", 1)[1]
    section = re.split(r"\n##", section, maxsplit=1)[0]  # up to the next heading
    block = re.search(r"```bash\n(.*?)\n```", section, re.DOTALL)
    assert block, f"no bash block under {heading}"
    return block.group(1).splitlines()


def _fast_config(line: str) -> str:
    """The README's hyperparameters.json line with the tests' fast settings on top (one
    epoch, no ImageNet download, tiny crops): the only change to the commands as written."""
    written = json.loads(re.search(r"'(\{.*\})'", line).group(1))
    return line.replace(
        re.search(r"'(\{.*\})'", line).group(1),
        json.dumps({**written, **FAST_HYPERPARAMETERS}),
    )


def _listing(folder: Path) -> list[tuple[str, float]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime) for p in folder.rglob("*"))


@pytest.mark.slow
def test_without_sagemaker_commands_run_as_written(tmp_path: Path) -> None:
    """The training page's "Without SageMaker" block, run by bash in a checkout whose .venv is this
    test's environment, from a shell where python3 is not the venv's: activation, symlinked
    channels, validate with the config, train, serve, one prediction, SIGTERM."""
    from tests.support.network import free_port

    assert sys.prefix != sys.base_prefix, "run the tests from the venv of the README's set-up"
    lines = documented_commands("training", "### Without SageMaker")
    assert lines[0] == ". .venv/bin/activate"
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / ".venv").symlink_to(sys.prefix)
    for name in ("train", "serve"):
        (checkout / name).symlink_to(REPO / name)
    make_dataset(checkout / "data", train=8, validation=4, size=(48, 40))
    (checkout / "photo.jpg").write_bytes(
        (checkout / "data/validation/validation_0000.jpg").read_bytes()
    )
    before = sorted(
        (p.relative_to(checkout), p.stat().st_mtime) for p in (checkout / "data").rglob("*")
    )
    port = free_port()
    script = [
        _fast_config(line) if "hyperparameters.json" in line and line.startswith("echo") else line
        for line in lines
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER", "TRAINING"))}
    env.update(PATH="/usr/local/bin:/usr/bin:/bin", SAGEMAKER_BIND_TO_PORT=str(port))
    result = subprocess.run(
        ["bash", "-e", "-c", "\n".join(script).replace("localhost:8080", f"localhost:{port}")],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = (result.stdout + result.stderr)[-4000:]
    assert result.returncode == 0, log
    assert "training would accept this data" in result.stdout
    opt_ml = checkout / "opt_ml"
    assert (opt_ml / "input/data/train").is_symlink()
    assert (opt_ml / "output/success").is_file() and (opt_ml / "output/model.tar.gz").is_file()
    with Image.open(checkout / "mask.png") as mask:
        assert (mask.format, mask.size) == ("PNG", (48, 40))
    after = sorted(
        (p.relative_to(checkout), p.stat().st_mtime) for p in (checkout / "data").rglob("*")
    )
    assert after == before  # nothing written into the linked channels
