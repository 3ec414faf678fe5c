"""The pictures and the page of ``segcontainer evaluate``: overlays, confusion plot, report.html.

Every file the page shows is referenced by a path relative to the page, so the folder can
be zipped or copied and still opens in a browser.
"""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image

from segcontainer.data.label_maps import IGNORE_INDEX

CORRECT, FALSE_POSITIVE, MISSED = (0, 200, 0), (230, 0, 0), (0, 90, 255)
OVERLAY_ALPHA = 0.55  # strong enough to see a thin miss, light enough to see the scene
OVERLAY_MAX_SIDE = 1280  # a 4K frame's overlay at full size would be a few MB per image
REPORT_IMAGES = 100  # overlays shown on the page; metrics.json lists every image
PLOT_FILE = "confusion_matrix.png"
ANNOTATED_CLASSES = 15  # beyond this the plot's cells are too small for numbers


def legend(background: int | None, name: str | None) -> str:
    """What the overlays' colours mean, given the background class (None: no class is)."""
    if background is None:
        return (
            "No class is treated as background, so every labelled pixel is marked. Green: "
            "pixels predicted correctly. Red: pixels predicted wrongly (as a class they do not "
            "belong to). Pixels labelled 255 (ignore) are left as they are."
        )
    return (
        f"Background: class {background} ({name}). Green: pixels of a class other than "
        "background predicted correctly. Red: false positives, pixels predicted as a class "
        "(not background) they do not belong to. Blue: missed truth, pixels of a class "
        "predicted as background. Background predicted as background, and pixels labelled "
        "255 (ignore), are left as they are."
    )


def overlay_image(
    image: Image.Image, truth: np.ndarray, prediction: np.ndarray, background: int | None
) -> Image.Image:
    """The image with correct (green), false-positive (red) and missed (blue) pixels blended
    over it; ``truth`` (255 = ignore) and ``prediction`` are (H, W) class ids. Without a
    ``background`` class every labelled pixel is green or red."""
    labelled = truth != IGNORE_INDEX
    wrong = labelled & (prediction != truth)
    right = labelled & (prediction == truth)
    if background is None:
        layers = ((right, CORRECT), (wrong, FALSE_POSITIVE))
    else:
        layers = (
            (right & (truth != background), CORRECT),
            (wrong & (prediction != background), FALSE_POSITIVE),
            (wrong & (prediction == background), MISSED),
        )
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    for where, colour in layers:
        pixels[where] = (1 - OVERLAY_ALPHA) * pixels[where] + OVERLAY_ALPHA * np.array(colour)
    out = Image.fromarray(pixels.round().astype(np.uint8), "RGB")
    if max(out.size) > OVERLAY_MAX_SIDE:
        out.thumbnail((OVERLAY_MAX_SIDE, OVERLAY_MAX_SIDE), Image.Resampling.LANCZOS)
    return out


def confusion_plot(matrix: np.ndarray, names: list[str], file: Path, unit: str = "pixels") -> None:
    """A heat map of each true class's ``unit`` (pixels, or images for classification) by
    predicted class (rows sum to 100%), with the share and count in each cell when there are
    few classes."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

    count = len(names)
    share = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    side = min(max(4.5, 0.55 * count + 2.5), 18)
    figure = Figure(figsize=(side + 1, side))
    axes = figure.subplots()
    shown = axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(count), names, rotation=45, ha="right")
    axes.set_yticks(range(count), names)
    axes.set(xlabel="predicted class", ylabel="true class")
    axes.set_title(f"Confusion matrix (share of each true class's {unit})")
    if count <= ANNOTATED_CLASSES:
        for row in range(count):
            for column in range(count):
                value = share[row, column]
                axes.text(
                    column,
                    row,
                    f"{100 * value:.1f}%\n{int(matrix[row, column])}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if value > 0.5 else "black",
                )
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    figure.savefig(file, dpi=90)


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _rows(cells: list[list[str]], header: list[str], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>\n" for row in cells
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>'


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th { background: #f0f0f0; }
#classes td:nth-child(2), #classes th:nth-child(2), #summary td:first-child { text-align: left; }
.images { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; width: 420px; } figure img { width: 100%; border: 1px solid #ccc; }
figcaption { font-size: 0.9em; } .swatch { display: inline-block; width: 1em; height: 1em; }
"""


def _summary_table(metrics: dict) -> str:
    cells = [
        ["engine", metrics["engine"]],
        ["test-time augmentation", metrics["inference"]["tta"]],
        ["mIoU", _number(metrics["mIOU"])],
        ["pixel accuracy", _number(metrics["pixel_accuracy"])],
        ["images", str(metrics["images"])],
        ["labelled pixels", str(metrics["labelled_pixels"])],
    ]
    return _rows(cells, ["metric", "value"], "summary")


def _class_table(classes: list[dict]) -> str:
    cells = [
        [str(c["id"]), c["name"], _number(c["IOU"]), _number(c["precision"])]
        + [_number(c["recall"]), _number(c["false_positive_rate"], 5)]
        + [str(c["true_pixels"]), str(c["predicted_pixels"])]
        for c in classes
    ]
    header = ["id", "class", "IoU", "precision", "recall", "false-positive rate"]
    return _rows(cells, header + ["true pixels", "predicted pixels"], "classes")


def _figures(per_image: list[dict]) -> str:
    """The worst REPORT_IMAGES overlays, each linking to its file, and how many more."""
    figures = []
    for item in per_image[:REPORT_IMAGES]:
        source = quote(item["overlay"])
        caption = (
            f"{item['name']}: mIoU {_number(item['mIOU'], 3)}, "
            f"pixel accuracy {_number(item['pixel_accuracy'], 3)}"
        )
        figures.append(
            f'<figure><a href="{source}"><img src="{source}" alt="{html.escape(item["name"])}">'
            f"</a><figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    more = len(per_image) - REPORT_IMAGES
    shown = f'<div class="images">\n{chr(10).join(figures)}\n</div>\n'
    return shown + (f"<p>{more} more images in metrics.json and overlays/.</p>" if more > 0 else "")


def _legend(background: dict) -> str:
    """What the overlays' colours mean: the sentence, and a swatch per colour."""
    colours = [(CORRECT, "correct"), (FALSE_POSITIVE, "false positive")]
    if background["id"] is not None:
        colours.append((MISSED, "missed"))
    swatches = " ".join(
        f'<span class="swatch" style="background: rgb{colour}"></span> {label}'
        for colour, label in colours
    )
    return (
        f'<p id="legend">{html.escape(legend(background["id"], background["name"]))}\n'
        f"Chosen: {html.escape(background['chosen_by'])}.</p>\n<p>{swatches}</p>"
    )


def write_html(out: Path, metrics: dict) -> Path:
    """OUT/report.html from metrics.json's content: summary, per-class table, the plot, and
    the images worst first with their overlays."""
    info = metrics["inference"]
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Evaluation of {html.escape(metrics["model"])}</title><style>{STYLE}</style></head>
<body>
<h1>Evaluation report</h1>
<p>Model <code>{html.escape(metrics["model"])}</code> on <code>{html.escape(metrics["data"])}</code>
({metrics["images"]} images), engine <code>{html.escape(metrics["engine"])}</code>; images
resized to a long side of {info["long_side"]} and predicted in tiles of {info["tile_size"]}
as the endpoint does, with test-time augmentation
<code id="tta">{html.escape(info["tta"])}</code> ({info["tta_forward_cost"]:g}x the forward work
without it). Pixels labelled 255 are ignored.</p>
<p id="engine">{html.escape(metrics["engine_note"])}</p>
<h2>Summary</h2>
{_summary_table(metrics)}
<h2>Per class</h2>
{_class_table(metrics["per_class"])}
<h2>Confusion matrix</h2>
<img src="{PLOT_FILE}" alt="confusion matrix">
<h2>Images, worst first</h2>
<p>Sorted by per-image mIoU (the mean IoU over the classes in the image's truth or
prediction), lowest first; ties by pixel accuracy.</p>
{_legend(metrics["background"])}
{_figures(metrics["per_image"])}
</body></html>
"""
    file = out / "report.html"
    file.write_text(page, encoding="utf-8")
    return file
