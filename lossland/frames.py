"""Shapes stored results into the frames that pages, the CLI and the report draw or print.

The good-vs-bad comparison is written once here: `ROWS` are its quantities in reading order,
`comparison(records, style)` makes the table (rows = quantities, columns = roles, cells = text) from
each role's record (a mapping of those quantities), and a `Style` is how a face writes it: the
dashboard's words or the CLI's, and how many digits. A row shows when some record holds its key.

Stored rows are read tolerantly (a store may hold anything its schema allows: timestamps past year 9999,
NaN, malformed JSON, two runs of one role): `when`, `stored_json`, `config_fields` and `by_role` turn
such values into text or leave them out, never into an error.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .lanczos import DensityResult
from .pairs import ROLES, is_run_id, role_of


@dataclass(frozen=True)
class Row:
    """One quantity of the comparison: `key` in a record, its label (`short` where the CLI says it
    shorter) and its kind of number. A record holding `<key>_stderr` too prints "value ± s.e."; `detail`
    is filled from the first record that has its fields and appended to the label."""

    key: str
    label: str
    kind: str  # text, count, seconds, loss, accuracy, number, eigenvalues (a list: one row λᵢ each)
    short: str | None = None
    detail: str | None = None


ROWS: tuple[Row, ...] = (
    Row("status", "status", "text"),
    Row("epochs", "epochs", "count"),
    Row("seconds", "seconds", "seconds"),
    Row("clean_loss", "clean-train loss", "loss"),
    Row("clean_acc", "clean-train accuracy", "accuracy", short="clean-train acc"),
    Row("attack_acc", "attack accuracy", "accuracy", short="attack acc"),
    Row("test_acc", "test accuracy", "accuracy", short="test acc"),
    Row("top_eigenvalue", "top eigenvalue λ₁", "number", short="top eigenvalue"),
    Row("top_eigenvalues", "λ", "eigenvalues"),
    Row("trace", "trace", "number"),
    Row("frobenius", "Frobenius norm ‖H‖_F", "number"),
    Row("log_volume", "log-volume", "number", detail=" (k={log_volume_k}, ε={eps:g})"),
    Row("stop_reason", "stop reason", "text"),
)
_FORMATS = {"text": "{}", "count": "{:.0f}", "seconds": "{:.2f}", "loss": "{:.2e}"}


@dataclass(frozen=True)
class Style:
    """How one face writes the comparison: the CLI's short labels or not, digits after the point of an
    accuracy in percent, significant digits of a curvature number."""

    short: bool
    percent: int
    digits: int

    def format(self, kind: str) -> str:
        if kind == "accuracy":
            return f"{{:.{self.percent}%}}"
        if kind in ("number", "eigenvalues"):
            return f"{{:.{self.digits}g}}"
        return _FORMATS[kind]


DASHBOARD = Style(short=False, percent=1, digits=4)  # the overview page and the pair's HTML page
CLI = Style(short=True, percent=2, digits=4)  # `train`: a fresh pair, with standard errors
CLI_STORED = Style(short=True, percent=2, digits=5)  # `run` and `show`: a stored pair's runs rows

# The runs columns the dashboard compares (frobenius is √frobenius_sq, see `pair_table`).
DASHBOARD_KEYS = ("status", "epochs", "clean_loss", "clean_acc", "attack_acc", "test_acc", "top_eigenvalue",
                  "trace", "frobenius", "log_volume")


def missing(value: Any) -> bool:
    """None, NaN, NA or NaT (and never an error for a list or a string)."""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def plain(value: Any) -> Any:
    """A stored value as plain Python: None where it is missing, numpy scalars as Python numbers."""
    if missing(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def when(value: Any) -> str:
    """A stored timestamp as 'YYYY-MM-DD HH:MM' (UTC), "—" where it is missing. Written from its parts, so
    the years DuckDB holds and Python's datetime can't (its 'infinity', year 10000 and on) are text too."""
    if missing(value):
        return "—"
    try:
        return f"{value.year:04d}-{value.month:02d}-{value.day:02d} {value.hour:02d}:{value.minute:02d}"
    except (AttributeError, TypeError, ValueError):
        return str(value)


def stored_json(text: Any) -> Any:
    """A stored JSON column's value, or None where it isn't JSON (malformed, empty, nested past Python's
    recursion limit, not text)."""
    if not isinstance(text, str):
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


SHOWN_CHARS = 1_000  # of one stored value in a table cell


def _shown(value: Any) -> str:
    try:
        text = value if isinstance(value, str) else str(value)
    except RecursionError:
        text = "(nested too deep to show)"
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"


def config_fields(config_json: Any) -> dict[str, str]:
    """A stored config as flat "section.field" -> text, for comparing runs side by side; a stored value
    that is not a JSON object is one field saying so."""
    config = stored_json(config_json)
    if not isinstance(config, dict):
        return {"config": "not a readable config (malformed JSON in config_json)"}
    out: dict[str, str] = {}
    for section, body in config.items():
        if isinstance(body, dict) and body:
            out |= {f"{section}.{name}": _shown(value) for name, value in body.items()}
        else:
            out[str(section)] = _shown(body)
    return out


def by_role(runs: pd.DataFrame) -> pd.DataFrame:
    """A pair's runs indexed by role, one row per role at most (the first where a store holds two runs of
    one role); a role it lacks is left out."""
    return runs.drop_duplicates("role").set_index("role")


def records(runs: pd.DataFrame, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Each role's `keys` of a pair's runs table as plain values, by role (a missing role is left out)."""
    r = by_role(runs)
    keys = list(keys)
    return {role: {k: plain(r.loc[role, k]) for k in keys} for role in ROLES if role in r.index}


def cell(value: Any, fmt: str) -> str:
    """A number as text with `fmt` ("{:.1%}"), "—" where it is missing."""
    if missing(value):
        return "—"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def ratio(a: Any, b: Any) -> float | None:
    """a / b, None where either is missing or b is zero."""
    return None if missing(a) or missing(b) or not b else a / b


def _text(row: Row, rec: Mapping[str, Any], style: Style) -> str:
    text = cell(rec.get(row.key), style.format(row.kind))
    stderr = rec.get(f"{row.key}_stderr")
    return text if text == "—" or missing(stderr) else f"{text} ± {cell(stderr, '{:.2g}')}"


def _label(row: Row, style: Style, recs: Sequence[Mapping[str, Any]]) -> str:
    label = row.short if style.short and row.short else row.label
    for rec in recs if row.detail else ():
        try:
            return label + row.detail.format(**rec)
        except (KeyError, TypeError, ValueError):
            continue
    return label


def comparison(records: Mapping[str, Mapping[str, Any]], style: Style = DASHBOARD,
               columns: Sequence[str] = ROLES) -> pd.DataFrame:
    """The good-vs-bad table: one row per quantity of `ROWS` that some role's record holds, in that
    order; columns good and bad (or the given `columns` of records) as text, "—" where a role or its
    number is missing."""
    recs = [records.get(c) or {} for c in columns]
    held = set().union(*recs)
    labels, cells = [], []
    for row in (r for r in ROWS if r.key in held):
        if row.kind == "eigenvalues":
            lists = [list(rec.get(row.key) or ()) for rec in recs]
            for i in range(max(map(len, lists))):
                labels.append(f"{row.label}{i + 1}")
                cells.append([cell(v[i] if i < len(v) else None, style.format(row.kind)) for v in lists])
        else:
            labels.append(_label(row, style, recs))
            cells.append([_text(row, rec, style) for rec in recs])
    return pd.DataFrame(cells, index=labels, columns=list(columns))


def pair_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The comparison as the dashboard and the HTML page show it, from the pair's two `runs` rows."""
    with_norm = runs.assign(frobenius=runs["frobenius_sq"].astype(float).clip(lower=0) ** 0.5)
    return comparison(records(with_norm, DASHBOARD_KEYS), DASHBOARD)


def runs_comparison(runs: pd.DataFrame, style: Style = DASHBOARD) -> pd.DataFrame:
    """Runs side by side, a column per run (its run id, in the order given): pair, role, tags and note, the
    comparison's numbers (as `pair_table`), then every config field ("—" where a config lacks it). The
    Runs page's comparison and `lossland compare` show this table; `differing` marks its rows that differ."""
    runs = runs.drop_duplicates("run_id")
    ids = list(runs["run_id"])
    with_norm = runs.assign(frobenius=runs["frobenius_sq"].astype(float).clip(lower=0) ** 0.5)
    recs = {r["run_id"]: {k: plain(r[k]) for k in DASHBOARD_KEYS} for _, r in with_norm.iterrows()}
    about = [k for k in ("pair_id", "role", "tags", "note") if k in runs.columns]
    head = pd.DataFrame([[_shown(v) if not missing(v) else "—" for v in runs[k]] for k in about],
                        index=[k.removesuffix("_id") for k in about], columns=ids)
    cfg = pd.DataFrame({r["run_id"]: config_fields(r["config_json"]) for _, r in runs.iterrows()}, columns=ids)
    return pd.concat([head, comparison(recs, style, columns=ids), cfg.fillna("—")])


def matching(runs: pd.DataFrame, text: str) -> pd.Series:
    """True for the runs whose run id, pair id, tags or note hold `text` (ignoring case)."""
    cols = [c for c in ("run_id", "pair_id", "tags", "note") if c in runs.columns]
    hay = runs[cols].astype(object).fillna("").astype(str).agg(" ".join, axis=1).str.lower()
    return hay.str.contains(text.strip().lower(), regex=False)


def differing(table: pd.DataFrame) -> pd.Series:
    """True for the rows of a side-by-side table whose cells are not all equal."""
    return table.nunique(axis=1) > 1


EXTERNAL = "external"  # the column of an external run (lossland.external) beside a pair's good and bad


def beside(external: pd.DataFrame, pair: pd.DataFrame | None = None) -> pd.DataFrame:
    """An external run's comparison table (from its one runs row), with a lossland pair's good and bad
    runs beside it when given."""
    rows = {EXTERNAL: external.assign(role=EXTERNAL)}
    if pair is not None:
        rows["pair"] = pair
    both = pd.concat(rows.values(), ignore_index=True)
    both = both.assign(frobenius=both["frobenius_sq"].astype(float).clip(lower=0) ** 0.5)
    r = both.drop_duplicates("role").set_index("role")
    columns = [c for c in (EXTERNAL, *ROLES) if c in r.index]
    recs = {c: {k: plain(r.loc[c, k]) for k in DASHBOARD_KEYS} for c in columns}
    return comparison(recs, DASHBOARD, columns)


def labelled(frame: pd.DataFrame, runs: pd.DataFrame, label: str | None = None) -> pd.DataFrame:
    """A per-run frame with a `run` column: `label` for every row (an external run), else each row's role."""
    f = with_roles(frame, runs)
    return f.assign(run=label if label is not None else f["role"])


@dataclass(frozen=True)
class Headline:
    """One number above the comparison (a metric tile): its text, and its change from the good run."""

    label: str
    value: str
    delta: str | None = None
    lower_is_better: bool = False


def headlines(runs: pd.DataFrame) -> tuple[Headline, ...]:
    """Test accuracy and top eigenvalue of each role; the bad one's beside the good one's."""
    r = records(runs, ("test_acc", "top_eigenvalue"))
    g, b = r.get("good", {}), r.get("bad", {})
    gap = None if missing(g.get("test_acc")) or missing(b.get("test_acc")) else b["test_acc"] - g["test_acc"]
    times = ratio(b.get("top_eigenvalue"), g.get("top_eigenvalue"))
    return (Headline("test accuracy · good", cell(g.get("test_acc"), "{:.1%}")),
            Headline("test accuracy · bad", cell(b.get("test_acc"), "{:.1%}"),
                     None if gap is None else cell(gap, "{:+.1%}")),
            Headline("top eigenvalue · good", cell(g.get("top_eigenvalue"), "{:.4g}")),
            Headline("top eigenvalue · bad", cell(b.get("top_eigenvalue"), "{:.4g}"),
                     None if times is None else f"×{times:.1f}", lower_is_better=True))


def pair_sentence(runs: pd.DataFrame) -> str:
    """What the numbers show, in one sentence."""
    r = by_role(runs)
    if not set(ROLES) <= set(r.index):
        return "This pair is incomplete: one of its two runs is missing."
    g, b = r.loc["good"], r.loc["bad"]
    if "failed" in (g["status"], b["status"]):
        return "A run of this pair failed; see its error in the Runs page."
    fit = g["clean_acc"] >= 0.999 and b["clean_acc"] >= 0.999
    gap = g["test_acc"] - b["test_acc"]
    text = (f"Both minima fit the clean training set ({g['clean_acc']:.0%} and {b['clean_acc']:.0%}, clean loss "
            f"{g['clean_loss']:.1e} vs {b['clean_loss']:.1e})" if fit else
            f"The minima do not both fit the clean set (clean accuracy {g['clean_acc']:.1%} vs {b['clean_acc']:.1%})")
    text += f", yet the bad one's test accuracy is {gap:.1%} {'lower' if gap >= 0 else 'higher'}"
    sharper = ratio(b.get("top_eigenvalue"), g.get("top_eigenvalue"))
    if sharper is not None and g["top_eigenvalue"] > 0:
        trace = ratio(b["trace"], g["trace"])
        dv = g["log_volume"] - b["log_volume"]
        text += (f"; it sits in a {'sharper' if sharper > 1 else 'flatter'} valley — top eigenvalue {sharper:.1f}× "
                 f"the good one's, trace {'—' if trace is None else f'{trace:.1f}×'}, and a basin log-volume "
                 f"{abs(dv):.1f} {'smaller' if dv > 0 else 'larger'}")
    return text + "."


# --- per-run tables for the charts ----------------------------------------------------------------

def with_roles(df: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Add the `role` column to a per-run table (keyed by run_id) when it lacks one."""
    if "role" in df.columns:
        return df
    return df.merge(runs[["run_id", "role"]], on="run_id", how="left")


def with_run_roles(df: pd.DataFrame) -> pd.DataFrame:
    """Add the `role` column to a per-run table from each row's run id (`<pair_id>-good|bad`); rows whose
    run id names no role (strays in a damaged store) are left out."""
    roles = pd.Series([role_of(r) if isinstance(r, str) and is_run_id(r) else None for r in df["run_id"]],
                      index=df.index, dtype=object)
    return df.assign(role=roles)[roles.notna()]


def one_spectrum(df: pd.DataFrame, runs: pd.DataFrame, spectrum_id: str | None = None) -> pd.DataFrame:
    """The rows of one spectrum per run, where a run holds several (spectra, densities or estimates): those of
    `spectrum_id`, else of the run's config's (runs.spectrum_id), else of its first; rows of no spectrum
    (analyses' estimates, a store from before schema 7) stay."""
    if "spectrum_id" not in df.columns or df.empty:
        return df
    own = dict(zip(runs["run_id"], runs["spectrum_id"], strict=True)) if "spectrum_id" in runs.columns else {}
    measured = df[df["spectrum_id"].notna()]
    held = measured.groupby("run_id")["spectrum_id"].agg(lambda ids: sorted(set(ids)))
    chosen = {rid: next((c for c in (spectrum_id, own.get(rid)) if not missing(c) and c in ids), ids[0])
              for rid, ids in held.items()}
    keep = df["spectrum_id"].isna() | (df["spectrum_id"] == df["run_id"].map(chosen))
    return df[keep.fillna(False).astype(bool)]


def spectrum_frame(spectra: pd.DataFrame, runs: pd.DataFrame, kind: str = "lanczos",
                   spectrum_id: str | None = None) -> pd.DataFrame:
    """One kind of stored spectrum (top-k Lanczos or the exact one) with roles, ordered by role and index; of
    a run's several spectra, one (see `one_spectrum`)."""
    s = with_roles(one_spectrum(spectra, runs, spectrum_id), runs)
    if "kind" in s.columns:
        s = s[s["kind"] == kind]
    return s.sort_values(["role", "idx"])


def estimate_frame(estimates: pd.DataFrame, runs: pd.DataFrame, names: Iterable[str],
                   spectrum_id: str | None = None) -> pd.DataFrame:
    """The stored estimates called `names` (trace, frobenius_sq, trace_exact, ...) with roles; of a run's
    several spectra, one's (see `one_spectrum`)."""
    e = with_roles(one_spectrum(estimates, runs, spectrum_id), runs)
    return e[e["name"].isin(list(names))]


def curvature_frame(estimates: pd.DataFrame, runs: pd.DataFrame, exact: bool = False,
                    spectrum_id: str | None = None) -> pd.DataFrame:
    """Trace and ‖H‖_F with roles (name "trace" / "‖H‖_F"; `exact`: the dense Hessian's, where stored): the
    store keeps the estimate of ‖H‖_F² = tr(H²); shown is its root, the standard error by the delta method."""
    names = ["trace_exact", "frobenius_sq_exact"] if exact else ["trace", "frobenius_sq"]
    e = estimate_frame(estimates, runs, names, spectrum_id).copy()
    sq = e["name"] == names[1]
    norm = e.loc[sq, "value"].astype(float).clip(lower=0) ** 0.5
    if "stderr" in e.columns:
        e.loc[sq, "stderr"] = (e.loc[sq, "stderr"].astype(float) / (2 * norm)).where(norm > 0, 0.0)
    e.loc[sq, "value"] = norm
    return e.assign(name=np.where(sq, "‖H‖_F", "trace"))


def log_volume_frame(estimates: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The log-volume proxy over the top k eigenvalues, for each k: columns role, k, value, eps."""
    return estimate_frame(estimates, runs, ["log_volume_k"])[["role", "k", "value", "eps"]]


def density_frame(densities: pd.DataFrame, runs: pd.DataFrame, sigma: float, n_points: int = 400) -> pd.DataFrame:
    """Re-smooth stored SLQ nodes and weights (no new HVPs) on one grid with one kernel width for all
    roles — sigma times the joint spectral range — so the curves compare. Columns x, density, role.
    Stored nodes that are missing or not finite, and repeated (vector, idx) rows, are left out; of a run's
    several spectra, one's (see `one_spectrum`)."""
    d = with_roles(one_spectrum(densities, runs), runs)
    if not d.empty:
        d = d.dropna(subset=["role", "vector", "idx"]).drop_duplicates(["role", "vector", "idx"])
        d = d[np.isfinite(d["node"].astype(float).to_numpy(na_value=np.nan))]
    if d.empty:
        return pd.DataFrame(columns=["x", "density", "role"])
    results = {}
    for role, part in d.groupby("role"):
        nodes = part.pivot(index="vector", columns="idx", values="node").to_numpy()
        weights = part.pivot(index="vector", columns="idx", values="weight").fillna(0.0).to_numpy()
        results[role] = DensityResult(nodes=nodes, weights=weights, n_params=0, hvps=0, seconds=0.0)
    ranges = [r.spectral_range() for r in results.values()]
    lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    width = sigma * ((hi - lo) if hi > lo else max(abs(hi), 1.0))
    grid = np.linspace(lo - 5 * width, hi + 5 * width, n_points)
    frames = []
    for role, r in results.items():
        own = r.width(1.0)  # the role's own range: smooth() multiplies sigma by it
        frames.append(pd.DataFrame({"x": grid, "density": r.smooth(grid, width / own), "role": role}))
    return pd.concat(frames, ignore_index=True)


def claims_frame(found: Sequence) -> pd.DataFrame:
    """The claims table, one row per claim, from claims.Claim objects or their `to_dict()` (as claims.json
    holds them)."""
    rows = [c.to_dict() if hasattr(c, "to_dict") else c for c in found]
    return pd.DataFrame([{"#": r["number"], "claim": r["statement"], "measured": r["measured"], "test": r["test"],
                          "result": r["verdict"]} for r in rows], columns=["#", "claim", "measured", "test", "result"])
