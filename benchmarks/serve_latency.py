"""Latency and throughput through the real serving stack (nginx + gunicorn + flask), beside
the bare model forward measured in the same run, for a 512x512 JPEG answered as a PNG mask.

    python benchmarks/serve_latency.py                 # 1 and 8 concurrent clients
    python benchmarks/serve_latency.py --soak 60       # plus 60 s of 8 clients: errors, memory
    python benchmarks/serve_latency.py --size 1920x1080   # a larger request, resized by serve

Loopback only. The model has random weights (speed does not depend on them), base_size 512,
so the 512x512 request reaches the model unresized, as the bare forward does.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from stack import Server, memory_kib, request

from segcontainer.config.hyperparameters import resolve
from segcontainer.metrics import Scores
from segcontainer.model_folder import model_config, save_model
from segcontainer.models import build_model
from segcontainer.precision import autocast_dtype
from segcontainer.serving.settings import ServingSettings


def make_model(base: Path, algorithm: str, num_classes: int) -> torch.nn.Module:
    config = resolve(
        {
            "num_classes": str(num_classes),
            "algorithm": algorithm,
            "base_size": "512",
            "crop_size": "512",
        }
    )
    torch.manual_seed(0)
    model = build_model(algorithm, "resnet-50", num_classes).eval()
    scores = Scores(0.0, 0.0, (None,) * num_classes)
    save_model(base / "model", model, model_config(config, {}), 0, scores, ())
    return model


def jpeg(width: int, height: int) -> bytes:
    image = Image.new("RGB", (width, height), (110, 120, 130))
    draw = ImageDraw.Draw(image)
    draw.rectangle((width // 8, height // 6, width * 3 // 5, height // 2), fill=(200, 40, 40))
    draw.ellipse((width // 2, height // 2, width * 15 // 16, height * 15 // 16), fill=(40, 60, 200))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def model_input_size(width: int, height: int, long_side: int = 512) -> tuple[int, int]:
    """(height, width) the endpoint feeds the model: the long side resized to base_size."""
    scale = long_side / max(width, height)
    return max(1, round(height * scale)), max(1, round(width * scale))


def bare_forward_seconds(
    model: torch.nn.Module, repeats: int, threads: int, size: tuple[int, int] = (512, 512)
) -> list[float]:
    """The model alone on the device the server uses (GPU: the autocast dtype of serving's
    precision policy and channels_last, as the predictor runs it), input already there; the
    reference the stack is compared with."""
    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    x = torch.randn(1, 3, *size, device=device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = autocast_dtype(device)  # serving's: auto
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    times = []
    with torch.inference_mode(), autocast:
        model(x)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model(x).argmax(1).cpu()  # the answer leaves the device, as the stack's does
            times.append(time.perf_counter() - start)
    return times


def invoke(port: int, body: bytes) -> tuple[int, float]:
    start = time.perf_counter()
    status, _, _ = request(
        port, "/invocations", body, {"Content-Type": "image/jpeg", "Accept": "image/png"}
    )
    return status, time.perf_counter() - start


def load(port: int, body: bytes, clients: int, requests_each: int) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: invoke(port, body), range(clients * requests_each)))
    wall = time.perf_counter() - start
    latencies = sorted(t for _, t in results)
    return {
        "clients": clients,
        "requests": len(results),
        "errors": sum(status != 200 for status, _ in results),
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
        "requests_per_s": len(results) / wall,
    }


def soak(server: Server, body: bytes, seconds: float, clients: int = 8) -> dict:
    workers = server.worker_pids()
    rss_start = {pid: memory_kib(pid, "VmRSS") for pid in workers}
    deadline = time.monotonic() + seconds
    counts = {"requests": 0, "errors": 0}

    def client(_: int) -> None:
        while time.monotonic() < deadline:
            status, _ = invoke(server.port, body)
            counts["requests"] += 1
            counts["errors"] += status != 200

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    rss_end = {pid: memory_kib(pid, "VmRSS") for pid in workers}
    return {
        "seconds": seconds,
        "clients": clients,
        **counts,
        "worker_rss_mib_start": [round(v / 1024) for v in rss_start.values()],
        "worker_rss_mib_end": [round(rss_end[p] / 1024) for p in rss_start],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algorithm", default="fcn")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--requests", type=int, default=8, help="per client, 1-client run")
    parser.add_argument("--soak", type=float, default=0, help="seconds of 8-client soak")
    parser.add_argument("--size", default="512x512", help="request image WIDTHxHEIGHT")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    body = jpeg(width, height)
    size = model_input_size(width, height)
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        model = make_model(base, args.algorithm, args.classes)
        os.environ["SAGEMAKER_BASE_DIR"] = str(base)
        settings = ServingSettings.from_env()
        device = "cuda" if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
        print(
            f"device {device}; {args.algorithm}-resnet50, {args.classes} classes; "
            f"{settings.workers} workers x {settings.torch_threads} torch threads",
            flush=True,
        )
        bare = bare_forward_seconds(model, args.requests, settings.torch_threads, size)
        bare_p50 = statistics.median(bare)
        print(
            f"request {width}x{height} JPEG -> PNG; bare forward 1x3x{size[0]}x{size[1]} (the "
            f"model input after resizing to base_size): p50 {bare_p50:.3f} s",
            flush=True,
        )
        server = Server(base)
        try:
            server.wait_ready()
            results = {"bare_forward_p50_s": bare_p50, "stack": []}
            for clients, each in ((1, args.requests), (8, max(2, args.requests // 4))):
                row = load(server.port, body, clients, each)
                # time per answered request with the server saturated, against one forward
                row["overhead_vs_bare"] = (
                    row["p50_s"] / bare_p50
                    if clients == 1
                    else (settings.workers / row["requests_per_s"]) / bare_p50
                )
                results["stack"].append(row)
                print(
                    f"{clients} client(s): p50 {row['p50_s']:.3f} s, p95 {row['p95_s']:.3f} s,"
                    f" {row['requests_per_s']:.2f} req/s, errors {row['errors']}, "
                    f"{row['overhead_vs_bare']:.3f}x the bare forward",
                    flush=True,
                )
            if args.soak:
                results["soak"] = soak(server, body, args.soak)
                print(f"soak: {json.dumps(results['soak'])}", flush=True)
        finally:
            server.stop()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
