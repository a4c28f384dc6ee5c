"""Basins: perturbation escape, random-initialisation statistics, basin volume and radius."""

import pandas as pd
import streamlit as st

import ui
from lossland import analyses, charts, report

store, pair_id = ui.page_pair("Basins of attraction", key="basins-pair")
view = store.pair(pair_id)
runs = view.runs

st.subheader("Random initialisation finds good minima")
st.caption("32 seeds trained on the clean data (one vmap ensemble): where their test accuracy and sharpness fall "
           "against this pair's good and bad minimum.")
SEEDS, RADII, TRIALS, DIRECTIONS = 32, (0.05, 0.1, 0.2, 0.4), 8, 8
r = ui.analysis_block(f"{SEEDS} random inits", f"random_init:{pair_id}",
                      lambda compute, p: analyses.random_init(store, pair_id, n_seeds=SEEDS, progress=p,
                                                              compute=compute),
                      pair_id=pair_id, trials=SEEDS)
if r is not None:
    minima = runs[["role", "test_acc", "top_eigenvalue"]]
    c1, c2 = st.columns(2)
    for col, field in ((c1, "test_acc"), (c2, "top_eigenvalue")):
        chart = charts.random_init_chart(r.frame, minima, field)
        col.altair_chart(chart, width="stretch")
    bad_acc = float(runs.set_index("role").loc["bad", "test_acc"])
    lowest = float(r.frame["test_acc"].min())
    st.write(f"Lowest test accuracy over {len(r.frame)} random inits: **{lowest:.1%}**; the bad minimum's: "
             f"**{bad_acc:.1%}** — {'no' if lowest > bad_acc else 'some'} random-init seed generalises as badly.")

st.subheader("Perturb and retrain")
st.caption("From each minimum, filter-normalised noise of relative radius r, then retraining on the clean set only. "
           "A trial escapes when its test accuracy moves by more than 5 points (for the bad minimum: upwards).")
e = ui.analysis_block("the escape trials", f"escape:{pair_id}",
                      lambda compute, p: analyses.escape(store, pair_id, radii=RADII, n_trials=TRIALS, progress=p,
                                                         compute=compute),
                      pair_id=pair_id, trials=2 * len(RADII) * TRIALS)
if e is not None:
    c1, c2 = st.columns(2)
    c1.altair_chart(charts.escape_chart(e.frame), width="stretch")
    c2.altair_chart(charts.retrain_chart(e.frame), width="stretch")

st.subheader("Basin size")
c1, c2 = st.columns(2)
with c1:
    est = report.with_roles(view.estimates, runs)
    lv = est[est["name"] == "log_volume_k"]
    if len(lv):
        st.altair_chart(charts.log_volume_chart(lv[["k", "value", "role"]]), width="stretch")
with c2:
    rad = ui.analysis_block("the empirical radius", f"radius:{pair_id}",
                            lambda compute, p: analyses.radius(store, pair_id, n_directions=DIRECTIONS, progress=p,
                                                               compute=compute),
                            pair_id=pair_id, trials=2 * DIRECTIONS)
    if rad is not None:
        st.altair_chart(charts.radius_chart(rad.frame), width="stretch")
        means = rad.frame.groupby("role")["radius"].mean()
        st.caption("Largest relative perturbation keeping the clean loss below 10× the target, over 8 directions: "
                   + ", ".join(f"{k} {v:.3g}" for k, v in means.items()) + ".")
        st.dataframe(pd.DataFrame(means).rename(columns={"radius": "mean radius"}))
