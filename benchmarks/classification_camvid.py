"""An accuracy sanity run of image classification on real photographs: CamVid's street scenes
as a multi-label "which of the 11 classes appear" task (camvid_labels.py), trained by `train`
from scratch with RECIPE, on any machine in a few minutes.

    python benchmarks/classification_camvid.py                  # RECIPE, a 540 s budget
    python benchmarks/classification_camvid.py --set epochs=2 --budget 120

Reports, from one run: each epoch's Train-/Validation-accuracy lines (multi-label accuracy: the
share of right (frame, class) decisions at sigmoid >= 0.5), the floor a model must beat (the
constant answer "each class as it most often is in training", on the same validation frames),
each class's decision accuracy beside that floor's, and the endpoint's accuracy: the saved
model asked for every validation frame through the endpoint's Predictor, which must give the
best epoch's validation accuracy (validation prepares images as the endpoint does).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from camvid_labels import CLASSES, PRESENT, lay_out_lists, majority_accuracy  # noqa: E402
from jobs import CAMVID, device_line, run_train  # noqa: E402

from segcontainer.tasks.classification.prediction import Predictor  # noqa: E402

# A CIFAR-style ResNet-20 at a quarter of CamVid's 480x360 (the whole frame: resize makes the
# shorter side 72, so the 72x96 crop is the frame), adam, flips; about 15 s an epoch on 2 cores.
RECIPE = {
    "num_layers": 20,
    "image_shape": "3,72,96",
    "resize": 72,
    "multi_label": 1,
    "num_classes": len(CLASSES),
    "class_names": ",".join(CLASSES),
    "num_training_samples": 367,
    "mini_batch_size": 16,
    "optimizer": "adam",
    "learning_rate": 0.002,
    "lr_scheduler_step": "20",
    "augmentation_type": "crop",
    "epochs": 25,
    "export": "none",
}
LINE = re.compile(r"Epoch\[(\d+)\] (Train|Validation)-accuracy=([0-9.]+)")


def endpoint_decisions(model_dir: Path, frames: list[Path]) -> np.ndarray:
    """(N, 11) 0/1: the endpoint's answer for each frame, a class present at probability >= 0.5."""
    predictor = Predictor.open(model_dir)
    return np.stack(
        [np.asarray(predictor.probabilities(Image.open(f).convert("RGB"))) >= 0.5 for f in frames]
    ).astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=CAMVID)
    parser.add_argument("--budget", type=float, default=540, help="seconds, then SIGTERM")
    parser.add_argument("--set", nargs="*", default=[], help="hyperparameters k=v over RECIPE")
    args = parser.parse_args()
    hyperparameters = {**RECIPE, **dict(item.split("=", 1) for item in args.set)}
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        splits = lay_out_lists(args.data, base)
        job = run_train(base, hyperparameters, budget_s=args.budget)
        if job.returncode not in (0, 143) or not (base / "model" / "model.pt").is_file():
            print(job.log[-4000:])
            raise SystemExit(f"train exited {job.returncode}")
        frames = [frame for frame, _ in splits["validation"]]
        answered = endpoint_decisions(base / "model", frames)
    train = np.stack([labels for _, labels in splits["train"]])
    truth = np.stack([labels for _, labels in splits["validation"]])
    epochs: dict[int, dict[str, float]] = {}
    for epoch, split, value in LINE.findall(job.log):
        epochs.setdefault(int(epoch), {})[split] = float(value)
    best = max(epochs.items(), key=lambda item: item[1].get("Validation", -1.0))
    floor = (train.mean(axis=0) >= 0.5).astype(np.int64)

    print(f"device: {device_line()}\ncommand: python {' '.join(sys.argv)}")
    print(f"recipe: {json.dumps(hyperparameters)}")
    print(
        f"data: {args.data} as multi-label (a class present at >= {PRESENT:.0%} of the labelled "
        f"pixels), {len(train)} training and {len(truth)} validation frames; "
        f"train {job.seconds:.0f} s, exit {job.returncode}, {len(epochs)} epochs\n"
    )
    print("| epoch | train accuracy | validation accuracy |\n| --- | --- | --- |")
    for epoch, values in sorted(epochs.items()):
        print(f"| {epoch} | {values.get('Train', float('nan')):.4f} | {values['Validation']:.4f} |")
    endpoint = float((answered == truth).mean())
    print(
        f"\nbest validation accuracy {best[1]['Validation']:.4f} (epoch {best[0]}); the "
        f"endpoint's Predictor on the same frames {endpoint:.4f}; the constant floor "
        f"{majority_accuracy(train, truth):.4f}\n"
    )
    print("| class | present in validation | model | constant floor |\n| --- | --- | --- | --- |")
    for index, name in enumerate(CLASSES):
        print(
            f"| {name} | {truth[:, index].mean():.2f} "
            f"| {(answered[:, index] == truth[:, index]).mean():.3f} "
            f"| {(floor[index] == truth[:, index]).mean():.3f} |"
        )


if __name__ == "__main__":
    main()
