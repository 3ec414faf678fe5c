"""An accuracy sanity run of single-label image classification on a small real data set: the UCI
handwritten digits (1,797 8x8 scans from 13 writers, 10 classes; the copy scikit-learn ships),
written as the built-in's RecordIO channels (one .rec each for train and validation: MXNet's
IRHeader and a PNG per record) and trained by `train` with RECIPE, in a few minutes on a CPU.

    pip download --no-deps --only-binary=:all: scikit-learn -d /tmp/sk
    unzip -j /tmp/sk/scikit_learn-*.whl sklearn/datasets/data/digits.csv.gz -d /tmp/sk
    python benchmarks/classification_digits.py --csv /tmp/sk/digits.csv.gz

Split: every fifth image (index % 5 == 4) validates, the rest trains (1,438 / 359). The images
stay 8x8 in the records, as a user's small images would; `train` resizes them to image_shape
(32x32) with the endpoint's transform. Reports each epoch's accuracy lines, the best epoch's
validation accuracy and top-2 accuracy, the floor (the most frequent training class), each
class's recall, and the endpoint's accuracy: the saved model asked for every validation image
through the endpoint's Predictor, which must equal the best epoch's validation accuracy.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import re
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from jobs import device_line, run_train  # noqa: E402

from segcontainer.data.recordio import MAGIC_BYTES, frame  # noqa: E402
from segcontainer.tasks.classification.prediction import Predictor  # noqa: E402

IR_HEADER = struct.Struct("<IfQQ")  # MXNet's IRHeader: flag 0 = one class id in `label`
RECIPE = {
    "num_layers": 20,
    "image_shape": "3,32,32",
    "num_classes": 10,
    "class_names": ",".join(str(d) for d in range(10)),
    "num_training_samples": 1438,
    "mini_batch_size": 32,
    "learning_rate": 0.1,  # the built-in's sgd defaults: momentum 0.9, weight_decay 0.0001
    "lr_scheduler_step": "6,9",
    "epochs": 10,
    "top_k": 2,
    "export": "none",
}
LINE = re.compile(
    r"Epoch\[(\d+)\] (Train-accuracy|Validation-accuracy|Validation-top_k_accuracy_2)=([0-9.]+)"
)


def digits(csv: Path) -> tuple[list[Image.Image], np.ndarray]:
    """The 8x8 scans as grey PNG-ready images (0..16 scaled to 0..255) and their digits."""
    rows = np.loadtxt(gzip.open(csv), delimiter=",", dtype=np.int64)
    pixels, labels = rows[:, :64], rows[:, 64]
    images = [Image.fromarray((p.reshape(8, 8) * 255 // 16).astype(np.uint8)) for p in pixels]
    return images, labels


def write_rec(file: Path, images: list[Image.Image], labels: np.ndarray) -> None:
    """MXNet's `pack_img` records: IRHeader(0, label, index, 0) then the PNG bytes."""
    file.parent.mkdir(parents=True, exist_ok=True)
    with file.open("wb") as out:
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            png = io.BytesIO()
            image.save(png, format="PNG")
            payload = IR_HEADER.pack(0, float(label), index, 0) + png.getvalue()
            # MXNet splits a record whose bytes hold the magic; frame() writes whole ones only
            assert MAGIC_BYTES not in payload, f"record {index} holds RecordIO's magic"
            out.write(frame(payload))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv", type=Path, required=True, help="scikit-learn's digits.csv.gz")
    parser.add_argument("--budget", type=float, default=540, help="seconds, then SIGTERM")
    parser.add_argument("--set", nargs="*", default=[], help="hyperparameters k=v over RECIPE")
    args = parser.parse_args()
    hyperparameters = {**RECIPE, **dict(item.split("=", 1) for item in args.set)}
    images, labels = digits(args.csv)
    validation = np.arange(len(labels)) % 5 == 4
    pick = lambda keep: ([i for i, k in zip(images, keep, strict=True) if k], labels[keep])  # noqa: E731
    (train_images, train_labels), (val_images, val_labels) = pick(~validation), pick(validation)
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        write_rec(base / "input" / "data" / "train" / "train.rec", train_images, train_labels)
        write_rec(base / "input" / "data" / "validation" / "validation.rec", val_images, val_labels)
        (base / "input" / "config").mkdir(parents=True)
        job = run_train(base, hyperparameters, budget_s=args.budget)
        if job.returncode not in (0, 143) or not (base / "model" / "model.pt").is_file():
            print(job.log[-4000:])
            raise SystemExit(f"train exited {job.returncode}")
        predictor = Predictor.open(base / "model")
        answered = np.array(
            [np.argmax(predictor.probabilities(i.convert("RGB"))) for i in val_images]
        )
    epochs: dict[int, dict[str, float]] = {}
    for epoch, name, value in LINE.findall(job.log):
        epochs.setdefault(int(epoch), {})[name] = float(value)
    best_epoch, best = max(epochs.items(), key=lambda item: item[1]["Validation-accuracy"])
    floor = float((val_labels == np.bincount(train_labels).argmax()).mean())

    print(f"device: {device_line()}\ncommand: python {' '.join(sys.argv)}")
    print(f"recipe: {json.dumps(hyperparameters)}")
    print(
        f"data: UCI digits, {len(train_labels)} training and {len(val_labels)} validation 8x8 "
        f"images in .rec channels; train {job.seconds:.0f} s, exit {job.returncode}, "
        f"{len(epochs)} epochs\n"
    )
    print("| epoch | train accuracy | validation accuracy | validation top-2 |")
    print("| --- | --- | --- | --- |")
    for epoch, values in sorted(epochs.items()):
        print(
            f"| {epoch} | {values.get('Train-accuracy', float('nan')):.4f} "
            f"| {values['Validation-accuracy']:.4f} "
            f"| {values.get('Validation-top_k_accuracy_2', float('nan')):.4f} |"
        )
    endpoint = float((answered == val_labels).mean())
    print(
        f"\nbest validation accuracy {best['Validation-accuracy']:.4f} (epoch {best_epoch}); "
        f"the endpoint's Predictor on the same images {endpoint:.4f}; the most-frequent-class "
        f"floor {floor:.4f}\n"
    )
    recalls = [(answered[val_labels == d] == d).mean() for d in range(10)]
    print("| digit | " + " | ".join(str(d) for d in range(10)) + " |")
    print("| --- " * 11 + "|")
    print("| recall | " + " | ".join(f"{r:.3f}" for r in recalls) + " |")


if __name__ == "__main__":
    main()
