"""Test-time augmentation: its mIoU gain on CamVid and its latency cost through the stack.

    python benchmarks/tta.py --base /tmp/light/lraspp-mobilenet-v3-large

``--base`` is a training job's folder (its model/ is served and evaluated; light_models.py
leaves one per model). For each SEGCONTAINER_TTA setting: `segcontainer evaluate` on the
CamVid validation pairs (``--data``; the engine `auto` chooses, the endpoint's predictions)
gives the mIoU, and `./serve` with that setting answers a CamVid validation frame (960x720
JPEG, as a camera sends it, at the model's own inference size) as PNG: p50 over
``--requests``, and its ratio to the p50 without TTA measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from jobs import CAMVID, device_line  # noqa: E402
from serve_latency import invoke  # noqa: E402
from stack import Server  # noqa: E402

SETTINGS = ("none", "flip", "flip,scales=0.75,1.0,1.25")


def evaluate(model: Path, data: Path, tta: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "segcontainer.cli", "evaluate", str(model), str(data)]
        subprocess.run([*command, out, "--tta", tta], check=True, capture_output=True)
        return json.loads((Path(out) / "metrics.json").read_text())


def latency(base: Path, body: bytes, tta: str, requests: int) -> float:
    server = Server(base, SEGCONTAINER_TTA=tta)
    try:
        server.wait_ready(timeout=600)
        invoke(server.port, body)  # the first request pays for lazy initialisation
        times = [invoke(server.port, body) for _ in range(requests)]
    finally:
        server.stop()
    assert all(status == 200 for status, _ in times), times
    return statistics.median(seconds for _, seconds in times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="a job folder with model/")
    parser.add_argument("--data", type=Path, default=CAMVID)
    parser.add_argument("--settings", default=";".join(SETTINGS), help="';'-separated")
    parser.add_argument("--requests", type=int, default=12)
    args = parser.parse_args()
    body = sorted((args.data / "validation").iterdir())[0].read_bytes()
    rows = []
    for tta in args.settings.split(";"):
        metrics = evaluate(args.base / "model", args.data, tta)
        rows.append((tta, metrics, latency(args.base, body, tta, args.requests)))
    print(f"\ndevice: {device_line()}\ncommand: python {' '.join(sys.argv)}\n")
    print("| SEGCONTAINER_TTA | mIoU | pixel accuracy | p50 s (1 client) | p50 / no TTA |")
    print("| --- | --- | --- | --- | --- |")
    reference = rows[0][2]
    for tta, metrics, p50 in rows:
        print(
            f"| `{tta}` | {metrics['mIOU']:.4f} | {metrics['pixel_accuracy']:.4f} "
            f"| {p50:.3f} | {p50 / reference:.2f}x |"
        )
    print(f"\nengine: {rows[0][1]['engine']}")


if __name__ == "__main__":
    main()
