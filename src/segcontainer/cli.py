"""SageMaker-compatible semantic segmentation: segcontainer train | serve | predict | export |
demo | groundtruth | labelme | tile | validate | evaluate | recordio (each with its own --help).

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

from segcontainer.errors import UserError
from segcontainer.tools.commands import DATA_TOOLS, add_data_tools, add_tta_option, run_data_tool

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


def description() -> str:
    """The docstring's first paragraph, on one line (argparse wraps it to the terminal)."""
    return " ".join(__doc__.split("\n\n")[0].split())


def _add_predict(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "predict",
        help="masks for a folder of images (image classification: predictions.json, each "
        "image's probabilities and label)",
    )
    parser.add_argument("model", type=Path, help="model folder or model.tar.gz")
    parser.add_argument("input", type=Path, help="folder of images")
    parser.add_argument(
        "output", type=Path, help="folder for <name>.png masks (or predictions.json)"
    )
    parser.add_argument("--overlay", action="store_true", help="also write overlays")
    add_tta_option(parser)


def _add_export(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export", help="add model.onnx / model.int8.onnx / model.ts to a trained model"
    )
    parser.add_argument("model", type=Path, help="model folder or model.tar.gz")
    parser.add_argument(
        "--formats", default="onnx,int8", help="onnx, int8, torchscript (default onnx,int8)"
    )
    parser.add_argument(
        "--calibration",
        type=Path,
        help="folder laid out like the channels: train/ images (int8 calibration), "
        "validation/ + validation_annotation/ pairs (the checks)",
    )


def _add_recordio(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("recordio", help="write or list Pipe-mode RecordIO")
    recordio_commands = parser.add_subparsers(dest="recordio_command", required=True)
    write_parser = recordio_commands.add_parser("write", help="image/mask pairs -> RecordIO")
    write_parser.add_argument("output", type=Path)
    write_parser.add_argument("--images", type=Path)
    write_parser.add_argument("--masks", type=Path)
    write_parser.add_argument("--manifest", type=Path)
    list_parser = recordio_commands.add_parser("list", help="one line per record")
    list_parser.add_argument("file", type=Path)


def parser() -> argparse.ArgumentParser:
    """The whole command line: SageMaker's two commands, then the tools."""
    root = argparse.ArgumentParser(prog="segcontainer", description=description())
    commands = root.add_subparsers(dest="command", required=True)
    commands.add_parser("train", help="train from the /opt/ml channels (SAGEMAKER_BASE_DIR)")
    commands.add_parser("serve", help="host model/ with nginx + gunicorn (SAGEMAKER_BASE_DIR)")
    _add_predict(commands)
    _add_export(commands)
    _add_recordio(commands)
    demo_parser = commands.add_parser("demo", help="train on a generated demo dataset")
    demo_parser.add_argument("--dir", type=Path, default=Path("demo-run"))
    demo_parser.add_argument("--epochs", type=int, default=3)
    demo_parser.add_argument(
        "--task",
        default="segmentation",
        choices=("segmentation", "classification", "semantic-segmentation", "image-classification"),
        help="the algorithm the demo trains (default segmentation)",
    )
    demo_parser.add_argument(
        "--algorithm", default="fcn", help="segmentation's head (e.g. lraspp: the fast CPU path)"
    )
    demo_parser.add_argument(
        "--backbone", default="resnet-50", help="segmentation's encoder (e.g. mobilenet-v3-large)"
    )
    add_data_tools(commands)
    return root


# Each command's runner imports what it needs when it runs: `segcontainer --help` and the
# light tools never load torch's training or serving stacks.


def _train(args: argparse.Namespace) -> int:
    from segcontainer.training.entry import main as train_main

    return train_main()


def _serve(args: argparse.Namespace) -> int:
    from segcontainer.serving.server import main as serve_main

    return serve_main()


def _demo(args: argparse.Namespace) -> int:
    from segcontainer.tools.demo import run_demo

    return run_demo(args.dir, args.epochs, args.task, args.algorithm, args.backbone)


def _recordio(args: argparse.Namespace) -> int:
    from segcontainer.tools import pipe_files

    if args.recordio_command == "list":
        lines = pipe_files.list_records(args.file)
        print("\n".join(lines))
        return 1 if lines and lines[-1].startswith("corrupt") else 0
    count = pipe_files.write(args.output, args.images, args.masks, args.manifest)
    print(f"wrote {count} image/annotation pairs ({2 * count} records) to {args.output}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from segcontainer import logs
    from segcontainer.tools.export import export_command

    logs.configure(stream=sys.stderr)  # the progress; the summary below goes to stdout
    exports = export_command(args.model, args.formats, args.calibration)
    written = [entry["file"] for entry in exports.values() if entry.get("file")]
    print(f"{args.model}: wrote {', '.join(written) or 'nothing'}")
    if "int8" in exports and not exports["int8"].get("passed"):
        print(f"model.int8.onnx withheld: {exports['int8'].get('reason')}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from segcontainer.tools.predict import predict_folder

    done = predict_folder(args.model, args.input, args.output, args.overlay, args.tta)
    print(done.written + (f"; {done.failed} files skipped" if done.failed else ""))
    return 1 if done.failed else 0


RUNNERS = {
    "train": _train,
    "serve": _serve,
    "demo": _demo,
    "recordio": _recordio,
    "export": _export,
    "predict": _predict,
    **dict.fromkeys(DATA_TOOLS, run_data_tool),
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command in ("train", "serve") and (refused := _refuse_old_versions(args.command)):
        return refused
    try:
        return RUNNERS[args.command](args)
    except UserError as exc:  # the message says what to fix: no traceback
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
