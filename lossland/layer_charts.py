"""The per-layer curvature chart: a pure function of layers.LayerResult.to_frame() rows with a role."""

from __future__ import annotations

import altair as alt
import pandas as pd

from .pairs import ROLE_COLORS, ROLES

LAYER_COLUMNS = ["idx", "block", "role", "n_params", "top_eigenvalue", "trace", "trace_stderr", "trace_method"]


def layer_chart(df: pd.DataFrame, title: str = "Curvature per parameter block (diagonal Hessian blocks)"
                ) -> alt.HConcatChart:
    """Two panels of bars per block in the model's order, good beside bad: λ₁(H_bb) on a symlog axis
    (it may be negative) and tr(H_bb) with ±2 standard-error rules (0 where exact)."""
    missing = [c for c in LAYER_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"layer_chart needs columns {LAYER_COLUMNS}; missing {missing}")
    d = df.assign(lo=df["trace"] - 2 * df["trace_stderr"].fillna(0), hi=df["trace"] + 2 * df["trace_stderr"].fillna(0))
    order = list(dict.fromkeys(d.sort_values("idx")["block"]))
    x = alt.X("block:N", sort=order, title="parameter block", axis=alt.Axis(labelAngle=-30))
    color = alt.Color("role:N", scale=alt.Scale(domain=list(ROLES), range=[ROLE_COLORS[r] for r in ROLES]))
    tips = ["role", "block", "n_params", alt.Tooltip("top_eigenvalue:Q", format=".5g", title="λ₁"),
            alt.Tooltip("trace:Q", format=".5g"), alt.Tooltip("trace_stderr:Q", format=".2g", title="s.e."),
            "trace_method"]
    base = alt.Chart(d).encode(x=x, xOffset=alt.XOffset("role:N", sort=list(ROLES)), color=color, tooltip=tips)
    top = base.mark_bar().encode(y=alt.Y("top_eigenvalue:Q", title="top eigenvalue λ₁ (symlog)",
                                         scale=alt.Scale(type="symlog")))
    top = top.properties(title="top eigenvalue of each block", width=320, height=240)
    bars = base.mark_bar().encode(y=alt.Y("trace:Q", title="trace"))
    rules = base.mark_rule(color="black").encode(y="lo:Q", y2="hi:Q")
    trace = alt.layer(bars, rules).properties(title="trace of each block (± 2 s.e.)", width=320, height=240)
    return alt.hconcat(top, trace, title=title)
