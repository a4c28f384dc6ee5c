"""Spectrum: top-k eigenvalues, spectral densities, trace and Frobenius norm, log-volume vs k, curvature per layer."""

import pandas as pd
import streamlit as st

import ui
from lossland import charts, frames
from lossland.external import is_external
from lossland.layer_charts import layer_chart
from lossland.specs import LayerSpec

store, pair_id = ui.page_pair("Hessian spectra", key="spectrum-pair", whole=False)
view = store.pair(pair_id)
runs = view.runs
if is_external(pair_id):
    st.caption("An external run (lossland.analyze): one model, drawn in the good run's colour; the Overview "
               "compares it with a lossland pair.")

st.subheader("Top eigenvalues (Lanczos)")
top = charts.spectrum_chart(frames.spectrum_frame(view.spectra, runs))
st.altair_chart(top, width="stretch")
ui.chart_downloads(top, f"eigenvalues-{pair_id}", key="spectrum-top")

st.subheader("Spectral density (stochastic Lanczos quadrature)")
sigma = st.slider("smoothing width (fraction of the spectral range)", 0.002, 0.2, 0.05, 0.002, format="%.3f",
                  key="spectrum-sigma", help="Re-smooths the stored quadrature nodes and weights: no new HVPs.")
density = frames.density_frame(view.densities, runs, sigma)
if len(density):
    dchart = charts.density_chart(density)
    st.altair_chart(dchart, width="stretch")
    ui.chart_downloads(dchart, f"density-{pair_id}", key="spectrum-density")
else:
    st.caption("No density stored for this pair.")

c1, c2 = st.columns(2)
with c1:
    st.subheader("Trace and ‖H‖_F")
    e = frames.curvature_frame(view.estimates, runs)
    if len(e):
        echart = charts.estimate_chart(e)
        st.altair_chart(echart)
        ui.chart_downloads(echart, f"estimates-{pair_id}", key="spectrum-est")
        exact = pd.concat([frames.curvature_frame(view.estimates, runs, exact=True),
                           frames.estimate_frame(view.estimates, runs, ["log_volume_exact"])
                           .assign(name="log-volume")], ignore_index=True)
        if len(exact):
            st.caption("Exact values (dense Hessian): " + "; ".join(
                f"{r['role']} {r['name']} = {r['value']:.5g}" for _, r in exact.iterrows()))
with c2:
    st.subheader("Basin volume proxy")
    lv = frames.log_volume_frame(view.estimates, runs)
    if len(lv):
        lchart = charts.log_volume_chart(lv)
        st.altair_chart(lchart, width="stretch")
        ui.chart_downloads(lchart, f"logvolume-{pair_id}", key="spectrum-lv")
        eps = lv["eps"].dropna()
        st.caption(f"ε = {eps.iloc[0]:g}; negative eigenvalues are clipped at 0. Larger is a wider basin."
                   if len(eps) else "")

st.subheader("Curvature per layer")
layer_spec = ui.analysis_settings(store, pair_id, LayerSpec(), key="spectrum-layers")
if layer_spec is not None:
    unit = "each module: weights and bias" if layer_spec.blocks == "module" else "each tensor"
    st.caption(f"For each parameter block ({unit}), the top eigenvalue and trace of its diagonal Hessian block "
               "H_bb (every other parameter fixed) of the clean training loss: Lanczos and Hutch++ "
               f"({layer_spec.trace_samples} HVPs), both exact for blocks of at most {layer_spec.exact_max_params} "
               "parameters. The blocks' traces add up to the trace above.")
layers = ui.analysis_block(store, pair_id, layer_spec, key=f"layers:{pair_id}")
if layers is not None:
    lchart = layer_chart(layers.frame)
    st.altair_chart(lchart, width="stretch")
    ui.chart_downloads(lchart, f"layers-{pair_id}", key="spectrum-layers-chart")
    columns = ["block", "role", "n_params", "top_eigenvalue", "trace", "trace_stderr", "trace_method", "converged"]
    st.dataframe(layers.frame.sort_values("idx", kind="stable")[columns], hide_index=True)
