"""The data tools' subcommands (``groundtruth``, ``labelme``, ``tile``, ``validate``,
``evaluate``): their arguments with an example in each ``--help``, and how each runs. cli.py
adds them to its parser and hands them over here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path


class EngineNames:
    """``engines.ENGINE_CHOICES`` as argparse's ``choices``, imported only when argparse checks
    a value or prints the error or help that lists them: engines imports torch, which the CLI
    does not load just to build its parser."""

    def __iter__(self) -> Iterator[str]:
        from segcontainer.engines import ENGINE_CHOICES

        return iter(ENGINE_CHOICES)

    def __contains__(self, value: object) -> bool:
        return value in tuple(self)


GROUNDTRUTH_EXAMPLE = """example:
  segcontainer groundtruth s3://bucket/my-job/manifests/output/output.manifest data/
  segcontainer groundtruth output.manifest data/ --s3-root s3://bucket/my-job=my-job/

Writes data/{train,train_annotation,validation,validation_annotation}/, class_names.txt and
train.manifest / validation.manifest, then prints num_classes and class_names for training.
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
training would accept the data, 1 otherwise.
"""

EVALUATE_EXAMPLE = """example:
  segcontainer evaluate model.tar.gz data/ report/
  segcontainer evaluate model/ data/train report-train/ --engine onnx-int8
  segcontainer evaluate model.tar.gz data/ report/ --engine torch --background none

DATA: a layout root (its validation/ pairs are scored) or one channel folder with its masks in
<channel>_annotation/ beside it. Images are predicted as the endpoint predicts them. Writes
report/metrics.json, confusion_matrix.png, overlays/ and report.html (open it in a browser),
which name the engine: --engine torch reproduces training's validation:mIOU.
"""

DATA_TOOLS = ("groundtruth", "labelme", "tile", "validate", "evaluate")


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


def add_data_tools(commands) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    gt = commands.add_parser(
        "groundtruth",
        help="Ground Truth semantic segmentation output manifest -> channel layout",
        epilog=GROUNDTRUTH_EXAMPLE,
        formatter_class=raw,
    )
    gt.add_argument("manifest", help="output.manifest: a local path or s3:// URI")
    gt.add_argument("out", type=Path, help="folder for the channel layout")
    gt.add_argument(
        "--s3-root",
        action="append",
        default=[],
        metavar="S3_PREFIX=DIR",
        help="read references under S3_PREFIX from the local DIR (repeatable)",
    )
    gt.add_argument("--label-attribute", help="the label attribute, when the manifest has several")
    _split_options(gt, 0.2)
    lm = commands.add_parser(
        "labelme",
        help="folder of labelme JSON files -> channel layout",
        epilog=LABELME_EXAMPLE,
        formatter_class=raw,
    )
    lm.add_argument("dir", type=Path, help="folder of labelme .json files (searched recursively)")
    lm.add_argument("out", type=Path, help="folder for the channel layout")
    lm.add_argument("--labels", type=Path, required=True, help="labels.txt as labelme2voc reads")
    lm.add_argument(
        "--allow-outside-images",
        action="store_true",
        help="read an imagePath that leads outside DIR (refused by default: a JSON file would "
        "copy any file of the disk into OUT)",
    )
    _split_options(lm, 0.2)
    tile = commands.add_parser(
        "tile",
        help="cut a channel layout's images and masks into tiles",
        epilog=TILE_EXAMPLE,
        formatter_class=raw,
    )
    tile.add_argument("input", type=Path, help="channel layout root (train/, train_annotation/...)")
    tile.add_argument("out", type=Path, help="folder for the tiled layout")
    tile.add_argument("--size", type=int, required=True, help="tile width and height in pixels")
    tile.add_argument("--stride", type=int, help="step between tiles (default: --size)")
    tile.add_argument("--drop-empty", action="store_true", help="leave out background-only tiles")
    _split_options(tile, None)
    check = commands.add_parser(
        "validate",
        help="training's data check on a channel layout, without training",
        epilog=VALIDATE_EXAMPLE,
        formatter_class=raw,
    )
    check.add_argument("root", type=Path, help="layout root (train/, train_annotation/...)")
    check.add_argument(
        "--num-classes",
        type=int,
        help="default: num_classes of ROOT/input/config/hyperparameters.json, else the lines "
        "of class_names.txt, else the highest label in the masks + 1",
    )
    check.add_argument(
        "--class-names",
        metavar="A,B,...",
        help="comma-separated, as the hyperparameter (default: the config's, else class_names.txt)",
    )
    check.add_argument(
        "--label-map",
        type=Path,
        help="a label map JSON for both splits, or a label_map folder (default: ROOT/label_map)",
    )
    score = commands.add_parser(
        "evaluate",
        help="score a model on labelled images; metrics.json, overlays and report.html",
        epilog=EVALUATE_EXAMPLE,
        formatter_class=raw,
    )
    score.add_argument("model", type=Path, help="model folder or model.tar.gz")
    score.add_argument("data", type=Path, help="layout root, or a channel folder (data/train)")
    score.add_argument("out", type=Path, help="folder for the report (new or empty)")
    score.add_argument(
        "--engine",
        default="auto",
        choices=EngineNames(),
        metavar="ENGINE",  # a metavar of choices would be built, importing torch, at start-up
        help="how the model runs: auto (default: what serve runs on this host, as "
        "SEGCONTAINER_ENGINE=auto), torch (as training's validation: reproduces "
        "validation:mIOU), or an exported onnx / onnx-int8 file",
    )
    score.add_argument(
        "--background",
        metavar="none|ID|NAME",
        help="the class the overlays treat as background (default: the class named "
        "background, e.g. _background_, else none)",
    )


def run_data_tool(args: argparse.Namespace) -> int:
    from segcontainer.errors import UserError

    try:
        if args.command == "groundtruth":
            from segcontainer.tools.groundtruth import convert

            summary = convert(
                args.manifest,
                args.out,
                args.s3_root,
                args.validation_fraction,
                args.seed,
                args.label_attribute,
                args.group_by,
                args.manifest_prefix,
            )
        elif args.command == "labelme":
            from segcontainer.tools.labelme import convert

            summary = convert(
                args.dir,
                args.out,
                args.labels,
                args.validation_fraction,
                args.seed,
                args.group_by,
                args.manifest_prefix,
                args.allow_outside_images,
            )
        elif args.command == "validate":
            from segcontainer.tools.validate import validate

            summary = validate(args.root, args.num_classes, args.label_map, args.class_names)
        elif args.command == "evaluate":
            from segcontainer.tools.evaluate import evaluate

            summary = evaluate(args.model, args.data, args.out, args.engine, args.background)
        else:
            from segcontainer.tools.tile import tile_layout

            summary = tile_layout(
                args.input,
                args.out,
                args.size,
                args.stride,
                args.drop_empty,
                args.group_by,
                args.validation_fraction,
                args.seed,
                args.manifest_prefix,
            )
    except UserError as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 1
    print("\n".join(summary.lines()))
    return 0 if getattr(summary, "ok", True) else 1  # validate: 1 when training would refuse
