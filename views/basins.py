"""Basins: perturbation escape, random-initialisation statistics, basin volume and radius."""

import pandas as pd
import streamlit as st

import ui
from lossland import charts, path_analyses, path_charts
from lossland.frames import missing, records, with_roles
from lossland.specs import EscapeSearchSpec, EscapeSpec, RadiusSpec, RandomInitSpec

store, pair_id = ui.page_pair("Basins of attraction", key="basins-pair")
view = store.pair(pair_id)
runs = view.runs

st.subheader("Random initialisation finds good minima")
spec = ui.analysis_settings(store, pair_id, RandomInitSpec(), key="basins-random-init")
if spec is not None:
    st.caption(f"{spec.n_seeds} seeds trained on the clean data (one vmap ensemble): where their test accuracy and "
               "sharpness fall against this pair's good and bad minimum.")
r = ui.analysis_block(store, pair_id, spec, key=f"random_init:{pair_id}",
                      label=f"{spec.n_seeds} random inits" if spec else "")
if r is not None:
    minima = runs[["role", "test_acc", "top_eigenvalue"]]
    c1, c2 = st.columns(2)
    for col, field in ((c1, "test_acc"), (c2, "top_eigenvalue")):
        chart = charts.random_init_chart(r.frame, minima, field)
        col.altair_chart(chart, width="stretch")
    bad_acc = records(runs, ["test_acc"]).get("bad", {}).get("test_acc")
    lowest = r.frame["test_acc"].min()
    if not missing(bad_acc) and not missing(lowest):
        st.write(f"Lowest test accuracy over {len(r.frame)} random inits: **{lowest:.1%}**; the bad minimum's: "
                 f"**{bad_acc:.1%}** — {'no' if lowest > bad_acc else 'some'} random-init seed generalises as badly.")

st.subheader("Perturb and retrain")
spec = ui.analysis_settings(store, pair_id, EscapeSpec(), key="basins-escape")
if spec is not None:
    st.caption(f"From each minimum, {spec.n_trials} draws of filter-normalised noise of each relative radius r, then "
               f"{spec.retrain_epochs} epochs of retraining on the clean set only. A trial escapes when its test "
               "accuracy moves by more than 5 points (for the bad minimum: upwards).")
e = ui.analysis_block(store, pair_id, spec, key=f"escape:{pair_id}")
if e is not None:
    c1, c2 = st.columns(2)
    c1.altair_chart(charts.escape_chart(e.frame), width="stretch")
    c2.altair_chart(charts.retrain_chart(e.frame), width="stretch")

st.subheader("Where escape becomes likely")
spec = ui.analysis_settings(store, pair_id, EscapeSearchSpec(), key="basins-escape-search")
if spec is not None:
    st.caption(f"The same perturb-and-retrain rule, {spec.n_trials} trials per radius, at radii chosen per minimum to "
               "bracket the radius where half the trials escape (a coarse scan in log r, then bisection); bars are "
               "exact (Clopper–Pearson) 95% intervals, dashed lines each minimum's estimated 50% radius.")
s50 = ui.analysis_block(store, pair_id, spec, key=f"escape-search:{pair_id}")
if s50 is not None:
    found = path_analyses.escape_transitions(s50.frame, s50.spec)
    chart = path_charts.escape_transition_chart(s50.frame, found)
    st.altair_chart(chart, width="stretch")
    ui.chart_downloads(chart, f"escape-transition-{pair_id}", key="basins-escape-search")

st.subheader("Basin size")
c1, c2 = st.columns(2)
with c1:
    est = with_roles(view.estimates, runs)
    lv = est[est["name"] == "log_volume_k"]
    if len(lv):
        st.altair_chart(charts.log_volume_chart(lv[["k", "value", "role"]]), width="stretch")
with c2:
    spec = ui.analysis_settings(store, pair_id, RadiusSpec(), key="basins-radius")
    rad = ui.analysis_block(store, pair_id, spec, key=f"radius:{pair_id}")
    if rad is not None:
        st.altair_chart(charts.radius_chart(rad.frame), width="stretch")
        means = rad.frame.groupby("role")["radius"].mean()
        shown = ", ".join(f"{k} {v:.3g}" for k, v in means.items())
        st.caption(f"Largest relative perturbation keeping the clean loss below {spec.threshold_factor:g}× the "
                   f"target, over {spec.n_directions} directions: {shown}.")
        st.dataframe(pd.DataFrame(means).rename(columns={"radius": "mean radius"}))
