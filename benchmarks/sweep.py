"""Sweep throughput: the same grid through the local executor and a local Ray instance, side by side.

    python benchmarks/sweep.py [--points 4] [--threads 1] [--ray-cpus 2]

Each point is a small digits pair (100 clean + 100 attack samples, a 64-16-10 MLP) trained and measured
(spectra included) exactly as `python -m lossland sweep` does; both executors write to their own fresh
store, and the stored numbers are compared. Ray's start-up is timed on its own, since a cluster pays it
once, not per sweep. On 2 cores the Ray sweep runs 2 points at a time with 1 torch thread each.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from lossland.config import ExperimentConfig  # noqa: E402
from lossland.experiments import sweep  # noqa: E402
from lossland.machine import describe  # noqa: E402
from lossland.store import Store  # noqa: E402


def small_config() -> ExperimentConfig:
    return ExperimentConfig().with_changes(**{
        "data.n_train": 100, "attack.n_attack": 100, "model.widths": (16,), "train.lr": 0.02,
        "train.batch_size": 50, "train.max_epochs": 1500, "train.loss_target": 1e-2, "spectrum.k": 5,
        "spectrum.slq_vectors": 2, "spectrum.slq_steps": 20, "spectrum.trace_samples": 12,
        "spectrum.max_steps": 120, "spectrum.exact_max_params": 2000, "spectrum.tol": 1e-5})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per point (both executors)")
    ap.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args(argv)
    import ray

    torch.set_num_threads(args.threads)
    print(f"machine: {describe('cpu')}; ray {ray.__version__}; {args.threads} torch thread(s) per point")
    grid = {"train.seed": list(range(args.points))}
    base = small_config()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        local = Store(Path(tmp) / "local.duckdb")
        t = time.perf_counter()
        sweep(base, grid, local, executor="local", threads=args.threads)
        rows.append(("local executor", time.perf_counter() - t))

        t = time.perf_counter()
        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False,
                 runtime_env={"py_modules": [str(Path(__file__).resolve().parent.parent / "lossland")]})
        rows.append(("ray.init (once per cluster)", time.perf_counter() - t))
        try:
            remote = Store(Path(tmp) / "ray.duckdb")
            t = time.perf_counter()
            sweep(base, grid, remote, executor="ray", threads=args.threads)
            rows.append((f"ray executor ({args.ray_cpus} CPUs)", time.perf_counter() - t))
        finally:
            ray.shutdown()
        cols = ["run_id", "test_acc", "top_eigenvalue", "trace", "frobenius_sq"]
        a = local.runs()[cols].sort_values("run_id").reset_index(drop=True)
        b = remote.runs()[cols].sort_values("run_id").reset_index(drop=True)
        same = a.equals(b)
    print(f"\nworkload: {args.points} points (train.seed 0..{args.points - 1}) of a tiny digits pair, spectra included")
    print(f"{'':36}{'seconds':>10}{'s / point':>12}")
    for name, sec in rows:
        per = f"{sec / args.points:12.2f}" if "init" not in name else f"{'':12}"
        print(f"{name:36}{sec:10.2f}{per}")
    print(f"{'speedup of ray over local':36}{rows[0][1] / rows[2][1]:9.2f}×   (stored numbers identical: {same})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
