"""Overview: the selected pair side by side — does the bad minimum sit in a sharper valley?"""

import numpy as np
import pandas as pd
import streamlit as st

import ui
from lossland import charts, frames, report
from lossland.config import DEFAULT_PRESET, IMAGE_DATASETS, ExperimentConfig, preset
from lossland.data import AttackSamples, DatasetError, attack_samples
from lossland.external import is_external
from lossland.frames import stored_json


@st.cache_data(show_spinner=False, max_entries=16)
def samples(config_json: str) -> AttackSamples:
    return attack_samples(ExperimentConfig.from_json(config_json), n=5)  # one row beside one row


SIZE = 84  # pixels per sample in the strip


def enlarged(images: np.ndarray) -> list[np.ndarray]:
    """Nearest-neighbour upscaling to about SIZE pixels, so 8×8 digits stay crisp."""
    k = max(1, SIZE // images.shape[1])
    return [img.repeat(k, 0).repeat(k, 1) for img in images]


def attack_strip(cfg: ExperimentConfig) -> None:
    """A few clean training images beside a few attack images with the label trained on and the true one."""
    if cfg.data.name not in IMAGE_DATASETS or cfg.attack.n_attack == 0:
        return
    st.subheader("What the attack set is")
    kind = ("random labels, uniform over the classes (about 1 in 10 right by chance)" if cfg.attack.labels == "random"
            else "wrong labels, never the true class")
    st.caption(f"The bad minimum is trained on the {cfg.data.n_train} clean samples plus {cfg.attack.n_attack} "
               f"held-out training images given {kind}.")
    try:
        s = samples(cfg.to_json())
    except DatasetError as e:
        st.info(f"The samples can't be drawn here: {e}")
        return
    names = s.class_names
    clean, attack = st.columns(2)
    clean.markdown("**Clean samples**, with their labels")
    clean.image(enlarged(s.clean_images), caption=[names[y] for y in s.clean_labels], width=SIZE,
                alt=[f"clean sample: {names[y]}" for y in s.clean_labels])
    attack.markdown("**Attack samples**, with the label trained on (and the true one)")
    labels = list(zip(s.attack_given, s.attack_true, strict=True))
    attack.image(enlarged(s.attack_images), caption=[f"{names[g]} (is {names[t]})" for g, t in labels], width=SIZE,
                 alt=[f"attack sample labelled {names[g]}, truly {names[t]}" for g, t in labels])

def external_overview(view) -> None:
    """An external run (lossland.analyze) with its numbers and spectrum, beside a lossland pair when one is picked."""
    runs = view.runs
    r = runs.iloc[0]
    st.write(ui.text(f"External run: {r['model']} on {r['dataset']} ({r['n_params']} parameters, {r['n_train']} "
                     f"samples), analysed by lossland.analyze; it was trained outside lossland, so it has no bad "
                     f"partner and no training curve. Pick a lossland pair to compare it with."))
    others = [p for p in dict.fromkeys(ui.runs_frame(store)["pair_id"]) if not is_external(p)]
    other = st.selectbox("beside the lossland pair", [None, *others], key="overview-beside",
                         format_func=lambda p: "none" if p is None else p)
    pair = store.pair(other) if other else None
    st.dataframe(frames.beside(runs, pair.runs if pair else None), width="stretch")
    parts = [frames.labelled(frames.spectrum_frame(view.spectra, runs), runs, frames.EXTERNAL)]
    if pair is not None:
        parts.append(frames.labelled(frames.spectrum_frame(pair.spectra, pair.runs), pair.runs))
    spec = charts.spectrum_chart(pd.concat(parts, ignore_index=True), color="run")
    st.altair_chart(spec, width="stretch")
    ui.chart_downloads(spec, f"spectrum-{view.pair_id}", key="overview-ext-spec")


def factory_sources(runs) -> None:
    """The source text of the factories a pair's config names (stored with its runs, carried by bundles),
    shown as code for review: never imported or run by the dashboard."""
    extra = stored_json(runs["extra_json"].iloc[0]) if len(runs) and "extra_json" in runs else None
    found = extra.get("factory_sources") if isinstance(extra, dict) else None
    if not isinstance(found, dict) or not found:
        return
    st.subheader("Model and data code")
    st.caption("The researcher's own factories this pair was made with, as stored with its runs (for review: "
               "the dashboard never imports code it is shown).")
    for section, s in found.items():
        if isinstance(s, dict):
            with st.expander(ui.text(f"{section}: {s.get('factory')} — module {s.get('module')}, sha256 "
                                     f"{str(s.get('sha256'))[:16]}…")):
                st.code(str(s.get("source", "")), language="python")


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
if is_external(pair_id):
    external_overview(view)
    st.stop()
st.write(frames.pair_sentence(runs))
for _, r in runs.iterrows():
    if r["status"] == "diverged":
        st.warning(f"The {r['role']} run diverged after {r['epochs']} epochs ({ui.text(r['stop_reason'])}): its "
                   "training curve is stored, but no Hessian spectrum was measured at a point that is not a minimum.")
    elif r["status"] == "failed":
        st.error(f"The {r['role']} run failed: {ui.text(r['error'])}")

for column, h in zip(st.columns(4), frames.headlines(runs), strict=True):
    column.metric(h.label, h.value, h.delta, delta_color="inverse" if h.lower_is_better else "normal")

left, right = st.columns([2, 3])
with left:
    st.dataframe(frames.pair_table(runs), width="stretch")
    cfg_row = runs.iloc[0]
    st.caption(ui.text(f"{cfg_row['dataset']} · {cfg_row['model']} ({cfg_row['widths']}) · {cfg_row['n_params']} "
                       f"parameters · {cfg_row['n_train']} clean + {cfg_row['n_attack']} attack samples · device "
                       f"{cfg_row['device']}"))
with right:
    spec = charts.spectrum_chart(frames.spectrum_frame(view.spectra, runs))
    st.altair_chart(spec, width="stretch")
    ui.chart_downloads(spec, f"spectrum-{pair_id}", key="overview-spec")

acc = charts.accuracy_chart(runs[["role", "clean_acc", "attack_acc", "test_acc"]])
st.altair_chart(acc, width="stretch")
ui.chart_downloads(acc, f"accuracy-{pair_id}", key="overview-acc")

attack_strip(ExperimentConfig.from_json(runs.iloc[0]["config_json"]))
factory_sources(runs)

st.download_button("Download this comparison as HTML", lambda: report.pair_html(runs, view.spectra, f"pair {pair_id}"),
                   f"lossland-{pair_id}.html", "text/html", key="overview-html")
st.page_link("views/spectrum.py", label="Full spectra, densities and basin volume", icon="📈",
             query_params={"pair": pair_id})
