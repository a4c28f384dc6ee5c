"""Analyses of stored pairs: computed once, read back from the store, resumable, and on every page."""

from __future__ import annotations

import time

import pytest
from conftest import open_app, tiny_config

from lossland import analyses
from lossland.experiments import run_pair
from lossland.store import Store, StoreError


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("analyses") / "runs.duckdb")
    pair_id = run_pair(tiny_config(**{"train.seed": 21}), store).pair_id
    return store, pair_id


def test_interpolation_is_computed_once_then_read_from_the_store(pair):
    store, pair_id = pair
    assert analyses.interpolation(store, pair_id, compute=False) is None
    first = analyses.interpolation(store, pair_id)
    assert not first.from_store and len(first.frame) == 41
    ends = first.frame.set_index("alpha")
    runs = store.pair(pair_id).runs.set_index("role")
    assert ends.loc[0.0, "test_acc"] == pytest.approx(runs.loc["good", "test_acc"], abs=1e-6)
    assert ends.loc[1.0, "test_acc"] == pytest.approx(runs.loc["bad", "test_acc"], abs=1e-6)
    again = analyses.interpolation(store, pair_id)
    assert again.from_store and again.analysis_id == first.analysis_id
    assert again.frame["clean_loss"].tolist() == pytest.approx(first.frame["clean_loss"].tolist())


def test_a_stopped_surface_resumes_from_the_stored_points(pair, monkeypatch):
    store, pair_id = pair
    calls = {"n": 0}
    real = store.append_landscape

    def stop_after_two(aid, rows):
        real(aid, rows)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("stopped by the user")

    monkeypatch.setattr(store, "append_landscape", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        analyses.surface(store, pair_id, "bad", n=15, span=0.5)
    aid = analyses.analysis_id("surface2d", pair_id, {"role": "bad", "seed": 0, "n": 15, "span": 0.5})
    assert store.analysis(aid)["status"] == "running"
    kept = store.landscape(aid)
    assert 0 < len(kept) < 15 * 15
    monkeypatch.setattr(store, "append_landscape", real)
    evaluated = []
    monkeypatch.setattr(store, "append_landscape", lambda a, rows: (evaluated.append(len(rows)), real(a, rows)))
    done = analyses.surface(store, pair_id, "bad", n=15, span=0.5)
    assert sum(evaluated) == 15 * 15 - len(kept), "only the missing points are evaluated"
    assert store.analysis(aid)["status"] == "done" and len(done.frame) == 225
    assert sorted(done.frame["point"]) == list(range(225))
    centre = done.frame[(done.frame["alpha"].abs() < 1e-9) & (done.frame["beta"].abs() < 1e-9)]
    assert centre["clean_loss"].iloc[0] == pytest.approx(store.pair(pair_id).run("bad")["clean_loss"], rel=1e-4)


def test_the_bad_minimum_has_the_smaller_empirical_radius(pair):
    store, pair_id = pair
    r = analyses.radius(store, pair_id, n_directions=4)
    means = r.frame.groupby("role")["radius"].mean()
    assert means["good"] > means["bad"] > 0
    est = store.estimates([f"{pair_id}-good", f"{pair_id}-bad"], ["empirical_radius"])
    assert len(est) == 2 and est.set_index("run_id")["value"].min() == pytest.approx(means["bad"])


def test_escape_and_random_init_land_in_basin_trials(pair):
    store, pair_id = pair
    e = analyses.escape(store, pair_id, radii=(0.0, 0.5), n_trials=3, retrain_epochs=100)
    assert len(e.frame) == 2 * 2 * 3 and set(e.frame["role"]) == {"good", "bad"}
    assert not e.frame[e.frame["radius"] == 0.0]["escaped"].any(), "no perturbation, no escape"
    ri = analyses.random_init(store, pair_id, n_seeds=4)
    assert len(ri.frame) == 4 and (ri.frame["top_eigenvalue"] > 0).all()
    assert analyses.random_init(store, pair_id, n_seeds=4).from_store


def test_the_bound_is_refused_for_a_non_two_layer_model(pair):
    store, pair_id = pair
    with pytest.raises(ValueError, match="TwoLayer or MLP|two_layer"):
        from lossland import basins

        ck = analyses.checkpoints(store, pair_id)["good"]
        x, y = ck.clean_train()
        basins.two_layer_bound(ck.model.net, x, y, "cross_entropy")


def test_bound_holds_on_a_two_layer_pair(tmp_path):
    store = Store(tmp_path / "runs.duckdb")
    cfg = tiny_config(**{"model.name": "two_layer", "model.widths": (8,), "train.loss_target": 0.05})
    pair_id = run_pair(cfg, store).pair_id
    b = analyses.bound(store, pair_id)
    assert set(b["role"]) == {"good", "bad"} and b["holds"].all()
    assert (b["complexity"] <= b["rhs"]).all()
    assert analyses.bound(store, pair_id, compute=False) is not None  # stored


def test_a_missing_checkpoint_is_a_clear_error(tmp_path):
    store = Store(tmp_path / "runs.duckdb")
    pair_id = run_pair(tiny_config(**{"train.seed": 4}), store).pair_id
    store.checkpoint_path(f"{pair_id}-bad").unlink()
    with pytest.raises(StoreError, match="checkpoint of run .*-bad is missing"):
        analyses.interpolation(store, pair_id)


# --- the three pages -------------------------------------------------------------------------------

@pytest.fixture
def page_env(pair, dashboard):
    store, pair_id = pair
    dashboard(store.path)
    return store, pair_id


def _wait_for_jobs(timeout: float = 120) -> None:
    import ui

    deadline = time.time() + timeout
    while any(j.state in ("queued", "running") for j in ui.jobs().jobs.values()) and time.time() < deadline:
        time.sleep(0.3)


def test_landscape_page_computes_on_click_and_shows_the_stored_result(page_env):
    store, pair_id = page_env
    at = open_app("views/landscape.py", {"pair": pair_id})
    assert at.selectbox(key="landscape-pair").value == pair_id  # deep link
    buttons = [b for b in at.button if b.label.startswith("Compute")]
    for b in buttons:
        if "surface" not in b.label:
            b.click().run()
            break
    _wait_for_jobs()
    at.run()
    assert not at.exception
    specs = [c.proto.spec for c in at.get("vega_lite_chart")]
    assert sum('"field": "alpha"' in s or '"field":"alpha"' in s for s in specs) >= 2, "interpolation and slices"


def test_basins_page_shows_random_init_and_radius_against_the_pair(page_env):
    store, pair_id = page_env
    analyses.random_init(store, pair_id)  # the page's defaults (32 seeds)
    analyses.radius(store, pair_id)
    at = open_app("views/basins.py", {"pair": pair_id})
    text = "\n".join(m.value for m in at.markdown)
    assert "random inits" in text and "the bad minimum's" in text
    assert len(at.get("vega_lite_chart")) >= 4


def test_theory_page_explains_the_bound_and_counts_sweep_points(page_env):
    store, pair_id = page_env
    at = open_app("views/theory.py", {"pair": pair_id})
    text = "\n".join(m.value for m in at.markdown) + "\n".join(i.value for i in at.info)
    assert "√m ‖W‖₂² ‖G‖_F" in text
    assert "two_layer" in text  # this pair is an mlp: the page says the bound is for two_layer models
    assert any("sweep points are stored" in m.value for m in at.markdown)
    assert [b for b in at.button if b.key == "theory-sweep"], "the sweep can be launched"


def test_read_only_pages_offer_no_compute_buttons(page_env, monkeypatch):
    store, pair_id = page_env
    monkeypatch.setenv("LOSSLAND_READONLY", "1")
    for page in ("views/landscape.py", "views/basins.py", "views/theory.py"):
        at = open_app(page, {"pair": pair_id})
        assert not [b for b in at.button if b.label.startswith("Compute") or b.key == "theory-sweep"], page
