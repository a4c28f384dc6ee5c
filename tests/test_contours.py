"""Contours against closed forms: the bowl z = c + x² + 4y² has the ellipses x² + 4y² = L − c as its level
sets (semi-axes √(L − c) and √(L − c)/2), so every isoline vertex can be checked where it should lie."""

import math
import time

import numpy as np
import pandas as pd
import pytest

from lossland import contours
from lossland.pairs import ROLE_COLORS

C = 0.01


def bowl(span: float = 1.0, n: int = 41) -> contours.Grid:
    axis = np.linspace(-span, span, n)
    b, a = np.meshgrid(axis, axis, indexing="ij")
    return contours.Grid(axis, axis, C + a**2 + 4 * b**2)


def radial_error(lines: pd.DataFrame) -> pd.Series:
    """Per level, the largest |√(x² + 4y²) − √(L − c)| over its vertices."""
    r = np.sqrt(lines["alpha"] ** 2 + 4 * lines["beta"] ** 2)
    return (r - np.sqrt(lines["level"] - C)).abs().groupby(lines["level"]).max()


@pytest.mark.parametrize("lo, hi, target", [(1e-3, 1e2, 10), (0.01, 5.0, 8), (2e-5, 3e-5, 4), (1e-8, 1e6, 10)])
def test_levels_are_log_spaced_strictly_inside_the_range(lo, hi, target):
    levels = contours.log_levels(lo, hi, target)
    ratios = levels[1:] / levels[:-1]
    assert np.allclose(ratios, ratios[0]) if len(levels) > 1 else True  # one constant ratio
    assert (levels > lo).all() and (levels < hi).all()
    step = math.log10(ratios[0]) if len(levels) > 1 else None
    assert step is None or any(math.isclose(step, s) for s in contours.STEPS)
    assert len(levels) >= min(target // 2, 1)


def test_isolines_of_the_bowl_are_its_ellipses_to_grid_resolution():
    grid = bowl()
    h = float(grid.alphas[1] - grid.alphas[0])
    levels, _ = contours.shared_levels([grid])
    lines = contours.isolines(grid, levels)
    assert set(lines["level"]) == set(levels)
    err = radial_error(lines)
    assert (err < h / 2).all(), err  # within half a grid step of the analytic level set
    for level, part in lines.groupby("level"):
        a = math.sqrt(level - C)
        if a < 1 - h:  # the whole ellipse is inside the grid: one closed line with the known semi-axes
            assert part["line"].nunique() == 1
            first, last = part.iloc[0], part.iloc[-1]
            assert (first["alpha"], first["beta"]) == pytest.approx((last["alpha"], last["beta"]))
            assert part["alpha"].abs().max() == pytest.approx(a, abs=h / 2)
            assert part["beta"].abs().max() == pytest.approx(a / 2, abs=h / 2)


def test_the_finer_the_grid_the_closer_the_isolines():
    levels = np.array([0.05, 0.2, 0.5])
    coarse, fine = (radial_error(contours.isolines(bowl(n=n), levels)).max() for n in (11, 41))
    assert fine < coarse / 4  # linear interpolation: the error falls with h² (16× here; 4× asked)


def test_bands_tile_the_grid_in_painting_order():
    grid = bowl()
    levels, edges = contours.shared_levels([grid])
    bands = contours.bands(grid, edges)
    rings = [g for _, g in bands.groupby("polygon", sort=True)]
    areas = [contours._area(g[["alpha", "beta"]].to_numpy()) for g in rings]
    assert (np.diff(areas) <= 1e-12).all()  # larger rings first: a ring in another's hole is drawn over it
    assert rings[-1]["lower"].iloc[0] == edges[0]  # the last drawn is the band of the minimum
    assert list(bands["polygon"]) == sorted(bands["polygon"])  # rows already in painting order
    lo, hi = bands["lower"], bands["upper"]
    assert (bands["value"] > lo).all() and (bands["value"] < hi).all()


def test_labels_sit_on_their_own_lines_and_apart():
    grid = bowl()
    c = contours.contours(grid)
    assert len(c.labels) >= len(c.levels) // 2 and c.labels["level"].is_unique
    assert set(c.labels["level"]) <= set(c.levels) and c.labels["level"].max() == c.levels.max()
    xy = c.labels[["alpha", "beta"]].to_numpy()
    gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(len(xy)) * 9
    assert gaps.min() >= 0.07 * 2  # 7% of the grid's width: no two labels on top of each other
    for _, lab in c.labels.iterrows():
        own = c.lines[c.lines["level"] == lab["level"]]
        assert ((own["alpha"] == lab["alpha"]) & (own["beta"] == lab["beta"])).any()
        assert lab["text"] == contours.level_text(lab["level"])
    assert c.lowest == (0.0, 0.0, pytest.approx(C))


def test_level_text_is_short():
    assert [contours.level_text(v) for v in (0.0178, 100.0, 3.16e7, 1.78e-5)] == ["0.018", "100", "3.2e7", "1.8e-5"]


def test_a_merged_refinement_keeps_both_grids_points_and_sharpens_the_inner_isolines():
    coarse, fine = bowl(n=11), bowl(span=0.25, n=11)
    merged = contours.merge(coarse, fine)
    frame = merged.to_frame()
    inner = frame[(frame["alpha"].abs() <= 0.25) & (frame["beta"].abs() <= 0.25)]
    assert np.allclose(inner["value"], C + inner["alpha"] ** 2 + 4 * inner["beta"] ** 2)  # the fine points, exact
    for a in coarse.alphas:
        for b in coarse.betas:
            if max(abs(a), abs(b)) > 0.25:  # the coarse points outside the box, kept
                i, j = np.abs(merged.betas - b).argmin(), np.abs(merged.alphas - a).argmin()
                assert (merged.betas[i], merged.alphas[j]) == pytest.approx((b, a))
                assert merged.values[i, j] == pytest.approx(C + a**2 + 4 * b**2)
    levels = np.array([0.02, 0.04])  # ellipses inside the refined box
    before = radial_error(contours.isolines(coarse, levels)).max()
    after = radial_error(contours.isolines(merged, levels)).max()
    assert after < before / 3  # a grid 4× finer there: ≈ 4× closer (log interpolation near the floor C)


def test_refine_span_boxes_the_low_region_only_where_that_is_cheaper():
    sharp = contours.Grid(bowl().alphas, bowl().betas, 1e-3 + 100 * (bowl().values - C))  # a sharp minimum
    span = contours.refine_span(sharp)
    assert span is not None and span <= 0.5
    low = sharp.log <= np.nanmin(sharp.log) + 0.25 * np.ptp(sharp.log)
    b, a = np.meshgrid(sharp.betas, sharp.alphas, indexing="ij")
    assert np.maximum(np.abs(a[low]), np.abs(b[low])).max() < span  # the whole low region is inside
    flat = contours.Grid(bowl().alphas, bowl().betas, np.ones((41, 41)) + 1e-3 * bowl().values)
    assert contours.refine_span(flat) is None  # its low region fills the grid: no refinement offered


def test_merge_refuses_a_fine_grid_outside_the_coarse_one():
    with pytest.raises(ValueError, match="not inside"):
        contours.merge(bowl(span=0.5), bowl(span=1.0))


def test_an_incomplete_grid_is_refused_by_name():
    frame = bowl(n=5).to_frame("clean_loss").iloc[:-1]
    with pytest.raises(ValueError, match="rectilinear grid"):
        contours.grid_of(frame)
    with pytest.raises(ValueError, match="missing"):
        contours.grid_of(frame.drop(columns="beta"))


# --- the Landscape page ------------------------------------------------------------------------------------

def test_the_landscape_page_draws_stored_surfaces_as_contours_with_a_3d_view_and_offers_refinement(copied_store):
    from conftest import open_app

    import ui
    from lossland import analyses
    from lossland.specs import SurfaceSpec

    store, ids = copied_store
    pair_id = ids[0]
    spec = SurfaceSpec(n=9, span=0.5)
    for role in ("good", "bad"):
        analyses.compute(store, pair_id, spec.for_role(role))
    at = open_app("views/landscape.py", {"pair": pair_id})
    assert at.selectbox(key="landscape-surface-stored").value == spec
    specs = [c.proto.spec for c in at.get("vega_lite_chart")]
    drawn = [s for s in specs if '"field":"polygon"' in s.replace(" ", "")]
    assert len(drawn) == 2, "one contour chart per minimum"
    assert all('"field":"line"' in s.replace(" ", "") and '"text"' in s for s in drawn), "isolines and their labels"
    assert at.get("plotly_chart"), "the 3-D view"
    at.toggle(key="landscape-refine").set_value(True).run()
    assert not at.exception
    offered = sorted(b.key for b in at.button if b.key and b.key.startswith("btn-surface-fine"))
    assert offered, "a 9 × 9 grid over ±0.5 around a trained minimum: its low-loss box is narrower"
    at.button(key=offered[0]).click().run()
    deadline = time.time() + 60
    while any(j.state in ("queued", "running") for j in ui.jobs().jobs.values()) and time.time() < deadline:
        time.sleep(0.2)
    at.run()
    assert not at.exception
    boxed = [s for s in (c.proto.spec for c in at.get("vega_lite_chart")) if '"strokeDash":[4,3]' in s.replace(" ", "")]
    assert len(boxed) == 1, "the refined surface is merged into its chart, its box dashed"


def test_a_diverged_point_leaves_a_hole_not_an_error():
    grid = bowl(n=11)
    values = grid.values.copy()
    values[0, 0], values[0, 1] = np.inf, np.nan
    c = contours.contours(contours.Grid(grid.alphas, grid.betas, values))
    assert np.isfinite(c.edges).all() and c.edges[-1] == pytest.approx(np.nanmax(values[np.isfinite(values)]))
    assert len(c.lines) and len(c.bands)


def test_the_3d_views_draw_log10_of_the_grid_on_one_range():
    from lossland import figures3d

    good, bad = bowl(n=9).to_frame("clean_loss"), bowl(n=9).to_frame("clean_loss")
    bad["clean_loss"] *= 100
    lo, hi = figures3d.zrange([good, bad])
    assert (lo, hi) == pytest.approx((math.log10(C), math.log10(100 * bowl(n=9).values.max())))
    fig = figures3d.surface_figure(bad, role="bad", zrange=(lo, hi))
    surface = fig.data[0]
    assert np.allclose(surface.z, np.log10(100 * bowl(n=9).values)) and (surface.cmin, surface.cmax) == (lo, hi)
    assert fig.data[1].marker.color == ROLE_COLORS["bad"]  # θ* in its role's colour
    assert figures3d.surface_png({"good": good, "bad": bad}, dpi=40)[:8] == b"\x89PNG\r\n\x1a\n"
