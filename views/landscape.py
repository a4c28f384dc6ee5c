"""Landscape: the path between the minima, 1-D slices and 2-D surfaces around each."""

import numpy as np
import streamlit as st

import ui
from lossland import charts, path_charts
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
               "colour scale for both: the good minimum's low-loss region is wider.")
cols = st.columns(len(ROLES))
frames = {}
for col, role in zip(cols, ROLES, strict=True):
    with col:
        res = ui.analysis_block(store, pair_id, spec and spec.for_role(role), key=f"surface:{pair_id}:{role}",
                                label=f"the {role} surface")
        if res is not None and len(res.frame):
            frames[role] = res.frame
if frames:
    levels = np.log10(np.concatenate([f["clean_loss"].clip(lower=1e-12).to_numpy() for f in frames.values()]))
    domain = (float(levels.min()), float(levels.max()))
    for col, role in zip(cols, ROLES, strict=True):
        if role in frames:
            with col:
                chart = charts.surface_chart(frames[role], "clean_loss", title=f"{role} minimum", domain=domain)
                st.altair_chart(chart)
                ui.chart_downloads(chart, f"surface-{role}-{pair_id}", key=f"landscape-surface-{role}")

st.subheader("Optimizer trajectory")
st.caption("The path from the initialisation to each minimum, projected on the plane of the top two principal "
           "directions of its recorded parameter snapshots (Li et al. 2018, §7), over the clean-train loss of that "
           "plane; each axis says how much of the path's variance it explains. Recorded when the pair was trained "
           "(record.trajectory_points).")
spec = ui.analysis_settings(store, pair_id, TrajectorySpec(), key="landscape-trajectory")
t = ui.analysis_block(store, pair_id, spec, key=f"trajectory:{pair_id}")
if t is not None:
    domain = path_charts.loss_domain(t.frame)
    for col, role in zip(st.columns(len(ROLES)), ROLES, strict=True):
        with col:
            chart = path_charts.trajectory_chart(t.frame, role, domain=domain)
            st.altair_chart(chart)
            ui.chart_downloads(chart, f"trajectory-{role}-{pair_id}", key=f"landscape-trajectory-{role}")
