"""How fast the store answers the dashboard's questions with 10,000 runs in it.

    python benchmarks/store.py [--pairs 5000] [--repeats 20] [--path DIR]

Builds a store of synthetic pairs in bulk (SQL, not one save_pair per pair: ~50 curve rows and
20 spectrum rows per run), then times the median of --repeats calls of each query, every call
opening and closing its own connection as the dashboard does. Target: each under 100 ms.
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
import pandas as pd  # noqa: E402

from lossland import __version__  # noqa: E402
from lossland.config import ExperimentConfig  # noqa: E402
from lossland.machine import describe  # noqa: E402
from lossland.store import Store  # noqa: E402

EPOCHS, EIGENVALUES, TARGET_MS = 50, 20, 100.0


def fill(store: Store, n_pairs: int) -> None:
    """n_pairs synthetic pairs (2 runs each) with curves and spectra, in one transaction."""
    config = ExperimentConfig().to_json().replace("'", "''")
    store.count_runs()  # creates the schema
    with store._connect() as con:
        con.execute("BEGIN TRANSACTION")
        con.execute(f"""
            CREATE TEMP TABLE ids AS
            SELECT p, r, lpad(printf('%x', hash(p)), 16, '0') AS pair_id, CASE r WHEN 0 THEN 'good' ELSE 'bad' END
                   AS role, ['digits', 'mnist1d', 'teacher'][p % 3 + 1] AS dataset
            FROM range({n_pairs}) a(p), range(2) b(r)""")
        con.execute(f"""
            INSERT INTO runs (run_id, pair_id, role, status, stop_reason, config_json, dataset, model, widths, n_params,
                              seed, data_seed, train_seed, n_train, n_attack, attack_labels, optimizer, lr, batch_size,
                              loss_target, clean_loss, clean_acc, attack_loss, attack_acc, test_loss, test_acc, epochs,
                              seconds, device, top_eigenvalue, trace, frobenius_sq, log_volume, spectrum_hvps,
                              spectrum_seconds, checkpoint, lossland_version, torch_version, python_version,
                              git_commit, created_at)
            SELECT pair_id || '-' || role, pair_id, role, 'converged', 'clean loss below target',
                   replace('{config}', '"seed": 0', '"seed": ' || p), dataset, 'mlp', '32,32', 3466, p, 0, 0, 500,
                   500, 'random', 'adam', 0.005, 100, 1e-3, 1e-3 * random(), 1.0, 2.0 + r, 0.1 + 0.9 * r,
                   0.2 + r, 0.95 - 0.5 * r, {EPOCHS}, 3.0 * random(), 'cpu', 5 + 20 * r * random(), 50 + 100 * r,
                   900 + 1000 * r, -10 - r, 400, 1.5, 'checkpoints/' || pair_id || '-' || role || '.pt', '0.1.0',
                   '2.13.0', '3.11.7', NULL, TIMESTAMP '2026-01-01' + p * INTERVAL 1 MINUTE + r * INTERVAL 1 SECOND
            FROM ids""")
        con.execute(f"""
            INSERT INTO curves SELECT pair_id || '-' || role, e, 0.005, exp(-e / 5), 1 - exp(-e / 5), 2.0 + r,
                   0.1 + 0.9 * r * (1 - exp(-e / 5)), 0.2 + r, 0.95 - 0.5 * r
            FROM ids, range(1, {EPOCHS} + 1) t(e)""")
        con.execute(f"""
            INSERT INTO spectra SELECT pair_id || '-' || role, 'lanczos', i, 50.0 / (i + 1) * (1 + r), 1e-7
            FROM ids, range({EIGENVALUES}) t(i)""")
        con.execute("DROP TABLE ids")
        con.execute("COMMIT")


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
        with duckdb.connect(str(store.path), read_only=True) as con:
            sizes = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("runs", "curves", "spectra")}
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
