"""Altair chart builders: pure functions of DataFrames, shared by the pages and the report.

One visual language (lossland.pairs): good is always Okabe–Ito blue and bad vermillion, and those two
colours mean nothing else; dataset splits (clean train, attack, test) are greys with dash patterns; any
other category takes the theme's palette, which has neither role colour. One theme sets fonts and sizes:
Altair's themes are global, so importing the chart builders enables it for the dashboard (Streamlit keeps
an enabled theme), the report and every export. Eigenvalues can be negative, so spectra use a symlog
scale; densities and losses span decades, so their axes are logarithmic.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from .pairs import OTHER_COLORS, ROLE_COLORS, ROLES, SPLIT_COLORS, SPLIT_DASHES, SPLITS

ROLE_SCALE = alt.Scale(domain=list(ROLES), range=[ROLE_COLORS[r] for r in ROLES])
SPLIT_SCALE = alt.Scale(domain=list(SPLITS), range=[SPLIT_COLORS[s] for s in SPLITS])
DASH_SCALE = alt.Scale(domain=list(SPLITS), range=[SPLIT_DASHES[s] for s in SPLITS])
CURVE_METRICS = {
    "clean_loss": "clean-train loss", "clean_acc": "clean-train accuracy", "attack_loss": "attack loss",
    "attack_acc": "attack accuracy", "test_loss": "test loss", "test_acc": "test accuracy",
}
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
THEME = {"config": {
    "font": FONT, "title": {"fontSize": 14, "fontWeight": 600, "anchor": "start", "offset": 8},
    "axis": {"titleFontSize": 12, "labelFontSize": 11, "titleFontWeight": 500, "gridColor": "#e6e6e6"},
    "legend": {"titleFontSize": 12, "labelFontSize": 11, "titleFontWeight": 500},
    "header": {"titleFontSize": 12, "labelFontSize": 12}, "text": {"font": FONT, "fontSize": 11},
    "range": {"category": list(OTHER_COLORS)},
}}


@alt.theme.register("lossland", enable=True)
def _theme() -> alt.theme.ThemeConfig:
    return THEME


def _role_color(field: str = "role", scale: alt.Scale | None = ROLE_SCALE) -> alt.Color:
    return alt.Color(f"{field}:N", scale=scale if field == "role" else alt.Undefined, title=field)


def _require(df: pd.DataFrame, columns: list[str], chart: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{chart} needs columns {columns}; missing {missing}")


def spectrum_chart(df: pd.DataFrame, color: str = "role", title: str = "Top Hessian eigenvalues",
                   detail: str | None = None) -> alt.Chart:
    """Eigenvalue vs index, one series per `color` (df: idx, eigenvalue, role or label), and per
    `detail` within a colour (e.g. one line per seed)."""
    _require(df, ["idx", "eigenvalue", color] + ([detail] if detail else []), "spectrum_chart")
    return alt.Chart(df, title=title).mark_line(point=True, opacity=0.8 if detail else 1.0).encode(
        x=alt.X("idx:Q", title="index i (1 = largest)"),
        y=alt.Y("eigenvalue:Q", title="eigenvalue λᵢ (symlog)", scale=alt.Scale(type="symlog")),
        color=_role_color(color), **({"detail": f"{detail}:N"} if detail else {}),
        tooltip=[color, *([detail] if detail else []), "idx", alt.Tooltip("eigenvalue:Q", format=".6g")]
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
    base = alt.Chart(d).encode(x=alt.X("role:N", title=None, sort=list(ROLES)))
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
        xOffset=alt.XOffset("role:N", sort=list(ROLES)),
        y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
        color=_role_color(), tooltip=["role", "set", alt.Tooltip("accuracy:Q", format=".1%")],
    )


def to_png(chart: alt.TopLevelMixin, scale: float = 2.0) -> bytes:
    import vl_convert as vlc

    return vlc.vegalite_to_png(chart.to_json(), scale=scale)


def to_svg(chart: alt.TopLevelMixin) -> str:
    import vl_convert as vlc

    return vlc.vegalite_to_svg(chart.to_json())


def to_pdf(chart: alt.TopLevelMixin) -> bytes:
    """Vector PDF (vl-convert, no browser), for papers."""
    import vl_convert as vlc

    return vlc.vegalite_to_pdf(chart.to_json())


# --- landscapes and basins --------------------------------------------------------------------

def interpolation_chart(df: pd.DataFrame, title: str = "From the good (α=0) to the bad (α=1) minimum") -> alt.Chart:
    """Loss (log) and accuracy along α for clean train, attack and test (df: alpha and the six metrics): the
    splits in greys and dashes, the two minima as rules in their role colours."""
    _require(df, ["alpha", "clean_loss", "test_acc"], "interpolation_chart")
    sets = {"clean": "clean train", "attack": "attack", "test": "test"}
    long = pd.concat([pd.DataFrame({"alpha": df["alpha"], "set": label, "loss": df[f"{k}_loss"],
                                    "accuracy": df[f"{k}_acc"]}) for k, label in sets.items()])
    tips = ["set", alt.Tooltip("alpha:Q", format=".2f"), alt.Tooltip("loss:Q", format=".3g"),
            alt.Tooltip("accuracy:Q", format=".1%")]
    minima = pd.DataFrame({"alpha": [0.0, 1.0], "role": list(ROLES)})

    def panel(y: alt.Y, legend: bool) -> alt.LayerChart:  # legends on the first panel only
        leg = {} if legend else {"legend": None}
        rules = alt.Chart(minima).mark_rule(strokeWidth=2, opacity=0.7).encode(
            x="alpha:Q", color=alt.Color("role:N", scale=ROLE_SCALE, title="minimum", **leg))
        lines = alt.Chart(long).mark_line().encode(
            x=alt.X("alpha:Q", title="α"), y=y, tooltip=tips,
            color=alt.Color("set:N", title="set", scale=SPLIT_SCALE, sort=list(SPLITS), **leg),
            strokeDash=alt.StrokeDash("set:N", title="set", scale=DASH_SCALE, sort=list(SPLITS), **leg),
        ).properties(width=320, height=240)
        lines = lines.transform_filter("datum.loss > 0") if y.shorthand == "loss:Q" else lines
        return alt.layer(lines, rules).resolve_scale(color="independent")

    return alt.hconcat(panel(alt.Y("loss:Q", scale=alt.Scale(type="log"), title="loss (log)"), True),
                       panel(alt.Y("accuracy:Q", axis=alt.Axis(format="%")), False), title=title)


def slice_chart(df: pd.DataFrame, metric: str = "clean_loss",
                title: str = "1-D slices around each minimum") -> alt.Chart:
    """metric along α for good and bad (df: alpha, role, metric)."""
    _require(df, ["alpha", "role", metric], "slice_chart")
    log = metric.endswith("_loss")
    d = df[df[metric] > 0] if log else df
    return alt.Chart(d, title=title).mark_line().encode(
        x=alt.X("alpha:Q", title="α (relative to the weights' filter norms)"),
        y=alt.Y(f"{metric}:Q", title=CURVE_METRICS.get(metric, metric),
                scale=alt.Scale(type="log") if log else alt.Scale(zero=False)),
        color=_role_color(), tooltip=["role", alt.Tooltip("alpha:Q", format=".3f"),
                                      alt.Tooltip(f"{metric}:Q", format=".4g")])


def escape_chart(df: pd.DataFrame, title: str = "Escape probability vs perturbation radius") -> alt.Chart:
    """Fraction of escaped trials per radius and role (df: role, radius, escaped)."""
    _require(df, ["role", "radius", "escaped"], "escape_chart")
    d = df.assign(escaped=df["escaped"].astype(float)).groupby(["role", "radius"], as_index=False).agg(
        p=("escaped", "mean"), trials=("escaped", "size"))
    return alt.Chart(d, title=title).mark_line(point=True).encode(
        x=alt.X("radius:Q", title="relative radius r"),
        y=alt.Y("p:Q", title="escape probability", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
        color=_role_color(), tooltip=["role", "radius", alt.Tooltip("p:Q", format=".0%"), "trials"])


def retrain_chart(df: pd.DataFrame, title: str = "Test accuracy after perturb-and-retrain") -> alt.Chart:
    _require(df, ["role", "radius", "test_acc"], "retrain_chart")
    return alt.Chart(df, title=title).mark_circle(size=50, opacity=0.6).encode(
        x=alt.X("radius:Q", title="relative radius r"), y=alt.Y("test_acc:Q", axis=alt.Axis(format="%"),
                                                                 scale=alt.Scale(zero=False)),
        xOffset=alt.XOffset("role:N"), color=_role_color(),
        tooltip=["role", "radius", "trial", alt.Tooltip("test_acc:Q", format=".1%")])


def random_init_chart(seeds: pd.DataFrame, minima: pd.DataFrame, field: str = "test_acc",
                      title: str | None = None) -> alt.Chart:
    """Histogram of `field` over random-init seeds (clean data), with the pair's minima as rules
    (seeds: field; minima: role, field)."""
    _require(seeds, [field], "random_init_chart")
    label = {"test_acc": "test accuracy", "top_eigenvalue": "top eigenvalue λ₁"}.get(field, field)
    hist = alt.Chart(seeds).mark_bar(color="#9e9e9e", opacity=0.7).encode(
        x=alt.X(f"{field}:Q", bin=alt.Bin(maxbins=20), title=label),
        y=alt.Y("count():Q", title="random-init seeds"))
    rules = alt.Chart(minima).mark_rule(strokeWidth=3).encode(
        x=f"{field}:Q", color=_role_color(), tooltip=["role", alt.Tooltip(f"{field}:Q", format=".4g")])
    return alt.layer(hist, rules, title=title or f"{label}: {len(seeds)} random inits on clean data vs the pair")


def radius_chart(df: pd.DataFrame, title: str = "Empirical basin radius per direction") -> alt.Chart:
    _require(df, ["role", "radius", "trial"], "radius_chart")
    return alt.Chart(df, title=title).mark_tick(thickness=3, size=30).encode(
        x=alt.X("role:N", sort=list(ROLES), title=None), y=alt.Y("radius:Q", title="relative radius"),
        color=_role_color(), tooltip=["role", "trial", alt.Tooltip("radius:Q", format=".4g")])


def bound_chart(df: pd.DataFrame, title: str = "2-layer bound: complexity vs √m‖W‖₂²‖G‖_F") -> alt.Chart:
    """Each minimum as a point (df: role, complexity, rhs) on log-log axes, the bound often being orders of
    magnitude above the complexity; below the diagonal the bound holds."""
    _require(df, ["role", "complexity", "rhs"], "bound_chart")
    values = pd.concat([df["rhs"], df["complexity"]]).astype(float)
    values = values[values > 0]
    lo, hi = (float(values.min()) / 2, float(values.max()) * 2) if len(values) else (1e-3, 1.0)
    diag = alt.Chart(pd.DataFrame({"v": [lo, hi]})).mark_line(strokeDash=[4, 4], color="gray").encode(
        x=alt.X("v:Q", scale=alt.Scale(type="log", domain=[lo, hi])),
        y=alt.Y("v:Q", scale=alt.Scale(type="log", domain=[lo, hi])))
    pts = alt.Chart(df).mark_circle(size=90).encode(
        x=alt.X("rhs:Q", title="bound √m ‖W‖₂² ‖G‖_F (log)", scale=alt.Scale(type="log", domain=[lo, hi])),
        y=alt.Y("complexity:Q", title="complexity E‖∇ₓf‖² (log)", scale=alt.Scale(type="log", domain=[lo, hi])),
        color=_role_color(), tooltip=[c for c in df.columns if c in ("role", "run_id", "n_attack")]
        + [alt.Tooltip("complexity:Q", format=".4g"), alt.Tooltip("rhs:Q", format=".4g")])
    return alt.layer(diag, pts, title=title)


def sweep_chart(df: pd.DataFrame, metric: str, title: str | None = None, log: bool = False) -> alt.Chart:
    """metric vs attack size per role: every seed a point, over the line of their mean (df: n_attack,
    role, metric; seed as a tooltip when present)."""
    _require(df, ["n_attack", "role", metric], "sweep_chart")
    label = {"test_acc": "test accuracy", "top_eigenvalue": "top eigenvalue λ₁", "trace": "trace",
             "frobenius_sq": "‖H‖_F²", "log_volume": "log-volume (top k)"}.get(metric, metric)
    d = df[df[metric] > 0] if log else df
    base = alt.Chart(d).encode(x=alt.X("n_attack:Q", title="attack size"), color=_role_color())
    scale = alt.Scale(type="log" if log else "linear", zero=False)
    line = base.mark_line().encode(y=alt.Y(f"mean({metric}):Q", title=label, scale=scale),
                                   tooltip=["role", "n_attack", alt.Tooltip(f"mean({metric}):Q", format=".4g")])
    seeds = base.mark_circle(size=30, opacity=0.55).encode(
        y=alt.Y(f"{metric}:Q", title=label, scale=scale),
        tooltip=["role", "n_attack", *(["seed"] if "seed" in d.columns else []),
                 alt.Tooltip(f"{metric}:Q", format=".4g")])
    return alt.layer(line, seeds, title=title or f"{label} vs attack size (points: seeds)").properties(
        width=300, height=220)


def log_volume_gap_chart(df: pd.DataFrame, title: str = "Log-volume gap (good − bad) vs k") -> alt.Chart:
    """Mean over seeds of log-volume(good) − log-volume(bad) over the top k eigenvalues, each seed a point,
    one line per dataset (df: dataset, seed, k, gap)."""
    _require(df, ["dataset", "k", "gap"], "log_volume_gap_chart")
    return seeds_over_mean(df, "k", "k (top eigenvalues used)", "gap", "gap −½ Σᵢ≤ₖ log((λᵢᵍᵒᵒᵈ + ε)/(λᵢᵇᵃᵈ + ε))",
                           title)


def seeds_over_mean(df: pd.DataFrame, x: str, x_title: str, field: str, label: str, title: str,
                    log_x: bool = False) -> alt.Chart:
    """The mean of `field` over seeds against `x`, one line per dataset, each seed a point; a dashed zero."""
    base = alt.Chart(df).encode(x=alt.X(f"{x}:Q", title=x_title, scale=alt.Scale(type="log" if log_x else "linear")),
                                color=alt.Color("dataset:N", title="dataset"))
    line = base.mark_line().encode(y=alt.Y(f"mean({field}):Q", title=label),
                                   tooltip=["dataset", x, alt.Tooltip(f"mean({field}):Q", format=".4g")])
    seeds = base.mark_circle(size=28, opacity=0.55).encode(
        y=alt.Y(f"{field}:Q", title=label), tooltip=["dataset", x, *(["seed"] if "seed" in df.columns else []),
                                                     alt.Tooltip(f"{field}:Q", format=".4g")])
    zero = alt.Chart(pd.DataFrame({"y": [0.0]})).mark_rule(color="gray", strokeDash=[4, 4]).encode(y="y:Q")
    return alt.layer(zero, line, seeds, title=title).properties(width=360, height=240)


def two_layer_chart(df: pd.DataFrame, title: str = "2-layer networks: complexity vs Hessian norm") -> alt.Chart:
    """Each two_layer minimum as a point: complexity E‖∇ₓf‖² against ‖H‖_F (df: role, complexity,
    hessian_frobenius; n_attack and seed as tooltips when present)."""
    _require(df, ["role", "complexity", "hessian_frobenius"], "two_layer_chart")
    extra = [c for c in ("n_attack", "seed", "run_id") if c in df.columns]
    return alt.Chart(df, title=title).mark_circle(size=80, opacity=0.8).encode(
        x=alt.X("complexity:Q", title="complexity E‖∇ₓf‖² (log)", scale=alt.Scale(type="log")),
        y=alt.Y("hessian_frobenius:Q", title="Hessian Frobenius norm ‖H‖_F (log)", scale=alt.Scale(type="log")),
        color=_role_color(), tooltip=["role", *extra, alt.Tooltip("complexity:Q", format=".4g"),
                                      alt.Tooltip("hessian_frobenius:Q", format=".4g")],
    ).properties(width=320, height=260)


# --- the paper's Figure 1 -----------------------------------------------------------------------

def curve_fit_chart(curves: pd.DataFrame, summary: pd.DataFrame, n: int | None = None, seed: int | None = None,
                    clip: float = 3.0, title: str = "Figure 1: n points fitted by a network and by polynomials"
                    ) -> alt.HConcatChart:
    """Left: the fits of one (n, seed) over its points (default: the largest n, the first seed), the
    target dashed, values clipped to ±clip (a polynomial can leave by orders of magnitude). Right: test
    error and roughness vs n per fit, the median over seeds as a line, each seed a point (log axes). curves: fit, n,
    seed, part (grid | points), x, value, target; summary: fit, n, seed, test_mse, roughness."""
    _require(curves, ["fit", "n", "seed", "part", "x", "value", "target"], "curve_fit_chart")
    _require(summary, ["fit", "n", "seed", "test_mse", "roughness"], "curve_fit_chart")
    fitted = curves[curves["n"] > 0]
    n = int(fitted["n"].max()) if n is None else n
    seed = int(fitted["seed"].min()) if seed is None else seed
    one = curves[((curves["n"] == n) & (curves["seed"] == seed)) | (curves["fit"] == "target")]
    grid = one[one["part"] == "grid"].assign(value=lambda d: d["value"].clip(-clip, clip))
    pts = one[(one["part"] == "points") & (one["fit"] == "net")]
    fits = alt.Color("fit:N", title="fit", sort=sorted(set(curves["fit"]), key=lambda f: (f != "net", f)))
    y = alt.Y("value:Q", title=f"f(x) (clipped to ±{clip:g})", scale=alt.Scale(domain=[-clip, clip]))
    dash = alt.condition("datum.fit == 'target'", alt.value([4, 4]), alt.value([1, 0]))
    lines = alt.Chart(grid).mark_line(clip=True).encode(
        x=alt.X("x:Q", scale=alt.Scale(domain=[-1, 1])), y=y, color=fits, strokeDash=dash,
        tooltip=["fit", alt.Tooltip("x:Q", format=".3f"), alt.Tooltip("value:Q", format=".3g")])
    dots = alt.Chart(pts).mark_circle(size=60, color="black").encode(
        x="x:Q", y=alt.Y("target:Q", title=""), tooltip=[alt.Tooltip("x:Q", format=".3f"),
                                                         alt.Tooltip("target:Q", format=".3g", title="y")])
    left = alt.layer(lines, dots, title=f"n = {n}, seed {seed}").properties(width=320, height=260)
    panels = [left]
    scored = summary[summary["n"] > 0]
    for metric, label in (("test_mse", "test error (mean squared, grid)"), ("roughness", "roughness ∫ f''² dx")):
        base = alt.Chart(scored).encode(x=alt.X("n:Q", title="points n", scale=alt.Scale(zero=False)), color=fits)
        line = base.mark_line(point=True).encode(
            y=alt.Y(f"median({metric}):Q", title=label, scale=alt.Scale(type="log")),
            tooltip=["fit", "n", alt.Tooltip(f"median({metric}):Q", format=".3g")])
        seeds = base.mark_circle(size=24, opacity=0.5).encode(
            y=alt.Y(f"{metric}:Q", title=label, scale=alt.Scale(type="log")),
            tooltip=["fit", "n", "seed", alt.Tooltip(f"{metric}:Q", format=".3g")])
        panels.append(alt.layer(line, seeds, title=f"{label} vs n").properties(width=260, height=260))
    return alt.hconcat(*panels, title=title)
