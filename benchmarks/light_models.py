"""The lightweight models against FCN-ResNet50: CamVid accuracy at the same wall-clock
training budget, then CPU endpoint latency through the real stack.

    taskset -c 1 python benchmarks/light_models.py --phase train --models /tmp/light   # 1 core
    python benchmarks/light_models.py --phase measure --models /tmp/light              # 2 cores

Training: `train` on CamVid (``--data``, default ../shared/data/camvid, linked, never copied),
from scratch, the same recipe (RECIPE) and the same wall-clock budget (``--budget``) for each
model: SIGTERM when it is spent, as MaxRuntimeInSeconds sends it, and the best epoch's model
is kept. Run under ``taskset`` to give every job the same cores: the container sizes its
threads and loader workers from the cores it may run on. A job stopped by the budget writes
no exports, so the benchmark adds them with `segcontainer export --calibration` where an
engine measured needs them.

Latency: `./serve` (nginx, gunicorn, flask) on each model folder, engine by engine
(SEGCONTAINER_ENGINE; ``auto`` as a user gets it), a CamVid validation frame resized to a
512x512 JPEG answered as PNG, reaching the model at 512x512 in one piece. 1 client: p50/p95;
8 clients: requests per second; each worker's resident memory. Ratios are against
FCN-ResNet50's PyTorch-engine p50 in the same run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_engines import RECIPE as ENGINES_RECIPE  # noqa: E402
from cpu_engines import measure_engine, per_class_table, request_body  # noqa: E402
from jobs import CAMVID, device_line, lay_out, run_train  # noqa: E402

from segcontainer.model_folder import select_engine  # noqa: E402

# cpu_engines.py's recipe (small crops, Adam, class weights so rare classes are predicted),
# with room for as many epochs as a budget allows: poly over 100 epochs decays the learning
# rate by the same small amount for every model within a 15-minute budget.
RECIPE = {**{k: v for k, v in ENGINES_RECIPE.items() if k != "backbone"}, "epochs": 100}


@dataclass(frozen=True)
class Model:
    name: str
    algorithm: str
    backbone: str
    engines: tuple[str, ...]  # the first engine of the reference model is the reference


REFERENCE = "fcn-resnet-50"
MODELS = {
    REFERENCE: Model("FCN-ResNet50", "fcn", "resnet-50", ("torch",)),
    "lraspp-mobilenet-v3-large": Model(
        "LR-ASPP-MobileNetV3-Large",
        "lraspp",
        "mobilenet-v3-large",
        ("auto", "torch", "onnx", "onnx-int8"),
    ),
    "deeplab-mobilenet-v3-large": Model(
        "DeepLabV3-MobileNetV3-Large", "deeplab", "mobilenet-v3-large", ("auto", "torch")
    ),
    "deeplabv3plus-resnet-50": Model(
        "DeepLabV3+-ResNet50", "deeplabv3plus", "resnet-50", ("auto", "torch")
    ),
}


def train(args, key: str) -> dict:
    model = MODELS[key]
    base = lay_out(args.data, args.models / key)
    hyperparameters = {
        **RECIPE,
        "algorithm": model.algorithm,
        "backbone": model.backbone,
        **dict(item.split("=", 1) for item in args.set),
    }
    job = run_train(base, hyperparameters, budget_s=args.budget)
    (base / "train.log").write_text(job.log)
    if job.returncode not in (0, 143) or not (base / "model" / "model.pt").is_file():
        print(job.log[-4000:])
        raise SystemExit(f"{key}: train exited {job.returncode} with no model")
    stopped = job.returncode == 143
    export_seconds = None
    if stopped and set(model.engines) != {"torch"}:
        started = time.monotonic()
        command = [sys.executable, "-m", "segcontainer.cli", "export", str(base / "model")]
        subprocess.run([*command, "--calibration", str(base / "input" / "data")], check=True)
        export_seconds = round(time.monotonic() - started)
    result = {
        "hyperparameters": hyperparameters,
        "train_seconds": round(job.seconds),
        "epochs": job.epochs,
        "stopped_by_budget": stopped,
        "export_seconds_after_stop": export_seconds,
    }
    (base / "train.json").write_text(json.dumps(result, indent=2))
    return result


def measure(args, key: str) -> dict:
    base = args.models / key
    body = request_body(args.data, args.size)
    rows = []
    for engine in MODELS[key].engines:
        print(f"{key}: measuring {engine}", flush=True)
        row = measure_engine(base, engine, body, args.size, args.requests)
        row.pop("answer", None)
        if engine == "auto" and "unavailable" not in row:
            row["chosen"] = select_engine(base / "model", "auto").name
        rows.append(row)
    result = {"size": args.size, "engines": rows}
    (base / "measure.json").write_text(json.dumps(result, indent=2))
    return result


def parameters(model_dir: Path) -> float:
    """Millions of parameters the endpoint runs (model.pt holds the serving weights)."""
    import torch

    state = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)
    return sum(tensor.numel() for tensor in state.values()) / 1e6


def latency_table(args, keys: list[str]) -> None:
    reference = json.loads((args.models / REFERENCE / "measure.json").read_text())
    reference_p50 = reference["engines"][0]["p50_s"]
    print(
        f"| model | engine | p50 s (1 client) | p95 s | p50 / {MODELS[REFERENCE].name} torch p50 "
        "| req/s (8 clients) | worker RSS MiB | errors |"
    )
    print("| --- " * 8 + "|")
    for key in keys:
        measured = json.loads((args.models / key / "measure.json").read_text())
        for row in measured["engines"]:
            engine = row["engine"] + (f" (chose {row['chosen']})" if "chosen" in row else "")
            if "unavailable" in row:
                print(f"| {MODELS[key].name} | {engine} | not served: {row['unavailable'][:160]} |")
                continue
            print(
                f"| {MODELS[key].name} | {engine} | {row['p50_s']:.3f} | {row['p95_s']:.3f} "
                f"| **{row['p50_s'] / reference_p50:.3f}** | {row['requests_per_s_8']:.2f} "
                f"| {', '.join(map(str, row['worker_rss_mib']))} | {row['errors']} |"
            )


def accuracy_table(args, keys: list[str]) -> None:
    print(
        "\n| model | train s (budget) | epochs done | train img/s | best validation mIoU "
        "| pixel accuracy | parameters (M) | int8 |"
    )
    print("| --- " * 8 + "|")
    per_class = {}
    for key in keys:
        base = args.models / key
        trained = json.loads((base / "train.json").read_text())
        info = json.loads((base / "model" / "model_info.json").read_text())
        int8 = info.get("exports", {}).get("int8")
        int8_cell = "-" if not int8 else ("shipped" if int8.get("passed") else "withheld")
        rates = [e["images_per_second"] for e in trained["epochs"] if "images_per_second" in e]
        print(
            f"| {MODELS[key].name} | {trained['train_seconds']} | {len(trained['epochs'])} "
            f"| {sum(rates) / max(1, len(rates)):.1f} | {info['validation_mIOU']:.4f} "
            f"| {info.get('validation_pixel_accuracy', float('nan')):.4f} "
            f"| {parameters(base / 'model'):.1f} | {int8_cell} |"
        )
        per_class[key] = info["validation_per_class_IOU"]
    print()
    per_class_table({MODELS[key].name: iou for key, iou in per_class.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=CAMVID)
    parser.add_argument("--models", type=Path, default=Path("/tmp/segcontainer-light-models"))
    parser.add_argument("--phase", choices=("all", "train", "measure"), default="all")
    parser.add_argument("--only", default=",".join(MODELS), help="model keys, comma-separated")
    parser.add_argument("--budget", type=float, default=900, help="seconds per training job")
    parser.add_argument("--size", type=int, default=512, help="request side in pixels")
    parser.add_argument("--requests", type=int, default=12, help="1-client requests")
    parser.add_argument("--set", nargs="*", default=[], help="recipe overrides k=v")
    args = parser.parse_args()
    keys = args.only.split(",")
    started = time.monotonic()
    if args.phase in ("all", "train"):
        for key in keys:
            result = train(args, key)
            epochs, seconds = len(result["epochs"]), result["train_seconds"]
            print(f"{key}: {epochs} epochs in {seconds} s", flush=True)
    if args.phase in ("all", "measure"):
        for key in keys:
            measure(args, key)
        print(f"\ndevice: {device_line()}\ncommand: python {' '.join(sys.argv)}")
        print(f"recipe: {json.dumps(RECIPE)} (+ {' '.join(args.set) or 'no --set'}), ", end="")
        print(f"budget {args.budget:.0f} s per job\n")
        latency_table(args, keys)
        accuracy_table(args, keys)
    print(f"\nbenchmark wall time {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
