"""The page of ``segcontainer evaluate`` for an image classification model: summary, per-class
precision and recall, the confusion matrix (single-label) and the worst images with their truth
and prediction. Built from report.py's table, style and plot; every file the page shows is
referenced relative to it, so the folder can be zipped and still opens."""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from PIL import Image

from segcontainer.tools.report import PLOT_FILE, REPORT_IMAGES, STYLE, _number, _rows

IMAGE_DIR = "images"
THUMBNAIL_SIDE = 256


def _summary(metrics: dict) -> str:
    cells = [["engine", metrics["engine"]], ["images", str(metrics["images"])]]
    if metrics["multi_label"]:
        cells += [
            ["accuracy (class decisions)", _number(metrics["accuracy"])],
            ["exact-match accuracy", _number(metrics["exact_match_accuracy"])],
            ["threshold", str(metrics["threshold"])],
        ]
    else:
        cells.append(["accuracy", _number(metrics["accuracy"])])
        if metrics.get("top_k"):
            k = metrics["top_k"]
            cells.append([f"top-{k['k']} accuracy", _number(k["accuracy"])])
    return _rows(cells, ["metric", "value"], "summary")


def _classes(per_class: list[dict]) -> str:
    cells = [
        [str(c["id"]), c["name"], _number(c["precision"]), _number(c["recall"])]
        + [str(c["true_images"]), str(c["predicted_images"])]
        for c in per_class
    ]
    header = ["id", "class", "precision", "recall", "true images", "predicted images"]
    return _rows(cells, header, "classes")


def _thumbnail(out: Path, name: str, load: Callable[[str], Image.Image]) -> str:
    """The image, small, as images/<name>.jpg; its path relative to the page."""
    relative = (PurePosixPath(IMAGE_DIR) / name).with_suffix(".jpg").as_posix()
    image = load(name).convert("RGB")
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    (out / relative).parent.mkdir(parents=True, exist_ok=True)
    image.save(out / relative, quality=90)
    return relative


def _figures(out: Path, per_image: list[dict], load: Callable[[str], Image.Image]) -> str:
    figures = []
    for item in per_image[:REPORT_IMAGES]:
        source = quote(_thumbnail(out, item["name"], load))
        caption = (
            f"{item['name']}: truth {', '.join(item['truth']) or '(none)'}, predicted "
            f"{', '.join(item['predicted']) or '(none)'}, probability of the truth "
            f"{_number(item['truth_probability'], 3)}"
        )
        figures.append(
            f'<figure><a href="{source}"><img src="{source}" alt="{html.escape(item["name"])}">'
            f"</a><figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    more = len(per_image) - REPORT_IMAGES
    shown = f'<div class="images">\n{chr(10).join(figures)}\n</div>\n'
    return shown + (f"<p>{more} more images in metrics.json.</p>" if more > 0 else "")


def write_html(out: Path, metrics: dict, load: Callable[[str], Image.Image]) -> Path:
    """OUT/report.html (and the worst images under OUT/images/) from metrics.json's content;
    ``load`` reads an image by its name in metrics' per_image."""
    matrix = (
        f'<h2>Confusion matrix</h2>\n<img src="{PLOT_FILE}" alt="confusion matrix">'
        if "confusion_matrix" in metrics
        else ""
    )
    kind = "multi-label" if metrics["multi_label"] else "single-label"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Evaluation of {html.escape(metrics["model"])}</title><style>{STYLE}</style></head>
<body>
<h1>Evaluation report</h1>
<p>Image classification model ({kind}) <code>{html.escape(metrics["model"])}</code> on
<code>{html.escape(metrics["data"])}</code> ({metrics["images"]} images), engine
<code>{html.escape(metrics["engine"])}</code>; images prepared as the endpoint prepares them.</p>
<p id="engine">{html.escape(metrics["engine_note"])}</p>
<h2>Summary</h2>
{_summary(metrics)}
<h2>Per class</h2>
{_classes(metrics["per_class"])}
{matrix}
<h2>Images, worst first</h2>
<p>Sorted by the probability the model gives the truth, lowest first.</p>
{_figures(out, metrics["per_image"], load)}
</body></html>
"""
    file = out / "report.html"
    file.write_text(page, encoding="utf-8")
    return file
