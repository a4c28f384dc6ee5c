"""lossland dashboard (first page): train the default good/bad pair and show the gap."""

import streamlit as st

from lossland.config import DEFAULT_PRESET, preset
from lossland.train import train_pair

st.set_page_config(page_title="lossland", layout="wide")
st.title("lossland")
st.caption("Good and bad minima with the same training error (after Wu, Zhu & E, arXiv 1706.10239).")

cfg = preset(DEFAULT_PRESET)
st.write(f"Preset **{DEFAULT_PRESET}**: {cfg.data.n_train} clean {cfg.data.name} samples, "
         f"{cfg.attack.n_attack} attack samples with random labels, MLP {cfg.model.widths}.")

if st.button("Train the default pair", type="primary"):
    bar = st.progress(0.0, text="starting")
    pair = train_pair(cfg, lambda f, m: bar.progress(min(f, 1.0), text=m))
    bar.empty()
    rows = {r.role: {"clean-train loss": f"{r.clean_loss:.2e}", "clean-train acc": f"{r.clean_acc:.1%}",
                     "attack acc": f"{r.attack_acc:.1%}", "test acc": f"{r.test_acc:.1%}",
                     "epochs": r.epochs, "stop": r.status} for r in (pair.good, pair.bad)}
    st.table(rows)
    st.write(f"Both minima fit the clean training set; the bad one's test accuracy is "
             f"{pair.good.test_acc - pair.bad.test_acc:.1%} lower.")
