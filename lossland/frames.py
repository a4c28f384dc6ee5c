"""Shapes stored results into the frames that pages, the CLI and the report draw or print."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .lanczos import DensityResult

COMPARE_ROWS = [
    ("clean-train loss", "clean_loss", "{:.2e}"), ("clean-train accuracy", "clean_acc", "{:.1%}"),
    ("attack accuracy", "attack_acc", "{:.1%}"), ("test accuracy", "test_acc", "{:.1%}"),
    ("top eigenvalue λ₁", "top_eigenvalue", "{:.4g}"), ("trace", "trace", "{:.4g}"),
    ("Frobenius norm ‖H‖_F", "frobenius", "{:.4g}"), ("log-volume", "log_volume", "{:.4g}"),
    ("epochs", "epochs", "{:.0f}"), ("status", "status", "{}"),
]


def with_roles(df: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Add the `role` column to a per-run table (keyed by run_id) when it lacks one."""
    if "role" in df.columns:
        return df
    return df.merge(runs[["run_id", "role"]], on="run_id", how="left")


def _cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def pair_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Rows = quantities, columns = good, bad (formatted strings), from the pair's two `runs` rows."""
    r = runs.set_index("role")
    r = r.assign(frobenius=r["frobenius_sq"].astype(float).clip(lower=0) ** 0.5)
    out = {role: [_cell(r.loc[role, key] if role in r.index else None, fmt) for _, key, fmt in COMPARE_ROWS]
           for role in ("good", "bad")}
    return pd.DataFrame(out, index=[label for label, _, _ in COMPARE_ROWS])


def pair_sentence(runs: pd.DataFrame) -> str:
    """What the numbers show, in one sentence."""
    r = runs.set_index("role")
    if not {"good", "bad"} <= set(r.index):
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
    lam_g, lam_b = g.get("top_eigenvalue"), b.get("top_eigenvalue")
    if lam_g is not None and lam_b is not None and not (pd.isna(lam_g) or pd.isna(lam_b)) and lam_g > 0:
        ratio = lam_b / lam_g
        dv = g["log_volume"] - b["log_volume"]
        text += (f"; it sits in a {'sharper' if ratio > 1 else 'flatter'} valley — top eigenvalue {ratio:.1f}× "
                 f"the good one's, trace {_ratio(b['trace'], g['trace'])}, and a basin log-volume "
                 f"{abs(dv):.1f} {'smaller' if dv > 0 else 'larger'}")
    return text + "."


def _ratio(a, b) -> str:
    try:
        return f"{a / b:.1f}×" if b else "—"
    except TypeError:
        return "—"


def spectrum_frame(spectra: pd.DataFrame, runs: pd.DataFrame, kind: str = "lanczos") -> pd.DataFrame:
    s = with_roles(spectra, runs)
    if "kind" in s.columns:
        s = s[s["kind"] == kind]
    return s.sort_values(["role", "idx"])


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
