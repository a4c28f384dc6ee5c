"""Altair chart builders: pure functions of DataFrames, shared by the pages and the report.

Good is always blue and bad always red. Eigenvalues can be negative, so spectra use a symlog
scale; densities span decades, so their axis is logarithmic.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

ROLE_COLORS = {"good": "#1f77b4", "bad": "#d62728"}
ROLE_SCALE = alt.Scale(domain=list(ROLE_COLORS), range=list(ROLE_COLORS.values()))
CURVE_METRICS = {
    "clean_loss": "clean-train loss", "clean_acc": "clean-train accuracy", "attack_loss": "attack loss",
    "attack_acc": "attack accuracy", "test_loss": "test loss", "test_acc": "test accuracy",
}


def _role_color(field: str = "role", scale: alt.Scale | None = ROLE_SCALE) -> alt.Color:
    return alt.Color(f"{field}:N", scale=scale if field == "role" else alt.Undefined, title=field)


def _require(df: pd.DataFrame, columns: list[str], chart: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{chart} needs columns {columns}; missing {missing}")


def spectrum_chart(df: pd.DataFrame, color: str = "role", title: str = "Top Hessian eigenvalues") -> alt.Chart:
    """Eigenvalue vs index, one series per `color` (df: idx, eigenvalue, role or label)."""
    _require(df, ["idx", "eigenvalue", color], "spectrum_chart")
    return alt.Chart(df, title=title).mark_line(point=True).encode(
        x=alt.X("idx:Q", title="index i (1 = largest)"),
        y=alt.Y("eigenvalue:Q", title="eigenvalue λᵢ (symlog)", scale=alt.Scale(type="symlog")),
        color=_role_color(color),
        tooltip=[color, "idx", alt.Tooltip("eigenvalue:Q", format=".6g")]
        + ([alt.Tooltip("residual:Q", format=".1e")] if "residual" in df.columns else []),
    )


def density_chart(df: pd.DataFrame, color: str = "role", floor: float = 1e-6,
                  title: str = "Spectral density (SLQ)") -> alt.Chart:
    """Smoothed spectral density on a grid (df: x, density, role), log density axis."""
    _require(df, ["x", "density", color], "density_chart")
    d = df.assign(density=df["density"].clip(lower=floor))
    return alt.Chart(d, title=title).mark_line().encode(
        x=alt.X("x:Q", title="eigenvalue λ"),
        y=alt.Y("density:Q", title="density (log)", scale=alt.Scale(type="log")),
        color=_role_color(color),
        tooltip=[color, alt.Tooltip("x:Q", format=".4g"), alt.Tooltip("density:Q", format=".3g")],
    )


def estimate_chart(df: pd.DataFrame, title: str = "Trace and Frobenius norm (± 2 s.e.)") -> alt.Chart:
    """One panel per estimate with ±2 standard-error bars (df: name, role, value, stderr)."""
    _require(df, ["name", "role", "value", "stderr"], "estimate_chart")
    d = df.assign(lo=df["value"] - 2 * df["stderr"].fillna(0), hi=df["value"] + 2 * df["stderr"].fillna(0))
    base = alt.Chart(d).encode(x=alt.X("role:N", title=None, sort=list(ROLE_COLORS)))
    bars = base.mark_bar().encode(y=alt.Y("value:Q", title=None), color=_role_color(),
                                  tooltip=["role", "name", alt.Tooltip("value:Q", format=".5g"),
                                           alt.Tooltip("stderr:Q", format=".2g")])
    err = base.mark_rule(strokeWidth=2).encode(y="lo:Q", y2="hi:Q")
    return alt.layer(bars, err, data=d).facet(column=alt.Column("name:N", title=None), title=title) \
        .resolve_scale(y="independent")


def log_volume_chart(df: pd.DataFrame, color: str = "role",
                     title: str = "Log-volume proxy −½ Σᵢ≤ₖ log(λᵢ + ε)") -> alt.Chart:
    _require(df, ["k", "value", color], "log_volume_chart")
    return alt.Chart(df, title=title).mark_line(point=True).encode(
        x=alt.X("k:Q", title="k (top eigenvalues used)"), y=alt.Y("value:Q", title="log-volume"),
        color=_role_color(color), tooltip=[color, "k", alt.Tooltip("value:Q", format=".5g")],
    )


def curves_chart(df: pd.DataFrame, metrics: list[str] | None = None, color: str = "role",
                 log_loss: bool = True) -> alt.Chart:
    """Training curves, one panel per metric (df: epoch, role or label, and metric columns)."""
    metrics = metrics or ["clean_loss", "test_acc"]
    _require(df, ["epoch", color, *metrics], "curves_chart")
    long = df.melt(id_vars=["epoch", color], value_vars=metrics, var_name="metric", value_name="value")
    long["metric"] = long["metric"].map(lambda m: CURVE_METRICS.get(m, m))
    panels = []
    for m in metrics:
        label = CURVE_METRICS.get(m, m)
        scale = alt.Scale(type="log") if (log_loss and m.endswith("_loss")) else alt.Scale(zero=False)
        part = long[long["metric"] == label]
        if scale.type == "log":
            part = part[part["value"] > 0]
        panels.append(alt.Chart(part, title=label).mark_line().encode(
            x=alt.X("epoch:Q"), y=alt.Y("value:Q", title=label, scale=scale), color=_role_color(color),
            tooltip=[color, "epoch", alt.Tooltip("value:Q", format=".4g")]).properties(width=300, height=220))
    return alt.hconcat(*panels)


def accuracy_chart(df: pd.DataFrame, title: str = "Accuracy at each minimum") -> alt.Chart:
    """Grouped bars: clean-train, attack and test accuracy per role (df: role, clean_acc, attack_acc, test_acc)."""
    _require(df, ["role", "clean_acc", "attack_acc", "test_acc"], "accuracy_chart")
    long = df.melt(id_vars=["role"], value_vars=["clean_acc", "attack_acc", "test_acc"], var_name="set",
                   value_name="accuracy")
    long["set"] = long["set"].map({"clean_acc": "clean train", "attack_acc": "attack", "test_acc": "test"})
    return alt.Chart(long, title=title).mark_bar().encode(
        x=alt.X("set:N", title=None, sort=["clean train", "attack", "test"]),
        xOffset=alt.XOffset("role:N", sort=list(ROLE_COLORS)),
        y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
        color=_role_color(), tooltip=["role", "set", alt.Tooltip("accuracy:Q", format=".1%")],
    )


def to_png(chart: alt.TopLevelMixin, scale: float = 2.0) -> bytes:
    import vl_convert as vlc

    return vlc.vegalite_to_png(chart.to_json(), scale=scale)


def to_svg(chart: alt.TopLevelMixin) -> str:
    import vl_convert as vlc

    return vlc.vegalite_to_svg(chart.to_json())
