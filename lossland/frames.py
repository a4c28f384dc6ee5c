"""Shapes stored results into the frames that pages, the CLI and the report draw or print.

The good-vs-bad comparison is written once here: `ROWS` are its quantities in reading order,
`comparison(records, style)` makes the table (rows = quantities, columns = roles, cells = text) from
each role's record (a mapping of those quantities), and a `Style` is how a face writes it: the
dashboard's words or the CLI's, and how many digits. A row shows when some record holds its key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .lanczos import DensityResult
from .pairs import ROLES


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
    Row("frobenius_sq", "‖H‖_F²", "number"),
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


def records(runs: pd.DataFrame, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Each role's `keys` of a pair's runs table as plain values, by role (a missing role is left out)."""
    r = runs.set_index("role")
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


def comparison(records: Mapping[str, Mapping[str, Any]], style: Style = DASHBOARD) -> pd.DataFrame:
    """The good-vs-bad table: one row per quantity of `ROWS` that some role's record holds, in that
    order; columns good and bad as text, "—" where a role or its number is missing."""
    recs = [records.get(role) or {} for role in ROLES]
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
    return pd.DataFrame(cells, index=labels, columns=list(ROLES))


def pair_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The comparison as the dashboard and the HTML page show it, from the pair's two `runs` rows."""
    with_norm = runs.assign(frobenius=runs["frobenius_sq"].astype(float).clip(lower=0) ** 0.5)
    return comparison(records(with_norm, DASHBOARD_KEYS), DASHBOARD)


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
    r = runs.set_index("role")
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


def spectrum_frame(spectra: pd.DataFrame, runs: pd.DataFrame, kind: str = "lanczos") -> pd.DataFrame:
    """One kind of stored spectrum (top-k Lanczos or the exact one) with roles, ordered by role and index."""
    s = with_roles(spectra, runs)
    if "kind" in s.columns:
        s = s[s["kind"] == kind]
    return s.sort_values(["role", "idx"])


def estimate_frame(estimates: pd.DataFrame, runs: pd.DataFrame, names: Iterable[str]) -> pd.DataFrame:
    """The stored estimates called `names` (trace, frobenius_sq, trace_exact, ...) with roles."""
    e = with_roles(estimates, runs)
    return e[e["name"].isin(list(names))]


def log_volume_frame(estimates: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The log-volume proxy over the top k eigenvalues, for each k: columns role, k, value, eps."""
    return estimate_frame(estimates, runs, ["log_volume_k"])[["role", "k", "value", "eps"]]


def density_frame(densities: pd.DataFrame, runs: pd.DataFrame, sigma: float, n_points: int = 400) -> pd.DataFrame:
    """Re-smooth stored SLQ nodes and weights (no new HVPs) on one grid with one kernel width for all
    roles — sigma times the joint spectral range — so the curves compare. Columns x, density, role."""
    d = with_roles(densities, runs)
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
