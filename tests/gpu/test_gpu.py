"""The one-command GPU check (`python -m pytest -m gpu tests/gpu`, a few minutes on a host with
one or more GPUs; skipped, with the reason, where CUDA is absent):

- `train` for one epoch on every GPU (one process per GPU over NCCL; with one GPU the single
  in-process path), precision=auto, input_pipeline=auto, compile_model=auto: the precision
  chosen is the one the README gives for the device's compute capability, the JPEGs are
  decoded and augmented on the GPU, the steps are compiled;
- SIGTERM in the second epoch: exit 143 with a checkpoint, and a restart resumes from it;
- the nvJPEG path's batches match the CPU decoder's, and so do its PIL fallback's;
- `serve` on the trained model: one worker per GPU, each on its own device, answering every
  Accept type.
"""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segcontainer.client import decode_recordio_protobuf
from segcontainer.data import gpu_pipeline
from segcontainer.data.channels import Sample
from segcontainer.data.gpu_pipeline import GpuTrainBatches
from segcontainer.data.label_maps import identity_lut
from segcontainer.tools.demo_data import make_dataset, synthetic_pair, write_local_mode_config
from tests.support import gpu
from tests.support.local_mode import subprocess_env, train_command
from tests.support.serving_stack import Server, image_bytes, invoke

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs CUDA (a GPU and its driver): run `python -m pytest -m gpu tests/gpu` "
        "on a GPU host",
    ),
]
GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
HOST = "algo-1-g9pu0"


@dataclass(frozen=True)
class GpuJob:
    base: Path
    interrupted: str  # the log of the run stopped by SIGTERM in its second epoch
    interrupted_code: int
    resumed: str  # the log of the restart


def run_until_epoch_0_then_sigterm(env: dict) -> tuple[int, str]:
    """`train`, sent SIGTERM as soon as it prints epoch 0's validation metric line."""
    process = subprocess.Popen(
        train_command(), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    for line in process.stdout:
        lines.append(line)
        if gpu.metric_epochs(line) == [0]:
            process.send_signal(signal.SIGTERM)
    return process.wait(timeout=600), "".join(lines)


@pytest.fixture(scope="module")
def gpu_job(tmp_path_factory) -> GpuJob:
    """A 3-epoch job on every GPU (32 JPEG pairs per GPU, batches of 2 per GPU), stopped by
    SIGTERM in epoch 1, then restarted to the end."""
    base = tmp_path_factory.mktemp("gpu") / HOST
    make_dataset(base / "input" / "data", train=32 * GPUS, validation=4 * GPUS, size=(96, 72))
    settings = {
        "backbone": "resnet-50",
        "algorithm": "fcn",
        "use_pretrained_model": "False",
        "num_classes": "3",
        "epochs": "3",
        "base_size": "96",
        "crop_size": "64",
        "mini_batch_size": str(gpu.training_batch(GPUS)),
        "validation_mini_batch_size": "2",
        "precision": "auto",
        "input_pipeline": "auto",
        "compile_model": "auto",
        "export": "none",
    }
    write_local_mode_config(base, settings, host=HOST)
    env = subprocess_env(base, docker_run=True)
    # The GPUs this process sees (CUDA_VISIBLE_DEVICES kept as given), as processes, not CPUs.
    env.pop("SEGCONTAINER_CPU_WORKERS", None)
    code, interrupted = run_until_epoch_0_then_sigterm(env)
    resumed = subprocess.run(train_command(), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return GpuJob(base, interrupted, code, resumed.stdout + resumed.stderr)


def test_one_epoch_on_every_gpu_with_the_capability_precision_gpu_decoding_and_compile(
    gpu_job: GpuJob,
) -> None:
    log = gpu_job.interrupted
    if GPUS > 1:  # one process per GPU over NCCL
        assert f"started {GPUS} training processes on host {HOST}" in log, log[-3000:]
    else:  # one GPU: the single-process path, in-process (README, "Several GPUs and hosts")
        assert "training processes on host" not in log
    capability = torch.cuda.get_device_capability(0)
    assert gpu.chosen_precision(log) == gpu.expected_precision(capability), capability
    assert "input pipeline: JPEG decoding and augmentation on the GPU" in log
    assert "compile_model=auto: the training steps run through torch.compile" in log
    assert gpu.metric_epochs(log)[0] == 0


def test_sigterm_writes_a_checkpoint_and_the_restart_resumes_from_it(gpu_job: GpuJob) -> None:
    assert gpu_job.interrupted_code == 143, gpu_job.interrupted[-3000:]
    assert gpu.metric_epochs(gpu_job.interrupted) == [0]
    assert "training stopped:" in gpu_job.interrupted  # the reason, logged as output/failure's
    resumed_from = gpu.newest_checkpoint_in_log(gpu_job.resumed)
    assert resumed_from is not None and resumed_from.startswith("checkpoint-e0001-")
    assert gpu.metric_epochs(gpu_job.resumed) == [1, 2]
    assert (gpu_job.base / "output" / "success").exists()
    assert (gpu_job.base / "model" / "model.pt").is_file()


def jpeg_samples(folder: Path) -> list[Sample]:
    """Four JPEG pairs of different sizes, one tagged with EXIF orientation 6."""
    rng = np.random.default_rng(0)
    samples = []
    for index, size in enumerate([(96, 72), (64, 80), (120, 50), (70, 70)]):
        image, mask = synthetic_pair(rng, size)
        exif = Image.Exif()
        exif[0x0112] = 6 if index == 1 else 1
        if index == 1:  # stored turned, displayed upright: the mask is drawn as displayed
            image = image.transpose(Image.Transpose.ROTATE_90)
        image.save(folder / f"{index}.jpg", quality=95, exif=exif)
        mask.save(folder / f"{index}.png")
        samples.append(Sample(folder / f"{index}.jpg", folder / f"{index}.png"))
    return samples


def batches(samples: list[Sample], device: torch.device) -> list[tuple[torch.Tensor, ...]]:
    loader = GpuTrainBatches(samples, identity_lut(), 96, 64, 2, seed=5, workers=0, device=device)
    loader.set_epoch(1)
    return [(images.cpu().float(), masks.cpu()) for images, masks in loader]


def assert_close_to_the_cpu_decoder(got: list, want: list) -> None:
    assert len(got) == len(want) == 2
    for (images, masks), (images_cpu, masks_cpu) in zip(got, want, strict=True):
        assert torch.equal(masks, masks_cpu)  # the same crops, flips and padding
        # decoders round differently: a level or two of 255, in normalised units
        assert (images - images_cpu).abs().mean() < 0.05


def test_nvjpeg_batches_and_the_pil_fallback_match_the_cpu_decoder(tmp_path, caplog) -> None:
    samples = jpeg_samples(tmp_path)
    want = batches(samples, torch.device("cpu"))
    caplog.set_level(logging.WARNING, logger=gpu_pipeline.__name__)
    assert_close_to_the_cpu_decoder(batches(samples, torch.device("cuda", 0)), want)
    assert "GPU JPEG decoding failed" not in caplog.text  # nvJPEG decoded every batch

    def nvjpeg_refuses(*args, **kwargs):  # as nvJPEG does on CMYK and other unusual JPEGs
        raise RuntimeError("nvjpegDecode failed: unsupported JPEG")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gpu_pipeline, "decode_jpeg", nvjpeg_refuses)
        fallback = batches(samples, torch.device("cuda", 0))
    assert caplog.text.count("decoding it with PIL") == 2  # each batch fell back
    assert_close_to_the_cpu_decoder(fallback, want)


def wait_for_every_worker(server: Server, count: int, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = server.full_log()
        if len(gpu.worker_devices(log)) >= count:
            return log
        time.sleep(1)
    raise AssertionError(f"not every worker was ready: {server.log()}")


def test_serve_has_one_worker_per_gpu_and_answers_every_accept_type(gpu_job: GpuJob) -> None:
    server = Server(gpu_job.base)
    try:
        server.wait_ready()
        log = wait_for_every_worker(server, GPUS)
        assigned, ready = gpu.assigned_gpus(log), gpu.worker_devices(log)
        assert sorted(assigned.values()) == list(range(GPUS))  # one worker per GPU
        assert ready == {pid: f"cuda:{index}" for pid, index in assigned.items()}
        body = image_bytes("JPEG", size=(160, 120))
        for accept in ("image/png", "*/*", None):
            status, headers, answer = invoke(server, body, "image/jpeg", accept)
            assert status == 200 and headers["Content-Type"] == "image/png"
            mask = Image.open(io.BytesIO(answer))
            assert mask.mode == "P" and mask.size == (160, 120)
        for accept in ("application/x-recordio-protobuf", "application/x-protobuf"):
            status, _, answer = invoke(server, body, "image/jpeg", accept)
            assert status == 200
            probabilities = decode_recordio_protobuf(answer)
            assert probabilities.shape == (3, 120, 160)
            np.testing.assert_allclose(probabilities.sum(0), 1, atol=1e-3)
        status, _, answer = invoke(server, body, "image/jpeg", "application/json")
        summary = json.loads(answer)
        assert status == 200 and (summary["height"], summary["width"]) == (120, 160)
        assert sum(c["pixels"] for c in summary["classes"]) == 120 * 160
        assert "engine torch" in log  # PyTorch on a GPU host (SEGCONTAINER_ENGINE=auto)
    finally:
        assert server.stop() == 0
