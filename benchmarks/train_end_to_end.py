"""End-to-end training throughput: `train` on JPEG files (read, decode, augment, forward,
backward, optimizer step, as users run it), for each algorithm x backbone, beside
torchvision's model of the same architecture fed random tensors already on the device
(same precision and memory format), measured in the same run, with peak memory of each.

    python benchmarks/train_end_to_end.py                    # CamVid, crop 512, batch 16
    python benchmarks/train_end_to_end.py --set input_pipeline=cpu   # the plain path

The trainer's rate is the mean of its per-epoch img/s after the first epoch (the first one
holds cuDNN autotuning and compilation); its peak memory is what it logs.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from jobs import CAMVID, device_line, lay_out, log_lines, run_train  # noqa: E402
from train_throughput import NUM_CLASSES, REFERENCES, measure  # noqa: E402

PEAK_LINE = re.compile(r"peak GPU memory ([\d.]+) GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=CAMVID)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--algorithms", default="fcn,psp,deeplab,lraspp,deeplabv3plus")
    parser.add_argument("--backbones", default="resnet-50,resnet-101,mobilenet-v3-large")
    parser.add_argument("--set", nargs="*", default=[], help="extra hyperparameters k=v")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    warmup, iters = (5, 20) if gpu else (0, 1)
    print(f"device: {device_line()}\ncommand: python {' '.join(sys.argv)}\n")
    print(
        "| model | segcontainer train img/s (JPEG files) | torchvision model-only img/s "
        "| ratio | peak GiB train / torchvision | input pipeline |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for backbone in args.backbones.split(","):
        for algorithm in args.algorithms.split(","):
            hyperparameters = {
                "algorithm": algorithm,
                "backbone": backbone,
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
                job = run_train(lay_out(args.data, Path(scratch)), hyperparameters)
            if job.returncode != 0:
                print(job.log[-4000:])
                raise SystemExit(f"train exited {job.returncode}")
            rates = [e["images_per_second"] for e in job.epochs if "images_per_second" in e]
            rate = statistics.mean(rates[1:] or rates)
            peaks = [float(m[1]) for m in PEAK_LINE.finditer(job.log)]
            builder = REFERENCES.get((algorithm, backbone))
            reference = reference_peak = None
            if builder is not None:
                torch.manual_seed(0)
                model = builder(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
                # the trainer's precision=auto, as the job it is compared with
                reference, reference_peak = measure(
                    model, args.batch, args.crop, iters, warmup, device, "auto"
                )
                del model
            pipeline = log_lines(job.log, "input pipeline")
            ratio = f"{rate / reference:.2f}x" if reference else "no torchvision model"

            def fmt(value):
                return "-" if value is None else f"{value:.2f}"

            print(
                f"| {algorithm}-{backbone} | {rate:.1f} | {fmt(reference)} | {ratio} "
                f"| {fmt(max(peaks) if peaks else None)} / {fmt(reference_peak)} "
                f"| {pipeline[0].split('input pipeline')[-1].strip() if pipeline else '-'} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
