"""Reproduce: the paper's experiments in one go, and the claims table and figures of each report."""

import streamlit as st

import ui
from lossland import report
from lossland.config import ConfigError
from lossland.reproduce import DATASET_PRESETS, SCALES, plan_for, reports_dir, reproduce
from lossland.robustness import robustness_frame

JOB = "reproduce"
store = ui.get_store()
st.title("Reproduce the paper")
st.caption("Wu, Zhu & E (2017), *Towards Understanding Generalization of Deep Learning: Perspective of Loss "
           "Landscapes*: good/bad pairs over seeds and attack sizes, their spectra, landscapes and basins, an "
           "optimizer grid, two_layer networks and Figure 1; each claim tested on the measured numbers and on its "
           "negative control. Everything goes through the store, so a second run reuses every stored result. The "
           "same as `python -m lossland reproduce`.")

if ui.read_only():
    st.info("This dashboard is read-only: it shows the reports already written.", icon="🔒")
else:
    with st.form("reproduce-form"):
        c1, c2, c3 = st.columns([2, 3, 1])
        scale = c1.radio("scale", SCALES, horizontal=True, key="repro-scale",
                         help="small: minutes on a laptop CPU; full: more seeds, attack sizes and trials, and MNIST, "
                              "Fashion-MNIST and CIFAR-10 where their files are present — sized for a GPU")
        datasets = c2.multiselect("datasets", list(DATASET_PRESETS), default=["digits", "mnist1d"],
                                  key="repro-datasets", help="empty: the scale's default datasets")
        seeds = c3.number_input("seeds", min_value=1, max_value=20, value=5, step=1, key="repro-seeds")
        go = st.form_submit_button("Run the reproduction", type="primary")
    if go:
        job = ui.jobs().get(JOB)
        try:
            plan, skipped = plan_for(scale, datasets or None, int(seeds))
        except ConfigError as e:
            ui.show_config_error(e)
        else:
            for name, why in skipped:
                st.warning(f"Skipping {name}: {why}")
            if job is not None and job.state in ("queued", "running"):
                st.info("A reproduction is already running; its progress is below.")
            elif plan.bases and ui.plan_within_caps(plan):
                runner = ui.jobs()

                def work(progress) -> bool:
                    rep = reproduce(plan, runner.store, progress, skipped=skipped, executor=ui.sweep_executor())
                    report.write_report(rep, reports_dir(runner.store))
                    return rep.computed == 0

                runner.submit_task(JOB, work)
            elif not plan.bases:
                st.error("None of the chosen datasets can be loaded here; nothing to run.")
    if ui.jobs().get(JOB) is not None:
        ui.job_progress(JOB, key="repro-job")

folders = report.list_reports(reports_dir(store))
if not folders:
    st.info("No report yet. Run the reproduction above, or `python -m lossland reproduce --scale small` "
            "(under 10 minutes on a 2-core CPU).")
    st.stop()

loaded = {}
for f in folders:
    try:
        loaded[f] = report.load_report(f)
    except ValueError as e:
        st.warning(str(e))


def label(folder) -> str:
    m = loaded[folder]["meta"]
    verdicts = [c["verdict"] for c in loaded[folder]["claims"]]
    return (f"{folder.name} · {m['scale']} · {', '.join(m['datasets'])} · {m['seeds']} seeds · "
            f"{verdicts.count('PASS')}/{len(verdicts)} pass")


choices = [f for f in folders if f in loaded]
if not choices:
    st.stop()
folder = st.selectbox("report", choices, format_func=label, key="repro-report")
data = loaded[folder]
meta = data["meta"]
st.write(f"Scale **{meta['scale']}** · datasets **{', '.join(meta['datasets'])}** · {meta['seeds']} seeds · "
         f"started {meta['started']} · took **{meta['seconds'] / 60:.1f} min** ("
         + ("everything from the store" if meta.get("computed_steps") == 0 else
            f"{meta.get('computed_steps', '?')} steps computed") + f") on {meta['machine']}"
         + (f"; {meta['code']}." if meta.get("code") else "."))
for s in meta.get("skipped", []):
    st.caption(f"Skipped {s['dataset']}: {s['reason']}")

st.subheader("Claims")
verdicts = [c["verdict"] for c in data["claims"]]
st.write(f"**{verdicts.count('PASS')} of {len(verdicts)}** claims pass, {verdicts.count('NOT INFORMATIVE')} are "
         f"not informative, {verdicts.count('FAIL')} fail. {report.RULES}")
st.dataframe(report.claims_verdicts(data["claims"]), hide_index=True, width="stretch",
             column_config={"claim": st.column_config.TextColumn(width="large")})
effects = report.effects_frame(data["claims"])
for c in data["claims"]:
    with st.expander(f"{c['number']}. {c['statement']} — {c['verdict']}", expanded=c["verdict"] != "PASS"):
        st.markdown(f"**Rule:** {c['test']}")
        st.dataframe(effects[effects["#"] == c["number"]].drop(columns="#"), hide_index=True, width="stretch")
        for ch in c["checks"]:
            result = ch.get("result", ch["verdict"])
            st.markdown(f"- **{ch['dataset']}** ({result}): {ch['measured']}")
            if ch.get("control"):
                st.caption(f"control ({ch['control']['verdict']}): {ch['control']['measured']}")
            if result == "FAIL":
                st.error(f"{ch['detail'] or 'no detail'}. {report.FAIL_NOTES.get(c['number'], '')}", icon="❌")
            elif result != "PASS":
                st.warning(f"{result}: {ch['detail'] or 'the same rule also passes on its control'}", icon="⚠️")

robust = data.get("robustness") or {}
if robust.get("counts"):
    st.subheader("Robustness over the optimizer")
    st.write("Each sharpness measure in each optimizer setting: ✓ where the 95% interval of its mean effect over "
             "seeds lies above 0 (the main pairs are one setting; the grid uses a smaller clean set).")
    for n in robust["counts"]:
        st.markdown(f"- **{n['measure']}**: {n['text']}")
    st.dataframe(robustness_frame(robust), hide_index=True, width="stretch")
if data.get("identity_check"):
    st.caption(data["identity_check"])

row = st.container(horizontal=True)
row.download_button("Report (zip)", lambda: report.report_zip(folder), f"lossland-report-{folder.name}.zip",
                    "application/zip", key="repro-zip")
for name, mime in (("report.md", "text/markdown"), ("report.html", "text/html")):
    path = folder / name
    if path.is_file():
        row.download_button(name, path.read_bytes(), f"{folder.name}-{name}", mime, key=f"repro-{name}")

st.subheader("Figures")
groups: dict[str, list[dict]] = {}
for fig in data.get("figures", []):
    groups.setdefault(fig["dataset"] or "across datasets", []).append(fig)
if groups:
    for tab, figs in zip(st.tabs(list(groups)), groups.values(), strict=True):
        with tab:
            for fig in figs:
                path = folder / "figures" / fig["file"]
                if path.is_file():
                    st.image(str(path), caption=fig["title"])
                else:
                    st.warning(f"Figure {fig['file']} is missing from {folder}.")
