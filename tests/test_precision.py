"""The one mixed-precision policy (training, serving and the benchmarks all ask it)."""

from __future__ import annotations

import logging

import pytest
import torch

from segcontainer.precision import PRECISIONS, autocast_dtype

CUDA = torch.device("cuda", 0)


def on_gpu(monkeypatch, capability: tuple[int, int]) -> None:
    """Pretend CUDA device 0 has ``capability``; V100 and T4 report bf16 as supported too."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)


def test_the_cpu_runs_fp32_whatever_was_asked(caplog) -> None:
    caplog.set_level(logging.WARNING)
    for requested in PRECISIONS:
        assert autocast_dtype(torch.device("cpu"), requested) is None
    assert len(caplog.records) == 2  # bf16 and fp16 were asked for, and are not given
    assert all("needs a GPU" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("capability", "dtype"),
    [
        ((7, 0), torch.float16),  # V100 (ml.p3): bf16 only emulated
        ((7, 5), torch.float16),  # T4 (ml.g4dn)
        ((8, 0), torch.bfloat16),  # A100
        ((8, 6), torch.bfloat16),  # A10G (ml.g5)
        ((9, 0), torch.bfloat16),  # H100
    ],
)
def test_auto_is_bf16_only_where_the_gpu_computes_it(monkeypatch, capability, dtype) -> None:
    on_gpu(monkeypatch, capability)
    assert autocast_dtype(CUDA) == dtype
    assert autocast_dtype(CUDA, "auto") == dtype


@pytest.mark.parametrize("capability", [(7, 5), (9, 0)])
def test_an_explicit_precision_is_kept_on_any_gpu(monkeypatch, caplog, capability) -> None:
    on_gpu(monkeypatch, capability)
    caplog.set_level(logging.WARNING)
    assert autocast_dtype(CUDA, "fp32") is None
    assert autocast_dtype(CUDA, "fp16") == torch.float16
    assert autocast_dtype(CUDA, "bf16") == torch.bfloat16
    emulated = [r.getMessage() for r in caplog.records if "emulated" in r.getMessage()]
    assert len(emulated) == (capability < (8, 0))  # bf16 where it is slow: said so


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="auto, fp32, bf16, fp16"):
        autocast_dtype(torch.device("cpu"), "fp8")
