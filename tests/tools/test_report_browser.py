"""The evaluation report opened in a real browser: Debian's chromium, driven by playwright.

Slow (a browser start and a trained model): run by .ci/run after the README's test command,
which installs chromium (apt) and playwright (the test extra).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from segcontainer.cli import main as cli

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"  # Debian's package; playwright downloads no browser of its own
IMAGE_STATES = """images => images.map(image => ({
    src: image.getAttribute("src"),
    shown: image.complete && image.naturalWidth > 0,
}))"""


def test_report_renders_its_tables_and_images(trained_base: Path, tmp_path: Path, monkeypatch):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), "install Debian's chromium: apt-get install -y chromium"
    monkeypatch.delenv("SEGCONTAINER_INFERENCE_SIZE", raising=False)
    monkeypatch.delenv("SEGCONTAINER_TILE_SIZE", raising=False)
    out = tmp_path / "report"
    data = trained_base / "input" / "data"
    assert (
        cli(["evaluate", str(trained_base / "output" / "model.tar.gz"), str(data), str(out)]) == 0
    )
    # Moved elsewhere, as a zipped and unpacked report would be: its paths must be relative.
    moved = Path(shutil.move(out, tmp_path / "elsewhere"))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(moved.joinpath("report.html").as_uri(), wait_until="load")
        images = page.eval_on_selector_all("img", IMAGE_STATES)
        assert len(images) == 1 + 4  # the confusion matrix and the 4 validation overlays
        assert [i for i in images if not i["shown"]] == []
        classes = page.locator("#classes tbody tr td:nth-child(2)").all_inner_texts()
        assert classes == ["bg", "rect", "ellipse"]  # a row per class, named
        # engine, test-time augmentation, mIoU, accuracy, counts
        assert page.locator("#summary tbody tr").count() == 6
        assert "Numbers from engine torch" in page.locator("#engine").inner_text()
        page.screenshot(path=tmp_path / "report.png", full_page=True)

        # The check sees a broken image: remove one overlay and load the page again.
        missing = images[-1]["src"]
        (moved / missing).unlink()
        page.reload(wait_until="load")
        broken = [
            i["src"] for i in page.eval_on_selector_all("img", IMAGE_STATES) if not i["shown"]
        ]
        assert broken == [missing]
        browser.close()
    assert (tmp_path / "report.png").stat().st_size > 10_000
