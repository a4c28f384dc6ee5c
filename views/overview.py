"""Overview: the selected pair side by side — does the bad minimum sit in a sharper valley?"""

import streamlit as st

import ui
from lossland import charts, frames, report
from lossland.config import DEFAULT_PRESET, preset

store = ui.get_store()
st.title("Good vs bad minimum")

pair_id = ui.pair_picker(store, key="overview-pair")
if pair_id is None:
    st.info("The store is empty. Train the default pair — a 64-32-32-10 MLP on scikit-learn's 8×8 digits, "
            "500 clean samples, plus 500 attack samples with random labels for the bad minimum — and compare "
            "their Hessian spectra. It takes under a minute on a laptop CPU.")
    cfg = preset(DEFAULT_PRESET)
    job = ui.jobs().get(cfg.config_hash())
    if ui.read_only():
        st.warning("This dashboard is read-only, so it can't launch runs.")
    elif (job is None or job.state in ("failed", "cancelled")) and ui.within_caps(cfg):
        if st.button("Run the default experiment", type="primary", key="overview-run-default"):
            ui.jobs().submit(cfg)
            st.rerun()
    if job is not None:
        ui.job_progress(job.pair_id, key="overview-job")
    st.stop()

view = store.pair(pair_id)
runs = view.runs
st.write(frames.pair_sentence(runs))
for _, r in runs.iterrows():
    if r["status"] == "diverged":
        st.warning(f"The {r['role']} run diverged after {r['epochs']} epochs ({r['stop_reason']}): its training "
                   f"curve is stored, but no Hessian spectrum was measured at a point that is not a minimum.")
    elif r["status"] == "failed":
        st.error(f"The {r['role']} run failed: {r['error']}")

for column, h in zip(st.columns(4), frames.headlines(runs), strict=True):
    column.metric(h.label, h.value, h.delta, delta_color="inverse" if h.lower_is_better else "normal")

left, right = st.columns([2, 3])
with left:
    st.dataframe(frames.pair_table(runs), width="stretch")
    cfg_row = runs.iloc[0]
    st.caption(f"{cfg_row['dataset']} · {cfg_row['model']} ({cfg_row['widths']}) · {cfg_row['n_params']} parameters · "
               f"{cfg_row['n_train']} clean + {cfg_row['n_attack']} attack samples · device {cfg_row['device']}")
with right:
    spec = charts.spectrum_chart(frames.spectrum_frame(view.spectra, runs))
    st.altair_chart(spec, width="stretch")
    ui.chart_downloads(spec, f"spectrum-{pair_id}", key="overview-spec")

acc = charts.accuracy_chart(runs[["role", "clean_acc", "attack_acc", "test_acc"]])
st.altair_chart(acc, width="stretch")
ui.chart_downloads(acc, f"accuracy-{pair_id}", key="overview-acc")

st.download_button("Download this comparison as HTML", lambda: report.pair_html(runs, view.spectra, f"pair {pair_id}"),
                   f"lossland-{pair_id}.html", "text/html", key="overview-html")
st.page_link("views/spectrum.py", label="Full spectra, densities and basin volume", icon="📈",
             query_params={"pair": pair_id})
