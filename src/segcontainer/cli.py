"""Command line: ``segcontainer train | serve | demo``.

``train`` and ``serve`` are what SageMaker runs (``docker run IMAGE train``); the executables
of the same names at the repository root call them. ``demo`` runs the whole training path on
a generated dataset in a local folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

DEMO_HYPERPARAMETERS = {
    "backbone": "resnet-50",
    "algorithm": "fcn",
    "use_pretrained_model": "False",  # no network here: the demo trains from scratch
    "num_classes": "3",
    "num_training_samples": "32",
    "epochs": "3",
    "base_size": "96",
    "crop_size": "64",
    "mini_batch_size": "8",
    "validation_mini_batch_size": "8",
    "learning_rate": "0.001",
    "optimizer": "adam",
    "class_names": "background,rectangle,ellipse",
}


def demo(folder: Path, epochs: int) -> int:
    from segcontainer.demo import make_dataset, write_local_mode_config

    base = folder.resolve() / "opt_ml"
    if base.exists():
        shutil.rmtree(base)
    make_dataset(base / "input" / "data")
    write_local_mode_config(base, {**DEMO_HYPERPARAMETERS, "epochs": str(epochs)})
    print(f"demo dataset and SageMaker config files written under {base}", flush=True)
    log_file = folder.resolve() / "train.log"
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "PYTHONUNBUFFERED": "1"}
    with open(log_file, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "segcontainer.cli", "train"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for line in process.stdout:
            sys.stdout.write(line)
            log.write(line)
        code = process.wait()
    print(f"\ntrain exited with {code}.")
    print(f"  model folder (SageMaker packs it): {base / 'model'}")
    print(f"  model.tar.gz to deploy:            {base / 'output' / 'model.tar.gz'}")
    print(f"  training curves:                   {base / 'output' / 'data'}")
    print(f"  log:                               {log_file}")
    if code:
        print(f"  failure reason:                    {base / 'output' / 'failure'}")
    return code


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
    demo_parser = commands.add_parser("demo", help="train on a generated demo dataset")
    demo_parser.add_argument("--dir", type=Path, default=Path("demo-run"))
    demo_parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    if args.command == "train":
        from segcontainer.training import main as train_main

        return train_main()
    if args.command == "demo":
        return demo(args.dir, args.epochs)
    if args.command == "predict":
        from segcontainer.errors import UserError
        from segcontainer.predict import predict_folder

        try:
            failed = predict_folder(args.model, args.input, args.output, args.overlay)
        except UserError as exc:
            print(f"predict: {exc}", file=sys.stderr)
            return 1
        print(f"masks written to {args.output}" + (f"; {failed} files skipped" if failed else ""))
        return 1 if failed else 0
    from segcontainer.serving.server import main as serve_main

    return serve_main()


if __name__ == "__main__":
    sys.exit(main())
