"""The good-vs-bad comparison is one table: its rows are the stored numbers, and the CLI (fresh and
stored pair), the overview page and the HTML page show the same values."""

from __future__ import annotations

import html
import math
import re

import pytest
from conftest import open_app
from store_writer import make_pair

from lossland import cli, frames, report, terminal
from lossland.pairs import ROLES
from lossland.store import Store


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A synthetic pair (make_pair) saved to a fresh store: (store, pair, spectra, view)."""
    store = Store(tmp_path_factory.mktemp("frames") / "runs.duckdb")
    pair, spectra = make_pair(4)
    store.save_pair(pair, spectra)
    return store, pair, spectra, store.pair(pair.pair_id)


def _number(text: str) -> float:
    """A cell's first number; percentages as fractions."""
    head = text.split(" ± ")[0]
    return float(head[:-1]) / 100 if head.endswith("%") else float(head)


def _cli_rows(text: str) -> dict[str, tuple[str, ...]]:
    """A table printed by the CLI (label, then one column per role) by label; header and rule left out."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if set(line.replace(" ", "")) == {"-"}) + 1
    cells = [re.split(r"\s{2,}", line.strip()) for line in lines[start:] if line.strip()]
    return {c[0]: tuple(c[1:]) for c in cells if not c[0].startswith("checkpoints:")}


def test_comparison_rows_are_the_stored_numbers(stored):
    _, pair, spectra, view = stored
    table = frames.pair_table(view.runs)
    assert list(table.columns) == list(ROLES)
    for role in ROLES:
        run, s = getattr(pair, role), spectra[role]
        col = table[role]
        assert col["status"] == run.status and col["epochs"] == str(run.epochs)
        assert col["clean-train loss"] == f"{run.clean_loss:.2e}"
        for key, label in (("clean_acc", "clean-train accuracy"), ("attack_acc", "attack accuracy"),
                           ("test_acc", "test accuracy")):
            assert col[label] == f"{getattr(run, key):.1%}"
        assert col["top eigenvalue λ₁"] == f"{s.top.eigenvalues[0]:.4g}"
        assert col["trace"] == f"{s.trace.value:.4g}"
        assert col["Frobenius norm ‖H‖_F"] == f"{math.sqrt(s.frobenius_sq.value):.4g}"
        assert col["log-volume"] == f"{s.log_volume_k[-1]:.4g}"


def test_fresh_summary_and_stored_pair_compare_alike(stored):
    """`train` (from the results in memory) and `show` (from the store) print the same numbers: the
    stored table is the fresh one without its standard errors and the eigenvalues past λ₁."""
    _, pair, spectra, view = stored
    fresh = frames.comparison({r: terminal.pair_summary(pair, spectra, {})[r] for r in ROLES}, frames.CLI)
    kept = frames.comparison({r: terminal.view_summary(view)[r] for r in ROLES}, frames.CLI)
    assert fresh.loc["λ1"].equals(kept.loc["top eigenvalue"].rename("λ1"))
    assert [f"λ{i}" for i in range(1, 6)] == [i for i in fresh.index if i.startswith("λ")]
    assert fresh.loc["trace", "good"] == f"{spectra['good'].trace.value:.4g} ± {spectra['good'].trace.stderr:.2g}"
    lv = next(i for i in fresh.index if i.startswith("log-volume"))
    assert lv == f"log-volume (k={len(spectra['good'].log_volume_k)}, ε={spectra['good'].settings.eps:g})"
    assert fresh.loc[lv].tolist() == kept.loc["log-volume"].tolist()
    for label in kept.index.intersection(fresh.index):
        assert [c.split(" ± ")[0] for c in fresh.loc[label]] == kept.loc[label].tolist(), label


def test_a_missing_role_reads_as_dashes(stored):
    _, _, _, view = stored
    table = frames.pair_table(view.runs[view.runs["role"] == "good"])
    assert (table["bad"] == "—").all() and (table["good"] != "—").all()
    assert "incomplete" in frames.pair_sentence(view.runs[view.runs["role"] == "good"])


def test_cli_text_and_the_overview_show_the_same_values(stored, dashboard, capsys):
    store, pair, _, view = stored
    assert cli.main(["show", pair.pair_id, "--store", str(store.path)]) == 0
    shown = _cli_rows(capsys.readouterr().out)
    dashboard(store.path)
    at = open_app(query={"pair": pair.pair_id})
    page = at.dataframe[0].value
    assert page.equals(frames.pair_table(view.runs))
    compared = 0
    for row in frames.ROWS:
        cli_label = row.short or row.label
        if row.label not in page.index or cli_label not in shown:
            continue
        for role, text in zip(ROLES, shown[cli_label], strict=True):
            if row.kind == "text":
                assert text == page.loc[row.label, role]
            else:
                assert _number(text) == pytest.approx(_number(page.loc[row.label, role]), rel=2e-3, abs=1e-3)
        compared += 1
    assert compared >= 9, "‖H‖_F among them: one Frobenius convention on both faces"
    assert "Frobenius norm ‖H‖_F" in shown and "‖H‖_F²" not in shown
    tiles = {m.label: m.value for m in at.metric}
    for h in frames.headlines(view.runs):
        assert tiles[h.label] == h.value
    assert tiles["test accuracy · bad"] == page.loc["test accuracy", "bad"]


def test_the_html_page_carries_the_same_table(stored):
    _, pair, _, view = stored
    page = report.pair_html(view.runs, view.spectra, f"pair {pair.pair_id}")
    assert frames.pair_table(view.runs).to_html(classes="cmp", border=0) in page
    assert html.escape(frames.pair_sentence(view.runs)) in page


def test_the_spectrum_page_frame_shows_the_frobenius_norm_with_its_delta_method_error(stored):
    """Stored is the estimate of ‖H‖_F² = tr(H²) (make_pair: 80 + r ± 4, exact 79 + r); shown is ‖H‖_F."""
    _, _, spectra, view = stored
    e = frames.curvature_frame(view.estimates, view.runs).set_index(["role", "name"])
    for role in ROLES:
        sq = spectra[role].frobenius_sq
        assert e.loc[(role, "‖H‖_F"), "value"] == pytest.approx(math.sqrt(sq.value), rel=1e-12)
        assert e.loc[(role, "‖H‖_F"), "stderr"] == pytest.approx(sq.stderr / (2 * math.sqrt(sq.value)), rel=1e-12)
        assert e.loc[(role, "trace"), "value"] == pytest.approx(spectra[role].trace.value, rel=1e-12)
    exact = frames.curvature_frame(view.estimates, view.runs, exact=True).set_index(["role", "name"])
    assert exact.loc[("good", "‖H‖_F"), "value"] == pytest.approx(math.sqrt(spectra["good"].frobenius_sq_exact))
