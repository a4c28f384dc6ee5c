"""Every dashboard page under Streamlit's AppTest, against a store filled by a tiny real run."""

from __future__ import annotations

import pytest
from conftest import open_app, page_texts, tiny_config, wait_for_job


@pytest.fixture(autouse=True)
def _clean_caches(dashboard):
    yield


def test_overview_shows_the_latest_pair_numbers_and_spectra(store_env):
    store, ids = store_env
    at = open_app()
    latest = store.latest_pair_id()
    assert at.selectbox(key="overview-pair").value == latest
    runs = store.pair(latest).runs.set_index("role")
    table = at.dataframe[0].value
    assert table.loc["test accuracy", "good"] == f"{runs.loc['good', 'test_acc']:.1%}"
    assert table.loc["test accuracy", "bad"] == f"{runs.loc['bad', 'test_acc']:.1%}"
    assert table.loc["top eigenvalue λ₁", "bad"] == f"{runs.loc['bad', 'top_eigenvalue']:.4g}"
    assert "Both minima fit the clean training set" in page_texts(at)
    specs = [c.proto.spec for c in at.get("vega_lite_chart")]
    assert any('"symlog"' in s for s in specs), "the spectrum chart is drawn on a symlog scale"
    sidebar = "\n".join(m.value for m in at.sidebar.get("metric")) if hasattr(at.sidebar, "get") else ""
    assert at.sidebar.get("metric")[0].value == str(store.count_runs()), sidebar


def test_deep_link_selects_the_pair_in_the_url(store_env):
    store, ids = store_env
    older = [i for i in ids if i != store.latest_pair_id()][0]
    at = open_app(query={"pair": older})
    assert at.selectbox(key="overview-pair").value == older
    assert at.query_params["pair"] == [older] or at.query_params["pair"] == older


def test_unknown_deep_link_warns_and_falls_back(store_env):
    store, _ = store_env
    at = open_app(query={"pair": "doesnotexist"})
    assert "not in this store" in page_texts(at)
    assert at.selectbox(key="overview-pair").value == store.latest_pair_id()


def test_spectrum_page_resmooths_without_new_hvps(store_env):
    store, ids = store_env
    at = open_app("views/spectrum.py", {"pair": ids[0]})
    charts_before = [c.proto.spec for c in at.get("vega_lite_chart")]
    assert len(charts_before) >= 4  # eigenvalues, density, estimates, log-volume
    assert any('"type": "log"' in s or '"type":"log"' in s for s in charts_before)
    at.slider(key="spectrum-sigma").set_value(0.01).run()
    assert not at.exception
    assert len(at.get("vega_lite_chart")) == len(charts_before)
    assert "Exact values" in page_texts(at)


def test_new_experiment_shows_validation_errors_beside_the_form(store_env):
    store, _ = store_env
    at = open_app("views/new_experiment.py")
    at.number_input(key="ne-digits-mlp-lr").set_value(-0.5)
    at.button(key="FormSubmitter:ne-digits-mlp-form-Run").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert errors and "train.lr" in errors[0] and "-0.5" in errors[0]
    at.text_input(key="ne-digits-mlp-w").set_value("32, -4")
    at.number_input(key="ne-digits-mlp-lr").set_value(0.01)
    at.button(key="FormSubmitter:ne-digits-mlp-form-Run").click().run()
    assert "model.widths" in at.error[0].value


def test_new_experiment_answers_a_stored_config_from_the_store(store_env, monkeypatch):
    store, ids = store_env
    from lossland.config import PRESETS

    cfg = tiny_config(**{"attack.n_attack": 100})
    assert cfg.config_hash() in ids
    monkeypatch.setitem(PRESETS, "digits-mlp", cfg)  # the form starts from this config
    at = open_app("views/new_experiment.py")
    at.button(key="FormSubmitter:ne-digits-mlp-form-Run").click().run()
    assert "came from the store" in page_texts(at)


def test_new_experiment_runs_in_the_background_and_lands(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSLAND_STORE", str(tmp_path / "runs.duckdb"))
    from lossland.config import PRESETS

    cfg = tiny_config(**{"train.seed": 7})
    monkeypatch.setitem(PRESETS, "digits-mlp", cfg)
    at = open_app("views/new_experiment.py")
    at.button(key="FormSubmitter:ne-digits-mlp-form-Run").click().run()
    assert not at.exception
    import ui

    job = ui.jobs().get(cfg.config_hash())
    assert job is not None
    assert wait_for_job(job).state == "done", job.error
    at.run()
    assert f"Pair {cfg.config_hash()} is stored" in page_texts(at)


def test_empty_store_offers_the_default_run_with_progress_and_cancel(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSLAND_STORE", str(tmp_path / "empty.duckdb"))
    at = open_app()
    assert "The store is empty" in page_texts(at)
    at.button(key="overview-run-default").click().run()
    assert not at.exception
    import ui
    from lossland.config import preset
    from lossland.store import Store

    job = ui.jobs().get(preset("digits-mlp").config_hash())
    assert job is not None and job.state in ("queued", "running", "done")
    assert at.get("progress") or job.state == "done"
    job.cancel = True
    assert wait_for_job(job, 30).state == "cancelled"
    assert Store(tmp_path / "empty.duckdb").count_runs() == 0  # a cancelled run leaves nothing


def test_runs_page_filters_compares_and_queries(store_env):
    store, ids = store_env
    at = open_app("views/runs.py")
    table = at.dataframe[0].value
    assert len(table) == store.count_runs()
    at.multiselect(key="runs-role").set_value(["bad"]).run()
    assert set(at.dataframe[0].value["role"]) == {"bad"}
    chosen = [f"{ids[0]}-good", f"{ids[1]}-bad"]
    at.multiselect(key="runs-compare").set_value(chosen).run()
    assert not at.exception
    assert at.query_params["runs"] in (",".join(chosen), [",".join(chosen)])
    assert len(at.get("vega_lite_chart")) >= 2  # curves and spectra overlaid
    at.text_area(key="runs-sql-mean test accuracy by role").set_value("DELETE FROM runs")
    at.button(key="runs-sql-run").click().run()
    assert at.error, "a write in the SQL console is refused"
    assert store.count_runs() == 4
    at.text_area(key="runs-sql-mean test accuracy by role").set_value(
        "SELECT role, count(*) AS n FROM runs GROUP BY role ORDER BY role")
    at.button(key="runs-sql-run").click().run()
    result = at.dataframe[-1].value
    assert list(result["role"]) == ["bad", "good"] and list(result["n"]) == [2, 2]


def test_read_only_mode_hides_launching_and_upload(store_env, monkeypatch):
    store, _ = store_env
    monkeypatch.setenv("LOSSLAND_READONLY", "1")
    at = open_app()
    assert "Read-only" in "\n".join(i.value for i in at.sidebar.info)
    at.switch_page("views/runs.py")
    at.run()
    assert not at.exception
    assert not at.get("file_uploader"), "no import in read-only mode"
    assert "importing is switched off" in page_texts(at)
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page("views/new_experiment.py")  # not in the navigation at all when read-only


def test_read_only_empty_store_offers_no_run_button(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSLAND_STORE", str(tmp_path / "empty.duckdb"))
    monkeypatch.setenv("LOSSLAND_READONLY", "1")
    at = open_app()
    assert not [b for b in at.button if b.key == "overview-run-default"]


def test_overview_shows_what_the_attack_set_is_as_a_strip_of_images(store_env):
    store, _ = store_env
    at = open_app()
    assert "What the attack set is" in [h.value for h in at.subheader]
    clean, attack = at.image
    from lossland.config import ExperimentConfig
    from lossland.data import attack_samples

    cfg = ExperimentConfig.from_json(store.pair(store.latest_pair_id()).runs.iloc[0]["config_json"])
    s = attack_samples(cfg, n=5)
    assert clean.captions == [str(y) for y in s.clean_labels]
    assert attack.captions == [f"{g} (is {t})" for g, t in zip(s.attack_given, s.attack_true, strict=True)]
    assert len(clean.value) == len(attack.value) == 5
    assert "random labels" in page_texts(at)


def test_theory_page_computes_figure_1_in_the_background_and_shows_it(tmp_path, dashboard):
    from store_writer import make_pair

    import ui
    from lossland.specs import CURVE_FIT, CurveFitSpec
    from lossland.store import Store

    store = Store(tmp_path / "runs.duckdb")
    pair, spectra = make_pair(3)
    store.save_pair(pair, spectra)
    dashboard(store.path)
    at = open_app("views/theory.py", {"pair": pair.config.config_hash()})
    assert "Figure 1: a network and polynomials through the same points" in [h.value for h in at.subheader]
    at.button(key="theory-curve-fit").click().run()
    assert not at.exception
    job = ui.jobs().get(f"curve-fit:{CurveFitSpec().analysis_id(CURVE_FIT)}")
    assert job is not None and wait_for_job(job).state == "done", job.error
    at.run()
    assert not [b for b in at.button if b.key == "theory-curve-fit"], "stored: no button"
    assert "At n = 14: the network's training error" in page_texts(at)
    assert len(at.get("vega_lite_chart")) >= 1
    at.select_slider(key="theory-fit-n").set_value(8).run()
    assert "At n = 8:" in page_texts(at) and not at.exception
