"""The data tools' subcommands (``groundtruth``, ``labelme``, ``tile``, ``validate``,
``evaluate``): their arguments with an example in each ``--help``, and how each runs. cli.py
adds them to its parser and hands them over here. Each tool is one row of ``TOOLS``: its
help line, its example, a function adding its arguments and one running it; a new tool is a
new row. The tools are imported when run, so ``--help`` stays quick."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from segcontainer.config import variables
from segcontainer.errors import UserError
from segcontainer.tools.splits import SplitOptions

GROUNDTRUTH_EXAMPLE = """example:
  segcontainer groundtruth s3://bucket/my-job/manifests/output/output.manifest data/
  segcontainer groundtruth output.manifest data/ --s3-root s3://bucket/my-job=my-job/

Semantic segmentation job: writes data/{train,train_annotation,validation,
validation_annotation}/, class_names.txt and train.manifest / validation.manifest.
Image classification job (single- or multi-label, found by its label's metadata): writes
data/{train,validation}/ images, data/{train_lst,validation_lst}/*.lst and class_names.txt.
Then prints num_classes, class_names (and multi_label) for training.
"""

LABELME_EXAMPLE = """example:
  segcontainer labelme annotated/ data/ --labels labels.txt

labels.txt as labelme2voc reads it:  __ignore__ / _background_ / cat / dog  (one per line).
Writes the four channels, class_names.txt and the manifests under data/.
"""

TILE_EXAMPLE = """example:
  segcontainer tile frames/ tiles/ --size 512 --drop-empty --group-by '^(video\\d+)_'

Tiles are named <image>_x<left>_y<top>; every tile of an image (or of a --group-by group)
lands on the same side of the train/validation split.
"""

VALIDATE_EXAMPLE = """example:
  segcontainer validate data/ --num-classes 3
  segcontainer validate data/ --label-map train_label_map.json
  segcontainer validate opt_ml/     # checked with opt_ml/input/config/hyperparameters.json

Runs train's data check on data/{train,train_annotation,validation,validation_annotation}:
prints the counts, the pixels per class and every problem with the files named; exits 0 when
training would accept the data, 1 otherwise. Image classification data (a .lst in
data/{train,validation}_lst/ or a .rec in data/{train,validation}/) gets classification's
check: every bad list line, record and image named, and the images per class.
"""

EVALUATE_EXAMPLE = """example:
  segcontainer evaluate model.tar.gz data/ report/
  segcontainer evaluate model/ data/train report-train/ --engine onnx-int8
  segcontainer evaluate model.tar.gz data/ report/ --engine torch --background none

DATA: a layout root (its validation/ pairs are scored) or one channel folder with its masks in
<channel>_annotation/ beside it. Images are predicted as the endpoint predicts them. Writes
report/metrics.json, confusion_matrix.png, overlays/ and report.html (open it in a browser),
which name the engine: --engine torch reproduces training's validation:mIOU.

An image classification model (its hyperparams.json says so) is scored on DATA's validation
split (validation/ with validation_lst/*.lst, or validation/*.rec; or one channel: data/train):
accuracy, top-k accuracy (--top-k K), per-class precision and recall, the confusion matrix
and the images whose truth got the lowest probability, in the same files.
  segcontainer evaluate model.tar.gz data/ report/ --top-k 2
"""


class Summary(Protocol):
    """What a tool returns: the lines it prints (and, for validate, whether the data pass)."""

    def lines(self) -> list[str]: ...


@dataclass(frozen=True)
class DataTool:
    help: str
    example: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Summary]


def _split_options(parser: argparse.ArgumentParser, fraction: float | None) -> None:
    parser.add_argument(
        "--validation-fraction",
        type=float,
        default=fraction,
        help="share of images for validation, split by image (or --group-by group); "
        + (f"default {fraction}" if fraction is not None else "default: keep IN's split"),
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    parser.add_argument(
        "--group-by",
        metavar="REGEX",
        help="keep images whose names share this match (its first group) on one side",
    )
    parser.add_argument(
        "--manifest-prefix",
        metavar="S3_URI",
        help="where OUT will be uploaded (s3://bucket/prefix): the manifests then hold s3:// "
        "references for Pipe mode (default: paths relative to OUT)",
    )


def _groundtruth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", help="output.manifest: a local path or s3:// URI")
    parser.add_argument("out", type=Path, help="folder for the channel layout")
    parser.add_argument(
        "--s3-root",
        action="append",
        default=[],
        metavar="S3_PREFIX=DIR",
        help="read references under S3_PREFIX from the local DIR (repeatable)",
    )
    parser.add_argument(
        "--label-attribute", help="the label attribute, when the manifest has several"
    )
    _split_options(parser, 0.2)


def _groundtruth(args: argparse.Namespace) -> Summary:
    from segcontainer.tools.groundtruth_classes import convert_job

    return convert_job(
        args.manifest,
        args.out,
        SplitOptions.from_args(args),
        s3_roots=args.s3_root,
        label_attribute=args.label_attribute,
    )


def _labelme_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dir", type=Path, help="folder of labelme .json files (searched recursively)"
    )
    parser.add_argument("out", type=Path, help="folder for the channel layout")
    parser.add_argument(
        "--labels", type=Path, required=True, help="labels.txt as labelme2voc reads"
    )
    parser.add_argument(
        "--allow-outside-images",
        action="store_true",
        help="read an imagePath that leads outside DIR (refused by default: a JSON file would "
        "copy any file of the disk into OUT)",
    )
    _split_options(parser, 0.2)


def _labelme(args: argparse.Namespace) -> Summary:
    from segcontainer.tools.labelme import convert

    return convert(
        args.dir,
        args.out,
        args.labels,
        SplitOptions.from_args(args),
        allow_outside_images=args.allow_outside_images,
    )


def _tile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input", type=Path, help="channel layout root (train/, train_annotation/...)"
    )
    parser.add_argument("out", type=Path, help="folder for the tiled layout")
    parser.add_argument("--size", type=int, required=True, help="tile width and height in pixels")
    parser.add_argument("--stride", type=int, help="step between tiles (default: --size)")
    parser.add_argument("--drop-empty", action="store_true", help="leave out background-only tiles")
    _split_options(parser, None)


def _tile(args: argparse.Namespace) -> Summary:
    from segcontainer.tools.tile import tile_layout

    return tile_layout(
        args.input,
        args.out,
        SplitOptions.from_args(args),
        size=args.size,
        stride=args.stride,
        drop_empty=args.drop_empty,
    )


def _validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", type=Path, help="layout root (train/, train_annotation/...)")
    parser.add_argument(
        "--num-classes",
        type=int,
        help="default: num_classes of ROOT/input/config/hyperparameters.json, else the lines "
        "of class_names.txt, else the highest label in the masks + 1",
    )
    parser.add_argument(
        "--class-names",
        metavar="A,B,...",
        help="comma-separated, as the hyperparameter (default: the config's, else class_names.txt)",
    )
    parser.add_argument(
        "--label-map",
        type=Path,
        help="a label map JSON for both splits, or a label_map folder (default: ROOT/label_map)",
    )
    parser.add_argument(
        "--multi-label",
        action="store_const",
        const=True,
        help="image classification data: one 0/1 label per class (default: the config's "
        "multi_label, else read off the labels)",
    )


def _validate(args: argparse.Namespace) -> Summary:
    from segcontainer.tools.classification_data import data_is_classification

    if data_is_classification(args.root):  # a .lst or .rec in its channels
        if args.label_map is not None:
            raise UserError("--label-map maps mask values: image classification data has none.")
        from segcontainer.tools.validate_classification import validate_classification

        return validate_classification(
            args.root, args.num_classes, args.class_names, args.multi_label
        )
    from segcontainer.tools.validate import validate

    return validate(args.root, args.num_classes, args.label_map, args.class_names)


def add_tta_option(parser: argparse.ArgumentParser) -> None:
    """--tta, SEGCONTAINER_TTA's syntax (config/tta.py parses both)."""
    parser.add_argument(
        "--tta",
        metavar="none|flip|flip,scales=S1,S2,...",
        help="semantic segmentation's test-time augmentation (default: SEGCONTAINER_TTA, else "
        "none): flip averages the image and its mirror (~2x the forward); "
        "flip,scales=0.75,1.0,1.25 adds those multiples of the inference size (~6.25x)",
    )


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="model folder or model.tar.gz")
    parser.add_argument("data", type=Path, help="layout root, or a channel folder (data/train)")
    parser.add_argument("out", type=Path, help="folder for the report (new or empty)")
    parser.add_argument(
        "--engine",
        default="auto",
        choices=variables.ENGINE.choices,  # one list: SEGCONTAINER_ENGINE's (no torch import)
        help="how the model runs: auto (default: what serve runs on this host, as "
        "SEGCONTAINER_ENGINE=auto), torch (as training's validation: reproduces "
        "validation:mIOU), or an exported onnx / onnx-int8 file",
    )
    parser.add_argument(
        "--background",
        metavar="none|ID|NAME",
        help="the class the overlays treat as background (default: the class named "
        "background, e.g. _background_, else none)",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        metavar="K",
        help="image classification: also score top-K accuracy (default: the model's top_k)",
    )
    add_tta_option(parser)


def _evaluate(args: argparse.Namespace) -> Summary:
    from segcontainer.tools.evaluate import evaluate

    return evaluate(
        args.model, args.data, args.out, args.engine, args.background, args.top_k, args.tta
    )


TOOLS = {
    "groundtruth": DataTool(
        "Ground Truth semantic segmentation or image classification output manifest -> "
        "channel layout",
        GROUNDTRUTH_EXAMPLE,
        _groundtruth_arguments,
        _groundtruth,
    ),
    "labelme": DataTool(
        "folder of labelme JSON files -> channel layout",
        LABELME_EXAMPLE,
        _labelme_arguments,
        _labelme,
    ),
    "tile": DataTool(
        "cut a channel layout's images and masks into tiles",
        TILE_EXAMPLE,
        _tile_arguments,
        _tile,
    ),
    "validate": DataTool(
        "training's data check on a channel layout, without training",
        VALIDATE_EXAMPLE,
        _validate_arguments,
        _validate,
    ),
    "evaluate": DataTool(
        "score a model on labelled images; metrics.json, overlays and report.html",
        EVALUATE_EXAMPLE,
        _evaluate_arguments,
        _evaluate,
    ),
}
DATA_TOOLS = tuple(TOOLS)


def add_data_tools(commands: argparse._SubParsersAction) -> None:
    """One subcommand per tool, its example shown as written under its --help."""
    for name, tool in TOOLS.items():
        parser = commands.add_parser(
            name,
            help=tool.help,
            epilog=tool.example,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        tool.add_arguments(parser)


def run_data_tool(args: argparse.Namespace) -> int:
    """Run the tool ``args.command`` names and print its summary (a UserError is the caller's
    to report); 1 when validate finds that training would refuse the data."""
    summary = TOOLS[args.command].run(args)
    print("\n".join(summary.lines()))
    return 0 if getattr(summary, "ok", True) else 1
