"""Analyses of stored pairs: typed specs, computed once, read back from the store, resumable, on every page."""

from __future__ import annotations

import time

import pandas as pd
import pytest
from conftest import open_app, tiny_config

from lossland import analyses, basins
from lossland.config import ConfigError
from lossland.experiments import run_pair
from lossland.specs import (
    SPECS,
    BoundSpec,
    EscapeSpec,
    InterpolationSpec,
    RadiusSpec,
    RandomInitSpec,
    SharpnessSpec,
    SliceSpec,
    SurfaceSpec,
    TwoLayerSpec,
    from_stored,
)
from lossland.store import Store, StoreError

# --- the specs -----------------------------------------------------------------------------------

# Analysis ids of pair "0123456789abcdef" as the code before the specs computed them (analyses.analysis_id
# over the settings dicts it stored): a store written then must be found by the specs now.
PAIR = "0123456789abcdef"
IDS_BEFORE_THE_SPECS = {
    InterpolationSpec(): "bdc839f0acda1205",
    SliceSpec(): "f3f214fa89841e14",
    SliceSpec(directions="eigen", seed=3, n_points=9, span=0.5): "57cdae8ea11b5b54",
    SurfaceSpec(role="bad"): "6475e19419599e33",
    RandomInitSpec(): "5f715ed96377ccb2",
    RadiusSpec(): "50ff98eff3cb3808",
    BoundSpec(): "216f53ff542a051f",
}


@pytest.mark.parametrize("spec", list(IDS_BEFORE_THE_SPECS), ids=lambda s: s.kind)
def test_spec_ids_equal_the_ids_of_existing_stores(spec):
    assert spec.analysis_id(PAIR) == IDS_BEFORE_THE_SPECS[spec]


@pytest.mark.parametrize("spec", list(IDS_BEFORE_THE_SPECS), ids=lambda s: s.kind)
def test_a_spec_round_trips_through_its_stored_settings(spec):
    again = from_stored(spec.kind, spec.to_json())
    assert again == spec and again.analysis_id(PAIR) == spec.analysis_id(PAIR)


def test_escape_trials_of_the_old_one_sided_rule_are_not_found_by_the_symmetric_spec():
    assert EscapeSpec().analysis_id(PAIR) != "b415fb921486052f"  # the id before `margin` (bad: upwards only)
    assert EscapeSpec().margin == 0.05 and EscapeSpec(margin=0.1).analysis_id(PAIR) != EscapeSpec().analysis_id(PAIR)
    for spec in (EscapeSpec(), SharpnessSpec(), TwoLayerSpec(label_seed=3)):
        assert from_stored(spec.kind, spec.to_json()) == spec


def test_one_setting_has_one_id_whatever_its_spelling():
    assert SurfaceSpec(span=1) == SurfaceSpec() and SurfaceSpec(span=1).to_json() == SurfaceSpec().to_json()
    assert EscapeSpec(radii=[0.05, 0.1, 0.2, 0.4]).analysis_id(PAIR) == EscapeSpec().analysis_id(PAIR)
    assert SliceSpec(seed=1).analysis_id(PAIR) != SliceSpec().analysis_id(PAIR)
    assert SliceSpec().analysis_id(PAIR) != SliceSpec().analysis_id("fedcba9876543210")


@pytest.mark.parametrize("make, message", [
    (lambda: InterpolationSpec(n_points=1), r"interpolation.n_points = 1 is not allowed: an integer in \[2, 100000\]"),
    (lambda: InterpolationSpec(alpha_min=1.0, alpha_max=0.0), r"interpolation.alpha_max = 0.0 .*than alpha_min"),
    (lambda: SliceSpec(directions="sideways"), r"slice1d.directions = 'sideways' is not allowed: one of random, eigen"),
    (lambda: SliceSpec(span=0.0), r"slice1d.span = 0.0 is not allowed: a finite number in \(0.0, 1000.0\]"),
    (lambda: SliceSpec(seed=-1), r"slice1d.seed = -1 is not allowed"),
    (lambda: SurfaceSpec(role="ugly"), r"surface2d.role = 'ugly' is not allowed: one of good, bad"),
    (lambda: SurfaceSpec(n=True), r"surface2d.n = True is not allowed: an integer"),
    (lambda: EscapeSpec(n_trials=0), r"escape.n_trials = 0 is not allowed: an integer in \[1, 1000000\]"),
    (lambda: EscapeSpec(radii=()), r"escape.radii = \(\) is not allowed: a list of 1 to 64 numbers"),
    (lambda: EscapeSpec(radii=(0.1, float("nan"))), r"escape.radii = .* is not allowed"),
    (lambda: EscapeSpec(margin=1.5), r"escape.margin = 1.5 is not allowed: a finite number in \[0.0, 1.0\]"),
    (lambda: SharpnessSpec(tol=0.0), r"adaptive_sharpness.tol = 0.0 is not allowed"),
    (lambda: TwoLayerSpec(label_seed=-1), r"two_layer.label_seed = -1 is not allowed"),
    (lambda: RandomInitSpec(n_seeds="32"), r"random_init.n_seeds = '32' is not allowed: an integer"),
    (lambda: RadiusSpec(threshold_factor=1.0), r"radius.threshold_factor = 1.0 is not allowed: .*\(1.0, 1000000.0\]"),
    (lambda: from_stored("escape", '{"n_trials": 2, "zzz": 1}'),
     r"unknown field\(s\) escape.zzz; allowed: margin, n_trials"),
    (lambda: from_stored("escape", "{not json"), r"escape settings are not valid JSON"),
    (lambda: from_stored("voodoo", "{}"), r"analysis kind 'voodoo' is not allowed: one of interpolation"),
])
def test_specs_reject_bad_values_naming_the_field(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_every_kind_has_a_spec_with_its_cost():
    assert set(SPECS) >= {"interpolation", "slice1d", "surface2d", "escape", "random_init", "radius", "bound",
                          "adaptive_sharpness", "two_layer"}
    assert SurfaceSpec().grid_points() == 41 * 41 and SliceSpec().grid_points() == 2 * 41
    assert EscapeSpec().trials() == 2 * 4 * 8 and RandomInitSpec().trials() == 32 and RadiusSpec().trials() == 16


# --- computing and reading back -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("analyses") / "runs.duckdb")
    pair_id = run_pair(tiny_config(**{"train.seed": 21}), store).pair_id
    return store, pair_id


def test_interpolation_is_computed_once_then_read_from_the_store(pair):
    store, pair_id = pair
    assert analyses.get(store, pair_id, InterpolationSpec()) is None
    assert analyses.stored(store, pair_id, "interpolation") == []
    first = analyses.compute(store, pair_id, InterpolationSpec())
    assert not first.from_store and len(first.frame) == 41
    ends = first.frame.set_index("alpha")
    runs = store.pair(pair_id).runs.set_index("role")
    assert ends.loc[0.0, "test_acc"] == pytest.approx(runs.loc["good", "test_acc"], abs=1e-6)
    assert ends.loc[1.0, "test_acc"] == pytest.approx(runs.loc["bad", "test_acc"], abs=1e-6)
    again = analyses.compute(store, pair_id, InterpolationSpec())
    assert again.from_store and again.analysis_id == first.analysis_id
    assert again.frame["clean_loss"].tolist() == pytest.approx(first.frame["clean_loss"].tolist())
    assert analyses.get(store, pair_id, InterpolationSpec()).frame.equals(again.frame)
    assert analyses.stored(store, pair_id, "interpolation") == [InterpolationSpec()]


def test_stored_lists_the_specs_of_a_kind_most_recent_first(pair):
    store, pair_id = pair
    specs = [SliceSpec(seed=5, n_points=5), SliceSpec(seed=6, n_points=5, span=0.5)]
    for spec in specs:
        analyses.compute(store, pair_id, spec)
    found = analyses.stored(store, pair_id, "slice1d")
    assert found[:2] == specs[::-1]
    assert all(analyses.get(store, pair_id, s) is not None for s in found)
    assert analyses.stored(store, "0000000000000000", "slice1d") == []


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
    spec = SurfaceSpec(role="bad", n=15, span=0.5)
    with pytest.raises(KeyboardInterrupt):
        analyses.compute(store, pair_id, spec)
    aid = spec.analysis_id(pair_id)
    assert analyses.get(store, pair_id, spec) is None and analyses.stored(store, pair_id, "surface2d") == []
    assert store.analysis(aid)["status"] == "running"
    kept = store.landscape(aid)
    assert 0 < len(kept) < 15 * 15
    monkeypatch.setattr(store, "append_landscape", real)
    evaluated = []
    monkeypatch.setattr(store, "append_landscape", lambda a, rows: (evaluated.append(len(rows)), real(a, rows)))
    done = analyses.compute(store, pair_id, spec)
    assert sum(evaluated) == 15 * 15 - len(kept), "only the missing points are evaluated"
    assert store.analysis(aid)["status"] == "done" and len(done.frame) == 225
    assert sorted(done.frame["point"]) == list(range(225))
    centre = done.frame[(done.frame["alpha"].abs() < 1e-9) & (done.frame["beta"].abs() < 1e-9)]
    assert centre["clean_loss"].iloc[0] == pytest.approx(store.pair(pair_id).run("bad")["clean_loss"], rel=1e-4)


def test_the_bad_minimum_has_the_smaller_empirical_radius(pair):
    store, pair_id = pair
    r = analyses.compute(store, pair_id, RadiusSpec(n_directions=4))
    means = r.frame.groupby("role")["radius"].mean()
    assert means["good"] > means["bad"] > 0
    est = store.estimates([f"{pair_id}-good", f"{pair_id}-bad"], ["empirical_radius"])
    assert len(est) == 2 and est.set_index("run_id")["value"].min() == pytest.approx(means["bad"])


def test_escape_and_random_init_land_in_basin_trials(pair):
    store, pair_id = pair
    e = analyses.compute(store, pair_id, EscapeSpec(radii=(0.0, 0.5), n_trials=3, retrain_epochs=100))
    assert len(e.frame) == 2 * 2 * 3 and set(e.frame["role"]) == {"good", "bad"}
    assert not e.frame[e.frame["radius"] == 0.0]["escaped"].any(), "no perturbation, no escape"
    ri = analyses.compute(store, pair_id, RandomInitSpec(n_seeds=4))
    assert len(ri.frame) == 4 and (ri.frame["top_eigenvalue"] > 0).all()
    assert analyses.compute(store, pair_id, RandomInitSpec(n_seeds=4)).from_store


def test_adaptive_sharpness_is_stored_per_minimum_and_read_back(pair):
    store, pair_id = pair
    first = analyses.compute(store, pair_id, SharpnessSpec())
    assert not first.from_store and set(first.frame["role"]) == {"good", "bad"}
    assert (first.frame["adaptive"] > 0).all() and (first.frame["converged"] == 1.0).all()
    again = analyses.compute(store, pair_id, SharpnessSpec())
    assert again.from_store and again.frame["adaptive"].tolist() == first.frame["adaptive"].tolist()


def test_the_bound_is_refused_for_a_non_two_layer_model(pair):
    store, pair_id = pair
    with pytest.raises(ValueError, match="TwoLayer or MLP|two_layer"):
        ck = analyses.checkpoints(store, pair_id)["good"]
        x, y = ck.clean_train()
        basins.two_layer_bound(ck.model.net, x, y, "cross_entropy")


@pytest.fixture(scope="module")
def two_layer_pair(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("two_layer") / "runs.duckdb")
    cfg = tiny_config(**{"model.name": "two_layer", "model.widths": (8,), "train.loss_target": 0.05})
    return store, run_pair(cfg, store).pair_id


def test_bound_holds_on_a_two_layer_pair(two_layer_pair):
    store, pair_id = two_layer_pair
    assert analyses.get(store, pair_id, BoundSpec()) is None
    b = analyses.compute(store, pair_id, BoundSpec()).frame
    assert set(b["role"]) == {"good", "bad"} and b["holds"].all()
    assert (b["complexity"] <= b["rhs"]).all()
    stored = analyses.get(store, pair_id, BoundSpec())  # stored
    assert stored.from_store and stored.frame.equals(b)


def test_two_layer_measurement_holds_both_minima_and_their_untrained_network_with_true_and_random_labels(
        two_layer_pair):
    store, pair_id = two_layer_pair
    m = analyses.compute(store, pair_id, TwoLayerSpec()).frame.set_index("role")
    assert {"complexity", "complexity_heldout", "hessian_frobenius", "top_eigenvalue"} <= set(m.columns)
    assert (m[["complexity", "hessian_frobenius"]] > 0).all().all()
    good = m.loc["good"]
    assert good["untrained_complexity"] == pytest.approx(good["untrained_random_complexity"]), \
        "the complexity of a network does not depend on the labels"
    assert good["untrained_hessian_frobenius"] != good["untrained_random_hessian_frobenius"]
    assert pd.isna(m.loc["bad"].get("untrained_complexity")), "the untrained network is stored once, on the good run"
    assert analyses.compute(store, pair_id, TwoLayerSpec()).from_store


def test_a_missing_checkpoint_is_a_clear_error(tmp_path):
    store = Store(tmp_path / "runs.duckdb")
    pair_id = run_pair(tiny_config(**{"train.seed": 4}), store).pair_id
    store.checkpoint_path(f"{pair_id}-bad").unlink()
    with pytest.raises(StoreError, match="checkpoint of run .*-bad is missing"):
        analyses.compute(store, pair_id, InterpolationSpec())


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
    analyses.compute(store, pair_id, InterpolationSpec())
    analyses.compute(store, pair_id, SliceSpec(seed=7, n_points=5))
    at = open_app("views/landscape.py", {"pair": pair_id})
    assert at.selectbox(key="landscape-pair").value == pair_id  # deep link
    picker = at.selectbox(key="landscape-slice-stored")
    assert picker.value == SliceSpec(seed=7, n_points=5), "the most recent stored slices, at once"
    picker.select_index(len(picker.options) - 1).run()  # other settings…
    assert at.number_input(key="landscape-slice-n_points").value == SliceSpec().n_points  # the spec's default
    at.number_input(key="landscape-slice-seed").set_value(9).run()
    at.button(key=f"btn-slice:{pair_id}").click().run()
    _wait_for_jobs()
    at.run()
    assert not at.exception
    assert analyses.stored(store, pair_id, "slice1d")[0] == SliceSpec(seed=9)
    assert f"btn-slice:{pair_id}" not in {b.key for b in at.button}, "stored now: shown, not offered"
    specs = [c.proto.spec for c in at.get("vega_lite_chart")]
    assert sum('"field": "alpha"' in s or '"field":"alpha"' in s for s in specs) >= 2, "interpolation and slices"


def test_basins_page_shows_random_init_and_radius_against_the_pair(page_env):
    store, pair_id = page_env
    analyses.compute(store, pair_id, RandomInitSpec())  # the page's defaults (32 seeds)
    analyses.compute(store, pair_id, RadiusSpec())
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
