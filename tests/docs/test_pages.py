"""The README and the documentation site hold to the code and to CI: the README's budget and test
command, the metric_definitions every page shows, the README's short hyperparameter table, the
layer contract the architecture page draws, the site's navigation, the generated variable table,
and `mkdocs build --strict` itself."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

from segcontainer.config.hyperparameters import SPEC
from segcontainer.config.variables import VARIABLES
from segcontainer.metrics import METRIC_DEFINITIONS
from segcontainer.tasks.classification import scores
from tests.support.readme import (
    DOCS,
    README,
    REPO,
    assert_default_cell,
    find_metric_regexes,
    metric_regexes,
    page,
    pages,
)

README_BUDGET = 200  # lines: what a newcomer reads in five minutes (issue 33)
TEST_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e '.[test]' && "
    ".venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/lint-imports && "
    ".venv/bin/python -m pytest -q"
)


def test_the_readme_stays_within_its_budget() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= README_BUDGET, (
        f"README.md has {len(lines)} lines, over its budget of {README_BUDGET}: move the detail "
        "into a page of docs/ and link to it"
    )


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    assert f"```bash\n{TEST_COMMAND}\n```" in README.read_text()
    assert f"\n{TEST_COMMAND}\n" in (REPO / ".ci" / "run").read_text()


def test_every_shown_metric_definition_is_the_codes() -> None:
    """Each {"Name", "Regex"} in the README or a page is the code's own for that name; each
    task's page shows every one of its task's (the ones the training tests run against real
    training output), and the README at least the tuner's objective and the loss."""
    code = {d["Name"]: d["Regex"] for d in [*METRIC_DEFINITIONS, *scores.METRIC_DEFINITIONS]}
    per_class = "#quality_metric: host=\\S+, epoch=\\d+, validation IoU_{} <score>=(\\S+)"
    for where, text in {"README.md": README.read_text(), **pages()}.items():
        for name, regex in find_metric_regexes(text).items():
            if name.startswith("validation:IoU_"):  # an example of the per-class lines
                assert regex == per_class.format(name.removeprefix("validation:IoU_")), where
            else:
                assert code.get(name) == regex, (where, name, regex)
    segmentation = {d["Name"]: d["Regex"] for d in METRIC_DEFINITIONS}
    readme = find_metric_regexes(README.read_text())
    assert {"train:loss", "validation:mIOU"} <= set(readme)
    assert 'HyperparameterTuner(\n    estimator, "validation:mIOU",' in README.read_text()
    shown = metric_regexes("segmentation")
    assert {n: r for n, r in shown.items() if not n.startswith("validation:IoU_")} == segmentation
    classification = {d["Name"]: d["Regex"] for d in scores.METRIC_DEFINITIONS}
    assert metric_regexes("image-classification") == classification


def test_the_readme_short_hyperparameter_table_gives_the_specs_defaults() -> None:
    table = README.read_text().split("\n| name | default | meaning |\n", 1)[1].split("\n\n")[0]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]*) \| [^|]* \|$", table, re.M)
    assert len(rows) >= 10
    for name, default in rows:
        assert name in SPEC, name
        assert_default_cell(name, default, SPEC[name])


def test_the_architecture_page_draws_the_layers_contract() -> None:
    """The layer line of the architecture page is pyproject.toml's import-linter layers."""
    pyproject = (REPO / "pyproject.toml").read_text()
    listed = pyproject.split('type = "layers"\nlayers = [\n', 1)[1].split("\n]\n", 1)[0]
    layers = re.findall(r'^\s+"([^"]+)",', listed, re.M)
    assert len(layers) >= 10, listed
    expected = " -> ".join(layer.replace("segcontainer.", "") for layer in layers)
    drawn = page("architecture").split("\n## Layer contracts\n", 1)[1]
    assert f"```text\n{expected}\n```" in drawn


def test_every_page_is_in_the_navigation() -> None:
    nav = re.findall(r"^  - [^:\n]+: ([\w-]+\.md)$", (REPO / "mkdocs.yml").read_text(), re.M)
    assert sorted(nav) == sorted(f"{name}.md" for name in pages())


def test_the_variables_page_is_generated_from_every_variable() -> None:
    """docs/hooks/reference.py renders one row per variable a user may set, from VARIABLES."""
    spec = importlib.util.spec_from_file_location("reference", DOCS / "hooks" / "reference.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    rendered = reference.expand(page("variables"))
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \|", rendered, re.M)
    assert rows == [v.name for v in VARIABLES if not v.internal]
    for variable in VARIABLES:
        if not variable.internal:
            assert variable.reason.replace("*", "\\*") in rendered, variable.name


def test_the_site_builds_strict(tmp_path: Path) -> None:
    """`mkdocs build --strict` (what .ci/run runs): a broken link, a missing page or included
    file, or an unknown generated table fails it (about 2 s)."""
    mkdocs = Path(sys.executable).parent / "mkdocs"
    assert mkdocs.is_file(), "mkdocs is missing: pip install -c constraints.txt -e '.[test]'"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    built = (tmp_path / "site" / "benchmarks" / "index.html").read_text()
    assert "benchmarks" in built.lower() and "--8&lt;--" not in built  # the include happened
