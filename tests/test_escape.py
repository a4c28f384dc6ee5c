"""The escape transition: the bisection brackets p = 0.5 (synthetic oracles with a known transition, a real
tiny pair), replays from stored trials, resumes, and its chart shows the exact intervals and the 50% radius."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import open_app, tiny_config

from lossland import analyses, path_analyses, path_charts
from lossland.cli import main
from lossland.escape import bisect_escape, replay_transition
from lossland.experiments import run_pair
from lossland.specs import EscapeSearchSpec
from lossland.stats import clopper_pearson
from lossland.store import Store

SEARCH = {"r_lo": 0.02, "r_hi": 2.0, "steps": 4, "expand": 2, "factor": 10.0, "scan": 3}


def step(true: float, n: int = 4):
    return lambda r: (n if r >= true else 0, n)


@pytest.mark.parametrize("true", [0.003, 0.021, 0.05, 0.2, 0.7, 1.99, 30.0])
def test_the_bisection_brackets_a_known_transition_radius(true):
    t = bisect_escape(step(true), **SEARCH)
    assert t.bracketed and t.lo < true <= t.hi
    assert math.log(t.hi / t.lo) <= math.log(10) / 2 ** SEARCH["steps"] * 1.01, "a decade halved `steps` times"
    assert t.lo <= t.r50 <= t.hi
    assert len(t.radii) <= SEARCH["scan"] + SEARCH["expand"] + SEARCH["steps"]


def test_a_noisy_monotone_escape_probability_is_bracketed_at_its_counts():
    rng = np.random.default_rng(0)
    true = 0.3  # p(r) = 1 / (1 + (true / r)^4): 0.5 at `true`
    oracle = lambda r: (int(rng.binomial(8, 1 / (1 + (true / r) ** 4))), 8)  # noqa: E731
    t = bisect_escape(oracle, **SEARCH)
    p = {r: k / n for r, k, n in zip(t.radii, t.escaped, t.trials, strict=True)}
    assert t.bracketed and p[t.lo] < 0.5 <= p[t.hi]
    assert 0.1 < t.r50 < 0.9


def test_a_transition_outside_the_reach_of_the_search_is_reported_unbracketed():
    below = bisect_escape(step(1e-6), **SEARCH)
    assert not below.bracketed and math.isnan(below.lo) and below.hi == pytest.approx(0.0002)
    assert below.at_zero == (0, 4), "below the smallest radius the unperturbed control r = 0 is probed"
    assert bisect_escape(lambda r: (3, 3), **SEARCH).at_zero == (3, 3)
    above = bisect_escape(step(1e6), **SEARCH)
    assert not above.bracketed and math.isnan(above.hi) and above.lo == pytest.approx(200.0)
    assert above.at_zero is None and bisect_escape(step(0.7), **SEARCH).at_zero is None
    assert math.isnan(above.r50) and math.isnan(below.r50)


def test_stored_counts_replay_the_search_exactly():
    t = bisect_escape(step(0.7, 3), **SEARCH)
    rows = pd.DataFrame([{"radius": r, "escaped": i < k} for r, k, n in zip(t.radii, t.escaped, t.trials,
                                                                               strict=True) for i in range(n)])
    again = replay_transition(rows, **SEARCH)
    assert (again.radii, again.lo, again.hi) == (t.radii, t.lo, t.hi)
    with pytest.raises(KeyError):
        replay_transition(rows[rows["radius"] != t.radii[-1]], **SEARCH)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("escape") / "runs.duckdb")
    pair_id = run_pair(tiny_config(**{"train.seed": 3}), store).pair_id
    spec = EscapeSearchSpec(n_trials=2, scan=2, steps=1, expand=1, retrain_epochs=30)
    return store, pair_id, spec, analyses.compute(store, pair_id, spec)


def test_on_a_real_pair_each_radius_is_stored_per_trial_and_brackets_its_crossing(searched):
    store, pair_id, spec, a = searched
    assert analyses.get(store, pair_id, spec).from_store
    counts = a.frame.groupby(["role", "radius"])["trial"].agg(list)
    assert all(sorted(t) == list(range(spec.n_trials)) for t in counts), "every radius: trials 0 .. n_trials − 1"
    found = path_analyses.escape_transitions(a.frame, spec).set_index("role")
    assert set(found.index) == {"good", "bad"}
    for role, row in found.iterrows():
        p = a.frame[a.frame["role"] == role].groupby("radius")["escaped"].mean()
        assert len(p) <= spec.probes()
        if row["bracketed"]:
            assert p[row["lo"]] < 0.5 <= p[row["hi"]] and 0.0 not in p.index
        elif math.isfinite(row["hi"]):
            assert p[p.index > 0].index.min() == row["hi"] and p[row["hi"]] >= 0.5
            assert row["zero_n"] == spec.n_trials and 0.0 in p.index, "the unperturbed control was run"
        else:
            assert (p < 0.5).all() and row["zero_n"] == 0


def test_a_stopped_search_resumes_with_the_radii_it_has(searched):
    store, pair_id, spec, a = searched
    ck = analyses.checkpoints(store, pair_id)
    first = a.frame[(a.frame["role"] == "good") & (a.frame["radius"] == spec.r_lo)]
    have = a.frame[a.frame["radius"] != a.frame.groupby("role")["radius"].transform("max")]
    new: list[pd.DataFrame] = []
    found = path_analyses.escape_search(ck, pair_id, spec, have, new.append, lambda f, m: None)
    retrained = {(str(r["run_id"].iloc[0]), float(x)) for r in new for x in r["radius"].unique()}
    assert (f"{pair_id}-good", spec.r_lo) not in retrained and len(first) == spec.n_trials
    assert len(retrained) == 2, "only each role's largest radius, the one left out, is retrained"
    replayed = path_analyses.escape_transitions(a.frame, spec).set_index("role")
    assert all(found[r].radii == replay_transition(a.frame[a.frame["role"] == r],
                                                   **path_analyses.search_settings(spec)).radii for r in found)
    assert set(replayed.index) == set(found)


def test_the_escape_chart_draws_exact_intervals_and_marks_each_50_percent_radius(searched):
    _, _, spec, a = searched
    found = path_analyses.escape_transitions(a.frame, spec)
    spec_dict = path_charts.escape_transition_chart(a.frame, found).to_dict()
    data = {k: pd.DataFrame(v) for k, v in spec_dict["datasets"].items()}
    points = next(d for d in data.values() if {"k", "n", "lo", "hi"} <= set(d.columns))
    for r in points.itertuples():
        assert (r.lo, r.hi) == pytest.approx(clopper_pearson(int(r.k), int(r.n)))
    marks = next(d for d in data.values() if "label" in d.columns)
    assert set(marks["role"]) == set(found["role"]) and marks["label"].str.contains("r₅₀").all()
    assert spec_dict["title"]["subtitle"] == list(marks["label"]), "each role's 50% radius, written under the title"
    bracketed = found[found["bracketed"]]
    assert np.allclose(marks.set_index("role").loc[bracketed["role"], "at"], bracketed["r50"])


def test_the_basins_page_draws_the_stored_search_with_its_50_percent_radii(searched, dashboard):
    store, pair_id, spec, a = searched
    dashboard(store.path)
    at = open_app("views/basins.py", {"pair": pair_id})
    assert at.selectbox(key="basins-escape-search-stored").value == spec, "the stored search, shown at once"
    charts = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    chart = next(c for c in charts if c.get("title", {}).get("text") == "Where escape becomes likely")
    marks = [(lay["mark"]["type"], lay["encoding"].get("x", {}).get("field")) for lay in chart["layer"]]
    assert ("rule", "at") in marks and any("r₅₀" in line for line in chart["title"]["subtitle"])


def test_the_cli_prints_each_minimums_50_percent_radius_from_the_store(searched, capsys):
    store, pair_id, spec, a = searched
    args = ["escape", pair_id, "--kind", "escape_search", "--stored-only", "--store", str(store.path), "--quiet"]
    for name in ("n_trials", "scan", "steps", "expand", "retrain_epochs"):
        args += [f"--{name.replace('_', '-')}", str(getattr(spec, name))]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"escape transition of pair {pair_id} (from the store" in out
    found = path_analyses.escape_transitions(a.frame, spec)
    assert all(role in out for role in found["role"]) and "r50" in out and "zero_n" in out
