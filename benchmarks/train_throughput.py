"""Model-only training throughput (images/s) and peak memory of each algorithm x backbone,
beside torchvision's model of the same architecture, measured in the same run.

One training step = forward, pixel-wise cross-entropy, backward, SGD step, on random data
already on the device: the ceiling the input pipeline is measured against (the trainer logs
its own end-to-end rate). On a GPU both sides run the trainer's precision=auto (the autocast
dtype segcontainer.precision picks for this GPU, bf16 or fp16 with the gradient scaler) with
channels_last, and torchvision also in fp32 for the plain reference; on the CPU all run fp32.
torchvision has no PSPNet and no DeepLabV3+, and builds LR-ASPP on MobileNetV3 only: those
pairings have no reference.

    python benchmarks/train_throughput.py                      # crop 512, batch 16
    python benchmarks/train_throughput.py --crop 64 --batch 2 --iters 1 --warmup 1  # tiny
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import time

import torch
import torch.nn.functional as F
from torchvision.models import segmentation as tv

from segcontainer.models import ENCODERS, HEADS, build_model
from segcontainer.precision import Precision

NUM_CLASSES = 11  # CamVid's, the data set the accuracy runs use
# (algorithm, backbone) -> torchvision builder of the same architecture (no aux head)
REFERENCES = {
    ("fcn", "resnet-50"): tv.fcn_resnet50,
    ("fcn", "resnet-101"): tv.fcn_resnet101,
    ("deeplab", "resnet-50"): tv.deeplabv3_resnet50,
    ("deeplab", "resnet-101"): tv.deeplabv3_resnet101,
    ("deeplab", "mobilenet-v3-large"): tv.deeplabv3_mobilenet_v3_large,
    ("lraspp", "mobilenet-v3-large"): tv.lraspp_mobilenet_v3_large,
}


def measure(model, batch: int, crop: int, iters: int, warmup: int, device, precision: str):
    """(images/s, peak GiB or None) of training steps; ``precision``: the hyperparameter's value,
    auto (on a GPU with channels_last, as the trainer) or fp32 (the plain reference)."""
    amp = Precision.choose(precision, device)
    fast = device.type == "cuda" and precision != "fp32"
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = model.to(device).train()
    images = torch.randn(batch, 3, crop, crop, device=device)
    if fast:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    masks = torch.randint(0, NUM_CLASSES, (batch, crop, crop), device=device)
    optimizer = torch.optim.SGD(model.parameters(), 0.01, momentum=0.9)

    def step() -> None:
        with amp.autocast():
            out = model(images)
        logits = out["out"] if isinstance(out, dict) else out
        loss = F.cross_entropy(logits.float(), masks, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        amp.scaler.scale(loss).backward()
        amp.scaler.step(optimizer)
        amp.scaler.update()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    rate = batch * iters / (time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return rate, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--algorithms", default=",".join(HEADS))
    parser.add_argument("--backbones", default=",".join(ENCODERS))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    name = torch.cuda.get_device_name() if gpu else platform.processor() or "cpu"
    print(
        f"device: {device} ({name}), torch {torch.__version__}, crop {args.crop}, batch "
        f"{args.batch}, {args.iters} timed steps after {args.warmup} warm-up\n"
        f"command: python {' '.join(sys.argv)}\n",
        flush=True,
    )
    dtype = Precision.choose("auto", device).dtype
    policy = f"{str(dtype).removeprefix('torch.')}+CL" if gpu else "fp32"
    print(
        f"| model | torchvision fp32 img/s (GPU runs) | torchvision {policy} img/s "
        f"| segcontainer {policy} img/s | ratio to torchvision "
        "| peak GiB torchvision / segcontainer |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    results = {}
    common = (args.batch, args.crop, args.iters, args.warmup, device)
    for backbone in args.backbones.split(","):
        for algorithm in args.algorithms.split(","):
            torch.manual_seed(0)
            ours, ours_peak = measure(
                build_model(algorithm, backbone, NUM_CLASSES), *common, "auto"
            )
            builder = REFERENCES.get((algorithm, backbone))
            ref = ref_fp32 = ref_peak = None
            if builder is not None:
                make = functools.partial(
                    builder, weights=None, weights_backbone=None, num_classes=NUM_CLASSES
                )
                torch.manual_seed(0)
                ref, ref_peak = measure(make(), *common, "auto")
                if gpu:
                    ref_fp32, _ = measure(make(), *common, "fp32")
            results[f"{algorithm}-{backbone}"] = {
                "torchvision_fp32": ref_fp32,
                "torchvision": ref,
                "segcontainer": ours,
                "peak_gib": [ref_peak, ours_peak],
            }

            def fmt(value, digits=1):
                return "-" if value is None else f"{value:.{digits}f}"

            ratio = f"{ours / ref:.2f}x" if ref else "no torchvision model"
            print(
                f"| {algorithm}-{backbone} | {fmt(ref_fp32)} | {fmt(ref)} | {ours:.1f} | {ratio} "
                f"| {fmt(ref_peak, 2)} / {fmt(ours_peak, 2)} |",
                flush=True,
            )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
