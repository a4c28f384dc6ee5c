"""Theory: the 2-layer bound (an identity check), the attack-size sweep and the paper's Figure 1."""

import streamlit as st

import ui
from lossland import analyses, charts, experiments, fitting
from lossland.config import ConfigError, ExperimentConfig
from lossland.experiments import sweep
from lossland.limits import check_analysis, check_experiment, check_grid
from lossland.specs import CURVE_FIT, BoundSpec, CurveFitSpec


def launch(key: str, label: str, button_key: str, work) -> None:
    """A button that runs `work(progress)` as a background job, and the job's progress once it runs."""
    job = ui.jobs().get(key)
    if job is None or job.state in ("failed", "cancelled", "done"):
        if st.button(label, key=button_key):
            ui.jobs().submit_task(key, work)
            st.rerun()
    if job is not None and job.state in ("queued", "running"):
        ui.job_progress(key, key=f"{button_key}-job")


store, pair_id = ui.page_pair("Theory", key="theory-pair", hint="The teacher-2layer preset fits here.")
view = store.pair(pair_id)
cfg = ExperimentConfig.from_json(view.runs.iloc[0]["config_json"])

st.subheader("The 2-layer bound (an identity check)")
st.markdown("For f(x) = a·σ(Wx + b) + c the input gradient factors through the first layer, ∂f/∂x = (∂f/∂b) W, "
            "which gives **E‖∇ₓf‖² ≤ √m ‖W‖₂² ‖G‖_F** with G the Gauss-Newton matrix. It holds at any weights, trained "
            "or not, whatever the labels (G does not depend on them), so it checks the algebra, not the paper's claim. "
            "The claim is about the Hessian: at an MSE minimum that interpolates, G = H and the bound reads "
            "E‖∇ₓf‖² ≤ √m ‖W‖₂² ‖H‖_F, so low-complexity solutions should have a small ‖H‖_F; whether they do is "
            "measured across many minima (`lossland.theory.two_layer_measure`).")
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
grid = experiments.attack_sweep_grid(cfg)
st.caption(f"This pair's config with attack sizes {grid['attack.n_attack']} × seeds {grid['train.seed']}: "
           "test accuracy should fall and sharpness rise with the attack size.")
frame = experiments.attack_sweep_frame(store, cfg, grid)
n_points = len(grid["attack.n_attack"]) * len(grid["train.seed"])
stored = frame["pair_id"].nunique() if len(frame) else 0
st.write(f"{stored} of {n_points} sweep points are stored.")
over_cap = None
if stored < n_points and not ui.read_only():
    try:  # the operator's caps: sweep points, and each point's model and epochs
        capped = ui.caps()
        check_grid(n_points, "attack sweep: points", capped)
        ui.require_runnable(store, pair_id, cfg)
        check_experiment(cfg, capped)
    except ConfigError as e:
        over_cap = e
        ui.show_config_error(e)
if stored < n_points and not ui.read_only() and over_cap is None:
    launch(f"sweep:{cfg.config_hash()}", "Run the missing points", "theory-sweep",
           lambda p: sweep(cfg, grid, store, p, executor=ui.sweep_executor()))
if len(frame):
    cols = st.columns(3)
    for i, (metric, log) in enumerate((("test_acc", False), ("top_eigenvalue", True), ("trace", True),
                                       ("frobenius_sq", True), ("log_volume", False))):
        cols[i % 3].altair_chart(charts.sweep_chart(frame, metric, log=log))

st.subheader("Figure 1: a network and polynomials through the same points")
fit_spec = CurveFitSpec()
st.markdown(f"n = {', '.join(map(str, fit_spec.ns))} evenly spaced points of {fitting.TARGETS[fit_spec.target]} "
            f"plus noise σ = {fit_spec.noise:g}, fitted by a tanh MLP {list(fit_spec.widths)} trained to near-zero "
            "training error and by least-squares polynomials in the Legendre basis: the interpolant of degree n − 1, "
            f"the minimum-norm one of degree n − 1 + {max(fit_spec.extra_degrees)}, and a degree-{fit_spec.low_degree} "
            "fit that does not interpolate (the control). Test error is against the noise-free target on a dense "
            "grid; roughness is ∫ f''² dx.")
figure = analyses.get(store, CURVE_FIT, fit_spec)
if figure is None and ui.read_only():
    st.caption("Figure 1: not computed yet, and this dashboard is read-only.")
elif figure is None:
    try:  # the operator's caps: its networks count as trials
        check_analysis(fit_spec, "Figure 1", ui.caps())
        launch(f"curve-fit:{fit_spec.analysis_id(CURVE_FIT)}", "Compute Figure 1 (seconds)", "theory-curve-fit",
               lambda p: analyses.compute(store, CURVE_FIT, fit_spec, p))
    except ConfigError as e:
        ui.show_config_error(e)
else:
    summary = fitting.summary(figure.frame)
    cols = st.columns(2)
    n = cols[0].select_slider("points n", options=list(fit_spec.ns), value=max(fit_spec.ns), key="theory-fit-n")
    seed = cols[1].selectbox("seed", list(range(fit_spec.seed, fit_spec.seed + fit_spec.n_seeds)),
                             key="theory-fit-seed")
    st.altair_chart(charts.curve_fit_chart(figure.frame, summary, n=n, seed=seed), width="stretch")
    table = summary[summary["n"] > 0].groupby(["n", "fit"])[["train_mse", "test_mse", "roughness"]].median()
    net, poly = table.loc[(n, fitting.NET)], table.loc[(n, fitting.poly_label())]
    st.caption(f"Medians over seeds. At n = {n}: the network's training error {net['train_mse']:.1e}, roughness "
               f"{net['roughness']:.3g} and test error {net['test_mse']:.3g}; the degree n − 1 interpolant's roughness "
               f"{poly['roughness']:.3g} and test error {poly['test_mse']:.3g}.")
    st.dataframe(table, width="stretch")
