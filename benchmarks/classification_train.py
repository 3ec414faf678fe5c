"""Image classification's training throughput end to end: `train` on JPEG files (read, decode,
resize, crop, forward, loss, backward, optimizer step, as users run it) for each ``num_layers``,
beside torchvision's model of the same depth trained model-only (random tensors already on the
device, same loss, same precision) in the same run.

    python benchmarks/classification_train.py                       # ResNet-18 and 50 at 224
    python benchmarks/classification_train.py --layers 18 --images 8 --batch 4 --side 32  # tiny

The data: CamVid frames (``--data``, linked, never copied) as a multi-label "which classes
appear" task (camvid_labels.py), ``--images`` of them, resized to ``--side`` (shorter side) and
centre-cropped to ``--side`` square. The trainer's rate is the mean of its per-epoch img/s
after the first epoch (the first holds the warm-up), as train_end_to_end.py's. The model-only
reference runs just before and just after the job and the ratio is to the mean of the two, so
that a machine shared with other work loads both sides alike (the two figures show the drift).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision import models

sys.path.insert(0, str(Path(__file__).resolve().parent))

from camvid_labels import CLASSES, lay_out_lists  # noqa: E402
from jobs import CAMVID, device_line, run_train  # noqa: E402

from segcontainer.precision import Precision  # noqa: E402

REFERENCES = {18: models.resnet18, 34: models.resnet34, 50: models.resnet50}


def model_only(layers: int, batch: int, side: int, steps: int, warmup: int, precision: str):
    """Images/s of torchvision's ResNet training steps on random images and multi-hot targets
    (binary cross-entropy, SGD), as the trainer's multi-label step; ``precision``: the trainer's
    (precision_dtype float32 -> fp32, float16 -> auto)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = Precision.choose(precision, device)
    torch.manual_seed(0)
    model = REFERENCES[layers](num_classes=len(CLASSES)).to(device).train()
    images = torch.randn(batch, 3, side, side, device=device)
    targets = torch.randint(0, 2, (batch, len(CLASSES)), device=device).float()
    optimizer = torch.optim.SGD(model.parameters(), 0.01, momentum=0.9, weight_decay=1e-4)

    def step() -> None:
        with amp.autocast():
            logits = model(images)
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        amp.scaler.scale(loss).backward()
        amp.scaler.step(optimizer)
        amp.scaler.update()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=CAMVID)
    parser.add_argument("--layers", default="18,50")
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--images", type=int, default=64, help="training frames")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], help="extra hyperparameters k=v")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.set)
    precision = "auto" if extra.get("precision_dtype") == "float16" else "fp32"
    gpu = torch.cuda.is_available()
    warmup, steps = (5, 20) if gpu else (1, 2)
    print(f"device: {device_line()}\ncommand: python {' '.join(sys.argv)}\n", flush=True)
    print(
        f"| num_layers | segcontainer train img/s (JPEG files, {args.side} px) "
        "| torchvision model-only img/s (before / after) | ratio | epoch img/s |"
    )
    print("| --- | --- | --- | --- | --- |")
    for layers in (int(n) for n in args.layers.split(",")):
        hyperparameters = {
            "num_layers": layers,
            "image_shape": f"3,{args.side},{args.side}",
            "resize": args.side,
            "multi_label": 1,
            "num_classes": len(CLASSES),
            "num_training_samples": args.images,
            "epochs": args.epochs,
            "mini_batch_size": args.batch,
            "use_pretrained_model": 0,
            "export": "none",  # training time only: the exports are measured on their own
            **extra,
        }
        before = model_only(layers, args.batch, args.side, steps, warmup, precision)
        with tempfile.TemporaryDirectory() as scratch:
            base = Path(scratch)
            lay_out_lists(args.data, base, args.images, validation_limit=args.batch)
            job = run_train(base, hyperparameters)
        if job.returncode != 0:
            print(job.log[-4000:])
            raise SystemExit(f"train exited {job.returncode}")
        rates = [e["images_per_second"] for e in job.epochs if "images_per_second" in e]
        rate = statistics.mean(rates[1:] or rates)
        after = model_only(layers, args.batch, args.side, steps, warmup, precision)
        reference = (before + after) / 2
        print(
            f"| {layers} | {rate:.2f} | {reference:.2f} ({before:.2f} / {after:.2f}) "
            f"| {rate / reference:.2f}x | {', '.join(f'{r:.2f}' for r in rates)} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
