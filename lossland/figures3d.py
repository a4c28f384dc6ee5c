"""3-D views of a stored 2-D surface: an interactive plotly figure for the dashboard, a static PNG for the
report.

Why here and not in `charts`: Altair (Vega-Lite) has no 3-D marks. plotly is a maintained library whose
surface trace rotates, zooms and hovers in the browser, and Streamlit draws it natively
(`st.plotly_chart`). It is imported only by the Landscape page (through `surface_figure`); nothing of the
compute core, the store or the orchestration imports this module, and plotly is imported lazily here, so
the CLI and the report never load it. The report's static image is drawn by matplotlib's mplot3d
(`surface_png`), not by plotly's own export: that needs kaleido plus a Chrome binary it downloads, which a
fresh `pip install -r requirements.txt` machine without network access to a browser build cannot have;
matplotlib renders headless (Agg) with what pip installs. Both draw log₁₀ of the loss over (α, β), the
refined grid merged in where one is given, and mark θ* in its role's colour.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from . import contours
from .charts import CURVE_METRICS
from .pairs import ROLE_COLORS


def _grid(frame: pd.DataFrame, metric: str, refined: pd.DataFrame | None) -> contours.Grid:
    grid = contours.grid_of(frame, metric)
    return contours.merge(grid, contours.grid_of(refined, metric)) if refined is not None and len(refined) else grid


def zrange(frames: list[pd.DataFrame], metric: str = "clean_loss") -> tuple[float, float]:
    """One log₁₀ range over several surfaces, so their 3-D views compare."""
    _, edges = contours.shared_levels([contours.grid_of(f, metric) for f in frames])
    return float(np.log10(edges[0])), float(np.log10(edges[-1]))


def surface_figure(frame: pd.DataFrame, role: str, metric: str = "clean_loss", refined: pd.DataFrame | None = None,
                   zrange: tuple[float, float] | None = None):
    """An interactive plotly surface of log₁₀ metric over (α, β); `zrange` (log₁₀) puts two on one scale."""
    import plotly.graph_objects as go

    g = _grid(frame, metric, refined)
    z = g.log
    label = CURVE_METRICS.get(metric, metric)
    lo, hi = zrange or (float(np.nanmin(z)), float(np.nanmax(z)))
    fig = go.Figure(go.Surface(
        x=g.alphas, y=g.betas, z=z, colorscale="Viridis", cmin=lo, cmax=hi,
        colorbar={"title": {"text": f"log₁₀ {label}"}},
        contours={"z": {"show": True, "usecolormap": True, "project": {"z": True}}},
        hovertemplate="α %{x:.3f}<br>β %{y:.3f}<br>log₁₀ loss %{z:.3f}<extra></extra>"))
    at = float(z[np.argmin(np.abs(g.betas)), np.argmin(np.abs(g.alphas))])
    fig.add_trace(go.Scatter3d(x=[0.0], y=[0.0], z=[at], mode="markers", name=f"θ* ({role})",
                               marker={"size": 6, "color": ROLE_COLORS[role], "symbol": "cross"}))
    fig.update_layout(title=f"{role} minimum: log₁₀ {label}", height=560, margin={"l": 0, "r": 0, "t": 40, "b": 0},
                      scene={"xaxis_title": "α", "yaxis_title": "β", "zaxis_title": f"log₁₀ {label}",
                             "zaxis": {"range": [lo, hi]}}, showlegend=False,
                      font={"family": "DejaVu Sans, Helvetica, Arial, sans-serif", "size": 12})
    return fig


def surface_png(frames: dict[str, pd.DataFrame], metric: str = "clean_loss", title: str = "",
                dpi: int = 110) -> bytes:
    """A static PNG of the roles' surfaces side by side, one z and colour range for all (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grids = {role: contours.grid_of(f, metric) for role, f in frames.items()}
    lo = min(float(np.nanmin(g.log)) for g in grids.values())
    hi = max(float(np.nanmax(g.log)) for g in grids.values())
    label = CURVE_METRICS.get(metric, metric)
    fig = plt.figure(figsize=(5.2 * len(grids), 4.4), dpi=dpi)
    for k, (role, g) in enumerate(grids.items(), start=1):
        ax = fig.add_subplot(1, len(grids), k, projection="3d")
        a, b = np.meshgrid(g.alphas, g.betas)
        surf = ax.plot_surface(a, b, g.log, cmap="viridis", vmin=lo, vmax=hi, linewidth=0, antialiased=True)
        ax.contour(a, b, g.log, levels=8, zdir="z", offset=lo, cmap="viridis", vmin=lo, vmax=hi, linewidths=0.8)
        ax.scatter([0.0], [0.0], [lo], color=ROLE_COLORS[role], marker="P", s=60, depthshade=False)
        ax.set(zlim=(lo, hi), xlabel="α", ylabel="β", zlabel=f"log₁₀ {label}", title=f"{title}{role} minimum")
        ax.view_init(elev=32, azim=-60)
    fig.colorbar(surf, ax=fig.axes, shrink=0.6, pad=0.08, label=f"log₁₀ {label}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
