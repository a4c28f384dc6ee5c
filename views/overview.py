"""Overview: the selected pair side by side — does the bad minimum sit in a sharper valley?"""

import pandas as pd
import streamlit as st

import ui
from lossland import charts, report
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
st.write(report.pair_sentence(runs))
g, b = view.run("good"), view.run("bad")
for r in (g, b):
    if r["status"] == "diverged":
        st.warning(f"The {r['role']} run diverged after {r['epochs']} epochs ({r['stop_reason']}): its training "
                   f"curve is stored, but no Hessian spectrum was measured at a point that is not a minimum.")
    elif r["status"] == "failed":
        st.error(f"The {r['role']} run failed: {r['error']}")


def _num(value, fmt: str) -> str:
    return "—" if value is None or pd.isna(value) else format(value, fmt)


lam_g, lam_b = g["top_eigenvalue"], b["top_eigenvalue"]
ratio = lam_b / lam_g if pd.notna(lam_g) and pd.notna(lam_b) and lam_g else None
m = st.columns(4)
m[0].metric("test accuracy · good", _num(g["test_acc"], ".1%"))
m[1].metric("test accuracy · bad", _num(b["test_acc"], ".1%"),
            _num(b["test_acc"] - g["test_acc"], "+.1%") if pd.notna(b["test_acc"] - g["test_acc"]) else None)
m[2].metric("top eigenvalue · good", _num(lam_g, ".4g"))
m[3].metric("top eigenvalue · bad", _num(lam_b, ".4g"), f"×{ratio:.1f}" if ratio is not None else None,
            delta_color="inverse")

left, right = st.columns([2, 3])
with left:
    st.dataframe(report.pair_table(runs), width="stretch")
    cfg_row = runs.iloc[0]
    st.caption(f"{cfg_row['dataset']} · {cfg_row['model']} ({cfg_row['widths']}) · {cfg_row['n_params']} parameters · "
               f"{cfg_row['n_train']} clean + {cfg_row['n_attack']} attack samples · device {cfg_row['device']}")
with right:
    spec = charts.spectrum_chart(report.spectrum_frame(view.spectra, runs))
    st.altair_chart(spec, width="stretch")
    ui.chart_downloads(spec, f"spectrum-{pair_id}", key="overview-spec")

acc = charts.accuracy_chart(runs[["role", "clean_acc", "attack_acc", "test_acc"]])
st.altair_chart(acc, width="stretch")
ui.chart_downloads(acc, f"accuracy-{pair_id}", key="overview-acc")

st.download_button("Download this comparison as HTML", lambda: report.pair_html(runs, view.spectra, f"pair {pair_id}"),
                   f"lossland-{pair_id}.html", "text/html", key="overview-html")
st.page_link("views/spectrum.py", label="Full spectra, densities and basin volume", icon="📈",
             query_params={"pair": pair_id})
