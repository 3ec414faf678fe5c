"""The CPU serving engines (PyTorch eager, ONNX Runtime fp32, ONNX Runtime int8) through the
real stack, for models trained on CamVid on this machine by the benchmark itself.

    python benchmarks/cpu_engines.py                                   # train, then measure
    python benchmarks/cpu_engines.py --models /tmp/bench20 --phase train    # train, keep models
    python benchmarks/cpu_engines.py --models /tmp/bench20 --phase measure  # measure kept models

Training: `train` on CamVid (``--data``, default ../shared/data/camvid, linked, never copied)
with RECIPE, a short from-scratch CPU run at a reduced size, and the default ``export``
(model.onnx, and model.int8.onnx when it passes its check). A wall-clock budget sends SIGTERM
as MaxRuntimeInSeconds does; a job stopped that way keeps its best model but writes no
exports, so the benchmark then adds them with `segcontainer export --calibration` on the same
channels (the table says so).

Accuracy, at the trained scale: the int8 check's own figures from model_info.json (argmax
agreement with eager fp32 on the labelled pixels of the CamVid validation images, eager and
int8 mIoU) and the eager model's per-class IoU (what the model predicts).

Latency: `./serve` (nginx, gunicorn, flask) started once per engine (SEGCONTAINER_ENGINE) on
the same model folder, with SEGCONTAINER_INFERENCE_SIZE and SEGCONTAINER_TILE_SIZE set to the
request's side, so the request (a CamVid validation frame resized to a 512x512 JPEG, answered
as PNG) reaches the model at 512x512, unresized and untiled: the trained weights served at
512 (a forward's cost does not depend on the weights' values). 1 client: p50/p95; 8 clients:
requests per second; each gunicorn worker's resident memory (VmRSS) after the runs.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from jobs import CAMVID, device_line, lay_out, run_train  # noqa: E402
from serve_latency import invoke, load  # noqa: E402
from stack import Server, memory_kib, request  # noqa: E402

from segcontainer.errors import UserError  # noqa: E402
from segcontainer.model_folder import select_engine  # noqa: E402

CLASSES = "Sky,Building,Pole,Road,Pavement,Tree,SignSymbol,Fence,Car,Pedestrian,Bicyclist"
NAMES = {"fcn": "FCN-ResNet50", "deeplab": "DeepLabV3-ResNet50", "psp": "PSP-ResNet50"}
ENGINES = ("torch", "onnx", "onnx-int8")
# From scratch (no ImageNet weights on this machine), small crops so a few epochs fit in
# about ten minutes on 2 shared cores; class weights so the rare classes are predicted too.
RECIPE = {
    "backbone": "resnet-50",
    "use_pretrained_model": "False",
    "num_classes": 11,
    "class_names": CLASSES,
    "crop_size": 96,
    "base_size": 128,
    "mini_batch_size": 8,
    "validation_mini_batch_size": 8,
    "optimizer": "adam",
    "learning_rate": 0.001,
    "lr_scheduler": "poly",
    "class_weights": "auto",
    "epochs": 2,
}


def train(args, algorithm: str, overrides: dict) -> dict:
    base = lay_out(args.data, args.models / algorithm)
    hyperparameters = {**RECIPE, "algorithm": algorithm, **overrides}
    job = run_train(base, hyperparameters, budget_s=args.budget)
    (base / "train.log").write_text(job.log)
    if job.returncode not in (0, 143):
        print(job.log[-4000:])
        raise SystemExit(f"{algorithm}: train exited {job.returncode}")
    exported_after = job.returncode == 143  # stopped by the budget: no exports were written
    if exported_after and not (base / "model" / "model.pt").is_file():
        raise SystemExit(f"{algorithm}: no epoch finished within --budget {args.budget:.0f} s")
    if exported_after:
        command = [sys.executable, "-m", "segcontainer.cli", "export", str(base / "model")]
        command += ["--calibration", str(base / "input" / "data")]
        subprocess.run(command, check=True)
    result = {
        "algorithm": algorithm,
        "hyperparameters": hyperparameters,
        "train_seconds": round(job.seconds),
        "epochs_done": len(job.epochs),
        "returncode": job.returncode,
        "exports_added_after_stop": exported_after,
    }
    (base / "train.json").write_text(json.dumps(result, indent=2))
    return result


def request_body(data: Path, side: int) -> bytes:
    """The first CamVid validation frame, resized to side x side, as a JPEG."""
    frame = sorted((data / "validation").iterdir())[0]
    image = Image.open(frame).convert("RGB").resize((side, side), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def answer_png(port: int, body: bytes) -> np.ndarray:
    headers = {"Content-Type": "image/jpeg", "Accept": "image/png"}
    status, _, png = request(port, "/invocations", body, headers)
    assert status == 200, png[:300]
    return np.asarray(Image.open(io.BytesIO(png)))


def measure_engine(base: Path, engine: str, body: bytes, side: int, requests: int) -> dict:
    try:
        select_engine(base / "model", engine)  # serve would stop at start: say why instead
    except UserError as exc:
        return {"engine": engine, "unavailable": str(exc)}
    env = {
        "SEGCONTAINER_ENGINE": engine,
        "SEGCONTAINER_INFERENCE_SIZE": str(side),
        "SEGCONTAINER_TILE_SIZE": str(side),
    }
    server = Server(base, **env)
    try:
        server.wait_ready(timeout=600)
        answer = answer_png(server.port, body)  # also the first warm-up request
        for _ in range(2):  # ONNX Runtime's first runs size its memory arena: not measured
            invoke(server.port, body)
        single = [invoke(server.port, body) for _ in range(requests)]
        latencies = sorted(seconds for _, seconds in single)
        eight = load(server.port, body, 8, max(1, requests // 4))
        rss = [round(memory_kib(pid, "VmRSS") / 1024) for pid in server.worker_pids()]
    finally:
        server.stop()
    log = Path(server.log_file.name).read_text()
    started = [line.split("] ", 1)[-1] for line in log.splitlines() if "intra-op" in line]
    return {
        "engine": engine,
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
        "errors": sum(status != 200 for status, _ in single) + eight["errors"],
        "requests_per_s_8": eight["requests_per_s"],
        "worker_rss_mib": rss,
        "answer": answer,
        "log": started[:2],
    }


def measure(args, algorithm: str) -> dict:
    base = args.models / algorithm
    body = request_body(args.data, args.size)
    rows = []
    for engine in args.engines.split(","):
        print(f"{algorithm}: measuring {engine}", flush=True)
        rows.append(measure_engine(base, engine, body, args.size, args.requests))
    reference = rows[0].get("answer")
    for row in rows:
        answer = row.pop("answer", None)
        if answer is not None and reference is not None:
            row["answer_agreement"] = float((answer == reference).mean())
    result = {"algorithm": algorithm, "size": args.size, "engines": rows}
    (base / "measure.json").write_text(json.dumps(result, indent=2))
    return result


def report(args, algorithms: list[str]) -> None:
    print(f"\ndevice: {device_line()}\ncommand: python {' '.join(sys.argv)}")
    print(f"recipe: {json.dumps(RECIPE)} (+ algorithm, --set {' '.join(args.set)})\n")
    print(
        f"| model | engine | p50 s (1 client) | p95 s | p50 / torch p50 | req/s (8 clients) "
        f"| worker RSS MiB | PNG agreement with torch ({args.size} px request) |"
    )
    print("| --- " * 8 + "|")
    for algorithm in algorithms:
        measured = json.loads((args.models / algorithm / "measure.json").read_text())
        torch_p50 = measured["engines"][0].get("p50_s", float("nan"))
        for row in measured["engines"]:
            if "unavailable" in row:
                print(
                    f"| {NAMES.get(algorithm, algorithm)} | {row['engine']} | not served: "
                    f"{row['unavailable'][:160]} |" + " |" * 5
                )
                continue
            print(
                f"| {NAMES.get(algorithm, algorithm)} | {row['engine']} | {row['p50_s']:.3f} "
                f"| {row['p95_s']:.3f} | {row['p50_s'] / torch_p50:.2f} "
                f"| {row['requests_per_s_8']:.2f} | {', '.join(map(str, row['worker_rss_mib']))} "
                f"| {row.get('answer_agreement', float('nan')):.4f} |"
            )
    print(
        "\n| model | epochs, train s | validation mIoU (training) | int8 | pixel agreement "
        "| check mIoU eager / int8 | int8 calibration, kept fp32 | exports written by |"
    )
    print("| --- " * 8 + "|")
    per_class: dict[str, dict] = {}
    nan = float("nan")
    for algorithm in algorithms:
        base = args.models / algorithm
        trained = json.loads((base / "train.json").read_text())
        info = json.loads((base / "model" / "model_info.json").read_text())
        int8 = info.get("exports", {}).get("int8", {})
        calibration = int8.get("calibration") or {}
        added = trained["exports_added_after_stop"]
        print(
            f"| {NAMES.get(algorithm, algorithm)} | {trained['epochs_done']}, "
            f"{trained['train_seconds']} | {info['validation_mIOU']:.4f} "
            f"| {'shipped' if int8.get('passed') else 'withheld: ' + str(int8.get('reason'))} "
            f"| {int8.get('pixel_agreement', nan):.4f} "
            f"| {int8.get('mIOU_fp32', nan):.4f} / {int8.get('mIOU_int8', nan):.4f} "
            f"| {calibration.get('method', '-')} on {calibration.get('images', '-')} images, "
            f"{', '.join(int8.get('kept_fp32') or []) or 'none'} "
            f"| {'segcontainer export after the budget stop' if added else 'the job'} |"
        )
        per_class[algorithm] = info["validation_per_class_IOU"]
    print("\nPer-class validation IoU of the eager model (at the trained scale):\n")
    per_class_table({NAMES.get(a, a): iou for a, iou in per_class.items()})
    for algorithm in algorithms:
        measured = json.loads((args.models / algorithm / "measure.json").read_text())
        for row in measured["engines"]:
            if "log" in row:
                print(f"{algorithm} {row['engine']}: " + " / ".join(row["log"]))


def per_class_table(per_class: dict[str, dict]) -> None:
    """One row per model (its display name -> model_info.json's per-class IoU)."""
    names = list(next(iter(per_class.values())))
    print("| model | " + " | ".join(names) + " |")
    print("| --- " * (1 + len(names)) + "|")
    for model, iou in per_class.items():
        cells = ["-" if iou.get(n) is None else f"{iou[n]:.3f}" for n in names]
        print(f"| {model} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=CAMVID)
    parser.add_argument("--models", type=Path, default=Path("/tmp/segcontainer-cpu-engines"))
    parser.add_argument("--phase", choices=("all", "train", "measure"), default="all")
    parser.add_argument("--algorithms", default="fcn,deeplab,psp")
    parser.add_argument("--engines", default=",".join(ENGINES), help="the first is the reference")
    parser.add_argument("--budget", type=float, default=1500, help="seconds per training job")
    parser.add_argument("--size", type=int, default=512, help="request side in pixels")
    parser.add_argument("--requests", type=int, default=12, help="1-client requests")
    parser.add_argument("--set", nargs="*", default=[], help="extra hyperparameters k=v")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    algorithms = args.algorithms.split(",")
    started = time.monotonic()
    if args.phase in ("all", "train"):
        for algorithm in algorithms:
            result = train(args, algorithm, overrides)
            print(f"{algorithm}: trained in {result['train_seconds']} s", flush=True)
    if args.phase in ("all", "measure"):
        for algorithm in algorithms:
            measure(args, algorithm)
        report(args, algorithms)
    print(f"\nbenchmark wall time {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
