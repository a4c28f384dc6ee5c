"""Reports of stored results: the standalone HTML page of one pair, and the report of a whole
reproduction of the paper (report.md, report.html, claims.json and the figures as PNG, in one folder),
written, listed, loaded and zipped. The tables and sentences come from `frames`."""

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

from . import charts
from .frames import pair_sentence, pair_table, spectrum_frame
from .pairs import ROLES

if TYPE_CHECKING:
    from .reproduce import DatasetResults, Reproduction


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


# --- the reproduction report ----------------------------------------------------------------------

# What a FAIL of each claim can mean, said in the report beside the numbers.
FAIL_NOTES = {
    1: "A minimum that stopped at train.max_epochs has not reached the clean-loss target, so its sharpness "
       "is not compared at matched loss; more epochs (or a larger learning rate) would let it get there.",
    2: "Growth is tested on the mean over seeds at each attack size; with few seeds, noise between neighbouring "
       "sizes can break it, and at the largest sizes a bad run may stop before fitting the clean set.",
    3: "The measures are of the clean training loss at the two minima. A failing measure does not separate the "
       "minima on this dataset and model: the paper's claim does not hold here for it, as measured.",
    4: "The gap at k adds ½ log((λᵢᵇᵃᵈ + ε)/(λᵢᵍᵒᵒᵈ + ε)) for each i ≤ k: it shrinks wherever the bad minimum's "
       "i-th eigenvalue is the smaller one.",
    5: "A random-init seed that generalises as badly as an attacked minimum means clean training alone can land "
       "in bad basins on this dataset and model.",
    6: "The slice compares the mean clean-loss rise over the same filter-normalised directions; escape counts "
       "retrainings whose test accuracy moved by more than 5 points (for the bad minimum: upwards).",
    7: "The bound is an inequality that must hold exactly; a failure points to a bug or a numerical problem.",
}


@dataclass(frozen=True)
class Figure:
    file: str  # under figures/
    title: str
    dataset: str  # "" for a figure across datasets
    chart: alt.TopLevelMixin


def _gap_frame(results: tuple[DatasetResults, ...]) -> pd.DataFrame:
    frames = []
    for r in results:
        lv = r.evidence.log_volume
        if len(lv) == 0:
            continue
        wide = lv.pivot_table(index=["seed", "k"], columns="role", values="value", aggfunc="first")
        if set(ROLES) <= set(wide.columns):
            gap = (wide["good"] - wide["bad"]).dropna().rename("gap").reset_index()
            frames.append(gap.assign(dataset=r.dataset))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def figures(rep: Reproduction) -> list[Figure]:
    """Every figure of the report that has data, in reading order."""
    out: list[Figure] = []

    def add(file: str, title: str, dataset: str, make) -> None:
        out.append(Figure(file, title, dataset, make()))

    for r in rep.datasets:
        d, e = r.dataset, r.evidence
        if len(e.sweep):
            sweep = e.sweep[e.sweep["status"] != "failed"]
            add(f"{d}-attack-accuracy.png", f"{d}: test accuracy vs attack size", d,
                lambda s=sweep, d=d: charts.sweep_chart(s, "test_acc", f"{d}: test accuracy vs attack size"))
            add(f"{d}-attack-sharpness.png", f"{d}: sharpness vs attack size", d,
                lambda s=sweep, d=d: alt.hconcat(*[charts.sweep_chart(s, m, log=m != "top_eigenvalue") for m in
                                                   ("top_eigenvalue", "trace", "frobenius_sq")],
                                                 title=f"{d}: sharpness of the minima vs attack size"))
        if len(r.spectra):
            add(f"{d}-spectra.png", f"{d}: top Hessian eigenvalues, every seed", d,
                lambda r=r: charts.spectrum_chart(r.spectra, detail="seed",
                                                  title=f"{r.dataset}: top eigenvalues, {rep.plan.seeds} seeds"))
        if len(r.density):
            add(f"{d}-density.png", f"{d}: spectral density (SLQ)", d,
                lambda r=r: charts.density_chart(r.density, title=f"{r.dataset}: spectral density (SLQ), first seed"))
        if len(r.interpolation):
            add(f"{d}-interpolation.png", f"{d}: interpolation from the good to the bad minimum", d,
                lambda r=r: charts.interpolation_chart(r.interpolation, f"{r.dataset}: from good (α=0) to bad (α=1)"))
        if len(r.surfaces) and set(r.surfaces["role"]) >= set(ROLES):
            add(f"{d}-contours.png", f"{d}: 2-D loss contours around each minimum", d,
                lambda r=r: _contours(r))
        if len(e.escape):
            add(f"{d}-escape.png", f"{d}: escape probability vs radius", d,
                lambda e=e, d=d: charts.escape_chart(e.escape, f"{d}: escape probability vs radius"))
        if len(e.random_init) and len(e.pairs):
            add(f"{d}-random-init.png", f"{d}: random-init test accuracy vs the pairs' minima", d,
                lambda e=e: charts.random_init_chart(e.random_init, e.pairs[["role", "test_acc"]]))
    gap = _gap_frame(rep.datasets)
    if len(gap):
        add("log-volume-gap.png", "log-volume gap vs k", "", lambda: charts.log_volume_gap_chart(gap))
    if len(rep.two_layer):
        add("two-layer.png", "2-layer networks: complexity, Hessian norm and the bound", "",
            lambda: alt.hconcat(charts.two_layer_chart(rep.two_layer), charts.bound_chart(rep.two_layer)))
    return out


def _contours(r: DatasetResults) -> alt.TopLevelMixin:
    s = r.surfaces
    levels = np.log10(s["clean_loss"].clip(lower=1e-12))
    domain = (float(levels.min()), float(levels.max()))
    return alt.hconcat(*[charts.surface_chart(s[s["role"] == role], title=f"{r.dataset}: {role} minimum",
                                              domain=domain) for role in ROLES])


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _meta(rep: Reproduction) -> dict:
    return {"scale": rep.plan.scale, "datasets": [r.dataset for r in rep.datasets], "seeds": rep.plan.seeds,
            "started": rep.started, "seconds": round(rep.seconds, 1), "computed_steps": rep.computed,
            "machine": rep.machine, "code": rep.code, "plan": rep.plan.to_dict(),
            "skipped": [{"dataset": d, "reason": why} for d, why in rep.skipped],
            "pairs": {r.dataset: list(r.pair_ids) for r in rep.datasets}}


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _discussion(rep: Reproduction) -> list[str]:
    """One paragraph per claim that did not pass, with its numbers."""
    out = []
    for c in rep.claims:
        if c.verdict == "PASS":
            continue
        for check in c.checks:
            if check.verdict == "PASS":
                continue
            why = check.detail or "no further detail"
            out.append(f"Claim {c.number} ({check.dataset}) is {check.verdict}: {why}. Measured: {check.measured}. "
                       + (FAIL_NOTES.get(c.number, "") if check.verdict == "FAIL" else ""))
    return out


def report_markdown(rep: Reproduction, figs: list[Figure]) -> str:
    m = _meta(rep)
    lines = ["# lossland reproduces Wu, Zhu & E (2017): Towards Understanding Generalization of Deep Learning", "",
             f"Scale **{m['scale']}** · datasets **{', '.join(m['datasets']) or 'none'}** · {m['seeds']} seed(s) · "
             f"started {m['started']} · took **{_minutes(rep.seconds)}** "
             f"({'everything from the store' if rep.computed == 0 else f'{rep.computed} steps computed'}) on "
             f"{m['machine']}; {m['code']}.", ""]
    passed = sum(c.verdict == "PASS" for c in rep.claims)
    lines += ["## Claims", "", f"{passed} of {len(rep.claims)} claims pass. Numbers are mean ± standard deviation "
              "over seeds; each check names its dataset.", "",
              "| # | claim | measured | test | result |", "|---|---|---|---|---|"]
    for c in rep.claims:
        lines.append(f"| {c.number} | {_md_cell(c.statement)} | {_md_cell(c.measured)} | {_md_cell(c.test)} | "
                     f"**{c.verdict}** |")
    discussion = _discussion(rep)
    lines += ["", "## Discussion", ""]
    lines += [f"- {_md_cell(p)}" for p in discussion] or ["Every claim passes on every dataset of this run."]
    for d, why in rep.skipped:
        lines.append(f"- Skipped {d}: {why}")
    lines += ["", "## Figures", ""]
    for f in figs:
        lines += [f"### {f.title}", "", f"![{f.title}](figures/{f.file})", ""]
    lines += ["## Runs", "", "The main pair of each seed (open one in the dashboard with `?pair=<id>`):", ""]
    for r in rep.datasets:
        lines.append(f"- {r.dataset}: " + ", ".join(f"`{p}`" for p in r.pair_ids))
    lines += ["", f"Plan: `{json.dumps(m['plan'])}`", ""]
    return "\n".join(lines)


def report_html(rep: Reproduction, figs: list[Figure]) -> str:
    m, esc = _meta(rep), html.escape
    rows = "".join(
        f"<tr><td>{c.number}</td><td>{esc(c.statement)}</td><td>{esc(c.measured)}</td><td>{esc(c.test)}</td>"
        f"<td class='{c.verdict.replace(' ', '-').lower()}'>{c.verdict}</td></tr>" for c in rep.claims)
    discussion = "".join(f"<li>{esc(p)}</li>" for p in _discussion(rep)) or "<li>Every claim passes.</li>"
    discussion += "".join(f"<li>Skipped {esc(d)}: {esc(why)}</li>" for d, why in rep.skipped)
    pics = "".join(f"<h3>{esc(f.title)}</h3><img src='figures/{esc(f.file)}' alt='{esc(f.title)}'>" for f in figs)
    runs = "".join(f"<li>{esc(r.dataset)}: {', '.join(f'<code>{p}</code>' for p in r.pair_ids)}</li>"
                   for r in rep.datasets)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>lossland reproduction</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;font-size:14px}"
        ".pass{color:#1a7f37;font-weight:bold}.fail{color:#d62728;font-weight:bold}.no-data{color:#888}"
        "img{max-width:100%}</style></head><body>"
        f"<h1>lossland reproduces Wu, Zhu &amp; E (2017)</h1><p>Scale <b>{esc(m['scale'])}</b> · datasets "
        f"<b>{esc(', '.join(m['datasets']))}</b> · {m['seeds']} seed(s) · started {esc(m['started'])} · took "
        f"<b>{_minutes(rep.seconds)}</b> on {esc(m['machine'])}; {esc(m['code'])}.</p>"
        "<h2>Claims</h2><table><tr><th>#</th><th>claim</th><th>measured</th><th>test</th><th>result</th></tr>"
        f"{rows}</table><h2>Discussion</h2><ul>{discussion}</ul><h2>Figures</h2>{pics}<h2>Runs</h2><ul>{runs}</ul>"
        "</body></html>")


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
            (tmp / "figures" / f.file).write_bytes(charts.to_png(f.chart))
        (tmp / "report.md").write_text(report_markdown(rep, figs), encoding="utf-8")
        (tmp / "report.html").write_text(report_html(rep, figs), encoding="utf-8")
        payload = {"meta": _meta(rep), "claims": [c.to_dict() for c in rep.claims],
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
    """A report's claims.json (meta, claims, figures); ValueError naming the file when it is unreadable."""
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
