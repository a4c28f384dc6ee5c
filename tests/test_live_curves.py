"""Live training curves: the per-epoch callback sees what the store keeps, the dashboard job buffers it, and
the New experiment page draws it while the pair trains; the progress line tells the time left."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import open_app, tiny_config, wait_for_job

from background import Job, JobRunner, duration
from lossland.experiments import run_pair
from lossland.pairs import CURVE_COLUMNS, ROLES, run_id
from lossland.store import Store

SHORT = {"train.max_epochs": 25, "spectrum.exact_max_params": 0, "spectrum.k": 2, "spectrum.trace_samples": 3,
         "spectrum.slq_vectors": 1, "spectrum.slq_steps": 5}


def _same_as_stored(rows: list[dict], store: Store, pair_id: str) -> None:
    """Each role's rows, epochs 1, 2, ... in order, equal number for number to its stored curve."""
    curves = store.pair(pair_id).curves
    assert [r["role"] for r in rows] == sorted((r["role"] for r in rows), key=ROLES.index)  # good first
    for role in ROLES:
        got = pd.DataFrame([r for r in rows if r["role"] == role])[list(CURVE_COLUMNS)]
        stored = curves[curves["run_id"] == run_id(pair_id, role)].sort_values("epoch")[list(CURVE_COLUMNS)]
        assert list(got["epoch"]) == list(range(1, len(stored) + 1))
        np.testing.assert_array_equal(got.to_numpy(float), stored.to_numpy(float))  # NaN (no value) too


def test_on_epoch_sees_every_epoch_in_order_with_the_stored_numbers(tmp_path):
    store = Store(tmp_path / "runs.duckdb")
    rows: list[dict] = []
    outcome = run_pair(tiny_config(**SHORT), store, on_epoch=lambda role, row: rows.append({"role": role, **row}))
    assert not outcome.from_store and len(rows) == 2 * SHORT["train.max_epochs"]
    _same_as_stored(rows, store, outcome.pair_id)
    again: list[dict] = []
    run_pair(tiny_config(**SHORT), store, on_epoch=lambda role, row: again.append(row))
    assert again == []  # answered from the store: nothing trains


def test_a_dashboard_job_buffers_the_epochs_it_trains(tmp_path):
    store = Store(tmp_path / "runs.duckdb")
    cfg = tiny_config(**SHORT | {"train.seed": 3})
    job = JobRunner(store).submit(cfg)
    assert wait_for_job(job, 60).state == "done", job.error
    _same_as_stored(job.curve_rows(), store, cfg.config_hash())


def test_the_progress_line_tells_the_time_left_at_the_pace_so_far():
    job = Job(key="k", work=lambda progress: None, state="running", fraction=0.25, message="good: epoch 10")
    job.began = 1000.0
    assert job.remaining_seconds(now=1030.0) == pytest.approx(90.0)  # 30 s for a quarter: 90 s for the rest
    assert job.progress_text(now=1030.0) == "good: epoch 10 (30 s, about 1.5 min left)"
    assert job.remaining_seconds(now=1000.5) is None  # under a second: no pace yet
    job.fraction = 0.001
    assert job.remaining_seconds(now=1030.0) is None and job.progress_text(now=1030.0).endswith("(30 s)")
    job.state = "done"
    assert job.remaining_seconds(now=1030.0) is None
    assert [duration(s) for s in (5, 300, 7200)] == ["5 s", "5.0 min", "2.0 h"]


def _chart_rows(chart) -> pd.DataFrame:
    frames = [pa.ipc.open_stream(d.data.data).read_all().to_pandas() for d in chart.proto.datasets]
    return pd.concat(frames, ignore_index=True)


def test_new_experiment_draws_the_curves_while_the_pair_trains(tmp_path, monkeypatch, dashboard):
    dashboard(tmp_path / "runs.duckdb")
    from lossland.config import PRESETS

    cfg = tiny_config(**{"train.max_epochs": 5000, "train.loss_target": 1e-12, "train.seed": 11})
    monkeypatch.setitem(PRESETS, "digits-mlp", cfg)
    at = open_app("views/new_experiment.py")
    at.button(key="FormSubmitter:ne-digits-mlp-form-Run").click().run()
    import ui

    job = ui.jobs().get(cfg.config_hash())
    assert job is not None, [e.value for e in at.error]
    try:
        deadline = time.time() + 30
        while len(job.curve_rows()) < 5 and time.time() < deadline:
            time.sleep(0.1)
        at.run()
        assert not at.exception and job.state == "running"
        seen = len(job.curve_rows())
        live = [c for c in at.get("vega_lite_chart") if "Training so far" in c.proto.spec]
        assert len(live) == 1
        drawn = _chart_rows(live[0])
        epochs = sorted(set(drawn["epoch"]))
        assert set(drawn["role"]) == {"good"} and epochs == list(range(1, len(epochs) + 1))
        assert 5 <= len(epochs) <= seen  # the epochs seen so far, no more
        assert "good epoch" in "\n".join(c.value for c in at.caption)
        assert at.get("progress") and "s" in at.get("progress")[0].proto.text
    finally:
        job.cancel = True
        assert wait_for_job(job, 30).state == "cancelled"


def test_the_live_chart_thins_long_runs_but_keeps_the_first_and_last_epoch():
    from lossland.live_charts import live_curves_chart
    from lossland.pairs import METRICS

    n = 1234
    df = pd.DataFrame({"role": ["good"] * n + ["bad"] * 7, "epoch": [*range(1, n + 1), *range(1, 8)],
                       **{m: np.linspace(0.9, 0.1, n + 7) for m in METRICS}})
    data = [pd.DataFrame(v) for v in live_curves_chart(df, max_epochs=500).to_dict()["datasets"].values()]
    epochs = data[0].groupby("role")["epoch"].agg(["min", "max", "nunique"])
    assert epochs.loc["good"].tolist() == [1, n, 413] and epochs.loc["bad"].tolist() == [1, 7, 4]
    few = [pd.DataFrame(v) for v in live_curves_chart(df[df["epoch"] <= 300]).to_dict()["datasets"].values()]
    assert few[0].groupby("role")["epoch"].nunique().to_dict() == {"bad": 7, "good": 300}  # all kept
