"""Contours of a stored 2-D surface: log-spaced levels, isolines, filled bands and their labels.

Pure numpy and contourpy (matplotlib's own contouring library, maintained on its own): a grid goes in,
plain DataFrames of vertices come out, and `charts` draws them. Contours are traced on log₁₀ of the
values, because a loss around a minimum spans decades: a level set {log z = log L} is the level set
{z = L}, and linear interpolation along grid edges is more accurate on the smoother log surface.

Refinement near the minimum: a second surface of the same directions and n, with a smaller span (a
`SurfaceSpec` that differs only in `span`), is merged into the coarse one (`merge`), so nothing about
how surfaces are stored, resumed, verified or hashed changes. `refine_span` picks that span from the
coarse grid: the box holding its low-loss region. The nested grid costs n² more points for a resolution
r = span / fine span times finer near the minimum, where a uniform grid as fine would cost (r·n)² − n²:
it is offered only where r ≥ 2, that is where it is cheaper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import contourpy
import numpy as np
import pandas as pd
from scipy.interpolate import RegularGridInterpolator

FLOOR = 1e-12  # values are clipped here before the log: a loss of exactly 0 is a level below every other
STEPS = (0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)  # level spacings on offer, in decades


@dataclass(frozen=True, eq=False)
class Grid:
    """Values on a rectilinear grid: values[i, j] at (alphas[j], betas[i]); both axes increasing."""

    alphas: np.ndarray
    betas: np.ndarray
    values: np.ndarray

    @property
    def log(self) -> np.ndarray:
        """log₁₀ of the values, clipped at FLOOR; NaN where a value is not finite (a diverged point)."""
        v = np.where(np.isfinite(self.values), self.values, np.nan)
        return np.log10(np.clip(v, FLOOR, None))

    def extent(self) -> tuple[float, float, float, float]:
        return float(self.alphas[0]), float(self.alphas[-1]), float(self.betas[0]), float(self.betas[-1])

    def to_frame(self, metric: str = "value") -> pd.DataFrame:
        b, a = np.meshgrid(self.betas, self.alphas, indexing="ij")
        return pd.DataFrame({"alpha": a.ravel(), "beta": b.ravel(), metric: self.values.ravel()})


def grid_of(frame: pd.DataFrame, metric: str = "clean_loss") -> Grid:
    """The grid of a long frame (alpha, beta, metric; one row per point, any order); ValueError when the
    points do not fill a rectilinear grid."""
    missing = [c for c in ("alpha", "beta", metric) if c not in frame.columns]
    if missing:
        raise ValueError(f"a surface needs columns alpha, beta and {metric}; missing {missing}")
    wide = frame.pivot_table(index="beta", columns="alpha", values=metric, aggfunc="first")
    if wide.shape[0] < 2 or wide.shape[1] < 2 or wide.isna().to_numpy().any() or wide.size != len(frame):
        raise ValueError(f"the {len(frame)} points of this surface do not fill a rectilinear grid of at least "
                         f"2 × 2 (alphas {wide.shape[1]}, betas {wide.shape[0]})")
    return Grid(wide.columns.to_numpy(float), wide.index.to_numpy(float), wide.to_numpy(float))


# --- levels ------------------------------------------------------------------------------------------

def log_levels(lo: float, hi: float, target: int = 10) -> np.ndarray:
    """Levels 10^(k·s) strictly between lo and hi (both > 0), with the spacing s (decades, from STEPS)
    that gives the count nearest `target`, the wider spacing on a tie: a constant ratio between levels."""
    if not (lo > 0 and hi > 0):
        raise ValueError(f"log levels need positive bounds; got {lo!r} and {hi!r}")
    a, b = math.log10(min(lo, hi)), math.log10(max(lo, hi))
    best = np.array([])
    for step in sorted(STEPS, reverse=True):
        k = np.arange(math.floor(a / step) + 1, math.ceil(b / step))
        k = k[(k * step > a + 1e-12) & (k * step < b - 1e-12)]
        if len(best) == 0 or abs(len(k) - target) < abs(len(best) - target):
            best, best_step = k, step
    return 10.0 ** (best * best_step) if len(best) else np.array([math.sqrt(lo * hi)])


def shared_levels(grids: list[Grid], target: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(levels, edges) for several grids on one colour scale: isoline levels log-spaced over all their
    values, and band edges = the levels with the overall minimum and maximum at the ends."""
    finite = [np.clip(g.values[np.isfinite(g.values)], FLOOR, None) for g in grids]  # a zero sits at the floor
    if not any(len(v) for v in finite):
        raise ValueError("a surface without a single finite value has no contours")
    lo = min(float(v.min()) for v in finite if len(v))
    hi = max(float(v.max()) for v in finite if len(v))
    hi = hi if hi > lo else lo * 10
    levels = log_levels(lo, hi, target)
    return levels, np.concatenate([[lo], levels, [hi]])


# --- lines, bands, labels ---------------------------------------------------------------------------------

def _generator(grid: Grid, **kw) -> contourpy.ContourGenerator:
    z = np.ma.masked_invalid(grid.log)
    return contourpy.contour_generator(grid.alphas, grid.betas, z, name="serial", **kw)


def isolines(grid: Grid, levels) -> pd.DataFrame:
    """One row per vertex: level, line (an id unique over all levels), order (along the line), alpha, beta."""
    gen = _generator(grid, line_type=contourpy.LineType.Separate)
    rows, line = [], 0
    for level in levels:
        for pts in gen.lines(math.log10(level)):
            rows.append(pd.DataFrame({"level": float(level), "line": line, "order": np.arange(len(pts)),
                                      "alpha": pts[:, 0], "beta": pts[:, 1]}))
            line += 1
    return _cat(rows, ["level", "line", "order", "alpha", "beta"])


def _area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def bands(grid: Grid, edges) -> pd.DataFrame:
    """The filled bands between consecutive edges as outer rings, one row per vertex: polygon, order,
    alpha, beta, lower, upper, value (the band's geometric middle). Rows come in painting order: rings
    of larger area first, so a ring that fills another's hole is drawn over it (band regions are
    disjoint, so one outer ring lies inside another only within one of its holes)."""
    gen = _generator(grid, fill_type=contourpy.FillType.OuterOffset)
    rings = []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        last = i == len(edges) - 2
        upper = math.log10(hi) + (1e-9 if last else 0.0)  # the top band holds the maximum itself
        for pts, offsets in zip(*gen.filled(math.log10(lo), upper), strict=True):
            outer = pts[offsets[0]:offsets[1]]
            rings.append((_area(outer), float(lo), float(hi), outer))
    rings.sort(key=lambda r: -r[0])
    rows = [pd.DataFrame({"polygon": k, "order": np.arange(len(p)), "alpha": p[:, 0], "beta": p[:, 1],
                          "lower": lo, "upper": hi, "value": math.sqrt(lo * hi)})
            for k, (_, lo, hi, p) in enumerate(rings)]
    return _cat(rows, ["polygon", "order", "alpha", "beta", "lower", "upper", "value"])


def level_text(level: float) -> str:
    """Two significant digits, positional between 0.001 and 10⁴ (0.018, 3.2, 100), else 1.8e-5 / 3e8."""
    if 1e-3 <= abs(level) < 1e4:
        return np.format_float_positional(float(f"{level:.2g}"), trim="-")
    mantissa, exponent = f"{level:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def labels(lines: pd.DataFrame, angle: float = math.pi / 4, min_size: float = 0.0, min_gap: float = 0.0
           ) -> pd.DataFrame:
    """Where to write each level: on its long lines (at least half the longest), at the vertex nearest
    the ray from the origin at `angle` (labels of nested isolines then line up instead of piling on each
    other); no label for a level whose lines are all smaller than `min_size` across, nor within `min_gap`
    of a label of a higher level (they would pile up around the minimum). Columns: level, alpha, beta, text."""
    out = []
    for level, part in lines.groupby("level", sort=True):
        sizes = part.groupby("line").size()
        long = part[part["line"].isin(sizes.index[sizes >= sizes.max() / 2])]
        if max(np.ptp(long["alpha"]), np.ptp(long["beta"])) < min_size:
            continue
        theta = np.arctan2(long["beta"].to_numpy(), long["alpha"].to_numpy())
        at = long.iloc[int(np.argmin(np.abs(np.angle(np.exp(1j * (theta - angle))))))]
        out.append({"level": float(level), "alpha": float(at["alpha"]), "beta": float(at["beta"]),
                    "text": level_text(float(level))})
    kept: list[dict] = []
    for row in sorted(out, key=lambda r: -r["level"]):
        if all(math.hypot(row["alpha"] - k["alpha"], row["beta"] - k["beta"]) >= min_gap for k in kept):
            kept.append(row)
    return pd.DataFrame(sorted(kept, key=lambda r: r["level"]), columns=["level", "alpha", "beta", "text"])


@dataclass(frozen=True, eq=False)
class Contours:
    """What a contour chart draws: bands, isolines, their labels and the lowest grid point."""

    levels: np.ndarray
    edges: np.ndarray
    bands: pd.DataFrame
    lines: pd.DataFrame
    labels: pd.DataFrame
    lowest: tuple[float, float, float]  # alpha, beta, value of the lowest grid point


def contours(grid: Grid, levels=None, edges=None) -> Contours:
    """The contours of one grid (levels and edges default to shared_levels of this grid alone); levels
    whose isolines are all under a tenth of the grid across, or whose label would sit within 7% of the
    grid's width of another, go unlabelled."""
    if levels is None or edges is None:
        levels, edges = shared_levels([grid])
    lines = isolines(grid, levels)
    i, j = np.unravel_index(int(np.nanargmin(grid.values)), grid.values.shape)
    a0, a1, b0, b1 = grid.extent()
    return Contours(np.asarray(levels, float), np.asarray(edges, float), bands(grid, edges), lines,
                    labels(lines, min_size=0.1 * max(a1 - a0, b1 - b0), min_gap=0.07 * max(a1 - a0, b1 - b0)),
                    (float(grid.alphas[j]), float(grid.betas[i]), float(grid.values[i, j])))


# --- refinement near the minimum -----------------------------------------------------------------------

def refine_span(grid: Grid, fraction: float = 0.25, min_ratio: float = 2.0) -> float | None:
    """The half-width of a finer grid around the origin (the minimum): the smallest centred box holding
    every point whose log-value lies in the lowest `fraction` of the grid's log range, plus one grid
    step, rounded up to two significant digits; None where it would not be `min_ratio` times smaller
    than the grid (a uniform grid would then be as cheap)."""
    span = max(abs(v) for v in grid.extent())
    z = grid.log
    low = z <= np.nanmin(z) + fraction * (np.nanmax(z) - np.nanmin(z))
    b, a = np.meshgrid(grid.betas, grid.alphas, indexing="ij")
    step = float(max(np.diff(grid.alphas).max(), np.diff(grid.betas).max()))
    half = float(np.max(np.maximum(np.abs(a[low]), np.abs(b[low])))) + step
    digits = 1 - math.floor(math.log10(half))
    half = math.ceil(half * 10 ** digits) / 10 ** digits
    return half if span / half >= min_ratio else None


def merge(coarse: Grid, fine: Grid) -> Grid:
    """One rectilinear grid: the fine grid's points inside its box, the coarse grid's outside, and where
    a fine axis meets a coarse one outside the box, the coarse grid interpolated (linearly in log)."""
    a0, a1, b0, b1 = fine.extent()
    c0, c1, d0, d1 = coarse.extent()
    if a0 < c0 or a1 > c1 or b0 < d0 or b1 > d1:
        raise ValueError(f"the fine grid {fine.extent()} is not inside the coarse one {coarse.extent()}")
    alphas = np.union1d(coarse.alphas[(coarse.alphas < a0) | (coarse.alphas > a1)], fine.alphas)
    betas = np.union1d(coarse.betas[(coarse.betas < b0) | (coarse.betas > b1)], fine.betas)
    interp = RegularGridInterpolator((coarse.betas, coarse.alphas), coarse.log)
    bb, aa = np.meshgrid(betas, alphas, indexing="ij")
    values = 10.0 ** interp(np.stack([bb.ravel(), aa.ravel()], axis=1)).reshape(bb.shape)
    rows, cols = np.searchsorted(betas, fine.betas), np.searchsorted(alphas, fine.alphas)
    values[np.ix_(rows, cols)] = fine.values
    return Grid(alphas, betas, values)


def _cat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
