"""Sweeps on Ray: one local Ray instance of 2 CPUs for the module; only the driver writes the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

try:
    import ray
except ImportError:
    pytest.skip("ray is not installed: pip install -r requirements-ray.txt", allow_module_level=True)

from conftest import tiny_config

import lossland
from lossland.executors import ExecutorError, LocalExecutor, PointResult, RayExecutor, compute_point
from lossland.experiments import grid_configs, run_pair, sweep
from lossland.store import TABLES, Store

ROOT = Path(__file__).resolve().parents[1]
BASE = tiny_config(**{"train.max_epochs": 200})
SEEDS = {"train.seed": [0, 1, 2, 3]}
# What differs between two computations of the same point: timings, write times, file locations.
VOLATILE = {"seconds", "spectrum_seconds", "created_at", "checkpoint"}


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    # Tasks ask for as many CPUs as their torch threads (1, set by conftest), so 2 run at once.
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             runtime_env={"py_modules": [str(Path(lossland.__file__).parent)], "excludes": ["__pycache__"]})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_store(tmp_path_factory) -> Store:
    """The 4-point seed sweep computed in this process, one point after another."""
    store = Store(tmp_path_factory.mktemp("local") / "runs.duckdb")
    sweep(BASE, SEEDS, store, executor="local")
    return store


def _tables(store: Store) -> dict[str, pd.DataFrame]:
    out = {}
    for name in TABLES:
        df = store.table(name)
        df = df[[c for c in df.columns if c not in VOLATILE]]
        out[name] = df.sort_values(list(df.columns[:3])).reset_index(drop=True)
    return out


def _assert_same_results(a: Store, b: Store, pair_ids: list[str] | None = None) -> None:
    ta, tb = _tables(a), _tables(b)
    for name in TABLES:
        x, y = ta[name], tb[name]
        if pair_ids is not None and "run_id" in x:
            keep = lambda df: df[df["run_id"].str.rsplit("-", n=1).str[0].isin(pair_ids)].reset_index(drop=True)  # noqa: E731
            x, y = keep(x), keep(y)
        pd.testing.assert_frame_equal(x, y, check_exact=True, obj=f"table {name}")
    for run_id in ta["runs"]["run_id"] if pair_ids is None else [f"{p}-{r}" for p in pair_ids for r in ("good", "bad")]:
        sa = torch.load(a.checkpoint_path(run_id), weights_only=True)["state_dict"]
        sb = torch.load(b.checkpoint_path(run_id), weights_only=True)["state_dict"]
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), run_id


def test_ray_sweep_stores_the_same_runs_and_numbers_as_the_local_one(local_store, tmp_path):
    store = Store(tmp_path / "runs.duckdb")
    progress = []
    outcomes = sweep(BASE, SEEDS, store, lambda f, m: progress.append((f, m)), executor=RayExecutor())
    assert [o.pair_id for o in outcomes] == [c.config_hash() for c in grid_configs(BASE, SEEDS)]
    assert not any(o.from_store for o in outcomes)
    assert store.count_runs() == 8 and (store.runs()["status"] != "failed").all()
    _assert_same_results(local_store, store)  # bit for bit: same torch threads, same functions
    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert progress[-1][1].startswith("4/4 points done (4 new, 0 from the store, 0 failed)")
    for pair_id in (o.pair_id for o in outcomes):  # the driver wrote the workers' checkpoint bytes beside the store
        assert (store.checkpoint_dir / f"{pair_id}-good.pt").exists()


def test_cli_sweep_with_the_ray_executor_fills_the_store_like_the_local_executor(local_store, tmp_path):
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(BASE.to_json())
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "LOSSLAND_RAY_ADDRESS")}
    result = subprocess.run(
        [sys.executable, "-m", "lossland", "sweep", "--config", str(cfg_file), "--grid", "train.seed=0,1",
         "--executor", "ray", "--threads", "1", "--store", str(tmp_path / "cli.duckdb"), "--json", "--quiet"],
        cwd=tmp_path, env=env | {"PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    ids = [c.config_hash() for c in grid_configs(BASE, {"train.seed": [0, 1]})]
    assert [r["pair_id"] for r in rows] == ids and not any(r["from_store"] for r in rows)
    _assert_same_results(local_store, Store(tmp_path / "cli.duckdb"), ids)


def test_a_failing_point_is_stored_as_failed_while_the_others_land(tmp_path):
    def task(t):  # seed 1 fails inside the computation, seed 2 in the task around it
        import lossland.executors as ex

        if t.config.train.seed == 2:
            raise ValueError("task broke before computing")
        if t.config.train.seed != 1:
            return ex.compute_point(t)
        real = ex.compute_pair

        def broken(*args, **kwargs):
            raise FileNotFoundError("dataset files are missing")

        ex.compute_pair = broken
        try:
            return ex.compute_point(t)
        finally:
            ex.compute_pair = real

    store = Store(tmp_path / "runs.duckdb")
    grid = {"train.seed": [0, 1, 2]}
    outcomes = sweep(BASE, grid, store, executor=RayExecutor(task=task))
    status = {o.pair_id: o.view.runs.set_index("role") for o in outcomes}
    ok, inside, outside = (status[o.pair_id] for o in outcomes)
    assert (ok["status"] != "failed").all() and ok["test_acc"].notna().all()
    assert (inside["status"] == "failed").all() and (outside["status"] == "failed").all()
    assert inside.loc["good", "error"] == "FileNotFoundError: dataset files are missing"
    assert outside.loc["good", "error"] == "ValueError: task broke before computing"
    assert not store.has_pair(outcomes[1].pair_id)  # a failed point is computed again by the next sweep


def test_a_failing_point_is_stored_as_failed_by_the_local_executor_too(tmp_path, monkeypatch):
    import lossland.executors as ex

    real = ex.compute_pair

    def train_pair(cfg, *args, **kwargs):
        if cfg.train.seed == 1:
            raise FileNotFoundError("dataset files are missing")
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(ex, "compute_pair", train_pair)
    store = Store(tmp_path / "runs.duckdb")
    progress = []
    outcomes = sweep(BASE, {"train.seed": [1, 0]}, store, lambda f, m: progress.append(m), executor=LocalExecutor())
    assert list(outcomes[0].view.runs["status"]) == ["failed", "failed"]
    assert list(outcomes[1].view.runs["status"]) != ["failed", "failed"]
    assert any("failed: FileNotFoundError: dataset files are missing" in m for m in progress)
    assert progress[-1].startswith("2/2 points done (1 new, 0 from the store, 1 failed)")


def test_a_killed_worker_is_retried_and_one_that_keeps_dying_fails_its_point(tmp_path):
    marks = tmp_path / "attempts"
    marks.mkdir()

    def task(t):  # every attempt leaves a file; seed 0's worker dies on its first attempt, seed 1's on every one
        import os

        from lossland.executors import compute_point

        seed = t.config.train.seed
        n = len(list(marks.glob(f"{seed}-*")))
        (marks / f"{seed}-{n}").touch()
        if seed == 1 or n == 0:
            os._exit(1)
        return compute_point(t)

    store = Store(tmp_path / "runs.duckdb")
    outcomes = sweep(BASE, {"train.seed": [0, 1]}, store, executor=RayExecutor(task=task, max_retries=1))
    attempts = {s: len(list(marks.glob(f"{s}-*"))) for s in (0, 1)}
    assert attempts == {0: 2, 1: 2}  # first try + one retry each
    assert store.has_pair(outcomes[0].pair_id)
    dead = outcomes[1].view.runs
    assert (dead["status"] == "failed").all()
    assert dead["error"].iloc[0].startswith("WorkerCrashedError (retried 1 times at most)")


def test_an_interrupted_sweep_resumes_without_recomputing_stored_points(tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()

    def task(t):
        from lossland.executors import compute_point

        (calls / t.pair_id).touch()
        return compute_point(t)

    store = Store(tmp_path / "runs.duckdb")
    grid = {"train.seed": [5, 6]}
    first, second = grid_configs(BASE, grid)
    run_pair(first, store)  # as if the sweep had stopped after its first point
    written = store.runs()["created_at"].tolist()
    outcomes = sweep(BASE, grid, store, executor=RayExecutor(task=task))
    assert [o.from_store for o in outcomes] == [True, False]
    assert sorted(p.name for p in calls.iterdir()) == [second.config_hash()]  # only the missing point ran
    assert store.runs(pair_id=first.config_hash())["created_at"].tolist() == written
    assert store.count_runs() == 4


def test_a_lost_cluster_stops_the_sweep_with_a_clear_error_keeping_what_landed(tmp_path, monkeypatch):
    real_wait = ray.wait
    waits = []

    def wait(refs, **kwargs):  # the first point lands, then the connection to the cluster is gone
        if waits:
            raise ray.exceptions.RaySystemError("connection to the GCS lost (simulated)")
        waits.append(1)
        return real_wait(refs, num_returns=1, timeout=None)

    monkeypatch.setattr(ray, "wait", wait)
    store = Store(tmp_path / "runs.duckdb")
    with pytest.raises(ExecutorError, match=r"lost the connection to the local Ray instance after 1 of 2 points "
                                            r"\(RaySystemError: .*simulated.*run the same sweep again to resume"):
        sweep(BASE, {"train.seed": [7, 8]}, store, executor=RayExecutor())
    runs = store.runs()
    assert len(runs) == 2 and runs["pair_id"].nunique() == 1 and (runs["status"] != "failed").all()


def test_points_results_carry_no_model_and_survive_pickling():
    import pickle

    from lossland.executors import PointTask

    result = compute_point(PointTask(BASE.with_changes(**{"train.max_epochs": 20}), "cpu", 1))
    assert isinstance(result, PointResult) and result.error is None
    computed = result.computed
    assert computed.pair.good.model is None and computed.pair.bad.model is None
    assert set(computed.checkpoints) == {"good", "bad"}
    again = pickle.loads(pickle.dumps(result))
    assert again.computed.spectra["good"].top.eigenvalues == computed.spectra["good"].top.eigenvalues


def test_a_point_that_needs_a_gpu_the_cluster_lacks_is_refused_before_it_hangs(tmp_path):
    cfg = BASE.with_changes(**{"train.device": "cuda"})
    with pytest.raises(ExecutorError, match="wants a CUDA device but the local Ray instance has no GPU"):
        sweep(cfg, {"train.seed": [0]}, Store(tmp_path / "runs.duckdb"), executor="ray")
