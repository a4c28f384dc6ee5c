"""Landscape: the path between the minima, 1-D slices and 2-D surfaces around each."""

from dataclasses import replace

import streamlit as st

import ui
from lossland import charts, contour_charts, contours, figures3d, path_charts
from lossland.pairs import ROLES
from lossland.specs import InterpolationSpec, SliceSpec, SurfaceSpec, TrajectorySpec

store, pair_id = ui.page_pair("Loss landscape", key="landscape-pair")

st.subheader("Interpolation between the minima")
st.caption("θ(α) = (1 − α) θ_good + α θ_bad: α = 0 is the good minimum, α = 1 the bad one.")
spec = ui.analysis_settings(store, pair_id, InterpolationSpec(), key="landscape-interp")
a = ui.analysis_block(store, pair_id, spec, key=f"interp:{pair_id}")
if a is not None:
    chart = charts.interpolation_chart(a.frame)
    st.altair_chart(chart)
    ui.chart_downloads(chart, f"interpolation-{pair_id}", key="landscape-interp")

st.subheader("1-D slices")
st.caption("θ* + α d around both minima: d filter-normalised random with the same seed for both (random), or "
           "each minimum's top Hessian eigenvector scaled to the weights' norm (eigen).")
spec = ui.analysis_settings(store, pair_id, SliceSpec(), key="landscape-slice")
metric = st.selectbox("metric", ["clean_loss", "test_loss", "test_acc", "clean_acc"], key="landscape-metric")
s = ui.analysis_block(store, pair_id, spec, key=f"slice:{pair_id}")
if s is not None:
    chart = charts.slice_chart(s.frame, metric)
    st.altair_chart(chart, width="stretch")
    ui.chart_downloads(chart, f"slice-{spec.directions}-{pair_id}", key="landscape-slice")

st.subheader("2-D surfaces")
spec = ui.analysis_settings(store, pair_id, SurfaceSpec(), key="landscape-surface", fixed=("role",))
if spec is not None:
    st.caption(f"{spec.n} × {spec.n} grid of the clean-train loss at θ* + α d₁ + β d₂, α, β ∈ [−{spec.span:g}, "
               f"{spec.span:g}], with filter-normalised directions of the same seeds around both minima and one "
               "colour scale for both (filled contours, isolines at log-spaced levels, θ* marked): the good minimum's "
               "low-loss region is wider.")
cols = st.columns(len(ROLES))
frames, refined = {}, {}
for col, role in zip(cols, ROLES, strict=True):
    with col:
        res = ui.analysis_block(store, pair_id, spec and spec.for_role(role), key=f"surface:{pair_id}:{role}",
                                label=f"the {role} surface")
        if res is not None and len(res.frame):
            frames[role] = res.frame
if frames and st.toggle("refine near the minimum", key="landscape-refine",
                        help="A second grid of the same directions and size over the low-loss box around each minimum, "
                             "merged into the first before contouring: where that box is at least half as wide, a "
                             "uniform grid as fine costs less and none is offered."):
    for col, role in zip(cols, ROLES, strict=True):
        if role not in frames:
            continue
        span = contours.refine_span(contours.grid_of(frames[role]))
        with col:
            if span is None:
                st.caption(f"The {role} surface's low-loss box is wide: a finer uniform grid is as cheap.")
                continue
            res = ui.analysis_block(store, pair_id, replace(spec.for_role(role), span=span),
                                    key=f"surface-fine:{pair_id}:{role}",
                                    label=f"the refined {role} surface (span {span:g})")
            if res is not None and len(res.frame):
                refined[role] = res.frame
drawn = {}
if frames:
    try:  # a stored grid may hold nothing finite (a diverged minimum, or a stranger's rows)
        drawn = contour_charts.surface_charts(frames, refined=refined)
    except ValueError as e:
        st.warning(ui.text(f"The stored surface can't be drawn: {e}."))
if drawn:
    for role, chart in drawn.items():
        with cols[ROLES.index(role)]:
            st.altair_chart(chart)
            ui.chart_downloads(chart, f"surface-{role}-{pair_id}", key=f"landscape-surface-{role}")
    with st.expander("3-D view"):
        role = st.radio("minimum", list(frames), horizontal=True, key="landscape-3d-role")
        st.plotly_chart(figures3d.surface_figure(frames[role], role=role, refined=refined.get(role),
                                                 zrange=figures3d.zrange([*frames.values(), *refined.values()])),
                        key="landscape-3d")

st.subheader("Optimizer trajectory")
st.caption("The path from the initialisation to each minimum, projected on the plane of the top two principal "
           "directions of its recorded parameter snapshots (Li et al. 2018, §7), over the clean-train loss of that "
           "plane; each axis says how much of the path's variance it explains. Recorded when the pair was trained "
           "(record.trajectory_points); the contours are log-spaced, on one scale for both minima.")
spec = ui.analysis_settings(store, pair_id, TrajectorySpec(), key="landscape-trajectory")
t = ui.analysis_block(store, pair_id, spec, key=f"trajectory:{pair_id}")
if t is not None:
    levels = path_charts.plane_levels(t.frame)
    for col, role in zip(st.columns(len(ROLES)), ROLES, strict=True):
        with col:
            chart = path_charts.trajectory_chart(t.frame, role, levels=levels)
            st.altair_chart(chart)
            ui.chart_downloads(chart, f"trajectory-{role}-{pair_id}", key=f"landscape-trajectory-{role}")
