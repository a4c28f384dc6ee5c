"""benchmarks/gpu_check.sh, rehearsed on the CPU (--device cpu --quick): the three steps a GPU machine runs
(device agreement on one checkpoint, the side-by-side scale benchmark, one fashion-cnn pair) all pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").exists(),
                    reason="needs the Debian package dataset-fashion-mnist")
def test_gpu_check_rehearses_every_step_on_the_cpu(tmp_path):
    env = os.environ | {"OUT": str(tmp_path), "PYTHON": sys.executable}
    run = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--device", "cpu", "--quick"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=400)
    out = run.stdout
    assert run.returncode == 0, out[-3000:] + run.stderr[-3000:]
    assert "gpu_check: all steps passed" in out
    agreement = [line for line in out.splitlines() if line.rstrip().endswith(("ok", "DISAGREE"))
                 and not line.startswith("==")]
    assert len(agreement) == 4 and all(line.rstrip().endswith("ok") for line in agreement), agreement
    for method in ("lossland Lanczos", "lossland thick restart", "scipy eigsh", "curvlinops", "hessian-eigenthings",
                   "PyHessian"):
        assert method in out, f"the scale table has no row for {method}"
    assert "top-4: residuals met" in out  # lossland's own pairs at ≤ 1e-6 relative residual
    assert (tmp_path / "store.duckdb").exists() and "top eigenvalue" in out
