"""Every snippet marked runnable in the README and the site (`<!-- runnable -->` on the line
before its fence) runs as written, in a fresh folder holding what the documentation assumes: a
`.venv` (this test environment, activated), `data/` (a small dataset in the channel layout)
and, where a snippet names it, `demo-run/opt_ml` (a trained model, as `segcontainer demo`
leaves it). `<!-- runnable: slow -->` snippets run in the slow tier. Snippets marked
`<!-- runnable: needs WHAT -->` need what this machine lacks (AWS, Docker): they are reported as
skipped with that reason, and are still checked for syntax and undefined names."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from segcontainer.tools.demo_data import make_dataset
from tests.support.network import free_port
from tests.support.readme import runnable_blocks

BLOCKS = runnable_blocks()


def _params(kinds) -> list:
    return [
        pytest.param(language, code, kind, id=where)
        for where, kind, language, code in BLOCKS
        if kinds(kind)
    ]


def _folder(tmp_path: Path) -> Path:
    """The user's checkout as the snippets see it: .venv and data/."""
    folder = tmp_path / "checkout"
    folder.mkdir()
    (folder / ".venv").symlink_to(sys.prefix)
    make_dataset(folder / "data", train=4, validation=2, size=(48, 40))
    return folder


def _run(language: str, code: str, folder: Path, timeout: float, **env: str):
    command = ["bash", "-e", "-c", code] if language == "bash" else [sys.executable, "-c", code]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SAGEMAKER")}
    # the pages' commands run in the activated venv (`. .venv/bin/activate`, Getting started)
    environment["PATH"] = f"{folder / '.venv' / 'bin'}:{environment.get('PATH', '')}"
    return subprocess.run(
        command,
        cwd=folder,
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_marked_snippets_are_found() -> None:
    """The marker is read (a typo would silently leave every snippet untested)."""
    kinds = {kind.split(":")[0] for _, kind, _, _ in BLOCKS}
    assert {"", "slow", "needs AWS"} <= kinds
    assert all(language in ("bash", "python") for _, _, language, _ in BLOCKS)


@pytest.mark.parametrize(("language", "code", "kind"), _params(lambda kind: kind == ""))
def test_fast_snippet_runs(language: str, code: str, kind: str, tmp_path: Path) -> None:
    result = _run(language, code, _folder(tmp_path), timeout=120)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


@pytest.mark.slow  # a `segcontainer` process (torch's import: 5-15 s), or serving a ResNet-50
@pytest.mark.parametrize(("language", "code", "kind"), _params(lambda kind: kind == "slow"))
def test_slow_snippet_runs(language: str, code: str, kind: str, tmp_path: Path, request) -> None:
    folder = _folder(tmp_path)
    if "demo-run/" in code:  # what `segcontainer demo` leaves: a model/ under a folder like /opt/ml
        trained = request.getfixturevalue("trained_base")
        opt_ml = folder / "demo-run" / "opt_ml"
        shutil.copytree(trained / "model", opt_ml / "model")
        shutil.copytree(trained / "input" / "data", opt_ml / "input" / "data")
    port = free_port()
    code = code.replace("localhost:8080", f"localhost:{port}")
    result = _run(language, code, folder, timeout=600, SAGEMAKER_BIND_TO_PORT=str(port))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    if "mask.png" in code:
        assert (folder / "mask.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("language", "code", "kind"), _params(lambda kind: kind.startswith("needs "))
)
def test_snippet_needing_what_this_machine_lacks(language: str, code: str, kind: str) -> None:
    pytest.skip(kind)


@pytest.mark.parametrize(
    "code",
    [pytest.param(code, id=where) for where, _, language, code in BLOCKS if language == "python"],
)
def test_python_snippet_is_complete(code: str) -> None:
    """No syntax error and no undefined name (ruff's F821) in any marked Python snippet, those
    needing AWS included: a reader can paste it whole."""
    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run(
        [str(ruff), "check", "--no-cache", "--isolated", "--select", "E9,F821,F822,F823", "-"],
        input=code,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
