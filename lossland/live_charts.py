"""Training curves as they grow: a pure function of curve rows (role, epoch and the six metrics)."""

from __future__ import annotations

import math

import altair as alt
import pandas as pd

from .pairs import METRICS, ROLE_COLORS, ROLES

SETS = {"clean": "clean train", "attack": "attack", "test": "test"}


def live_curves_chart(df: pd.DataFrame, title: str = "Training so far", max_epochs: int = 500) -> alt.HConcatChart:
    """Loss (log axis) and accuracy per epoch, a colour per role and a dash per set (clean train, attack,
    test). df: role, epoch and the metrics of pairs.METRICS, one row per run and epoch; NaN values (an empty
    set) and non-positive losses are left out. Above max_epochs epochs every k-th is drawn (and the last),
    so a page that redraws it every second sends a bounded chart."""
    missing = [c for c in ("role", "epoch", *METRICS) if c not in df.columns]
    if missing:
        raise ValueError(f"live_curves_chart needs columns role, epoch, {', '.join(METRICS)}; missing {missing}")
    step = max(1, math.ceil(df["epoch"].max() / max_epochs)) if len(df) else 1
    last = df.groupby("role")["epoch"].transform("max")
    df = df[(df["epoch"] % step == 0) | (df["epoch"] == last) | (df["epoch"] == 1)]
    long = df.melt(id_vars=["role", "epoch"], value_vars=list(METRICS), var_name="metric", value_name="value")
    long = long.dropna(subset=["value"])
    parts = long["metric"].str.rpartition("_")
    long = long.assign(set=parts[0].map(SETS), quantity=parts[2])
    color = alt.Color("role:N", scale=alt.Scale(domain=list(ROLES), range=[ROLE_COLORS[r] for r in ROLES]))
    dash = alt.StrokeDash("set:N", sort=list(SETS.values()), title="set")
    panels = []
    for quantity, label, scale in (("loss", "loss (log)", alt.Scale(type="log")),
                                   ("acc", "accuracy", alt.Scale(domain=[0, 1]))):
        part = long[(long["quantity"] == quantity) & ((long["value"] > 0) | (quantity == "acc"))]
        panels.append(alt.Chart(part, title=label).mark_line().encode(
            x=alt.X("epoch:Q"), y=alt.Y("value:Q", title=label, scale=scale), color=color, strokeDash=dash,
            detail="metric:N", tooltip=["role", "set", "epoch", alt.Tooltip("value:Q", format=".4g")],
        ).properties(width=320, height=220))
    return alt.hconcat(*panels, title=title)
