"""Command line: ``segcontainer train | serve | predict | export | demo | groundtruth | labelme
| tile | validate | evaluate | recordio``.

``train`` and ``serve`` are what SageMaker runs (``docker run IMAGE train``); the executables
of the same names at the repository root call them. ``predict`` writes masks for a folder of
images; ``export`` adds ONNX/int8/TorchScript files to a trained model; ``demo`` runs train,
serve and one prediction on a generated dataset. ``groundtruth`` and ``labelme`` convert
labelling-tool output into the channel layout; ``tile`` cuts a layout's large frames into tiles;
``validate`` runs training's data check on a layout; ``evaluate`` scores a model, with a report.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

# Keep in step with pyproject.toml (a test checks): torchvision 0.21 made transforms.v2's
# make_params/transform public (augment.py overrides them; older releases never call them),
# and torch.serialization.safe_globals (checkpoint loading) arrived in torch 2.5; torchvision
# 0.21 itself needs torch 2.6.
MINIMUM_VERSIONS = {"torch": (2, 6), "torchvision": (0, 21)}


def _release(version: str) -> tuple[int, ...]:
    """(major, minor) of a version string such as '2.6.0+cu124' or '2.7.0a0'."""
    return tuple(int(re.match(r"\d+", part).group()) for part in version.split(".")[:2])


def version_problem() -> str | None:
    """Why the installed torch/torchvision cannot run this package, or None."""
    import torch
    import torchvision

    found = {"torch": torch.__version__, "torchvision": torchvision.__version__}
    if all(_release(found[name]) >= low for name, low in MINIMUM_VERSIONS.items()):
        return None
    needed = " and ".join(
        f"{name} >= {'.'.join(map(str, low))}" for name, low in MINIMUM_VERSIONS.items()
    )
    return (
        f"segcontainer needs {needed}; found torch {found['torch']}, torchvision "
        f"{found['torchvision']}. Install a newer pair (constraints.txt pins a known-good one) "
        "or use a base image that has one."
    )


def _refuse_old_versions(command: str) -> int | None:
    problem = version_problem()
    if problem is None:
        return None
    print(f"{command}: {problem}", file=sys.stderr)
    if command == "train":  # SageMaker shows output/failure as the job's FailureReason
        from segcontainer.config.environment import Paths

        paths = Paths.from_env()
        paths.output_dir.mkdir(parents=True, exist_ok=True)
        paths.failure_file.write_text(problem + "\n")
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segcontainer", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("train", help="train from the /opt/ml channels (SAGEMAKER_BASE_DIR)")
    commands.add_parser("serve", help="host model/ with nginx + gunicorn (SAGEMAKER_BASE_DIR)")
    predict_parser = commands.add_parser("predict", help="masks for a folder of images")
    predict_parser.add_argument("model", type=Path, help="model folder or model.tar.gz")
    predict_parser.add_argument("input", type=Path, help="folder of images")
    predict_parser.add_argument("output", type=Path, help="folder for <name>.png masks")
    predict_parser.add_argument("--overlay", action="store_true", help="also write overlays")
    export_parser = commands.add_parser(
        "export", help="add model.onnx / model.int8.onnx / model.ts to a trained model"
    )
    export_parser.add_argument("model", type=Path, help="model folder or model.tar.gz")
    export_parser.add_argument(
        "--formats", default="onnx,int8", help="onnx, int8, torchscript (default onnx,int8)"
    )
    export_parser.add_argument(
        "--calibration",
        type=Path,
        help="folder laid out like the channels: train/ images (int8 calibration), "
        "validation/ + validation_annotation/ pairs (the checks)",
    )
    recordio_parser = commands.add_parser("recordio", help="write or list Pipe-mode RecordIO")
    recordio_commands = recordio_parser.add_subparsers(dest="recordio_command", required=True)
    write_parser = recordio_commands.add_parser("write", help="image/mask pairs -> RecordIO")
    write_parser.add_argument("output", type=Path)
    write_parser.add_argument("--images", type=Path)
    write_parser.add_argument("--masks", type=Path)
    write_parser.add_argument("--manifest", type=Path)
    list_parser = recordio_commands.add_parser("list", help="one line per record")
    list_parser.add_argument("file", type=Path)
    demo_parser = commands.add_parser("demo", help="train on a generated demo dataset")
    demo_parser.add_argument("--dir", type=Path, default=Path("demo-run"))
    demo_parser.add_argument("--epochs", type=int, default=3)
    add_data_tools(commands)
    args = parser.parse_args(argv)
    if args.command in ("train", "serve") and (refused := _refuse_old_versions(args.command)):
        return refused
    if args.command in DATA_TOOLS:
        return run_data_tool(args)
    if args.command == "train":
        from segcontainer.training.entry import main as train_main

        return train_main()
    if args.command == "demo":
        from segcontainer.tools.demo import run_demo

        return run_demo(args.dir, args.epochs)
    if args.command == "recordio":
        from segcontainer.errors import UserError
        from segcontainer.tools import recordio as recordio_tools

        try:
            if args.recordio_command == "list":
                lines = recordio_tools.list_records(args.file)
                print("\n".join(lines))
                return 1 if lines and lines[-1].startswith("corrupt") else 0
            count = recordio_tools.write(args.output, args.images, args.masks, args.manifest)
        except UserError as exc:
            print(f"recordio: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {count} image/annotation pairs ({2 * count} records) to {args.output}")
        return 0
    if args.command == "export":
        import logging

        from segcontainer.errors import UserError
        from segcontainer.tools.export import export_command

        logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(levelname)s] %(message)s")
        try:
            exports = export_command(args.model, args.formats, args.calibration)
        except UserError as exc:
            print(f"export: {exc}", file=sys.stderr)
            return 1
        written = [entry["file"] for entry in exports.values() if entry.get("file")]
        print(f"{args.model}: wrote {', '.join(written) or 'nothing'}")
        if "int8" in exports and not exports["int8"].get("passed"):
            print(f"model.int8.onnx withheld: {exports['int8'].get('reason')}")
        return 0
    if args.command == "predict":
        from segcontainer.errors import UserError
        from segcontainer.tools.predict import predict_folder

        try:
            failed = predict_folder(args.model, args.input, args.output, args.overlay)
        except UserError as exc:
            print(f"predict: {exc}", file=sys.stderr)
            return 1
        print(f"masks written to {args.output}" + (f"; {failed} files skipped" if failed else ""))
        return 1 if failed else 0
    from segcontainer.serving.server import main as serve_main

    return serve_main()


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

Runs train's data check on data/{train,train_annotation,validation,validation_annotation}:
prints the counts, the pixels per class and every problem with the files named; exits 0 when
training would accept the data, 1 otherwise.
"""

EVALUATE_EXAMPLE = """example:
  segcontainer evaluate model.tar.gz data/ report/
  segcontainer evaluate model/ data/train report-train/ --engine onnx-int8

DATA: a layout root (its validation/ pairs are scored) or one channel folder with its masks in
<channel>_annotation/ beside it. Images are predicted as the endpoint predicts them. Writes
report/metrics.json, confusion_matrix.png, overlays/ and report.html (open it in a browser).
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
    check.add_argument("--num-classes", type=int, help="default: the lines of class_names.txt")
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
        default="torch",
        choices=("torch", "onnx", "onnx-int8"),  # tools/evaluate.py's ENGINES
        help="how the model runs: torch (default), or an exported onnx / onnx-int8 file",
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
            )
        elif args.command == "validate":
            from segcontainer.tools.validate import validate

            summary = validate(args.root, args.num_classes, args.label_map)
        elif args.command == "evaluate":
            from segcontainer.tools.evaluate import evaluate

            summary = evaluate(args.model, args.data, args.out, args.engine)
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


if __name__ == "__main__":
    sys.exit(main())
