"""`segcontainer demo`, the README's first command, run as written: it trains ResNet-50 on the
generated dataset, serves the model with nginx and gunicorn, predicts one image both ways and
says where everything is."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segcontainer.client import decode_recordio_protobuf
from tests.support.local_mode import subprocess_env


@pytest.mark.slow  # three ResNet-50 epochs on the CPU, then the real serving stack
def test_demo_trains_serves_and_predicts_as_the_readme_says(tmp_path: Path) -> None:
    env = subprocess_env(tmp_path, docker_run=True)
    env.pop("SAGEMAKER_BASE_DIR")  # the demo sets its own
    result = subprocess.run(
        [sys.executable, "-m", "segcontainer.cli", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = tmp_path / "demo-run"  # "says where everything is (under demo-run/)"
    base = run / "opt_ml"
    out = result.stdout
    assert "train exited with 0." in out
    assert [int(e) for e in re.findall(r"epoch=(\d+), validation mIOU", out)] == [0, 1, 2]
    for path in (base / "model", base / "output" / "model.tar.gz", run / "train.log"):
        assert str(path) in out and path.exists(), path
    assert (base / "model" / "model.pt").is_file()
    assert (base / "output" / "model.tar.gz").stat().st_size > 50_000_000  # ResNet-50's weights

    # One validation image sent to /invocations: its PNG mask and its probabilities.
    [image] = sorted((base / "input" / "data" / "validation").iterdir())[:1]
    width, height = Image.open(image).size
    mask = Image.open(run / "prediction.png")
    assert mask.mode == "P" and mask.size == (width, height)
    assert set(np.unique(np.asarray(mask))) <= {0, 1, 2}
    probabilities = decode_recordio_protobuf((run / "prediction.recordio-protobuf").read_bytes())
    assert probabilities.shape == (3, height, width)
    np.testing.assert_allclose(probabilities.sum(0), 1, atol=1e-4)
    assert np.array_equal(probabilities.argmax(0), np.asarray(mask))
    assert f"sent {image.name} to /invocations" in out
    assert str(run / "prediction.png") in out and str(run / "serve.log") in out
    assert "nginx" in (run / "serve.log").read_text()  # the server's log was kept
