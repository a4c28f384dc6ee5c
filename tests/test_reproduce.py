"""`reproduce` end to end on a tiny plan: every claim comes from stored results beside its negative control
(good runs of other seeds, read from the same store), a second run computes nothing, the report folder
is complete (or absent), and the Reproduce page shows it."""

import ast
import io
import json
import shutil

import duckdb
import pytest
from conftest import open_app, page_texts, tiny_config, wait_for_job
from PIL import Image

import lossland.reproduce
from lossland import claims, report
from lossland.cli import main
from lossland.config import ConfigError, preset
from lossland.reproduce import (
    OPTIMIZER_GRID,
    Plan,
    analysis_step,
    collect,
    plan_for,
    reports_dir,
    reproduce,
    run,
    slice_specs,
    steps,
    surface_specs,
)
from lossland.specs import (
    CurveFitSpec,
    EscapeSearchSpec,
    EscapeSpec,
    InterpolationSpec,
    RandomInitSpec,
    SliceSpec,
    SurfaceSpec,
    TrajectorySpec,
)
from lossland.store import Store

PNG = b"\x89PNG\r\n\x1a\n"


def tiny_plan(**changes) -> Plan:
    two_layer = preset("teacher-2layer").with_changes(**{
        "data.n_train": 100, "train.loss_target": 1e-2, "train.max_epochs": 600, "spectrum.k": 3,
        "spectrum.slq_vectors": 1, "spectrum.slq_steps": 10, "spectrum.trace_samples": 6})
    settings = dict(seeds=3, attack_factors=(0.5, 1.0), sweep_seeds=3, slices=slice_specs(1, n_points=9),
                    surfaces=surface_specs(n=5), escape=EscapeSpec(radii=(0.0, 0.2), n_trials=2, retrain_epochs=50),
                    random_init=RandomInitSpec(n_seeds=3), optimizers=(OPTIMIZER_GRID[2],), robustness_seeds=2,
                    two_layer=two_layer, two_layer_widths=(8, 16), two_layer_factors=(0.5, 1.0), two_layer_seeds=2,
                    curve_fit=CurveFitSpec(ns=(5,), n_seeds=1, steps=100, n_grid=41),
                    escape_search=EscapeSearchSpec(n_trials=2, scan=2, steps=1, expand=1, retrain_epochs=30),
                    trajectory=TrajectorySpec(n=5))
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
    assert all(ch["control"] is not None for c in data["claims"] for ch in c["checks"])
    figures = {f["file"] for f in data["figures"]}
    for kind in ("attack-accuracy", "attack-sharpness", "spectra", "density", "interpolation", "contours",
                 "escape", "random-init", "escape-transition", "trajectories"):
        assert f"digits-{kind}.png" in figures
    assert {"log-volume-gap.png", "two-layer.png", "robustness.png", "identity-check.png", "figure-1.png"} <= figures
    for f in figures:
        assert (folder / "figures" / f).read_bytes().startswith(PNG)
    md = (folder / "report.md").read_text()
    assert "| # | claim | digits | digits control | two_layer | two_layer control | result |" in md
    for c in rep.claims:
        assert f"### {c.number}. {c.statement} — **{c.verdict}**" in md
        assert c.verdict in ("PASS", "FAIL", "NO DATA", "NOT INFORMATIVE")
    assert "## Robustness over the optimizer" in md and "holds in" in md and "Identity check (not a claim)" in md
    ran = md.split("## What ran")[1].split("##")[0]
    assert all(f"- {line}" in ran for line in rep.plan.describe()) and "digits: mlp, widths" in ran
    assert "<h2>What ran</h2>" in (folder / "report.html").read_text()
    for f in figures:
        assert f"(figures/{f})" in md and f"src='figures/{f}'" in (folder / "report.html").read_text()
    assert data["robustness"]["counts"] and not list(folder.parent.glob(".*partial"))


def test_every_claim_is_computed_from_the_store(tiny_report, tmp_path):
    store, plan, rep, _, _ = tiny_report
    # A fresh handle on a copy of the files: nothing can come from memory.
    shutil.copytree(store.path.parent, tmp_path / "copy", ignore=shutil.ignore_patterns("reports", "*.wal"))
    copy = Store(tmp_path / "copy" / store.path.name)
    again = collect(plan, copy)[2]
    assert [c.to_dict() for c in again] == [c.to_dict() for c in rep.claims]
    runs = copy.runs(pair_id=[c.config_hash() for c in plan.main_configs(tiny_config())])
    good = runs[runs["role"] == "good"]["test_acc"]
    assert claims.percent(good) in rep.claims[1].measured and len(good) == plan.seeds
    # Remove the stored escape trials: claim 6 has no data any more, the others are unchanged.
    with duckdb.connect(str(copy.path)) as con:
        con.execute("DELETE FROM basin_trials WHERE kind = 'escape'")
        con.execute("DELETE FROM analyses WHERE kind = 'escape'")
    without = collect(plan, copy)[2]
    assert "no escape trials" in without[5].checks[0].detail and without[5].verdict != "PASS"
    assert [c.to_dict() for c in without[:5]] == [c.to_dict() for c in rep.claims[:5]]


def test_each_control_pairs_the_main_good_runs_with_good_runs_of_other_seeds(tiny_report):
    store, plan, rep, _, _ = tiny_report
    base = tiny_config()
    mains, controls = plan.main_configs(base), plan.control_configs(base)
    assert len(controls) == plan.seeds and {c.model.seed for c in controls}.isdisjoint(c.model.seed for c in mains)
    assert all(c.attack.n_attack != base.attack.n_attack for c in controls), "from the sweep's other size"
    control = rep.datasets[0].evidence.control
    runs = store.runs(pair_id=[c.config_hash() for c in controls]).set_index("run_id")
    bad = control.pairs[control.pairs["role"] == "bad"]
    assert sorted(bad["run_id"]) == sorted(f"{c.config_hash()}-good" for c in controls), "good runs as the 'bad'"
    assert bad.set_index("run_id")["test_acc"].to_dict() == runs.loc[bad["run_id"], "test_acc"].to_dict()
    assert sorted(bad["seed"]) == sorted(c.model.seed for c in mains), "paired seed by seed with the mains"


def test_each_claim_fails_on_its_control_with_real_stored_results(tiny_report):
    """On the tiny plan's real runs: the control (another good run as the 'bad' one) passes no claim, and
    a claim whose control passes would be NOT INFORMATIVE, never PASS."""
    _, _, rep, _, _ = tiny_report
    for c in rep.claims:
        for ch in c.checks:
            assert ch.control is not None and ch.control.verdict != "PASS", (c.number, ch.control.measured)
            if ch.passing_on_control():
                assert ch.result == "NOT INFORMATIVE"
    control = rep.datasets[0].evidence.control
    memorised = next(t for t in claims.fit_check(control).tests if t.name == "the bad run fits its attack set")
    assert not memorised.passed and memorised.value < 0.5, "a good run has not learnt the attack labels"


def _no_png(monkeypatch) -> None:
    """Figures as a 1-pixel PNG: tests that only read the report's text need not render them again."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    monkeypatch.setattr(report.charts, "to_png", lambda chart, scale=2.0: buf.getvalue())


def test_the_two_layer_minima_count_each_good_run_and_untrained_network_once(tiny_report):
    _, plan, rep, _, _ = tiny_report
    tl = rep.two_layer
    per = len(plan.two_layer_widths) * plan.two_layer_seeds
    trained, untrained = tl[tl["state"] == "trained"], tl[tl["state"] == "untrained"]
    assert (trained["role"] == "good").sum() == per, "a good run is the same at every attack size"
    assert (trained["role"] == "bad").sum() == per * len(plan.two_layer_factors)
    assert len(untrained) == 2 * per and set(untrained["labels"]) == {"true", "random"}
    assert len(rep.bound) == 2 * len(plan.two_layer_widths) * len(plan.two_layer_factors), "the first seed only"


def test_second_run_computes_nothing_and_reports_it(tiny_report, monkeypatch):
    store, plan, rep, folder, messages = tiny_report
    _no_png(monkeypatch)
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
        for table in ("analyses", "basin_trials", "landscapes"):
            con.execute(f"DELETE FROM {table} WHERE run_id LIKE ?", [second.config_hash() + "%"])
    messages = []
    escape = analysis_step(copy, second.config_hash(), plan.escape)
    assert escape(lambda f, m: messages.append(m)) is False and "failed" in messages[-1]
    found = collect(plan, copy)[2]
    assert f"seed(s) [{second.model.seed}] left out: a run failed" in found[0].measured
    assert "2 of 2 seeds fit and matched" in found[0].measured


def test_reproduce_neither_imports_nor_writes_the_report():
    for module in (lossland.reproduce, lossland.evidence):
        names = set()
        for node in ast.walk(ast.parse(open(module.__file__).read())):
            if isinstance(node, ast.ImportFrom):
                names |= {node.module or ""} | {a.name for a in node.names}
        assert "report" not in {n.split(".")[-1] for n in names}


def test_the_small_plan_has_five_seeds_controls_wrong_labels_and_the_optimizer_grid(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small, _ = plan_for("small")
    assert small.seeds >= 5 and small.attack_labels == "wrong"
    for _, base in small.bases:
        assert len(small.control_configs(base)) == small.seeds
        sizes = small.sweep_configs(base)
        assert all(c.attack.labels == "wrong" for cs in sizes.values() for c in cs)
        assert max(sizes) <= base.data.pool_size() - base.data.n_train, "sizes past the held-out pool are left out"
    mnist1d = dict(small.bases)["mnist1d"]
    assert max(small.sweep_configs(mnist1d)) > mnist1d.data.n_train, "an attack set larger than the clean set"
    grid = small.robustness_configs(mnist1d)
    optimizers = {(c[0].train.optimizer, c[0].train.batch_size >= 10 ** 6) for c in grid.values()}
    assert len(grid) == 4 and optimizers == {("adam", False), ("sgd", False), ("sgd", True)}
    assert len({c[0].train.lr for c in grid.values() if c[0].train.optimizer == "adam"}) == 2
    assert all(len(c) == small.robustness_seeds and c[0].data.n_train < mnist1d.data.n_train for c in grid.values())
    assert small.robustness_configs(dict(small.bases)["digits"]) == {}, "the small grid runs on mnist1d only"
    widths = {c.model.widths for c in small.two_layer_configs()}
    assert len(widths) >= 2 and len({c.attack.n_attack for c in small.two_layer_configs()}) >= 3
    full, _ = plan_for("full")
    assert full.robustness_datasets is None and full.seeds > small.seeds
    assert (full.random_init, full.interpolation) == (RandomInitSpec(), InterpolationSpec())
    assert full.escape.radii == (0.0, *EscapeSpec().radii), "the unperturbed retrain is claim 6's control"
    assert small.escape.radii[0] == 0.0
    assert full.slices == (SliceSpec(seed=0), SliceSpec(seed=1), SliceSpec(seed=2))
    assert full.surfaces == (SurfaceSpec(role="good"), SurfaceSpec(role="bad"))
    with pytest.raises(ConfigError, match="plan.escape"):
        Plan("small", small.bases, escape=RandomInitSpec())


def test_plan_for_refuses_bad_arguments_and_skips_missing_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("lossland.data.SYSTEM_FOLDERS", {}, raising=False)
    plan, skipped = plan_for("small")
    assert [d for d, _ in plan.bases] == ["digits", "mnist1d"] and skipped == []
    full, skipped = plan_for("full", seeds=2)
    assert [d for d, _ in full.bases] == ["digits", "mnist1d"] and full.seeds == 2
    assert [d for d, _ in skipped] == ["mnist", "fashion-mnist", "cifar10"]
    with pytest.raises(ConfigError, match="--datasets imagenet"):
        plan_for("small", ["digits", "imagenet"])
    with pytest.raises(ConfigError, match="--scale"):
        plan_for("huge")
    with pytest.raises(ConfigError, match="--seeds"):
        plan_for("small", seeds=0)
    with pytest.raises(ConfigError, match="--models vgg is not allowed: any of cnn, lenet, mlp"):
        plan_for("full", ["fashion-mnist"], models=["vgg"])


def test_a_dataset_with_several_models_gives_a_row_per_model_and_one_seed_shrinks_the_full_plan(monkeypatch, tmp_path):
    monkeypatch.setattr("lossland.plan.dataset_problem", lambda cfg: None)  # as if the files were there
    full, _ = plan_for("full", ["fashion-mnist"])
    assert [d for d, _ in full.bases] == ["fashion-mnist mlp", "fashion-mnist lenet", "fashion-mnist cnn"]
    small, _ = plan_for("small", ["fashion-mnist"])
    assert [d for d, _ in small.bases] == ["fashion-mnist mlp"]
    one, _ = plan_for("full", ["fashion-mnist"], seeds=1, models=["mlp", "lenet"])
    assert [(d, c.model.name) for d, c in one.bases] == [("fashion-mnist mlp", "mlp"), ("fashion-mnist lenet", "cnn")]
    assert one.seeds == one.sweep_seeds == one.robustness_seeds == 1 and len(one.slices) == 1
    assert one.random_init.n_seeds < full.random_init.n_seeds and one.escape.n_trials < full.escape.n_trials
    for _, base in one.bases:
        assert len(one.control_configs(base)) == 1, "the one seed still has its control"
        assert len(one.sweep_configs(base)) == len(one.attack_factors), "every attack size, one seed each"
    (_, mlp), (_, lenet) = one.bases
    assert (mlp.data.n_train, mlp.attack.n_attack) == (1000, 1000), "the MLP preset's own sizes"
    assert (lenet.data.n_train, lenet.attack.n_attack) == (1000, 2000), "the LeNet's 2,000 + 4,000 at ratio 2"
    assert lenet.spectrum.k == 10 and one.surfaces[0].n == 21 and full.surfaces[0].n == 41
    assert one.robustness_configs(mlp) and not one.robustness_configs(lenet), "the grid on the MLP only"
    alone, _ = plan_for("full", ["fashion-mnist", "digits"], seeds=1, models=["lenet"])
    assert alone.robustness_datasets == ("digits",), "no full-batch GD on a LeNet when the MLP is not picked"
    assert one.attack_factors == (0.5, 1.0, 2.0) and [len(one.sweep_configs(b)) for _, b in one.bases] == [3, 3]
    labels = [label for _, label, _ in steps(one, Store(tmp_path / "s.duckdb"))]
    for costly in ("random inits", "50% escape radii", "optimizer trajectories"):
        assert [lab.split(":")[0].split(" seed")[0] for lab in labels if costly in lab] == ["fashion-mnist mlp"]
    assert sum("lenet" in lab and "escape trials" in lab for lab in labels) == 2, "main and control keep theirs"
    described = "\n".join(one.describe())
    assert "cnn, channels [6, 16], widths [120, 84], 1000 clean + 2000 attack" in described
    assert "trajectories on fashion-mnist mlp\n" in described and "attack sizes 1000, 2000, 4000" in described
    assert dict(full.bases)["fashion-mnist lenet"].data.n_train == 2000 and full.robustness_configs(
        dict(full.bases)["fashion-mnist lenet"])


def test_the_identity_check_runs_on_the_two_layer_widths_whose_exact_matrices_are_affordable(tmp_path):
    from lossland.theory import BOUND_MAX_PARAMS

    plan, _ = plan_for("full", ["digits"], seeds=1)
    assert 256 in plan.two_layer_widths  # 5,890 parameters: above the exact matrices' limit
    labels = [label for _, label, _ in steps(plan, Store(tmp_path / "s.duckdb"))]
    checked = {int(label.split()[2]) for label in labels if label.endswith("identity check")}
    assert checked == {16, 64} and BOUND_MAX_PARAMS == 5000
    assert sum(label.endswith("2-layer measurement") for label in labels) == len(plan.two_layer_configs())


def test_a_failed_figure_leaves_no_report_folder(tiny_report, monkeypatch, tmp_path):
    _, _, rep, _, _ = tiny_report

    def broken(chart, scale=2.0):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(report.charts, "to_png", broken)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        report.write_report(rep, tmp_path / "reports")
    assert list((tmp_path / "reports").iterdir()) == []


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


def test_the_report_names_the_machine_and_the_code(tiny_report):
    from lossland import __version__

    _, _, rep, folder, _ = tiny_report
    md = (folder / "report.md").read_text()
    assert rep.machine and rep.machine in md and rep.code.startswith(f"lossland {__version__}") and rep.code in md


def test_cli_refuses_bad_arguments_with_a_clear_message(tmp_path, capsys):
    assert main(["reproduce", "--datasets", "digits,nope", "--store", str(tmp_path / "s.duckdb")]) == 2
    assert "--datasets nope" in capsys.readouterr().err
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
    at = open_app("views/basins.py", {"pair": pair_id})
    assert at.selectbox(key="basins-random-init-stored").value == plan.random_init
    assert at.selectbox(key="basins-escape-stored").value == plan.escape
    assert _compute_buttons(at) == {f"btn-radius:{pair_id}"}, "reproduce computes no radius: only it is offered"
    assert _counts(store) == before, "opening the pages computed nothing"


# --- the Reproduce page -------------------------------------------------------------------------------

SUBMIT = "FormSubmitter:reproduce-form-Run the reproduction"


def test_reproduce_page_shows_the_latest_report_with_its_controls(tiny_report, dashboard):
    store, _, rep, folder, _ = tiny_report
    dashboard(store.path)
    at = open_app("views/reproduce.py")
    table = at.dataframe[0].value
    assert list(table["result"]) == [c.verdict for c in rep.claims]
    assert "digits control" in table.columns and "two_layer control" in table.columns
    assert folder.name in at.selectbox(key="repro-report").value.name
    text = page_texts(at)
    assert f"({rep.computed} steps computed)" in text and "holds in" in text and "control" in text
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


def test_reproduce_page_launches_the_plan_with_progress(tiny_report, tmp_path, dashboard, monkeypatch):
    store, plan, _, _, _ = tiny_report
    shutil.copytree(store.path.parent, tmp_path / "copy", ignore=shutil.ignore_patterns("reports", "*.wal"))
    dashboard(tmp_path / "copy" / store.path.name)  # everything stored: the launch only reads and reports
    asked = []

    def small_plan(scale, datasets, seeds):
        asked.append((scale, datasets, seeds))
        return plan, []

    monkeypatch.setattr(lossland.reproduce, "plan_for", small_plan)
    _no_png(monkeypatch)
    at = open_app("views/reproduce.py")
    assert "No report yet" in page_texts(at)
    at.number_input(key="repro-seeds").set_value(5)
    at.button(key=SUBMIT).click().run()
    assert not at.exception and asked == [("small", ["digits", "mnist1d"], 5)]
    import ui

    job = ui.jobs().get("reproduce")
    assert job is not None and wait_for_job(job).state == "done", job.error
    at.run()
    assert not at.exception and len(at.dataframe[0].value) == 7
    assert len(report.list_reports(tmp_path / "copy" / "reports")) == 1
