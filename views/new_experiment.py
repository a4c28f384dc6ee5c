"""New experiment: every config field in a form, validated by the config itself, run in the background with
its training curves drawn live."""

import dataclasses

import pandas as pd
import streamlit as st

import ui
from lossland.arguments import json_value
from lossland.config import (
    ACTIVATIONS,
    ATTACK_LABELS,
    DATASET_SIZES,
    DEFAULT_PRESET,
    DEVICES,
    LOSSES,
    MODELS,
    OPTIMIZERS,
    PRESETS,
    SCHEDULES,
    ConfigError,
    ExperimentConfig,
)
from lossland.factories import pinned
from lossland.limits import check_experiment
from lossland.live_charts import live_curves_chart

store = ui.get_store()
st.title("New experiment")
st.caption("Train a good and a bad minimum from one config, measure their spectra, store everything. "
           "A config already in the store answers at once.")

if ui.read_only():
    st.info("This dashboard is read-only: launching runs is switched off. Browse past runs on the other pages.")
    st.stop()

names = list(PRESETS)
start = st.selectbox("start from preset", names, index=names.index(DEFAULT_PRESET), key="ne-preset")
base = PRESETS[start]
k = f"ne-{start}"  # widget keys per preset, so switching preset refills the form


def _ints(text: str) -> list:
    """'32, 32' -> [32, 32]; anything else is passed through for the config to reject by name."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        return [int(p) for p in parts]
    except ValueError:
        return [text]


with st.form(f"{k}-form"):
    c1, c2, c3 = st.columns(3)
    with c1:
        st.subheader("Data")
        d = base.data
        dataset = st.selectbox("dataset", list(DATASET_SIZES), index=list(DATASET_SIZES).index(d.name), key=f"{k}-ds")
        n_train = st.number_input("clean-train size", value=d.n_train, step=100, key=f"{k}-ntr")
        n_test = st.number_input("test size (0 = all)", value=d.n_test or 0, step=100, key=f"{k}-nte")
        data_seed = st.number_input("split seed", value=d.seed, step=1, key=f"{k}-dseed")
        root = st.text_input("local data folder (mnist, fashion-mnist, cifar10)", value=d.root or "", key=f"{k}-root")
        st.subheader("Attack")
        a = base.attack
        n_attack = st.number_input("attack size (random labels)", value=a.n_attack, step=100, key=f"{k}-na")
        labels = st.selectbox("attack labels", ATTACK_LABELS, index=ATTACK_LABELS.index(a.labels), key=f"{k}-al")
        attack_seed = st.number_input("attack seed", value=a.seed, step=1, key=f"{k}-aseed")
    with c2:
        st.subheader("Model")
        m = base.model
        model = st.selectbox("model", MODELS, index=MODELS.index(m.name), key=f"{k}-model")
        widths = st.text_input("hidden widths (comma-separated)", value=", ".join(map(str, m.widths)), key=f"{k}-w")
        channels = st.text_input("conv channels (cnn, resnet)", value=", ".join(map(str, m.channels)), key=f"{k}-ch")
        activation = st.selectbox("activation", ACTIVATIONS, index=ACTIVATIONS.index(m.activation), key=f"{k}-act")
        batchnorm = st.checkbox("BatchNorm (resnet)", value=m.batchnorm, key=f"{k}-bn")
        model_seed = st.number_input("init seed", value=m.seed, step=1, key=f"{k}-mseed")
        st.subheader("Training")
        t = base.train
        optimizer = st.selectbox("optimizer", OPTIMIZERS, index=OPTIMIZERS.index(t.optimizer), key=f"{k}-opt")
        lr = st.number_input("learning rate", value=t.lr, format="%.5f", key=f"{k}-lr")
        momentum = st.number_input("momentum (sgd)", value=t.momentum, key=f"{k}-mom")
        weight_decay = st.number_input("weight decay", value=t.weight_decay, format="%.5f", key=f"{k}-wd")
    with c3:
        st.subheader("Stopping")
        batch_size = st.number_input("batch size", value=t.batch_size, step=10, key=f"{k}-bs")
        max_epochs = st.number_input("max epochs", value=t.max_epochs, step=100, key=f"{k}-me")
        loss_target = st.number_input("clean-loss target", value=t.loss_target, format="%.5f", key=f"{k}-lt")
        schedule = st.selectbox("lr schedule", SCHEDULES, index=SCHEDULES.index(t.schedule), key=f"{k}-sch")
        loss = st.selectbox("loss", LOSSES, index=LOSSES.index(t.loss), key=f"{k}-loss")
        train_seed = st.number_input("batch-order seed", value=t.seed, step=1, key=f"{k}-tseed")
        device = st.selectbox("device", DEVICES, index=DEVICES.index(t.device), key=f"{k}-dev")
        st.subheader("Spectrum")
        s = base.spectrum
        spec_k = st.number_input("top-k eigenvalues", value=s.k, step=1, key=f"{k}-k")
        tol = st.number_input("relative tolerance", value=s.tol, format="%.1e", key=f"{k}-tol")
        slq_vectors = st.number_input("SLQ vectors", value=s.slq_vectors, step=1, key=f"{k}-slqv")
        slq_steps = st.number_input("SLQ steps", value=s.slq_steps, step=10, key=f"{k}-slqm")
        trace_samples = st.number_input("trace samples", value=s.trace_samples, step=10, key=f"{k}-ts")
        spec_seed = st.number_input("spectrum seed", value=s.seed, step=1, key=f"{k}-sseed")
        snapshots = st.number_input("trajectory snapshots (0 = none)", value=base.record.trajectory_points, step=10,
                                    key=f"{k}-traj", help="kept for the optimizer trajectory; not part of the run id")
    with st.expander("Your own model and data (factories by import path; see the README)"):
        f1, f2 = st.columns(2)
        data_factory = f1.text_input("data.factory, e.g. my_pkg.data:load", key=f"{k}-dfac")
        data_kwargs = f1.text_input("data.factory_kwargs (JSON)", "{}", key=f"{k}-dkw")
        model_factory = f2.text_input("model.factory, e.g. my_pkg.nets:make_net", key=f"{k}-mfac")
        model_kwargs = f2.text_input("model.factory_kwargs (JSON)", "{}", key=f"{k}-mkw")
    submitted = st.form_submit_button("Run", type="primary")

if submitted:
    raw = {
        "data": dataclasses.asdict(base.data) | {"name": dataset, "n_train": int(n_train),
                                                 "n_test": int(n_test) or None, "seed": int(data_seed),
                                                 "root": root.strip() or None},
        "model": {"name": model, "widths": _ints(widths), "channels": _ints(channels), "activation": activation,
                  "batchnorm": batchnorm, "seed": int(model_seed)},
        "train": {"optimizer": optimizer, "lr": float(lr), "momentum": float(momentum),
                  "weight_decay": float(weight_decay), "batch_size": int(batch_size), "max_epochs": int(max_epochs),
                  "loss_target": float(loss_target), "schedule": schedule, "loss": loss, "seed": int(train_seed),
                  "device": device},
        "attack": {"n_attack": int(n_attack), "labels": labels, "seed": int(attack_seed)},
        "spectrum": dataclasses.asdict(base.spectrum) | {"k": int(spec_k), "tol": float(tol),
                                                         "slq_vectors": int(slq_vectors), "slq_steps": int(slq_steps),
                                                         "trace_samples": int(trace_samples), "seed": int(spec_seed)},
        "record": {"trajectory_points": int(snapshots)},
    }
    try:
        own = {"data": (data_factory, data_kwargs), "model": (model_factory, model_kwargs)}
        for section, (factory, kwargs) in own.items():
            if factory.strip():
                raw[section] |= {"name": "custom", "factory": factory.strip(),
                                 "factory_kwargs": json_value(kwargs or "{}", f"{section}.factory_kwargs")}
        cfg = ExperimentConfig.from_dict(raw)
        ui.require_runnable(store, None, cfg)  # factories only from this dashboard's folder
        cfg = pinned(cfg)  # a factory's source hash goes into the id
        check_experiment(cfg, ui.caps())  # the operator's caps on parameters and epochs
    except ConfigError as e:
        ui.show_config_error(e)
    else:
        pair_id = cfg.config_hash()
        if store.has_pair(pair_id):
            st.success(f"Pair {pair_id} came from the store — this config was computed before.")
            st.session_state["ne-last"] = None
        else:
            ui.jobs().submit(cfg)
            st.session_state["ne-last"] = pair_id
        st.page_link("views/overview.py", label=f"Open pair {pair_id} in the overview", icon="➡️",
                     query_params={"pair": pair_id})



def live_curves(pair_id: str) -> None:
    """The run's loss and accuracy per epoch so far, redrawn every second while it trains."""
    job = ui.jobs().get(pair_id)
    rows = job.curve_rows() if job is not None else []
    if not rows:
        return
    st.altair_chart(live_curves_chart(pd.DataFrame(rows)), width="stretch")
    latest = {r["role"]: r for r in rows}
    st.caption("Per epoch, as it trains: " + "; ".join(
        f"{role} epoch {r['epoch']}, clean loss {r['clean_loss']:.3g}, test accuracy {r['test_acc']:.1%}"
        for role, r in latest.items()))


last = st.session_state.get("ne-last")
if last:
    job = ui.jobs().get(last)
    if job and job.state == "done":
        st.success(f"Pair {last} is stored ({'from the store' if job.from_store else 'computed'}).")
        st.page_link("views/overview.py", label=f"Open pair {last}", icon="➡️", query_params={"pair": last})
    else:
        ui.job_progress(last, key="ne-job")
    running = job is not None and job.state in ("queued", "running")
    st.fragment(live_curves, run_every=1.0 if running else None)(last)
