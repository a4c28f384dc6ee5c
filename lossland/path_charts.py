"""Charts of paths: the optimizer's trajectory on its PCA plane, and the escape probability against the
radius with its 50% crossing. Pure functions of DataFrames (as `charts`), shared by the pages and the report.

The trajectory is drawn over the loss contours of its own plane (contour_charts.contour_chart: filled bands
and labelled isolines at log-spaced levels; `plane_levels` puts both minima on one scale), from the
initialisation (epoch 0) to the minimum at the origin, in the order of the epochs; its axes name the
share of the path's variance each direction explains. The escape chart draws
each radius's fraction of escaped trials with its exact (Clopper–Pearson) 95% interval and marks the
estimated 50% radius of each minimum.
"""

from __future__ import annotations

import math

import altair as alt
import numpy as np
import pandas as pd

from . import contours
from .charts import ROLE_SCALE, _require
from .contour_charts import contour_chart
from .pairs import ROLE_COLORS
from .stats import CONFIDENCE, clopper_pearson


def explained_title(axis: int, ratio: float) -> str:
    """'PC1 (87.3%)': a PCA axis with the share of the path's variance it explains."""
    return f"PC{axis} ({ratio:.1%})"


def plane_levels(frame: pd.DataFrame, metric: str = "clean_loss") -> tuple[np.ndarray, np.ndarray]:
    """(isoline levels, band edges) over every plane of a trajectory frame: one colour scale for both minima."""
    grids = [contours.grid_of(g, metric) for _, g in frame[frame["part"] == "pca"].groupby("role")]
    return contours.shared_levels(grids)


def trajectory_chart(frame: pd.DataFrame, role: str, metric: str = "clean_loss",
                     levels: tuple[np.ndarray, np.ndarray] | None = None, title: str | None = None) -> alt.LayerChart:
    """The path of `role`'s run from its initialisation to the minimum on its PCA plane over the contours of
    the loss there (frame: role, part 'pca'/'path', alpha, beta, metric, epoch, explained_1, explained_2, as
    analyses.get(TrajectorySpec) returns it); `levels` the contours' (levels, edges) (default: this plane's)."""
    _require(frame, ["role", "part", "alpha", "beta", metric, "epoch", "explained_1", "explained_2"],
             "trajectory_chart")
    mine = frame[frame["role"] == role]
    grid, path = mine[mine["part"] == "pca"], mine[mine["part"] == "path"].sort_values("epoch")
    if not len(grid) or not len(path):
        raise ValueError(f"trajectory_chart: no trajectory of the {role} minimum in the frame")
    e1, e2 = float(path["explained_1"].iloc[0]), float(path["explained_2"].iloc[0])
    axes = (explained_title(1, e1), explained_title(2, e2))
    lv, edges = levels if levels is not None else contours.shared_levels([contours.grid_of(grid, metric)])
    back = contour_chart(contours.contours(contours.grid_of(grid, metric), lv, edges), role, metric, axes=axes)
    x, y = alt.X("alpha:Q", title=axes[0]), alt.Y("beta:Q", title=axes[1])
    p = path.assign(epoch=path["epoch"].astype(int), order=np.arange(len(path)),
                    loss=path["clean_loss"].astype(float))
    tips = [alt.Tooltip("epoch:Q"), alt.Tooltip("loss:Q", title="clean loss", format=".3g"),
            alt.Tooltip("alpha:Q", format=".3g"), alt.Tooltip("beta:Q", format=".3g")]
    base = alt.Chart(p).encode(x=x, y=y, order=alt.Order("order:Q"))
    halo = base.mark_line(color="white", strokeWidth=4, opacity=0.8)
    line = base.mark_line(color=ROLE_COLORS[role], strokeWidth=2).encode(tooltip=tips)
    dots = base.mark_circle(color=ROLE_COLORS[role], size=30, opacity=1, stroke="white", strokeWidth=0.5).encode(
        tooltip=tips)
    ends = pd.DataFrame({"alpha": [float(p["alpha"].iloc[0]), 0.0], "beta": [float(p["beta"].iloc[0]), 0.0],
                         "label": ["init (epoch 0)", f"minimum (epoch {int(p['epoch'].iloc[-1])})"]})
    start = alt.Chart(ends.iloc[:1]).mark_point(filled=True, size=110, color="white", stroke="black").encode(
        x=x, y=y, tooltip=["label:N"])
    label = alt.Chart(ends).encode(x=x, y=y, text="label:N")
    halo_text = label.mark_text(dy=-12, fontWeight="bold", stroke="#ffffff", strokeWidth=3, strokeOpacity=0.8)
    text = label.mark_text(dy=-12, fontWeight="bold", color="#1a1a1a")
    about = f"optimizer trajectory of the {role} minimum on its PCA plane: {axes[0]}, {axes[1]}"
    return alt.layer(*back.layer, halo, line, dots, start, halo_text, text,
                     title=title or f"{role} minimum: optimizer trajectory", description=about
                     ).properties(width=300, height=300)


# --- the escape transition -------------------------------------------------------------------------

def escape_points(trials: pd.DataFrame) -> pd.DataFrame:
    """Per role and radius: escaped k of n trials, p = k/n and its Clopper–Pearson interval (lo, hi)."""
    _require(trials, ["role", "radius", "escaped"], "escape_points")
    g = trials.assign(escaped=trials["escaped"].astype(bool)).groupby(["role", "radius"], as_index=False).agg(
        k=("escaped", "sum"), n=("escaped", "size"))
    bounds = [clopper_pearson(int(k), int(n)) for k, n in zip(g["k"], g["n"], strict=True)]
    return g.assign(p=g["k"] / g["n"], lo=[b[0] for b in bounds], hi=[b[1] for b in bounds])


def _r50_text(row) -> str:
    if bool(row["bracketed"]):
        return f"{row['role']}: r₅₀ ≈ {row['r50']:.3g}"
    if math.isfinite(row["hi"]):
        k, n = int(row.get("zero_k", 0)), int(row.get("zero_n", 0))
        zero = "" if not n else (f"; escapes unperturbed ({k}/{n} at r = 0)" if k >= n / 2 else f"; r = 0: {k}/{n}")
        return f"{row['role']}: r₅₀ < {row['hi']:.3g}{zero}"
    return f"{row['role']}: r₅₀ > {row['lo']:.3g}"


def escape_transition_chart(trials: pd.DataFrame, transitions: pd.DataFrame,
                            title: str = "Where escape becomes likely") -> alt.LayerChart:
    """Escape probability against the relative radius (log) per role, with exact binomial intervals, the
    50% line, and each role's estimated 50% radius as a dashed rule (transitions: role, lo, hi, r50,
    bracketed, zero_k, zero_n, as path_analyses.escape_transitions gives; an unbracketed role's rule stands
    at the bound its search reached, and its label says which side the crossing lies and, below the smallest
    radius, what the unperturbed control r = 0 did)."""
    _require(transitions, ["role", "lo", "hi", "r50", "bracketed"], "escape_transition_chart")
    pts = escape_points(trials[trials["radius"] > 0])  # the control r = 0 has no place on a log axis: in its label
    # the roles' bars side by side at a shared radius: 3% apart on the log axis
    pts = pts.assign(at=pts["radius"] * np.where(pts["role"] == "good", 0.985, 1.015))
    x = alt.X("at:Q", title="relative perturbation radius r (log)", scale=alt.Scale(type="log"))
    color = alt.Color("role:N", scale=ROLE_SCALE, title="role")
    tips = ["role", alt.Tooltip("radius:Q", format=".4g"), "k", "n", alt.Tooltip("p:Q", format=".0%"),
            alt.Tooltip("lo:Q", format=".0%", title=f"{CONFIDENCE:.0%} low"),
            alt.Tooltip("hi:Q", format=".0%", title=f"{CONFIDENCE:.0%} high")]
    base = alt.Chart(pts).encode(x=x, color=color)
    bars = base.mark_rule(strokeWidth=2, opacity=0.5).encode(y=alt.Y("lo:Q"), y2="hi:Q")
    line = base.mark_line(point=True).encode(
        y=alt.Y("p:Q", title=f"escape probability ({CONFIDENCE:.0%} Clopper–Pearson)",
                scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")), order="radius:Q", tooltip=tips)
    half = alt.Chart(pd.DataFrame({"p": [0.5]})).mark_rule(strokeDash=[2, 2], color="gray").encode(y="p:Q")
    t = transitions.assign(at=[r["r50"] if r["bracketed"] else (r["hi"] if math.isfinite(r["hi"]) else r["lo"])
                               for _, r in transitions.iterrows()])
    t = t[np.isfinite(t["at"].astype(float))]
    t = t.assign(label=[_r50_text(r) for _, r in t.iterrows()])
    rules = alt.Chart(t).mark_rule(strokeDash=[6, 3], strokeWidth=2).encode(
        x=alt.X("at:Q"), color=color, tooltip=["label:N"])  # `at`: the 50% radius, on the points' axis
    heading = alt.Title(title, subtitle=list(t["label"]) or ["no minimum's search finished"])
    return alt.layer(bars, line, half, rules, title=heading).properties(width=420, height=260)
