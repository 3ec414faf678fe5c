"""The accuracy recipe from scratch on CamVid, under a wall-clock budget, beside the same
recipe with torchvision's DeepLabV3-ResNet50 (the model users would write themselves).

    python benchmarks/camvid_recipe.py                    # 15-minute budget each
    python benchmarks/camvid_recipe.py --budget 300 --reference none

The recipe is a set of hyperparameters (RECIPE below, as a user passes them to an
Estimator). `train` gets SIGTERM when the budget is spent, as SageMaker's
MaxRuntimeInSeconds does, and keeps the best epoch's model; its model_info.json gives the
validation mIoU, pixel accuracy and per-class IoU. The reference run is the same job with
torchvision's ``deeplabv3_resnet50(aux_loss=True)`` swapped in for the model builder
(benchmarks/reference_train.py), so data, augmentation, loss, optimizer and schedule match.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from jobs import CAMVID, REPO, device_line, lay_out, log_lines, run_train  # noqa: E402

CLASSES = "Sky,Building,Pole,Road,Pavement,Tree,SignSymbol,Fence,Car,Pedestrian,Bicyclist"
RECIPE = {
    "algorithm": "deeplab",
    "backbone": "resnet-50",
    "use_pretrained_model": "False",
    "num_classes": 11,
    "class_names": CLASSES,
    "crop_size": 384,
    "base_size": 480,
    "mini_batch_size": 16,
    "optimizer": "sgd",
    "learning_rate": 0.02,
    "momentum": 0.9,
    "weight_decay": 0.0001,
    "lr_scheduler": "poly",
    "class_weights": "auto",
    "aux_loss_weight": 0.4,
    "epochs": 400,
}


def run(args, label: str, overrides: dict, reference: bool) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        base = lay_out(args.data, Path(scratch))
        script = REPO / "benchmarks" / "reference_train.py" if reference else REPO / "train"
        job = run_train(base, {**RECIPE, **overrides}, budget_s=args.budget, script=script)
        info_file = base / "model" / "model_info.json"
        info = json.loads(info_file.read_text()) if info_file.exists() else {}
    if job.returncode not in (0, 143):
        print(job.log[-4000:])
        raise SystemExit(f"{label}: train exited {job.returncode}")
    return {"label": label, "job": job, "info": info}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=CAMVID)
    parser.add_argument("--budget", type=float, default=900, help="seconds per run")
    parser.add_argument("--reference", choices=("torchvision", "none"), default="torchvision")
    parser.add_argument("--set", nargs="*", default=[], help="extra hyperparameters k=v")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    runs = [run(args, "segcontainer DeepLabV3-ResNet50", overrides, False)]
    if args.reference == "torchvision":
        runs.append(run(args, "torchvision deeplabv3_resnet50", overrides, True))
    print(f"device: {device_line()}\ncommand: python {' '.join(sys.argv)}")
    print(f"recipe: {json.dumps({**RECIPE, **overrides})}\n")
    names = CLASSES.split(",")
    header = "| model | epochs done | wall s | best mIoU | pixel accuracy | "
    print(header + " | ".join(names) + " |")
    print("| --- " * (5 + len(names)) + "|")
    for r in runs:
        info, job = r["info"], r["job"]
        per_class = info.get("validation_per_class_IOU", {})
        cells = ["-" if per_class.get(n) is None else f"{per_class[n]:.3f}" for n in names]
        print(
            f"| {r['label']} | {len(job.epochs)} | {job.seconds:.0f} "
            f"| {info.get('validation_mIOU', 0):.4f} "
            f"| {info.get('validation_pixel_accuracy', 0):.4f} | " + " | ".join(cells) + " |"
        )
    if len(runs) == 2:
        ours, theirs = (r["info"].get("validation_mIOU", 0) for r in runs)
        print(f"\nmIoU ratio segcontainer / torchvision: {ours / max(theirs, 1e-9):.3f}")
    for r in runs:
        for line in log_lines(r["job"].log, "input pipeline", "reference model", "precision"):
            print(f"{r['label']}: {line}")


if __name__ == "__main__":
    main()
