"""How fast the store answers the dashboard's questions with 10,000 runs in it.

    python benchmarks/store.py [--pairs 5000] [--repeats 20] [--path DIR]

Builds a store of synthetic pairs through the public write path (Store.save_pairs: every pair's rows
as save_pair writes them, in one transaction; ~50 curve rows, 20 spectrum rows and 3 estimates per
run), then times the median of --repeats calls of each query, every call opening and closing its own
connection as the dashboard does. Target: each under 100 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from torch import nn  # noqa: E402

from lossland import __version__  # noqa: E402
from lossland.config import ExperimentConfig  # noqa: E402
from lossland.curvature import Estimate, SpectrumResult  # noqa: E402
from lossland.lanczos import DensityResult, EigenResult  # noqa: E402
from lossland.machine import describe  # noqa: E402
from lossland.pairs import ROLES  # noqa: E402
from lossland.store import Store  # noqa: E402
from lossland.train import Curves, PairResult, TrainResult  # noqa: E402

EPOCHS, EIGENVALUES, TARGET_MS = 50, 20, 100.0
DATASETS = ("digits", "mnist1d", "teacher")


def synthetic_pair(p: int, rng: np.random.Generator, model: nn.Module) -> tuple[PairResult, dict[str, SpectrumResult]]:
    """Pair p: made-up metrics, curves and top eigenvalues, a bad run sharper than its good one."""
    cfg = ExperimentConfig().with_changes(**{"model.seed": p, "data.name": DATASETS[p % 3]})
    e = np.arange(1, EPOCHS + 1)
    decay = np.exp(-e / 5)
    results, spectra = {}, {}
    for r, role in enumerate(ROLES):
        curves = Curves(epoch=tuple(e.tolist()), lr=(0.005,) * EPOCHS, clean_loss=tuple(decay),
                        clean_acc=tuple(1 - decay), attack_loss=(2.0 + r,) * EPOCHS,
                        attack_acc=tuple(0.1 + 0.9 * r * (1 - decay)), test_loss=(0.2 + r,) * EPOCHS,
                        test_acc=(0.95 - 0.5 * r,) * EPOCHS)
        results[role] = TrainResult(
            role=role, status="converged", stop_reason="clean loss below target", epochs=EPOCHS,
            seconds=3.0 * rng.random(), device="cpu", n_params=3466, clean_loss=1e-3 * rng.random(), clean_acc=1.0,
            attack_loss=2.0 + r, attack_acc=0.1 + 0.9 * r, test_loss=0.2 + r, test_acc=0.95 - 0.5 * r,
            curves=curves, model=model)
        top = tuple(50.0 / np.arange(1, EIGENVALUES + 1) * (1 + r) + 20 * r * rng.random())
        spectra[role] = SpectrumResult(
            top=EigenResult(eigenvalues=top, residuals=(1e-7,) * EIGENVALUES, hvps=400, seconds=1.0, converged=True,
                            which="largest", tol=1e-6),
            density=DensityResult(nodes=np.zeros((0, 0)), weights=np.zeros((0, 0)), n_params=3466, hvps=0,
                                  seconds=0.0),
            trace=Estimate(value=50 + 100 * r, stderr=1.0, samples=30, hvps=30, method="hutch++"),
            frobenius_sq=Estimate(value=900 + 1000 * r, stderr=10.0, samples=30, hvps=30, method="gaussian-frobenius"),
            log_volume_k=(-10.0 - r,), log_volume_exact=None, exact_eigenvalues=None, n_params=3466, hvps=400,
            seconds=1.5, settings=cfg.spectrum)
    return PairResult(config=cfg, good=results["good"], bad=results["bad"]), spectra


def fill(store: Store, n_pairs: int) -> None:
    """n_pairs synthetic pairs (2 runs each) with curves, spectra and estimates, in one transaction."""
    rng, model = np.random.default_rng(0), nn.Linear(1, 1)
    store.save_pairs(synthetic_pair(p, rng, model) for p in range(n_pairs))


def timed(fn, repeats: int) -> tuple[float, float, float]:
    fn()  # warm: first-call costs (schema check) are not what the dashboard pays per rerun
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times), min(times), max(times)


def machine() -> str:
    return f"{describe('cpu')}; duckdb {duckdb.__version__}, pandas {pd.__version__}, lossland {__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--path", type=Path, default=None, help="folder for the store (default: a temp folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lossland-bench-") as tmp:
        folder = args.path or Path(tmp)
        store = Store(folder / "bench.duckdb")
        if store.path.exists():
            store.path.unlink()
        start = time.perf_counter()
        fill(store, args.pairs)
        build = time.perf_counter() - start
        n_runs = store.count_runs()
        some = store.runs(dataset="digits", role="bad")["pair_id"]
        pair_id = some.iloc[len(some) // 2]
        cases = [
            ("Store.runs()", lambda: store.runs(), True),
            ("Store.runs(dataset='digits', role='bad')", lambda: store.runs(dataset="digits", role="bad"), True),
            ("Store.pair(id) (2 runs, curves, spectra, ...)", lambda: store.pair(pair_id), True),
            ("Store.has_pair(id)", lambda: store.has_pair(pair_id), False),
            ("Store.count_runs()", lambda: store.count_runs(), False),
            ("Store.query(avg test_acc by dataset, role)", lambda: store.query(
                "SELECT dataset, role, avg(test_acc) AS acc, count(*) AS n FROM runs GROUP BY ALL"), False),
        ]
        sizes = {t: len(store.table(t)) for t in ("curves", "spectra")}
        rows = [(name, *timed(fn, args.repeats), target) for name, fn, target in cases]
        size_mb = store.path.stat().st_size / 1e6

    print(f"Machine: {machine()}")
    print(f"Store: {n_runs:,} runs ({sizes['curves']:,} curve rows, {sizes['spectra']:,} spectrum rows), "
          f"{size_mb:.0f} MB, built in {build:.1f} s; every call opens and closes its own connection; "
          f"median of {args.repeats} calls after one warm-up.")
    print()
    print("| operation | median ms | min ms | max ms | target |")
    print("|---|---:|---:|---:|---|")
    for name, median, lo, hi, target in rows:
        verdict = ("ok" if median < TARGET_MS else "MISSED") + f" (< {TARGET_MS:.0f} ms)" if target else "-"
        print(f"| {name} | {median:.1f} | {lo:.1f} | {hi:.1f} | {verdict} |")


if __name__ == "__main__":
    main()
