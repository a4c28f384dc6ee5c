"""Reports of stored results: the standalone HTML page of one pair, and the report of a whole
reproduction of the paper (report.md, report.html, claims.json and the figures as PNG, in one folder),
written, listed, loaded and zipped. The claims table shows each dataset's result beside its negative
control; every effect has its 95% interval; the optimizer grid says in how many settings each
sharpness measure holds. The tables here are built from claims.json's dicts, so a page shows a stored
report the way it was written."""

from __future__ import annotations

import datetime as dt
import html
import io
import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import altair as alt
import numpy as np
import pandas as pd

from . import charts, contour_charts, figures3d, fitting, path_analyses, path_charts
from .frames import pair_sentence, pair_table, spectrum_frame
from .pairs import ROLES
from .robustness import robustness_frame

if TYPE_CHECKING:
    from .evidence import DatasetResults, Reproduction


def pair_html(runs: pd.DataFrame, spectra: pd.DataFrame, title: str) -> str:
    """A standalone HTML page: the comparison table, the sentence and the charts (Vega embedded)."""
    table = pair_table(runs).to_html(classes="cmp", border=0)
    acc = charts.accuracy_chart(runs[["role", "clean_acc", "attack_acc", "test_acc"]])
    spec = charts.spectrum_chart(spectrum_frame(spectra, runs))
    body = alt.hconcat(acc, spec).to_html()
    head = (f"<h1>{html.escape(title)}</h1><p>{html.escape(pair_sentence(runs))}</p>{table}"
            "<style>body{font-family:sans-serif;margin:2em} table.cmp td,table.cmp th{padding:4px 12px;"
            "text-align:right}</style>")
    return body.replace("<body>", "<body>" + head, 1)


# --- what the claims table says --------------------------------------------------------------------

RULES = ("Each effect is a mean over seeds (or minima) with its 95% percentile-bootstrap interval; counts carry "
         "their exact Clopper–Pearson bound. A test passes when its interval lies above 0. Each dataset's "
         "**control** pairs its good minima with good minima of other seeds (no attack set): the same rule must "
         "not pass there. PASS: the rule passes and no test passes on the control; NOT INFORMATIVE: it passes, "
         "but so does a test on the control; FAIL: a test fails; NO DATA: the evidence is missing.")

# What a FAIL of each claim can mean, said in the report beside the numbers.
FAIL_NOTES = {
    1: "A minimum that stopped at train.max_epochs has not reached the clean-loss target, so it is not compared "
       "at matched loss; a bad run that does not fit its attack set has not memorised it.",
    2: "Growth is a rank correlation of the drop with the attack size over the sweep's pairs; with few pairs or "
       "sizes its interval is wide.",
    3: "A measure whose interval includes 0 does not separate the minima at these seeds; the optimizer grid "
       "(Robustness) shows whether that depends on the setting.",
    4: "The gap sums ½ log((λᵢᵇᵃᵈ + ε)/(λᵢᵍᵒᵒᵈ + ε)) over every eigenvalue: it is dominated by the many near-zero "
       "eigenvalues at small ε and by the top of the spectrum at large ε.",
    5: "A random-init seed that generalises as badly as an attacked minimum means clean training alone can land "
       "in bad basins on this dataset and model.",
    6: "The slice compares the mean clean-loss rise over the same filter-normalised directions; escape counts "
       "retrainings whose test accuracy moved by more than the margin, in either direction, from either minimum.",
    7: "The association is over minima of several widths and attack sizes; a small ρ or an interval through 0 "
       "means complexity and ‖H‖_F do not rank the minima alike here.",
}


def _rows(found) -> list[dict]:
    return [c.to_dict() if hasattr(c, "to_dict") else c for c in found]


def claims_verdicts(found) -> pd.DataFrame:
    """One row per claim: its statement, per dataset the result and its control's verdict ('' where the
    claim isn't tested on that dataset) and the overall result."""
    rows = _rows(found)
    datasets = list(dict.fromkeys(ch["dataset"] for r in rows for ch in r["checks"]))

    def cell(r: dict, d: str, control: bool) -> str:
        ch = next((ch for ch in r["checks"] if ch["dataset"] == d), None)
        if ch is None:
            return ""
        return (ch.get("control") or {}).get("verdict", "—") if control else ch.get("result", ch["verdict"])

    columns = [c for d in datasets for c in (d, f"{d} control")]
    return pd.DataFrame([{"#": r["number"], "claim": r["statement"],
                          **{c: cell(r, c.removesuffix(" control"), c.endswith(" control")) for c in columns},
                          "result": r["verdict"]} for r in rows], columns=["#", "claim", *columns, "result"])


def effects_frame(found) -> pd.DataFrame:
    """Every test of every check, on the data and on its control: its effect with interval and verdict."""
    out = []
    for r in _rows(found):
        for ch in r["checks"]:
            control = {t["name"]: t for t in (ch.get("control") or {}).get("tests", [])}
            for t in ch.get("tests", []):
                c = control.get(t["name"])
                tag = "" if t["rule"] and t.get("controlled", True) else (" (precondition)" if t["rule"] else
                                                                          " (reported)")
                out.append({"#": r["number"], "dataset": ch["dataset"], "test": t["name"] + tag,
                            "effect (95%)": t["effect"], "passes": "yes" if t["passed"] else "no",
                            "control (95%)": c["effect"] if c else "—",
                            "control passes": ("yes" if c["passed"] else "no") if c else "—"})
    return pd.DataFrame(out, columns=["#", "dataset", "test", "effect (95%)", "passes", "control (95%)",
                                      "control passes"])


# --- figures -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Figure:
    file: str  # under figures/
    title: str
    dataset: str  # "" for a figure across datasets
    chart: alt.TopLevelMixin | bytes  # an Altair chart, or a PNG already drawn (the 3-D view)

    def png(self) -> bytes:
        return self.chart if isinstance(self.chart, bytes) else charts.to_png(self.chart)


def _gap_frame(results: tuple[DatasetResults, ...]) -> pd.DataFrame:
    """Per dataset and its control, per seed and ε: the log-volume gap good − bad."""
    frames = []
    for r in results:
        for label, e in ((r.dataset, r.evidence), (f"{r.dataset} control", r.evidence.control)):
            lv = e.log_volume if e is not None else pd.DataFrame()
            if len(lv) == 0:
                continue
            wide = lv.pivot_table(index=["seed", "eps"], columns="role", values="value", aggfunc="first")
            if set(ROLES) <= set(wide.columns):
                frames.append((wide["good"] - wide["bad"]).dropna().rename("gap").reset_index().assign(dataset=label))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def log_volume_eps_chart(gap: pd.DataFrame) -> alt.Chart:
    """Mean gap over seeds vs ε (log axis), each seed a point, one line per dataset and control."""
    return charts.seeds_over_mean(gap, "eps", "ε", "gap", "log-volume gap good − bad (all eigenvalues)",
                                  "Log-volume gap over the whole spectrum vs ε", log_x=True)


def robustness_chart(cells: pd.DataFrame) -> alt.Chart:
    """measure × setting: whether the ordering holds (colour), on the pairs (cells: measure, setting, holds)."""
    return alt.Chart(cells, title="Sharpness ordering (bad > good) per optimizer setting").mark_rect().encode(
        x=alt.X("setting:N", title="", axis=alt.Axis(labelAngle=-30, labelLimit=260)),
        y=alt.Y("measure:N", title=""),
        color=alt.Color("holds:N", scale=alt.Scale(domain=[True, False], range=["#009E73", "#cfcfcf"]),
                        title="holds"), tooltip=["measure", "setting", "effect", "control_effect"]).properties(
        width=520, height=160)


def _dataset_figures(rep: Reproduction, r: DatasetResults, add) -> None:
    d, e = r.dataset, r.evidence
    if len(e.sweep):
        sweep = e.sweep[e.sweep["status"] != "failed"]
        add(f"{d}-attack-accuracy.png", f"{d}: test accuracy vs attack size", d,
            lambda: charts.sweep_chart(sweep, "test_acc", f"{d}: test accuracy vs attack size"))
        add(f"{d}-attack-sharpness.png", f"{d}: sharpness vs attack size", d,
            lambda: alt.hconcat(*[charts.sweep_chart(sweep, m, log=m != "top_eigenvalue") for m in
                                  ("top_eigenvalue", "trace", "frobenius_sq")],
                                title=f"{d}: sharpness of the minima vs attack size"))
    if len(r.spectra):
        add(f"{d}-spectra.png", f"{d}: top Hessian eigenvalues, every seed", d,
            lambda: charts.spectrum_chart(r.spectra, detail="seed",
                                          title=f"{d}: top eigenvalues, {rep.plan.seeds} seeds"))
    if len(r.density):
        add(f"{d}-density.png", f"{d}: spectral density (SLQ)", d,
            lambda: charts.density_chart(r.density, title=f"{d}: spectral density (SLQ), first seed"))
    if len(r.interpolation):
        add(f"{d}-interpolation.png", f"{d}: interpolation from the good to the bad minimum", d,
            lambda: charts.interpolation_chart(r.interpolation, f"{d}: from good (α=0) to bad (α=1)"))
    if len(r.surfaces) and set(r.surfaces["role"]) >= set(ROLES):
        add(f"{d}-contours.png", f"{d}: 2-D loss contours around each minimum", d, lambda: _contours(r))
        add(f"{d}-surface-3d.png", f"{d}: the same surfaces in 3-D (log₁₀ clean-train loss)", d,
            lambda: figures3d.surface_png({role: r.surfaces[r.surfaces["role"] == role] for role in ROLES},
                                          title=f"{d}: "))
    if len(e.escape):
        add(f"{d}-escape.png", f"{d}: escape probability vs radius", d,
            lambda: charts.escape_chart(e.escape, f"{d}: escape probability vs radius"))
    _path_figures(rep, r, add)
    if len(e.random_init) and len(e.pairs):
        add(f"{d}-random-init.png", f"{d}: random-init test accuracy vs the pairs' minima", d,
            lambda: charts.random_init_chart(e.random_init, e.pairs[["role", "test_acc"]]))


def _path_figures(rep: Reproduction, r: DatasetResults, add) -> None:
    """Where each minimum's escape probability crosses 50%, and the optimizer trajectories (path_charts)."""
    d, s, t = r.dataset, r.escape_search, r.trajectory
    if len(s) and rep.plan.escape_search is not None:
        found = path_analyses.escape_transitions(s, rep.plan.escape_search)
        add(f"{d}-escape-transition.png", f"{d}: where the escape probability crosses 50%", d,
            lambda: path_charts.escape_transition_chart(s, found, f"{d}: where escape becomes likely (first seed)"))
    if len(t) and set(t["role"]) >= set(ROLES):
        levels = path_charts.plane_levels(t)
        add(f"{d}-trajectories.png", f"{d}: optimizer trajectories on their PCA planes", d,
            lambda: alt.hconcat(*[path_charts.trajectory_chart(t, role, levels=levels,
                                                               title=f"{d}: {role} minimum") for role in ROLES]))


def figures(rep: Reproduction) -> list[Figure]:
    """Every figure of the report that has data, in reading order."""
    out: list[Figure] = []

    def add(file: str, title: str, dataset: str, make) -> None:
        out.append(Figure(file, title, dataset, make()))

    for r in rep.datasets:
        _dataset_figures(rep, r, add)
    gap = _gap_frame(rep.datasets)
    if len(gap):
        add("log-volume-gap.png", "log-volume gap vs ε, with the controls", "", lambda: log_volume_eps_chart(gap))
    cells = pd.DataFrame([c.__dict__ for c in rep.robustness.cells])
    if len(cells):
        add("robustness.png", "sharpness ordering per optimizer setting", "", lambda: robustness_chart(cells))
    tl = rep.two_layer
    if len(tl):
        add("two-layer.png", "2-layer networks: complexity vs ‖H‖_F, trained and untrained", "",
            lambda: alt.hconcat(*[charts.two_layer_chart(tl[tl["state"] == s], title=t) for s, t in (
                ("trained", "trained minima (good: clean, bad: + random labels)"),
                ("untrained", "control: untrained (good: true, bad: random labels)")) if (tl["state"] == s).any()]))
    if len(rep.bound):
        add("identity-check.png", "identity check: C_Λ ≤ √m‖W‖₂²‖G‖_F (not a claim)", "",
            lambda: charts.bound_chart(rep.bound))
    if len(rep.curve_fit):
        add("figure-1.png", "Figure 1: points fitted by a network and by polynomials", "",
            lambda: charts.curve_fit_chart(rep.curve_fit, fitting.summary(rep.curve_fit)))
    return out


def _contours(r: DatasetResults) -> alt.TopLevelMixin:
    s = r.surfaces
    found = contour_charts.surface_charts({role: s[s["role"] == role] for role in ROLES}, title=f"{r.dataset}: ")
    return alt.hconcat(*found.values())


# --- the text ------------------------------------------------------------------------------------------

def _md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(frame: pd.DataFrame) -> list[str]:
    if frame.empty:
        return []
    cols = [str(c) for c in frame.columns]
    return (["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            + ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)])


def _meta(rep: Reproduction) -> dict:
    return {"scale": rep.plan.scale, "datasets": [r.dataset for r in rep.datasets], "seeds": rep.plan.seeds,
            "started": rep.started, "seconds": round(rep.seconds, 1), "computed_steps": rep.computed,
            "machine": rep.machine, "code": rep.code, "plan": rep.plan.to_dict(),
            "skipped": [{"dataset": d, "reason": why} for d, why in rep.skipped],
            "pairs": {r.dataset: list(r.pair_ids) for r in rep.datasets},
            "controls": {r.dataset: list(r.control_ids) for r in rep.datasets}}


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def identity_check(bound: pd.DataFrame) -> str:
    """One line on the G-based inequality at the two_layer minima (an identity, not one of the claims)."""
    if len(bound) == 0:
        return ""
    held = bound["holds"].astype(bool)
    ratio = (bound["rhs"] / bound["complexity"]).replace([np.inf, -np.inf], np.nan)
    return (f"Identity check (not a claim): C_Λ ≤ √m ‖W‖₂² ‖G‖_F, with G the Gauss–Newton matrix, holds at "
            f"{int(held.sum())} of {len(held)} two_layer minima (bound/complexity ≥ {ratio.min():.3g}); it holds "
            "by construction for any network, trained or not, so it says nothing about generalisation.")


def _discussion(rep: Reproduction) -> list[str]:
    """One paragraph per check that did not pass, with its numbers."""
    out = []
    for c in rep.claims:
        for check in c.checks:
            result = check.result
            if result == "PASS":
                continue
            if result == "NOT INFORMATIVE":
                on = check.passing_on_control()
                why = (f"its control also passes {', '.join(on)}" if on else "it has no control evidence")
                out.append(f"Claim {c.number} ({check.dataset}) is NOT INFORMATIVE: its rule passes but {why}. "
                           f"Control: {check.control.measured if check.control else '—'}.")
                continue
            out.append(f"Claim {c.number} ({check.dataset}) is {result}: {check.detail or 'no further detail'}. "
                       f"Measured: {check.measured}. " + (FAIL_NOTES.get(c.number, "") if result == "FAIL" else ""))
    return out


def _robustness_lines(rep: Reproduction) -> list[str]:
    counts = rep.robustness.counts()
    if not counts:
        return ["No optimizer grid in this run."]
    lines = ["Each measure in each optimizer setting (✓: the 95% interval of its mean effect over seeds lies above "
             "0; log(bad / good), or good − bad for the log-volume); the control pairs each setting's good runs "
             "with each other.", ""]
    lines += [f"- **{n['measure']}**: {n['text']}" for n in counts]
    return lines + [""] + _md_table(robustness_frame(rep.robustness.to_dict()))


def report_markdown(rep: Reproduction, figs: list[Figure]) -> str:
    m = _meta(rep)
    verdicts = [c.verdict for c in rep.claims]
    lines = ["# lossland reproduces Wu, Zhu & E (2017): Towards Understanding Generalization of Deep Learning", "",
             f"Scale **{m['scale']}** · datasets **{', '.join(m['datasets']) or 'none'}** · {m['seeds']} seed(s) · "
             f"attack labels {rep.plan.attack_labels} · started {m['started']} · took **{_minutes(rep.seconds)}** "
             f"({'everything from the store' if rep.computed == 0 else f'{rep.computed} steps computed'}) on "
             f"{m['machine']}; {m['code']}.", "",
             "## Claims", "", f"{verdicts.count('PASS')} of {len(verdicts)} claims pass, "
             f"{verdicts.count('NOT INFORMATIVE')} not informative, {verdicts.count('FAIL')} fail. {RULES}", ""]
    lines += _md_table(claims_verdicts(list(rep.claims)))
    lines += ["", "## What ran", ""] + [f"- {_md_cell(p)}" for p in rep.plan.describe()]
    lines += ["", "## Effects and their controls", ""]
    effects = effects_frame(list(rep.claims))
    for c in rep.claims:
        lines += [f"### {c.number}. {c.statement} — **{c.verdict}**", "", f"Rule: {c.test}.", ""]
        lines += _md_table(effects[effects["#"] == c.number].drop(columns="#")) + [""]
    lines += ["## Robustness over the optimizer", ""] + _robustness_lines(rep) + [""]
    check = identity_check(rep.bound)
    lines += ["## Discussion", ""] + ([f"- {_md_cell(p)}" for p in _discussion(rep)]
                                     or ["Every claim passes on every dataset of this run."])
    lines += [f"- {_md_cell(check)}"] if check else []
    lines += [f"- Skipped {d}: {why}" for d, why in rep.skipped]
    lines += ["", "## Figures", ""]
    for f in figs:
        lines += [f"### {f.title}", "", f"![{f.title}](figures/{f.file})", ""]
    lines += ["## Runs", "", "The main pair of each seed (open one in the dashboard with `?pair=<id>`), and the pairs "
              "whose good runs are the control:", ""]
    lines += [f"- {r.dataset}: " + ", ".join(f"`{p}`" for p in r.pair_ids) + "; control: "
              + (", ".join(f"`{p}`" for p in r.control_ids) or "—") for r in rep.datasets]
    lines += ["", f"Plan: `{json.dumps(m['plan'])}`", ""]
    return "\n".join(lines)


def _html_table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, border=0, classes="t", escape=True) if len(frame) else ""


def report_html(rep: Reproduction, figs: list[Figure]) -> str:
    m, esc = _meta(rep), html.escape
    table = claims_verdicts(list(rep.claims))
    effects = effects_frame(list(rep.claims))
    details = "".join(f"<h3>{c.number}. {esc(c.statement)} — {esc(c.verdict)}</h3><p>Rule: {esc(c.test)}.</p>"
                      + _html_table(effects[effects["#"] == c.number].drop(columns="#")) for c in rep.claims)
    counts = "".join(f"<li><b>{esc(n['measure'])}</b>: {esc(n['text'])}</li>" for n in rep.robustness.counts())
    counts += "</ul>" + _html_table(robustness_frame(rep.robustness.to_dict()))
    discussion = "".join(f"<li>{esc(p)}</li>" for p in _discussion(rep)) or "<li>Every claim passes.</li>"
    discussion += f"<li>{esc(identity_check(rep.bound))}</li>" if len(rep.bound) else ""
    discussion += "".join(f"<li>Skipped {esc(d)}: {esc(why)}</li>" for d, why in rep.skipped)
    pics = "".join(f"<h3>{esc(f.title)}</h3><img src='figures/{esc(f.file)}' alt='{esc(f.title)}'>" for f in figs)
    runs = "".join(f"<li>{esc(r.dataset)}: {', '.join(f'<code>{p}</code>' for p in r.pair_ids)}; control: "
                   f"{', '.join(f'<code>{p}</code>' for p in r.control_ids) or '—'}</li>" for r in rep.datasets)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>lossland reproduction</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1300px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;font-size:14px}img{max-width:100%}"
        "</style></head><body>"
        f"<h1>lossland reproduces Wu, Zhu &amp; E (2017)</h1><p>Scale <b>{esc(m['scale'])}</b> · datasets "
        f"<b>{esc(', '.join(m['datasets']))}</b> · {m['seeds']} seed(s) · started {esc(m['started'])} · took "
        f"<b>{_minutes(rep.seconds)}</b> on {esc(m['machine'])}; {esc(m['code'])}.</p>"
        f"<h2>Claims</h2><p>{esc(RULES.replace('**', ''))}</p>{_html_table(table)}<h2>What ran</h2><ul>"
        + "".join(f"<li>{esc(p)}</li>" for p in rep.plan.describe()) + "</ul>"
        f"<h2>Effects and their controls</h2>{details}"
        f"<h2>Robustness over the optimizer</h2><ul>{counts}"
        f"<h2>Discussion</h2><ul>{discussion}</ul><h2>Figures</h2>{pics}<h2>Runs</h2><ul>{runs}</ul>"
        "</body></html>")


# --- the folder ----------------------------------------------------------------------------------------

def write_report(rep: Reproduction, root: Path) -> Path:
    """Write the report folder root/<UTC timestamp>/ (report.md, report.html, claims.json, figures/*.png).
    It is built beside and renamed into place, so a folder that is listed is always complete."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    final, n = root / stamp, 1
    while final.exists():
        n += 1
        final = root / f"{stamp}-{n}"
    tmp = root / f".{final.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "figures").mkdir(parents=True)
    try:
        figs = figures(rep)
        for f in figs:
            (tmp / "figures" / f.file).write_bytes(f.png())
        (tmp / "report.md").write_text(report_markdown(rep, figs), encoding="utf-8")
        (tmp / "report.html").write_text(report_html(rep, figs), encoding="utf-8")
        payload = {"meta": _meta(rep), "claims": [c.to_dict() for c in rep.claims],
                   "robustness": rep.robustness.to_dict(), "identity_check": identity_check(rep.bound),
                   "figures": [{"file": f.file, "title": f.title, "dataset": f.dataset} for f in figs]}
        (tmp / "claims.json").write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def list_reports(root: Path) -> list[Path]:
    """Complete report folders under root, newest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                   and (p / "claims.json").is_file()), key=lambda p: p.name, reverse=True)


def load_report(folder: Path) -> dict:
    """A report's claims.json (meta, claims, robustness, figures); ValueError naming the file when unreadable."""
    path = Path(folder) / "claims.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"report {path} can't be read: {e}") from None


def report_zip(folder: Path) -> bytes:
    """The whole report folder as a zip, for download."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                zf.write(p, f"{Path(folder).name}/{p.relative_to(folder)}")
    return buf.getvalue()
