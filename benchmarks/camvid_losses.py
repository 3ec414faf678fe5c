"""CamVid validation mIoU with each `loss` at the same wall-clock training budget.

    taskset -c 1 python benchmarks/camvid_losses.py --models /tmp/losses      # 5 minutes each

Each job is `train` on CamVid (``--data``, default ../shared/data/camvid, linked, never
copied) from scratch with light_models.py's recipe on ``--algorithm``/``--backbone``
(LR-ASPP on MobileNetV3-Large by default: the fastest model, so a CPU budget holds tens of
epochs), changing only `loss`. SIGTERM ends each job when its budget is spent, as
MaxRuntimeInSeconds does; the best epoch's model is kept and its model_info.json gives the
validation mIoU and per-class IoU. Lovasz-softmax takes no class weights (the job logs it), so
that row trains without them while the recipe's `class_weights=auto` weighs the others.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from jobs import CAMVID, device_line, lay_out, run_train  # noqa: E402
from light_models import RECIPE  # noqa: E402

LOSSES = ("cross_entropy", "focal", "dice", "lovasz", "cross_entropy+dice")


def train(args, loss: str) -> dict:
    base = lay_out(args.data, args.models / loss.replace("+", "_"))
    hyperparameters = {
        **RECIPE,
        "algorithm": args.algorithm,
        "backbone": args.backbone,
        "export": "none",
        "loss": loss,
        **dict(item.split("=", 1) for item in args.set),
    }
    job = run_train(base, hyperparameters, budget_s=args.budget)
    (base / "train.log").write_text(job.log)
    info_file = base / "model" / "model_info.json"
    if job.returncode not in (0, 143) or not info_file.is_file():
        print(job.log[-4000:])
        raise SystemExit(f"loss={loss}: train exited {job.returncode} with no model")
    info = json.loads(info_file.read_text())
    return {"loss": loss, "seconds": round(job.seconds), "epochs": len(job.epochs), "info": info}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=CAMVID)
    parser.add_argument("--models", type=Path, default=Path("/tmp/segcontainer-camvid-losses"))
    parser.add_argument("--losses", default=",".join(LOSSES))
    parser.add_argument("--algorithm", default="lraspp")
    parser.add_argument("--backbone", default="mobilenet-v3-large")
    parser.add_argument("--budget", type=float, default=300, help="seconds per training job")
    parser.add_argument("--set", nargs="*", default=[], help="recipe overrides k=v")
    args = parser.parse_args()
    results = [train(args, loss) for loss in args.losses.split(",")]
    print(f"\ndevice: {device_line()}\ncommand: python {' '.join(sys.argv)}")
    print(f"model: {args.algorithm} on {args.backbone}; budget {args.budget:.0f} s per job")
    print(f"recipe: {json.dumps(RECIPE)} (+ {' '.join(args.set) or 'no --set'})\n")
    names = list(results[0]["info"]["validation_per_class_IOU"])
    print("| loss | train s | epochs | best validation mIoU | pixel accuracy | ", end="")
    print(" | ".join(names) + " |")
    print("| --- " * (5 + len(names)) + "|")
    for result in results:
        info = result["info"]
        iou = info["validation_per_class_IOU"]
        cells = ["-" if iou.get(n) is None else f"{iou[n]:.3f}" for n in names]
        print(
            f"| `{result['loss']}` | {result['seconds']} | {result['epochs']} "
            f"| {info['validation_mIOU']:.4f} | {info['validation_pixel_accuracy']:.4f} | "
            + " | ".join(cells)
            + " |"
        )


if __name__ == "__main__":
    main()
