"""Theory: the 2-layer bound (flat minimum => simple function) and the attack-size sweep."""

import streamlit as st

import ui
from lossland import analyses, charts
from lossland.config import ConfigError, ExperimentConfig
from lossland.experiments import sweep
from lossland.limits import check_experiment, check_grid
from lossland.specs import BoundSpec

store, pair_id = ui.page_pair("Theory", key="theory-pair", hint="The teacher-2layer preset fits here.")
view = store.pair(pair_id)
cfg = ExperimentConfig.from_json(view.runs.iloc[0]["config_json"])

st.subheader("The 2-layer bound")
st.markdown("For f(x) = a·σ(Wx + b) + c the input gradient factors through the first layer, ∂f/∂x = (∂f/∂b) W, "
            "which gives **E‖∇ₓf‖² ≤ √m ‖W‖₂² ‖G‖_F** (G the Gauss-Newton matrix, equal to the Hessian for MSE at "
            "a zero-residual minimum): a flat minimum with a bounded first layer computes a simple function.")
if cfg.model.name != "two_layer":
    st.info(f"This pair's model is {cfg.model.name!r}; the bound is for two_layer models. Pick a two_layer pair, or "
            "run the teacher-2layer preset (and the sweep below on it).")
else:
    b = ui.analysis_block(store, pair_id, BoundSpec(), key=f"bound:{pair_id}", label="the bound")
    if b is not None:
        st.altair_chart(charts.bound_chart(b.frame), width="stretch")
        st.dataframe(b.frame.set_index("role")[["complexity", "weight_factor", "gauss_newton_frobenius",
                                          "hessian_frobenius", "rhs", "ratio", "holds"]], width="stretch")

st.subheader("Attack-size sweep")
grid = analyses.attack_sweep_grid(cfg)
st.caption(f"This pair's config with attack sizes {grid['attack.n_attack']} × seeds {grid['train.seed']}: "
           "test accuracy should fall and sharpness rise with the attack size.")
frame = analyses.attack_sweep_frame(store, cfg, grid)
n_points = len(grid["attack.n_attack"]) * len(grid["train.seed"])
stored = frame["pair_id"].nunique() if len(frame) else 0
st.write(f"{stored} of {n_points} sweep points are stored.")
over_cap = None
if stored < n_points and not ui.read_only():
    try:  # the operator's caps: sweep points, and each point's model and epochs
        capped = ui.caps()
        check_grid(n_points, "attack sweep: points", capped)
        check_experiment(cfg, capped)
    except ConfigError as e:
        over_cap = e
        ui.show_config_error(e)
if stored < n_points and not ui.read_only() and over_cap is None:
    key = f"sweep:{cfg.config_hash()}"
    job = ui.jobs().get(key)
    if job is None or job.state in ("failed", "cancelled", "done"):
        if st.button("Run the missing points", key="theory-sweep"):
            ui.jobs().submit_task(key, lambda p: sweep(cfg, grid, store, p, executor=ui.sweep_executor()))
            st.rerun()
    if job is not None and job.state in ("queued", "running"):
        ui.job_progress(key, key="theory-sweep-job")
if len(frame):
    cols = st.columns(3)
    for i, (metric, log) in enumerate((("test_acc", False), ("top_eigenvalue", True), ("trace", True),
                                       ("frobenius_sq", True), ("log_volume", False))):
        cols[i % 3].altair_chart(charts.sweep_chart(frame, metric, log=log))
