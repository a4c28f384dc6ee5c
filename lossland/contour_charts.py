"""Contour charts of stored 2-D surfaces (Altair): filled bands, labelled isolines at log-spaced levels and
the minimum marked, from `lossland.contours`' polygons and lines. Apart from `charts` (which would pass
400 lines) and drawn the same way: the Landscape page, the report and the gallery call `surface_charts`;
`contour_chart` draws any `Contours`, e.g. behind a path on another plane.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from . import contours
from .charts import CURVE_METRICS, ROLE_SCALE


def surface_charts(frames: dict[str, pd.DataFrame], metric: str = "clean_loss", title: str = "",
                   refined: dict[str, pd.DataFrame] | None = None, levels: int = 10) -> dict[str, alt.LayerChart]:
    """One contour chart per role of its 2-D surface (frames: role -> alpha, beta, metric), all on one
    colour scale: log-spaced isoline levels shared by every grid. `refined` (role -> a finer surface of the
    same directions over a smaller span) is merged into that role's grid before contouring."""
    grids = {}
    for role, frame in frames.items():
        grids[role] = contours.grid_of(frame, metric)
        if refined and role in refined and len(refined[role]):
            grids[role] = contours.merge(grids[role], contours.grid_of(refined[role], metric))
    lv, edges = contours.shared_levels(list(grids.values()), target=levels)
    boxes = {r: contours.grid_of(refined[r], metric).extent() for r in grids if refined and len(refined.get(r, ()))}
    return {r: contour_chart(contours.contours(g, lv, edges), r, metric, f"{title}{r} minimum", boxes.get(r))
            for r, g in grids.items()}


def contour_chart(c: contours.Contours, role: str, metric: str = "clean_loss", title: str = "",
                  refined_box: tuple[float, float, float, float] | None = None,
                  axes: tuple[str, str] = ("α (direction d₁)", "β (direction d₂)")) -> alt.LayerChart:
    """Filled bands (viridis over log₁₀ of the band edges), isolines with their level written on them,
    the minimum θ* at the origin in its role's colour and, dashed, the box of a refined grid; `axes` the
    titles of α and β (e.g. the PCA directions of a trajectory's plane)."""
    label = CURVE_METRICS.get(metric, metric)
    lo, hi = float(c.edges[0]), float(c.edges[-1])
    x = alt.X("alpha:Q", title=axes[0], scale=alt.Scale(domain=_extent(c, "alpha"), nice=False))
    y = alt.Y("beta:Q", title=axes[1], scale=alt.Scale(domain=_extent(c, "beta"), nice=False))
    # colour by log₁₀ on a linear scale: Vega-Lite gives a filled line no gradient legend on a log scale
    colour = alt.Scale(domain=[np.log10(lo), np.log10(hi)], scheme="viridis")
    decades = list(range(int(np.ceil(np.log10(lo))), int(np.floor(np.log10(hi))) + 1))
    fill = c.bands.assign(log=np.log10(c.bands["value"]),
                          band=c.bands["lower"].map(contours.level_text) + "–"
                          + c.bands["upper"].map(contours.level_text))
    bands = alt.Chart(fill).mark_line(filled=True, strokeWidth=0, interpolate="linear").encode(
        x=x, y=y, order="order:Q", detail="polygon:N",
        fill=alt.Fill("log:Q", scale=colour, title=label, legend=alt.Legend(
            values=decades, labelExpr="format(pow(10, datum.value), '~g')", gradientLength=220)),
        tooltip=[alt.Tooltip("band:N", title=label)])
    lines = alt.Chart(c.lines).mark_line(color="#ffffff", strokeWidth=0.9, opacity=0.85).encode(
        x=x, y=y, order="order:Q", detail="line:N", tooltip=[alt.Tooltip("level:Q", format=".3g", title=label)])
    halo = alt.Chart(c.labels).mark_text(fontSize=10, stroke="#ffffff", strokeWidth=3, strokeOpacity=0.8).encode(
        x=x, y=y, text="text:N")
    text = alt.Chart(c.labels).mark_text(fontSize=10, color="#1a1a1a").encode(x=x, y=y, text="text:N")
    minimum = alt.Chart(pd.DataFrame({"alpha": [0.0], "beta": [0.0], "role": [role], "what": [f"θ* ({role})"]}))
    marker = minimum.mark_point(shape="cross", size=160, filled=True, stroke="#ffffff", strokeWidth=1).encode(
        x=x, y=y, color=alt.Color("role:N", scale=ROLE_SCALE, legend=None), tooltip=["what:N"])
    layers = [bands, lines, halo, text, marker]
    if refined_box is not None:
        a0, a1, b0, b1 = refined_box
        box = pd.DataFrame({"alpha": [a0, a1, a1, a0, a0], "beta": [b0, b0, b1, b1, b0], "order": range(5)})
        layers.append(alt.Chart(box).mark_line(color="#ffffff", strokeDash=[4, 3], strokeWidth=1).encode(
            x=x, y=y, order="order:Q"))
    return alt.layer(*layers, title=title).properties(width=300, height=300)


def _extent(c: contours.Contours, axis: str) -> list[float]:
    v = c.bands[axis] if len(c.bands) else c.lines[axis]
    return [float(v.min()), float(v.max())]
