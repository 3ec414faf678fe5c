"""What each training loss (the hyperparameter ``loss``) costs a training step: the forward
and backward of the loss alone on one batch of logits, beside the model's forward and backward
on the same batch, on the GPU when there is one.

    python benchmarks/losses.py                      # 16 crops of 240, 21 classes, fcn/resnet-50
    python benchmarks/losses.py --batch 2 --classes 11 --model none

The labels are random over all the classes with the first rows ignored (255): every class is
present, the most work for Dice and Lovasz-softmax, whose terms are over the present classes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from jobs import device_line  # noqa: E402

from segcontainer.config.hyperparameters import LOSSES  # noqa: E402
from segcontainer.models import build_model  # noqa: E402
from segcontainer.tasks.segmentation.loss import segmentation_loss  # noqa: E402


def timed(step, device: torch.device, repeats: int) -> float:
    """The median seconds of ``step`` over ``repeats`` runs after one warm-up run."""
    times = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def loss_step(kind: str, logits: torch.Tensor, target: torch.Tensor):
    def step() -> None:
        logits.grad = None
        segmentation_loss(logits, target, None, None, kind).backward()

    return step


def model_step(model: torch.nn.Module, images: torch.Tensor):
    def step() -> None:
        model.zero_grad(set_to_none=True)
        out = model(images)
        (out[0] if isinstance(out, tuple) else out).float().mean().backward()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=240, help="crop side in pixels")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--model", default="fcn/resnet-50", help="algorithm/backbone, or none")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = (args.batch, args.classes, args.size, args.size)
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, args.classes, (shape[0], *shape[2:]), generator=generator)
    target[:, : args.size // 8] = 255
    logits = torch.randn(shape, generator=generator).to(device).requires_grad_()
    target = target.to(device)
    seconds = {
        kind: timed(loss_step(kind, logits, target), device, args.repeats) for kind in LOSSES
    }
    model_seconds = None
    if args.model != "none":
        algorithm, backbone = args.model.split("/")
        model = build_model(algorithm, backbone, args.classes).to(device).train()
        images = torch.randn(shape[0], 3, *shape[2:], generator=generator).to(device)
        model_seconds = timed(model_step(model, images), device, args.repeats)

    print(f"device: {device_line()}")
    print(f"batch: {args.batch} x {args.size} x {args.size}, {args.classes} classes, fp32")
    print("\n| loss | forward + backward (ms) | x cross_entropy | of the model's step |")
    print("| --- | --- | --- | --- |")
    for kind, value in seconds.items():
        share = f"{value / model_seconds:.1%}" if model_seconds else "-"
        ratio = value / seconds["cross_entropy"]
        print(f"| {kind} | {1000 * value:.1f} | {ratio:.1f}x | {share} |")
    if model_seconds:
        print(f"\nmodel {args.model} forward + backward: {1000 * model_seconds:.1f} ms")


if __name__ == "__main__":
    main()
