"""`reproduce` end to end on a tiny plan: every claim comes from stored results, a second run computes
nothing, the report folder is complete (or absent), and the Reproduce page shows it."""

import json
import shutil

import duckdb
import pytest
from conftest import open_app, page_texts, tiny_config, wait_for_job

from lossland import claims, report
from lossland.cli import main
from lossland.config import ConfigError, preset
from lossland.reproduce import (
    Plan,
    _analysis,
    collect,
    plan_for,
    reports_dir,
    reproduce,
    run,
    slice_specs,
    surface_specs,
)
from lossland.specs import BoundSpec, EscapeSpec, InterpolationSpec, RandomInitSpec, SliceSpec, SurfaceSpec
from lossland.store import Store

PNG = b"\x89PNG\r\n\x1a\n"


def tiny_plan(**changes) -> Plan:
    two_layer = preset("teacher-2layer").with_changes(**{
        "data.n_train": 100, "attack.n_attack": 100, "model.widths": (8,), "train.loss_target": 1e-2,
        "spectrum.k": 3, "spectrum.slq_vectors": 1, "spectrum.slq_steps": 10, "spectrum.trace_samples": 6})
    settings = dict(seeds=2, attack_factors=(0.0, 1.0), slices=slice_specs(1, n_points=9), surfaces=surface_specs(n=5),
                    escape=EscapeSpec(radii=(0.1,), n_trials=2, retrain_epochs=50),
                    random_init=RandomInitSpec(n_seeds=3), two_layer=two_layer, two_layer_factors=(0.0, 1.0))
    return Plan("custom", (("digits", tiny_config()),), **(settings | changes))


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("repro") / "runs.duckdb")
    plan = tiny_plan()
    messages = []
    rep = reproduce(plan, store, lambda f, m: messages.append((f, m)))
    folder = report.write_report(rep, reports_dir(store))
    return store, plan, rep, folder, messages


def test_report_folder_holds_markdown_html_claims_and_png_figures(tiny_report):
    store, plan, rep, folder, _ = tiny_report
    assert folder.parent == reports_dir(store) and folder.is_dir()
    assert {p.name for p in folder.iterdir()} == {"report.md", "report.html", "claims.json", "figures"}
    data = json.loads((folder / "claims.json").read_text())
    assert [c["number"] for c in data["claims"]] == list(range(1, 8))
    figures = {f["file"] for f in data["figures"]}
    for kind in ("attack-accuracy", "attack-sharpness", "spectra", "density", "interpolation", "contours",
                 "escape", "random-init"):
        assert f"digits-{kind}.png" in figures
    assert {"log-volume-gap.png", "two-layer.png"} <= figures
    for f in figures:
        assert (folder / "figures" / f).read_bytes().startswith(PNG)
    md = (folder / "report.md").read_text()
    for c in rep.claims:
        assert f"| {c.number} | {c.statement} |" in md and f"**{c.verdict}**" in md
        assert c.verdict in ("PASS", "FAIL", "NO DATA")
    for f in figures:
        assert f"(figures/{f})" in md and f"src='figures/{f}'" in (folder / "report.html").read_text()
    assert not list(folder.parent.glob(".*partial"))


def test_every_claim_is_computed_from_the_store(tiny_report, tmp_path):
    store, plan, rep, _, _ = tiny_report
    # A fresh handle on a copy of the files: nothing can come from memory.
    shutil.copytree(store.path.parent, tmp_path / "copy", ignore=shutil.ignore_patterns("reports", "*.wal"))
    copy = Store(tmp_path / "copy" / store.path.name)
    _, _, again = collect(plan, copy)
    assert [c.to_dict() for c in again] == [c.to_dict() for c in rep.claims]
    # The numbers in the table are the stored ones.
    runs = copy.runs(pair_id=[c.config_hash() for c in plan.main_configs(tiny_config())])
    good = runs[runs["role"] == "good"]["test_acc"]
    assert claims._pct(good) in rep.claims[1].measured
    assert len(good) == plan.seeds
    # Remove the stored escape trials: claim 6 has no data any more, the others are unchanged.
    with duckdb.connect(str(copy.path)) as con:
        con.execute("DELETE FROM basin_trials WHERE kind = 'escape'")
        con.execute("DELETE FROM analyses WHERE kind = 'escape'")
    _, _, without = collect(plan, copy)
    assert without[5].verdict == "NO DATA" and "no escape trials" in without[5].checks[0].detail
    assert [c.to_dict() for c in without[:5]] == [c.to_dict() for c in rep.claims[:5]]


def test_second_run_computes_nothing_and_reports_it(tiny_report):
    store, plan, rep, folder, messages = tiny_report
    assert rep.computed > 0
    assert messages[-1][0] == 1.0 and all(0.0 <= f <= 1.0 for f, _ in messages)
    assert [f for f, _ in messages] == sorted(f for f, _ in messages)
    n_runs = store.count_runs()
    assert run(plan, store) == 0
    assert store.count_runs() == n_runs
    rep2 = reproduce(plan, store)
    folder2 = report.write_report(rep2, reports_dir(store))
    assert rep2.computed == 0 and folder2 != folder
    assert "everything from the store" in (folder2 / "report.md").read_text()
    assert report.list_reports(reports_dir(store))[:2] == [folder2, folder]
    shutil.rmtree(folder2)


def test_a_failed_pair_is_skipped_by_the_analyses_and_left_out_of_the_claims(tiny_report, tmp_path):
    store, plan, rep, _, _ = tiny_report
    shutil.copytree(store.path.parent, tmp_path / "copy", ignore=shutil.ignore_patterns("reports", "*.wal"))
    copy = Store(tmp_path / "copy" / store.path.name)
    second = plan.main_configs(tiny_config())[1]
    with duckdb.connect(str(copy.path)) as con:  # as sweep stores a point that raised
        con.execute("UPDATE runs SET status = 'failed', error = 'RuntimeError: boom' WHERE pair_id = ?",
                    [second.config_hash()])
        con.execute("DELETE FROM analyses WHERE run_id LIKE ?", [second.config_hash() + "%"])
        con.execute("DELETE FROM basin_trials WHERE run_id LIKE ?", [second.config_hash() + "%"])
        con.execute("DELETE FROM landscapes WHERE run_id LIKE ?", [second.config_hash() + "%"])
    messages = []
    escape = _analysis(copy, second.config_hash(), plan.escape)
    assert escape(lambda f, m: messages.append(m)) is False and "failed" in messages[-1]
    _, _, found = collect(plan, copy)
    assert "1/1 seeds fit and matched; seed(s) [1] left out: a run failed" in found[0].measured
    assert found[5].verdict == rep.claims[5].verdict  # the other seed's analyses still count


def test_reproduce_neither_imports_nor_writes_the_report():
    import lossland.reproduce

    source = open(lossland.reproduce.__file__).read()
    assert "report" not in {n.split(".")[-1] for n in _imported(source)}


def _imported(source: str) -> set[str]:
    import ast

    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {node.module or ""} | {a.name for a in node.names}
    return names


def test_the_plan_holds_specs_and_the_small_scale_smaller_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small, _ = plan_for("small")
    full, _ = plan_for("full")
    assert full.surfaces == (SurfaceSpec(role="good"), SurfaceSpec(role="bad"))  # the specs' defaults
    assert (full.escape, full.random_init, full.interpolation) == (EscapeSpec(), RandomInitSpec(), InterpolationSpec())
    assert full.slices == (SliceSpec(seed=0), SliceSpec(seed=1), SliceSpec(seed=2))
    assert [s.n for s in small.surfaces] == [21, 21] and small.escape.n_trials == 4 and small.random_init.n_seeds == 16
    assert BoundSpec() in small.specs() and small.to_dict()["escape"] == small.escape.settings()
    with pytest.raises(ConfigError, match="plan.escape"):
        Plan("small", small.bases, escape=RandomInitSpec())


def test_the_tiny_pairs_show_the_paper_effect(tiny_report):
    """A sanity check of the pipeline on real (tiny) runs: the bad minima generalise worse and are sharper."""
    _, _, rep, _, _ = tiny_report
    by_number = {c.number: c for c in rep.claims}
    assert by_number[2].checks[0].verdict == "PASS"
    assert by_number[3].checks[0].verdict == "PASS"
    assert by_number[7].verdict == "PASS"


def test_a_failed_figure_leaves_no_report_folder(tiny_report, monkeypatch, tmp_path):
    _, _, rep, _, _ = tiny_report

    def broken(chart, scale=2.0):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(report.charts, "to_png", broken)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        report.write_report(rep, tmp_path / "reports")
    assert list((tmp_path / "reports").iterdir()) == []
    assert report.list_reports(tmp_path / "reports") == []


def test_list_reports_skips_partial_and_unreadable_folders(tmp_path):
    (tmp_path / "20260101-000000").mkdir()  # no claims.json: incomplete
    (tmp_path / ".20260102-000000.partial").mkdir()
    good = tmp_path / "20260103-000000"
    good.mkdir()
    (good / "claims.json").write_text("{}")
    bad = tmp_path / "20260104-000000"
    bad.mkdir()
    (bad / "claims.json").write_text("{not json")
    assert report.list_reports(tmp_path) == [bad, good]
    with pytest.raises(ValueError, match="20260104-000000/claims.json"):
        report.load_report(bad)


def test_plan_for_small_and_full_scales(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/datasets/ here and (below) no system folders: the file datasets are missing
    monkeypatch.setattr("lossland.data.SYSTEM_FOLDERS", {}, raising=False)
    plan, skipped = plan_for("small")
    assert [d for d, _ in plan.bases] == ["digits", "mnist1d"] and plan.seeds == 3 and skipped == []
    full, skipped = plan_for("full", seeds=2)
    assert [d for d, _ in full.bases] == ["digits", "mnist1d"] and full.seeds == 2
    assert [d for d, _ in skipped] == ["mnist", "fashion-mnist", "cifar10"]
    assert all("mnist" in why or "cifar" in why for _, why in skipped)
    base = preset("digits-mlp")
    assert Plan.attack_sizes(base, plan.attack_factors) == [0, 250, 500, 900]  # 1000 clipped to the pool
    with pytest.raises(ConfigError, match="--datasets imagenet"):
        plan_for("small", ["digits", "imagenet"])
    with pytest.raises(ConfigError, match="--scale"):
        plan_for("huge")
    with pytest.raises(ConfigError, match="--seeds"):
        plan_for("small", seeds=0)


def test_full_scale_takes_a_file_dataset_whose_files_are_present(tmp_path, monkeypatch):
    from test_data import _write_idx_dataset

    monkeypatch.chdir(tmp_path)
    _write_idx_dataset(tmp_path / "data" / "datasets" / "fashion-mnist", n_train=2000, n_test=50)
    plan, skipped = plan_for("full", ["fashion-mnist", "mnist"])
    assert [d for d, _ in plan.bases] == ["fashion-mnist"]
    assert plan.bases[0][1] == preset("fashion-mlp")
    assert [d for d, _ in skipped] == ["mnist"] and "train-images-idx3-ubyte" in skipped[0][1]


def test_machine_line_names_the_device_threads_and_versions(tiny_report):
    import platform

    import torch

    from lossland.machine import describe

    line = describe("cpu")
    n = torch.get_num_threads()
    assert f"CPU only, {n} torch thread{'s' * (n != 1)}" in line
    assert f"torch {torch.__version__}" in line and f"Python {platform.python_version()}" in line
    _, _, rep, folder, _ = tiny_report
    md = (folder / "report.md").read_text()
    assert rep.machine and rep.machine in md
    from lossland import __version__
    from lossland.store import git_commit

    assert rep.code.startswith(f"lossland {__version__}") and rep.code in md
    assert (git_commit() or "")[:12] in rep.code


def test_cli_refuses_bad_arguments_with_a_clear_message(tmp_path, capsys):
    assert main(["reproduce", "--datasets", "digits,nope", "--store", str(tmp_path / "s.duckdb")]) == 2
    assert "--datasets nope" in capsys.readouterr().err
    assert main(["reproduce", "--seeds", "0", "--store", str(tmp_path / "s.duckdb")]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert not (tmp_path / "s.duckdb").exists()


# --- the pages show what reproduce stored ------------------------------------------------------------

COUNTED = ("runs", "landscapes", "basin_trials", "analyses", "estimates")


def _counts(store: Store) -> dict[str, int]:
    return {t: len(store.table(t)) for t in COUNTED}


def _compute_buttons(at) -> set[str]:
    return {b.key for b in at.button if b.key and b.key.startswith("btn-")}


def test_landscape_and_basins_pages_show_the_stored_analyses_with_no_button_pressed(tiny_report, dashboard):
    store, plan, rep, _, _ = tiny_report
    dashboard(store.path)
    pair_id = rep.datasets[0].pair_ids[0]  # the first seed's pair: every analysis of the plan
    before = _counts(store)

    at = open_app("views/landscape.py", {"pair": pair_id})
    assert at.selectbox(key="landscape-interp-stored").value == plan.interpolation
    assert at.selectbox(key="landscape-slice-stored").value == plan.slices[0]
    assert at.selectbox(key="landscape-surface-stored").value == plan.surfaces[0]
    assert not _compute_buttons(at), "everything of this page is stored"
    charts = [c.proto.spec for c in at.get("vega_lite_chart")]
    assert len(charts) == 4, "interpolation, slices and both surfaces"
    side = plan.surfaces[0].n
    assert f"{side} × {side} grid" in page_texts(at) and "41 × 41" not in page_texts(at)

    at = open_app("views/basins.py", {"pair": pair_id})
    assert at.selectbox(key="basins-random-init-stored").value == plan.random_init
    assert at.selectbox(key="basins-escape-stored").value == plan.escape
    assert _compute_buttons(at) == {f"btn-radius:{pair_id}"}, "reproduce computes no radius: only it is offered"
    assert len(at.get("vega_lite_chart")) == 5, "random inits (2), escape (2) and log-volume"
    text = page_texts(at)
    assert f"over {plan.random_init.n_seeds} random inits" in text
    assert f"{plan.escape.n_trials} draws" in text and f"{plan.escape.retrain_epochs} epochs" in text

    two_layer = plan.two_layer.config_hash()
    at = open_app("views/theory.py", {"pair": two_layer})
    assert not _compute_buttons(at) and len(at.get("vega_lite_chart")) >= 1, "the stored bound"
    assert _counts(store) == before, "opening the pages computed nothing"


def test_other_settings_offer_compute_beside_the_stored_ones(tiny_report, dashboard):
    store, plan, rep, _, _ = tiny_report
    dashboard(store.path)
    pair_id = rep.datasets[0].pair_ids[0]
    at = open_app("views/basins.py", {"pair": pair_id})
    picker = at.selectbox(key="basins-escape-stored")
    picker.select_index(len(picker.options) - 1).run()  # other settings…
    assert at.text_input(key="basins-escape-radii").value == "0.05, 0.1, 0.2, 0.4"  # the spec's defaults
    assert at.number_input(key="basins-escape-n_trials").value == EscapeSpec().n_trials
    assert f"btn-escape:{pair_id}" in _compute_buttons(at)
    at.number_input(key="basins-escape-n_trials").set_value(0).run()
    assert "escape.n_trials = 0 is not allowed" in page_texts(at)
    assert f"btn-escape:{pair_id}" not in _compute_buttons(at)


# --- the Reproduce page -------------------------------------------------------------------------------

SUBMIT = "FormSubmitter:reproduce-form-Run the reproduction"


def test_reproduce_page_shows_the_latest_report(tiny_report, dashboard):
    store, _, rep, folder, _ = tiny_report
    dashboard(store.path)
    at = open_app("views/reproduce.py")
    assert list(at.dataframe[0].value["result"]) == [c.verdict for c in rep.claims]
    assert folder.name in at.selectbox(key="repro-report").value.name
    assert f"({rep.computed} steps computed)" in page_texts(at)
    assert len(at.get("image")) == len(report.load_report(folder)["figures"])
    labels = {b.proto.label for b in at.get("download_button")}
    assert {"Report (zip)", "report.md", "report.html"} <= labels
    assert at.button(key=SUBMIT) is not None


def test_reproduce_page_read_only_has_no_launch(tiny_report, dashboard, monkeypatch):
    store, _, rep, _, _ = tiny_report
    dashboard(store.path)
    monkeypatch.setenv("LOSSLAND_READONLY", "1")
    at = open_app("views/reproduce.py")
    assert "read-only" in page_texts(at)
    assert SUBMIT not in [b.key for b in at.button]
    assert list(at.dataframe[0].value["result"]) == [c.verdict for c in rep.claims]


def test_reproduce_page_launches_the_plan_with_progress(tmp_path, dashboard, monkeypatch):
    import lossland.reproduce

    dashboard(tmp_path / "runs.duckdb")
    asked = []

    def small_plan(scale, datasets, seeds):
        asked.append((scale, datasets, seeds))
        return tiny_plan(seeds=1), []

    monkeypatch.setattr(lossland.reproduce, "plan_for", small_plan)
    at = open_app("views/reproduce.py")
    assert "No report yet" in page_texts(at)
    at.number_input(key="repro-seeds").set_value(1)
    at.button(key=SUBMIT).click().run()
    assert not at.exception
    assert asked == [("small", ["digits", "mnist1d"], 1)]
    import ui

    job = ui.jobs().get("reproduce")
    assert job is not None
    assert wait_for_job(job).state == "done", job.error
    at.run()
    assert not at.exception
    assert len(at.dataframe[0].value) == 7
    assert len(report.list_reports(tmp_path / "reports")) == 1
