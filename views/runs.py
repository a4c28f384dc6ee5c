"""Runs: every stored run — filter and search, compare, tag and annotate, query with SQL, export and import."""

import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

import ui
from lossland import charts
from lossland.config import ConfigError
from lossland.external import is_external
from lossland.frames import differing, matching, runs_comparison
from lossland.limits import check_upload
from lossland.pairs import ROLES, pair_of, run_ids
from lossland.store import EXAMPLE_QUERIES, StoreError, import_allowed

store = ui.get_store()
st.title("Runs")
runs = ui.runs_frame(store)
if runs is None or len(runs) == 0:
    st.info("No runs yet: start one on the Overview or New experiment page.")

tab_table, tab_compare, tab_labels, tab_sql, tab_share = st.tabs(["Table", "Compare", "Tags & notes", "SQL", "Share"])

SHOWN = ["run_id", "pair_id", "role", "status", "tags", "note", "imported", "dataset", "model", "widths", "n_params",
         "n_train", "n_attack", "seed", "clean_loss", "clean_acc", "attack_acc", "test_acc", "top_eigenvalue", "trace",
         "frobenius_sq", "log_volume", "epochs", "seconds", "device", "created_at"]

with tab_table:
    if runs is not None and len(runs):
        c1, c2, c3, c4 = st.columns(4)
        ds = c1.multiselect("dataset", sorted(runs["dataset"].dropna().unique()), key="runs-ds")
        roles = c2.multiselect("role", list(ROLES), key="runs-role")
        statuses = c3.multiselect("status", sorted(runs["status"].dropna().unique()), key="runs-status")
        sort = c4.selectbox("sort by", ["created_at", "test_acc", "top_eigenvalue", "trace", "n_attack"],
                            key="runs-sort")
        found = st.text_input("search run and pair ids, tags and notes", key="runs-search")
        view = runs[matching(runs, found)] if found else runs
        for col, chosen in (("dataset", ds), ("role", roles), ("status", statuses)):
            if chosen:
                view = view[view[col].isin(chosen)]
        view = view.sort_values(sort, ascending=sort != "created_at")[[c for c in SHOWN if c in runs.columns]]
        st.dataframe(view, width="stretch", hide_index=True)
        st.download_button("CSV of this table", lambda: view.to_csv(index=False), "runs.csv", "text/csv",
                           key="runs-csv")

with tab_compare:
    if runs is not None and len(runs):
        ids = list(runs["run_id"])
        wanted = [r for r in st.query_params.get("runs", "").split(",") if r in ids]
        chosen = st.multiselect("runs to compare (two or more)", ids, default=wanted, key="runs-compare")
        st.query_params["runs"] = ",".join(chosen)
        if len(chosen) >= 2:
            sel = runs.set_index("run_id", drop=False).loc[chosen].reset_index(drop=True)
            table = runs_comparison(sel)
            differs = differing(table)
            st.caption("Rows that differ are highlighted (`lossland compare` prints the same table).")
            st.dataframe(table.style.apply(lambda row: ["background-color: #fff3b0" if differs[row.name] else ""
                                                        for _ in row], axis=1), width="stretch")
            pairs = {pair_of(rid) for rid in chosen}
            views = [store.pair(p) for p in pairs]
            curves = pd.concat([v.curves for v in views])
            curves = curves[curves["run_id"].isin(chosen)].rename(columns={"run_id": "run"})
            cchart = charts.curves_chart(curves, ["clean_loss", "attack_acc", "test_acc"], color="run")
            st.altair_chart(cchart)
            ui.chart_downloads(cchart, "curves", key="runs-curves")
            spectra = pd.concat([v.spectra for v in views])
            spectra = spectra[(spectra["run_id"].isin(chosen)) & (spectra["kind"] == "lanczos")]
            schart = charts.spectrum_chart(spectra.rename(columns={"run_id": "run"}), color="run")
            st.altair_chart(schart, width="stretch")
            ui.chart_downloads(schart, "spectra", key="runs-spectra")
        else:
            st.caption("Pick two or more runs; the choice is kept in the URL for sharing.")

with tab_labels:
    if runs is not None and len(runs):
        subjects = list(runs.drop_duplicates("pair_id")["pair_id"]) + list(runs["run_id"])
        subject = st.selectbox("pair or run", subjects, key="runs-label-subject")
        tags = store.tags([subject])
        st.dataframe(tags[["key", "value", "created_at"]], hide_index=True)
        note = store.notes([subject])
        if ui.read_only():
            st.text(note["note"].iloc[0] if len(note) else "(no note)")
        else:
            c1, c2, c3 = st.columns([2, 2, 1])
            key = c1.text_input("tag", key="runs-tag-key", placeholder="owner")
            value = c2.text_input("value", key="runs-tag-value", placeholder="ana")
            if c3.button("Set tag", key="runs-tag-set") and key:
                if ui.attempt(lambda: store.set_tags(subject, {key: value}), "Setting the tag"):
                    st.rerun()
            gone = st.multiselect("tags to remove", list(tags["key"]), key="runs-tag-remove")
            if gone and st.button("Remove tags", key="runs-tag-remove-go"):
                if ui.attempt(lambda: store.remove_tags(subject, gone), "Removing tags"):
                    st.rerun()
            text = st.text_area("note", note["note"].iloc[0] if len(note) else "", key=f"runs-note-{subject}")
            if st.button("Save note", key="runs-note-save"):
                if ui.attempt(lambda: store.set_note(subject, text), "Saving the note"):
                    st.rerun()

with tab_sql:
    left, right = st.columns([3, 1])
    with right:
        st.caption("Tables")
        for name, cols in store.tables().items():
            with st.expander(ui.text(name)):
                st.code("\n".join(f"{c} {t}" for c, t in cols), language=None)
    with left:
        example = st.selectbox("example", list(EXAMPLE_QUERIES), key="runs-sql-example")
        sql = st.text_area("SQL (read-only; one statement)", EXAMPLE_QUERIES[example], height=120,
                           key=f"runs-sql-{example}")
        if st.button("Run query", key="runs-sql-run"):
            caps = ui.caps()
            try:
                result = store.query(sql, max_rows=caps.sql_max_rows, timeout=caps.sql_timeout_s,
                                     memory_mb=caps.sql_memory_mb)
            except StoreError as e:
                st.error(ui.text(e))
            else:
                st.dataframe(result.frame, width="stretch", hide_index=True)
                note = f"{len(result.frame)} rows in {result.seconds * 1000:.0f} ms"
                st.caption(note + (" — capped; refine the query for the rest" if result.truncated else ""))
                st.download_button("CSV", result.frame.to_csv(index=False), "query.csv", "text/csv", key="runs-sql-csv")

with tab_share:
    st.subheader("Export")
    if runs is not None and len(runs):
        pairs = [p for p in runs.drop_duplicates("pair_id")["pair_id"] if not is_external(p)]  # pairs, by config
        to_export = st.multiselect("pairs to export", pairs, key="runs-export")
        if to_export:
            stored = set(runs["run_id"])
            ids = [rid for p in to_export for rid in run_ids(p) if rid in stored]

            def bundle() -> bytes:
                with tempfile.TemporaryDirectory() as tmp:
                    path = store.export(ids, Path(tmp) / "bundle.zip")
                    return path.read_bytes()

            st.download_button(f"Download bundle ({len(ids)} runs)", bundle, "lossland-bundle.zip",
                               "application/zip", key="runs-export-dl")
    st.subheader("Import")
    if ui.read_only():
        st.caption("Read-only dashboard: importing is switched off.")
    elif not import_allowed():
        st.caption("Importing is switched off by this dashboard's operator (LOSSLAND_ALLOW_IMPORT).")
    else:
        caps = ui.caps()
        upload = st.file_uploader(f"bundle (.zip) from `lossland export` or this page, up to {caps.max_upload_mb} MB",
                                  type=["zip"], key="runs-import")
        too_big = None
        if upload is not None:
            try:
                check_upload(upload.size, caps)
            except ConfigError as e:
                too_big = e
                st.error(f"Import refused, nothing changed: {ui.text(e)}")
        if upload is not None and too_big is None and st.button("Import", key="runs-import-go"):
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "upload.zip"
                path.write_bytes(upload.getvalue())
                try:
                    rep = store.import_bundle(path, source=upload.name)
                except StoreError as e:
                    st.error(f"Import refused, nothing changed: {ui.text(e)}")
                else:
                    st.success(f"Imported {len(rep.run_ids_added)} runs (marked imported, with where they came from); "
                               f"{len(rep.run_ids_skipped)} were already here"
                               + (f"; restored {len(rep.checkpoints_restored)} missing checkpoints"
                                  if rep.checkpoints_restored else "") + ".")
                    ui.cached_runs.clear()
