"""Training throughput (images/s) of each algorithm beside torchvision's model of the same
architecture, measured in the same run on whatever device is present.

One training step = forward, pixel-wise cross-entropy, backward, optimizer step, on random
data already on the device (the data pipeline is measured by the trainer's own log line).
Both sides use the trainer's precision policy: bf16 autocast and channels_last on a GPU,
fp32 on the CPU. torchvision has no PSPNet, so PSP has no reference.

    python benchmarks/train_throughput.py                      # crop 512, batch 16
    python benchmarks/train_throughput.py --crop 256 --batch 4 --iters 3   # quicker on a CPU
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from torchvision.models.segmentation import deeplabv3_resnet50, fcn_resnet50

from segcontainer.models import build_model
from segcontainer.training.engine import Precision, segmentation_loss

REFERENCES = {"fcn": fcn_resnet50, "deeplab": deeplabv3_resnet50, "psp": None}


def images_per_second(model, batch: int, crop: int, iters: int, warmup: int, device) -> float:
    precision = Precision.choose("auto", device)
    model = model.to(device).train()
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), 0.01, momentum=0.9)
    images = torch.randn(batch, 3, crop, crop, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    masks = torch.randint(0, 21, (batch, crop, crop), device=device)

    def step() -> None:
        with precision.autocast():
            out = model(images)
        logits = out["out"] if isinstance(out, dict) else out
        loss = segmentation_loss(logits, masks, None)
        optimizer.zero_grad(set_to_none=True)
        precision.scaler.scale(loss).backward()
        precision.scaler.step(optimizer)
        precision.scaler.update()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * iters / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--algorithms", default="fcn,psp,deeplab")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"device: {device} ({name}), torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}, crop {args.crop}, batch {args.batch}, "
        f"{args.iters} timed iterations after {args.warmup} warm-up",
        flush=True,
    )
    results = {}
    for algorithm in args.algorithms.split(","):
        torch.manual_seed(0)
        ours = images_per_second(
            build_model(algorithm, "resnet-50", 21),
            args.batch,
            args.crop,
            args.iters,
            args.warmup,
            device,
        )
        reference = None
        if REFERENCES[algorithm] is not None:
            torch.manual_seed(0)
            tv_model = REFERENCES[algorithm](weights=None, weights_backbone=None, num_classes=21)
            reference = images_per_second(
                tv_model, args.batch, args.crop, args.iters, args.warmup, device
            )
        ratio = f"{ours / reference:.2f}x torchvision" if reference else "no torchvision model"
        ref_text = f"{reference:.2f}" if reference else "-"
        print(
            f"{algorithm}-resnet50: segcontainer {ours:.2f} img/s, torchvision {ref_text} "
            f"img/s ({ratio})",
            flush=True,
        )
        results[algorithm] = {"segcontainer": ours, "torchvision": reference}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
