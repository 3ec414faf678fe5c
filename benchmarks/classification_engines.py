"""Image classification's CPU serving engines (PyTorch eager, ONNX Runtime fp32, ONNX Runtime
int8) through the real stack, for a model the benchmark trains on CamVid frames itself.

    python benchmarks/classification_engines.py                      # ResNet-18 at 224
    python benchmarks/classification_engines.py --models /tmp/cls --phase measure  # kept model

Training: `train` with RECIPE on CamVid as a multi-label task (camvid_labels.py; a short
from-scratch run) and the default ``export`` (model.onnx, and model.int8.onnx when it passes
its check), so the exports are the training job's own; a job whose exports are missing gets
them from `segcontainer export --calibration` on the same channels (the table says so).
Latency: `./serve` (nginx, gunicorn, flask) started once per engine (SEGCONTAINER_ENGINE) on
the model folder; a 224x224 JPEG (a CamVid validation frame, resized) answered as
application/json: p50/p95 over ``--requests`` requests with 1 client, each worker's resident
memory, and each engine's answer beside the PyTorch engine's (largest probability difference,
same decisions at 0.5).
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

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from camvid_labels import CLASSES, lay_out_lists  # noqa: E402
from jobs import CAMVID, device_line, run_train  # noqa: E402
from stack import Server, memory_kib, request  # noqa: E402

from segcontainer.errors import UserError  # noqa: E402
from segcontainer.model_folder import select_engine  # noqa: E402

ENGINES = ("torch", "onnx", "onnx-int8")
RECIPE = {
    "num_layers": 18,
    "image_shape": "3,224,224",
    "resize": 224,
    "multi_label": 1,
    "num_classes": len(CLASSES),
    "class_names": ",".join(CLASSES),
    "mini_batch_size": 16,
    "optimizer": "adam",
    "learning_rate": 0.001,
    "epochs": 2,
}


def train(args) -> dict:
    base = args.models
    lay_out_lists(args.data, base, args.images, validation_limit=args.validation)
    hyperparameters = {**RECIPE, "num_training_samples": args.images}
    hyperparameters.update(item.split("=", 1) for item in args.set)
    job = run_train(base, hyperparameters, budget_s=args.budget)
    (base / "train.log").write_text(job.log)
    if job.returncode not in (0, 143) or not (base / "model" / "model.pt").is_file():
        print(job.log[-4000:])
        raise SystemExit(f"train exited {job.returncode}")
    added = not (base / "model" / "model.onnx").is_file()
    if added:
        command = [sys.executable, "-m", "segcontainer.cli", "export", str(base / "model")]
        command += ["--calibration", str(base / "input" / "data")]
        subprocess.run(command, check=True)
    result = {"hyperparameters": hyperparameters, "train_seconds": round(job.seconds)}
    result["exports_added_after_training"] = added
    (base / "train.json").write_text(json.dumps(result, indent=2))
    return result


def request_body(data: Path, side: int) -> bytes:
    frame = sorted((data / "validation").iterdir())[0]
    image = Image.open(frame).convert("RGB").resize((side, side), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def ask(port: int, body: bytes) -> tuple[list[float], float]:
    headers = {"Content-Type": "image/jpeg", "Accept": "application/json"}
    start = time.perf_counter()
    status, _, answer = request(port, "/invocations", body, headers)
    seconds = time.perf_counter() - start
    assert status == 200, answer[:300]
    return json.loads(answer), seconds


def measure_engine(base: Path, engine: str, body: bytes, requests: int) -> dict:
    try:
        select_engine(base / "model", engine)  # serve would stop at start: say why instead
    except UserError as exc:
        return {"engine": engine, "unavailable": str(exc)}
    server = Server(base, SEGCONTAINER_ENGINE=engine)
    try:
        server.wait_ready(timeout=600)
        answer, _ = ask(server.port, body)  # also the warm-up request
        latencies = sorted(ask(server.port, body)[1] for _ in range(requests))
        rss = [round(memory_kib(pid, "VmRSS") / 1024) for pid in server.worker_pids()]
    finally:
        server.stop()
    return {
        "engine": engine,
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
        "worker_rss_mib": rss,
        "answer": answer,
    }


def report(args, rows: list[dict]) -> None:
    trained = json.loads((args.models / "train.json").read_text())
    info = json.loads((args.models / "model" / "model_info.json").read_text())
    print(f"\ndevice: {device_line()}\ncommand: python {' '.join(sys.argv)}")
    print(f"recipe: {json.dumps(trained['hyperparameters'])}; train {trained['train_seconds']} s")
    int8 = info.get("exports", {}).get("int8")
    print(f"int8 check (model_info.json exports.int8): {json.dumps(int8)}")
    print(f"exports added by `segcontainer export`: {trained['exports_added_after_training']}\n")
    print(
        "| engine | p50 s (1 client) | p95 s | p50 / torch p50 | worker RSS MiB "
        "| largest probability difference to torch | same decisions |"
    )
    print("| --- " * 7 + "|")
    reference = rows[0]
    for row in rows:
        if "unavailable" in row:
            print(f"| {row['engine']} | not served: {row['unavailable']} |")
            continue
        diff = max(abs(a - b) for a, b in zip(row["answer"], reference["answer"], strict=True))
        same = [a >= 0.5 for a in row["answer"]] == [b >= 0.5 for b in reference["answer"]]
        print(
            f"| {row['engine']} | {row['p50_s']:.4f} | {row['p95_s']:.4f} "
            f"| {row['p50_s'] / reference['p50_s']:.2f} | {row['worker_rss_mib']} "
            f"| {diff:.4f} | {same} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=CAMVID)
    parser.add_argument("--models", type=Path, default=None, help="keep the job here")
    parser.add_argument("--phase", choices=("all", "train", "measure"), default="all")
    parser.add_argument("--images", type=int, default=96, help="training frames")
    parser.add_argument("--validation", type=int, default=32, help="validation frames")
    parser.add_argument("--budget", type=float, default=600, help="training seconds, then SIGTERM")
    parser.add_argument("--side", type=int, default=224, help="the request JPEG's side")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--set", nargs="*", default=[], help="hyperparameters k=v over RECIPE")
    args = parser.parse_args()
    if args.models is None:
        import tempfile

        args.models = Path(tempfile.mkdtemp(prefix="classification-engines-"))
    args.models.mkdir(parents=True, exist_ok=True)
    if args.phase in ("all", "train"):
        train(args)
    if args.phase in ("all", "measure"):
        body = request_body(args.data, args.side)
        rows = []
        for engine in args.engines.split(","):
            print(f"measuring {engine}", flush=True)
            rows.append(measure_engine(args.models, engine, body, args.requests))
        report(args, rows)


if __name__ == "__main__":
    main()
