"""Landscape: the path between the minima, 1-D slices and 2-D surfaces around each."""

import streamlit as st

import ui
from lossland import analyses, charts

store, pair_id = ui.page_pair("Loss landscape", key="landscape-pair")

st.subheader("Interpolation between the minima")
st.caption("θ(α) = (1 − α) θ_good + α θ_bad: α = 0 is the good minimum, α = 1 the bad one.")
POINTS, SIDE = 41, 41  # points of the interpolation and of a slice; the side of a 2-D surface
a = ui.analysis_block("the interpolation", f"interp:{pair_id}",
                      lambda compute, p: analyses.interpolation(store, pair_id, n_points=POINTS, progress=p,
                                                                compute=compute),
                      pair_id=pair_id, grid_points=POINTS)
if a is not None:
    chart = charts.interpolation_chart(a.frame)
    st.altair_chart(chart)
    ui.chart_downloads(chart, f"interpolation-{pair_id}", key="landscape-interp")

st.subheader("1-D slices")
c1, c2, c3 = st.columns(3)
kind = c1.radio("directions", ["random", "eigen"], horizontal=True, key="landscape-dirs",
                format_func={"random": "filter-normalised random (same seed)",
                             "eigen": "top Hessian eigenvector"}.get)
seed = int(c2.number_input("direction seed", 0, 10_000, 0, key="landscape-seed"))
metric = c3.selectbox("metric", ["clean_loss", "test_loss", "test_acc", "clean_acc"], key="landscape-metric")
span = 1.0 if kind == "random" else 0.5
s = ui.analysis_block(f"the {kind} slices", f"slice:{pair_id}:{kind}:{seed}",
                      lambda compute, p: analyses.slices_1d(store, pair_id, kind, seed, n_points=POINTS, span=span,
                                                            progress=p, compute=compute),
                      pair_id=pair_id, grid_points=2 * POINTS)
if s is not None:
    chart = charts.slice_chart(s.frame, metric)
    st.altair_chart(chart, width="stretch")
    ui.chart_downloads(chart, f"slice-{kind}-{pair_id}", key="landscape-slice")

st.subheader("2-D surfaces (41 × 41, clean-train loss)")
st.caption("θ* + α d₁ + β d₂ with filter-normalised directions of the same seeds around both minima, one colour "
           "scale for both: the good minimum's low-loss region is wider.")
cols = st.columns(2)
frames = {}
for col, role in zip(cols, ("good", "bad"), strict=True):
    with col:
        res = ui.analysis_block(f"the {role} surface", f"surface:{pair_id}:{role}:{seed}",
                                lambda compute, p, role=role: analyses.surface(store, pair_id, role, seed=seed, n=SIDE,
                                                                               progress=p, compute=compute),
                                pair_id=pair_id, grid_points=SIDE * SIDE)
        if res is not None:
            frames[role] = res.frame
if frames:
    import numpy as np

    levels = np.log10(np.concatenate([f["clean_loss"].clip(lower=1e-12).to_numpy() for f in frames.values()]))
    domain = (float(levels.min()), float(levels.max()))
    for col, role in zip(cols, ("good", "bad"), strict=True):
        if role in frames:
            with col:
                chart = charts.surface_chart(frames[role], "clean_loss", title=f"{role} minimum", domain=domain)
                st.altair_chart(chart)
                ui.chart_downloads(chart, f"surface-{role}-{pair_id}", key=f"landscape-surface-{role}")
