"""The seed workload users compare with the built-in algorithm: FCN-ResNet50, crop 512,
batch 16, 160 epochs over 676 images (CamVid frames repeated to that count), from scratch;
total wall time of `train` including validation every epoch, start-up and compilation.

    python benchmarks/seed_workload.py                 # the full 160 epochs
    python benchmarks/seed_workload.py --epochs 3      # a short run

The built-in's users report 4680 s on four V100s for this job. The reference measured in the
same run is the model-only ceiling (train_throughput.measure: random tensors already on the
device): the time 160 x 676 images would take at that rate, with no data, no validation and
no start-up.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from jobs import CAMVID, device_line, lay_out, log_lines, run_train  # noqa: E402
from train_throughput import NUM_CLASSES, measure  # noqa: E402

from segcontainer.models import build_model  # noqa: E402

BUILT_IN_SECONDS = 4680  # reported for the built-in on 4x V100 (ml.p3.8xlarge)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=CAMVID)
    parser.add_argument("--epochs", type=int, default=160)
    parser.add_argument("--images", type=int, default=676)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--set", nargs="*", default=[], help="extra hyperparameters k=v")
    args = parser.parse_args()
    hyperparameters = {
        "algorithm": "fcn",
        "backbone": "resnet-50",
        "num_classes": NUM_CLASSES,
        "epochs": args.epochs,
        "mini_batch_size": args.batch,
        "crop_size": args.crop,
        "base_size": args.crop,
        "use_pretrained_model": "False",
        "export": "none",  # training time only: the exports are measured on their own
        **dict(item.split("=", 1) for item in args.set),
    }
    with tempfile.TemporaryDirectory() as scratch:
        base = lay_out(args.data, Path(scratch), repeat_to=args.images)
        job = run_train(base, hyperparameters)
    if job.returncode != 0:
        print(job.log[-4000:])
        raise SystemExit(f"train exited {job.returncode}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    warmup, iters = (5, 20) if device.type == "cuda" else (0, 1)
    ceiling, _ = measure(
        build_model("fcn", "resnet-50", NUM_CLASSES),
        args.batch,
        args.crop,
        iters,
        warmup,
        device,
        "auto",  # the trainer's precision policy
    )
    images = args.epochs * (args.images // args.batch) * args.batch
    ceiling_seconds = images / ceiling
    print(f"device: {device_line()}\ncommand: python {' '.join(sys.argv)}\n")
    print("| job | epochs x images | wall time s | img/s (incl. validation) | vs model-only |")
    print("| --- | --- | --- | --- | --- |")
    print(
        f"| segcontainer train | {args.epochs} x {args.images} | {job.seconds:.1f} "
        f"| {images / job.seconds:.1f} | {ceiling_seconds / job.seconds:.2f}x |"
    )
    print(
        f"| model-only ceiling (same run) | {args.epochs} x {args.images} | "
        f"{ceiling_seconds:.1f} | {ceiling:.1f} | 1.00x |"
    )
    if args.epochs == 160 and args.images == 676:
        print(
            f"| built-in, 4x V100 (reported) | 160 x 676 | {BUILT_IN_SECONDS} | "
            f"{160 * 676 / BUILT_IN_SECONDS:.1f} | - |"
        )
    print(f"\nbest validation mIoU {job.best_miou:.4f}")
    for line in log_lines(job.log, "input pipeline", "compile", "precision"):
        print(line)


if __name__ == "__main__":
    main()
