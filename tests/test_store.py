"""The store: schema and migrations, atomic writes, queries, the SQL sandbox, locks, bundles."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from store_writer import expected_counts, make_pair, with_checkpoints  # noqa: E402

from lossland.store import (  # noqa: E402
    SCHEMA_VERSION,
    TABLES,
    BundleError,
    PairView,
    QueryError,
    Store,
    StoreError,
    StoreLockedError,
    UnknownPairError,
    default_store_path,
    sandbox,
    schema,
)
from lossland.store.schema import MIGRATIONS, create_v1_schema, migrate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WRITER = Path(__file__).resolve().parent / "store_writer.py"
DATA_TABLES = ("runs", "curves", "spectra", "densities", "estimates")


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "runs.duckdb", lock_timeout=5)


@pytest.fixture(scope="module")
def pair0():
    return make_pair(0)


def counts(store: Store, run_id: str) -> dict[str, int]:
    with duckdb.connect(str(store.path), read_only=True) as con:
        return {t: con.execute(f"SELECT count(*) FROM {t} WHERE run_id = ?", [run_id]).fetchone()[0]
                for t in DATA_TABLES}


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WRITER), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for(proc: subprocess.Popen, line: str, timeout: float = 60) -> None:
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for got in proc.stdout:
            if got.strip() == line:
                return
        raise AssertionError(f"writer ended before {line!r}: {proc.stderr.read()}")
    finally:
        timer.cancel()


# --- schema ---------------------------------------------------------------------------------

def test_default_path_follows_the_environment(monkeypatch):
    monkeypatch.delenv("LOSSLAND_STORE", raising=False)
    assert default_store_path() == Path("data/runs.duckdb")
    monkeypatch.setenv("LOSSLAND_STORE", "/x/y.duckdb")
    assert default_store_path() == Path("/x/y.duckdb") and Store().path == Path("/x/y.duckdb")


def test_first_use_creates_folders_and_the_current_schema(tmp_path):
    s = Store(tmp_path / "a" / "b" / "runs.duckdb")
    assert not s.path.exists()  # lazy: nothing opened on construction
    assert s.count_runs() == 0
    assert s.path.exists() and s.checkpoint_dir == tmp_path / "a" / "b" / "checkpoints"
    schema = s.tables()
    for name, columns in TABLES.items():
        assert [c for c, _ in schema[name]] == [c for c, _ in columns]
    assert s.table("meta").set_index("key")["value"]["schema_version"] == str(SCHEMA_VERSION)


def test_v1_store_is_migrated_keeping_every_row(tmp_path, pair0):
    path = tmp_path / "old.duckdb"
    cfg = pair0[0].config
    with duckdb.connect(str(path)) as con:
        create_v1_schema(con)
        for i, role in enumerate(("good", "bad")):
            con.execute("INSERT INTO runs (run_id, pair_id, role, status, config_json, dataset, test_acc, created_at)"
                        " VALUES (?, ?, ?, 'converged', ?, 'digits', ?, TIMESTAMP '2024-01-01 00:00:00' + ?::INTEGER"
                        " * INTERVAL 1 SECOND)", [f"p-{role}", "p", role, cfg.to_json(), 0.9 - i / 2, i])
            con.execute("INSERT INTO curves (run_id, epoch, clean_loss) SELECT ?, range, 1.0 / (range + 1) "
                        "FROM range(7)", [f"p-{role}"])
            con.execute("INSERT INTO spectra VALUES (?, 'lanczos', 0, 3.5, 1e-7)", [f"p-{role}"])
            con.execute("INSERT INTO estimates (run_id, name, value) VALUES (?, 'trace', 12.0)", [f"p-{role}"])
        con.execute("INSERT INTO density_grid VALUES (?, 0, 0.5, 1.0, 0.1)", ["p-good"])
        before = {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
                  for t in ("curves", "spectra", "densities", "estimates")}
    s = Store(path)
    runs = s.runs()
    assert list(runs["run_id"]) == ["p-bad", "p-good"] and list(runs["test_acc"]) == [0.4, 0.9]
    assert set(runs["attack_labels"]) == {"random"}  # recovered from config_json
    assert runs["git_commit"].isna().all() and runs["error"].isna().all()
    with duckdb.connect(str(path), read_only=True) as con:
        for t, rows in before.items():  # every row kept; the spectrum tables learnt their spectrum's id (schema 7)
            kept = "* EXCLUDE (spectrum_id)" if t != "curves" else "*"
            assert con.execute(f"SELECT {kept} FROM {t} ORDER BY ALL").fetchall() == rows
            if t != "curves":
                assert {r[0] for r in con.execute(f"SELECT spectrum_id FROM {t}").fetchall()} <= {cfg.spectrum_id()}
    fresh = Store(tmp_path / "fresh.duckdb")
    assert s.tables() == fresh.tables()  # a migrated store is column for column a fresh one
    assert "density_grid" not in s.tables()
    assert s.has_pair("p") and s.pair("p").curves.shape[0] == 14


def test_v2_store_with_landscape_rows_is_migrated(tmp_path):
    path = tmp_path / "v2.duckdb"
    with duckdb.connect(str(path)) as con:
        migrate(con, path, target=2)
        con.execute("INSERT INTO landscapes (run_id, kind, alpha, clean_loss) VALUES ('p-good', 'slice1d', 0.5, 0.1)")
        con.execute("INSERT INTO basin_trials (run_id, kind, radius, trial, escaped) "
                    "VALUES ('p-bad', 'escape', 0.1, 0, true)")
    s = Store(path)
    land, trials = s.table("landscapes"), s.table("basin_trials")
    assert list(land["alpha"]) == [0.5] and land["analysis_id"].isna().all() and land["point"].isna().all()
    assert list(trials["escaped"]) == [True] and trials["top_eigenvalue"].isna().all()
    assert s.tables() == Store(tmp_path / "fresh.duckdb").tables()
    assert s.table("analyses").empty


def test_v3_store_is_migrated_dropping_only_density_grid(tmp_path, pair0):
    fresh = Store(tmp_path / "fresh.duckdb")
    fresh.save_pair(*pair0)
    path = tmp_path / "v3.duckdb"
    with duckdb.connect(str(path)) as con:  # a version-3 store holding the same runs, and their density_grid
        migrate(con, path, target=3)
        con.execute(f"ATTACH '{fresh.path.as_posix()}' AS fresh (READ_ONLY)")
        copy_columns_of_this_version(con, "fresh")
        con.execute("INSERT INTO density_grid SELECT run_id, 0, 0.5, 1.0, 0.1 FROM runs")
    s = Store(path)
    assert s.tables() == fresh.tables() and "density_grid" not in s.tables()
    assert s.table("meta").set_index("key")["value"]["schema_version"] == str(SCHEMA_VERSION)
    for table in DATA_TABLES:
        pd.testing.assert_frame_equal(s.table(table), fresh.table(table))


def copy_columns_of_this_version(con: duckdb.DuckDBPyConnection, source: str) -> None:
    """Fill an old-version store from an attached current one: the columns the old tables have."""
    for table in DATA_TABLES:
        cols = ", ".join(r[0] for r in con.execute(f"DESCRIBE {table}").fetchall())
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {source}.{table}")


def test_a_v5_store_migrates_to_spectra_keyed_by_their_settings_keeping_every_row_and_every_id(tmp_path, pair0):
    fresh = Store(tmp_path / "fresh.duckdb")
    fresh.save_pair(*pair0)
    path = tmp_path / "v5.duckdb"
    with duckdb.connect(str(path)) as con:  # a version-5 store of the same runs, and a run whose config won't parse
        migrate(con, path, target=5)
        con.execute(f"ATTACH '{fresh.path.as_posix()}' AS fresh (READ_ONLY)")
        copy_columns_of_this_version(con, "fresh")
        con.execute("UPDATE runs SET pair_id = 'legacy0000000000', run_id = 'legacy0000000000-' || role")
        for table in DATA_TABLES[1:]:
            con.execute(f"UPDATE {table} SET run_id = 'legacy0000000000-' || split_part(run_id, '-', 2)")
        con.execute("INSERT INTO runs (run_id, pair_id, role, status, config_json, created_at) VALUES "
                    "('odd-good', 'odd', 'good', 'failed', '{\"data\": 1}', TIMESTAMP '2025-01-01')")
        before = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in DATA_TABLES}
    s = Store(path)
    assert s.tables() == fresh.tables()
    assert {t: len(s.table(t)) for t in DATA_TABLES} == before
    cfg, sid = pair0[0].config, pair0[1]["good"].settings.spectrum_id()  # the settings its estimates record
    runs = s.runs().set_index("run_id")
    assert runs.loc["legacy0000000000-good", "pair_id"] == "legacy0000000000"  # stored ids are not renamed
    assert runs.loc["legacy0000000000-good", "train_id"] == cfg.good_hash()
    assert runs.loc["legacy0000000000-bad", "train_id"] == cfg.training_hash()
    assert set(runs.loc[["legacy0000000000-good", "legacy0000000000-bad"], "spectrum_id"]) == {sid}
    assert pd.isna(runs.loc["odd-good", "spectrum_id"])  # an unreadable config: no ids, nothing lost
    for table in ("spectra", "densities", "estimates"):  # every row of a spectrum (none of an analysis here)
        assert set(s.table(table)["spectrum_id"]) == {sid}
    old = s.pair("legacy0000000000")
    new = fresh.pair(cfg.config_hash())
    for table in ("spectra", "densities", "estimates"):
        pd.testing.assert_frame_equal(getattr(old, table).drop(columns="run_id"),
                                      getattr(new, table).drop(columns="run_id"))  # the same spectra, read alike


def test_failed_migration_changes_nothing(tmp_path, monkeypatch):
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as con:
        create_v1_schema(con)

    def half_then_fail(con):
        con.execute("DROP TABLE curves")
        con.execute("SELECT no_such_column FROM runs")

    monkeypatch.setattr(schema, "MIGRATIONS", [*MIGRATIONS[:1], half_then_fail, *MIGRATIONS[2:]])
    with pytest.raises(StoreError, match=f"from schema version 1 to {SCHEMA_VERSION} failed, nothing changed"):
        Store(path).count_runs()
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT value FROM meta").fetchall() == [("1",)]
        assert con.execute("SELECT count(*) FROM curves").fetchone() == (0,)


def test_newer_schema_is_refused(store):
    store.count_runs()
    with duckdb.connect(str(store.path)) as con:
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer than the {SCHEMA_VERSION}.*"
                                         f"upgrade lossland"):
        Store(store.path).runs()


def test_a_foreign_duckdb_file_is_refused(tmp_path):
    with duckdb.connect(str(tmp_path / "other.duckdb")) as con:
        con.execute("CREATE TABLE t (a INT)")
    with pytest.raises(StoreError, match="not a lossland store"):
        Store(tmp_path / "other.duckdb").runs()


# --- writes and reads --------------------------------------------------------------------

def test_save_pair_writes_every_row(store, pair0):
    pair, spectra = pair0
    run_ids = store.save_pair(pair, spectra, with_checkpoints(store, pair), extra={"sweep": "s1"})
    assert run_ids == [f"{pair.pair_id}-good", f"{pair.pair_id}-bad"]
    for run_id in run_ids:
        assert counts(store, run_id) == expected_counts()
    view = store.pair(pair.pair_id)
    good = view.run("good")
    assert good["status"] == "converged" and good["widths"] == "32,32" and good["dataset"] == "digits"
    assert good["n_attack"] == 500 and good["attack_labels"] == "random" and good["n_params"] == pair.good.n_params
    assert good["top_eigenvalue"] == spectra["good"].top.eigenvalues[0]
    assert good["log_volume"] == pytest.approx(spectra["good"].log_volume_k[4])
    assert good["trace"] == 12.5 and good["frobenius_sq"] == 80.0 and good["spectrum_hvps"] == 150
    assert good["lossland_version"] and good["torch_version"] == torch.__version__
    assert good["git_commit"] is None or pd.isna(good["git_commit"]) or re.fullmatch("[0-9a-f]{40}",
                                                                                      good["git_commit"])
    assert json.loads(good["extra_json"]) == {"sweep": "s1"} and pd.isna(good["error"])
    assert good["checkpoint"] == f"checkpoints/{pair.pair_id}-good.pt"
    assert store.checkpoint_path(run_ids[0]) == store.checkpoint_dir / f"{pair.pair_id}-good.pt"
    assert list(view.runs["role"]) == ["good", "bad"]

    curves = view.curves[view.curves["role"] == "bad"]
    assert list(curves["clean_loss"]) == list(pair.bad.curves.clean_loss)
    assert curves["attack_acc"].isna().all()  # NaN is stored as NULL
    lanczos = view.spectra[(view.spectra["role"] == "good") & (view.spectra["kind"] == "lanczos")]
    assert list(lanczos["idx"]) == [1, 2, 3, 4, 5]  # idx 1 is the largest
    assert list(lanczos["eigenvalue"]) == list(spectra["good"].top.eigenvalues)
    assert list(lanczos["residual"]) == list(spectra["good"].top.residuals)
    assert view.spectra[view.spectra["kind"] == "exact"]["residual"].isna().all()
    nodes = view.densities[view.densities["role"] == "good"].sort_values(["vector", "idx"])["node"]
    assert np.array_equal(nodes.to_numpy(), spectra["good"].density.nodes.ravel())
    assert [f.name for f in dataclasses.fields(PairView)] == ["pair_id", *DATA_TABLES]
    est = view.estimates[view.estimates["role"] == "good"]
    assert set(est["name"]) == {"trace", "frobenius_sq", "trace_exact", "frobenius_sq_exact", "log_volume_exact",
                                "log_volume_k"}
    lv = est[est["name"] == "log_volume_k"].sort_values("k")
    assert list(lv["k"]) == [1, 2, 3, 4, 5] and list(lv["value"]) == pytest.approx(spectra["good"].log_volume_k)
    assert est.set_index("name").loc["trace_exact", "value"] == 12.0
    assert json.loads(est["settings_json"].iloc[0])["k"] == 5


def test_save_pair_replaces_earlier_rows(store):
    pair, spectra = make_pair(1, epochs=9)
    store.save_pair(pair, spectra)
    store.save_pair(pair, spectra)
    assert counts(store, f"{pair.pair_id}-bad") == expected_counts(epochs=9)
    smaller, _ = make_pair(1, epochs=3)
    store.save_pair(smaller, None)  # no spectra this time: their old rows go too
    assert counts(store, f"{pair.pair_id}-bad") == {t: 0 for t in DATA_TABLES} | {"runs": 1, "curves": 3}
    assert store.count_runs() == 2


def test_save_pairs_writes_what_save_pair_writes_in_one_go(tmp_path):
    results = [make_pair(seed, epochs=4) for seed in (20, 21, 22)]
    one, bulk = Store(tmp_path / "one.duckdb"), Store(tmp_path / "bulk.duckdb")
    ids = [i for pair, spectra in results for i in one.save_pair(pair, spectra)]
    assert bulk.save_pairs(results) == ids
    for table in DATA_TABLES:
        mine, theirs = one.table(table), bulk.table(table)
        if table == "runs":
            mine, theirs = (t.drop(columns="created_at").sort_values("run_id", ignore_index=True)
                            for t in (mine, theirs))
        pd.testing.assert_frame_equal(mine, theirs)
    assert bulk.latest_pair_id() == results[-1][0].pair_id  # newest first, as if saved one by one
    with pytest.raises(StoreError, match="keyed by role"):
        bulk.save_pairs([(results[0][0], {"best": results[0][1]["good"]})])


def test_failed_pairs(store, pair0):
    pair, spectra = pair0
    store.save_failed(pair.config, "RuntimeError: CUDA out of memory")
    runs = store.runs(pair_id=pair.pair_id)
    assert set(runs["status"]) == {"failed"} and set(runs["error"]) == {"RuntimeError: CUDA out of memory"}
    assert counts(store, f"{pair.pair_id}-good") == {t: 0 for t in DATA_TABLES} | {"runs": 1}
    assert not store.has_pair(pair.pair_id) and store.latest_pair_id() is None
    store.save_pair(pair, spectra)
    assert store.has_pair(pair.pair_id) and store.latest_pair_id() == pair.pair_id
    assert set(store.runs(pair_id=pair.pair_id)["status"]) == {"converged"}


def test_queries_filter_order_and_refuse_unknown_names(store):
    ids = []
    for seed, dataset in ((2, "digits"), (3, "teacher"), (4, "digits")):
        pair, spectra = make_pair(seed, dataset=dataset, exact=False)
        store.save_pair(pair, spectra)
        ids.append(pair.pair_id)
    assert store.count_runs() == 6 and store.latest_pair_id() == ids[-1]
    runs = store.runs()
    assert list(runs["pair_id"][::2]) == ids[::-1]  # newest first
    bad_digits = store.runs(dataset="digits", role="bad")
    assert sorted(bad_digits["run_id"]) == sorted(f"{i}-bad" for i in (ids[0], ids[2]))
    assert len(store.runs(dataset=["digits", "teacher"], status="converged")) == 6
    assert store.runs(git_commit="nope").empty
    with pytest.raises(StoreError, match="unknown filter.*colour.*allowed: run_id, pair_id"):
        store.runs(colour="red")
    with pytest.raises(UnknownPairError, match="no pair 'nope'") as err:
        store.pair("nope")
    assert isinstance(err.value, KeyError)
    assert not store.has_pair("nope")
    assert len(store.table("curves")) == 30
    with pytest.raises(StoreError, match="unknown table 'secrets'; allowed: runs, curves"):
        store.table("secrets")


# --- the SQL console ---------------------------------------------------------------------

REFUSED = [
    "INSERT INTO runs (run_id) VALUES ('x')", "UPDATE runs SET status = 'failed'", "DELETE FROM runs",
    "CREATE TABLE x (a INT)", "CREATE TEMP TABLE x AS SELECT 1", "DROP TABLE runs", "ALTER TABLE runs ADD COLUMN z INT",
    "PRAGMA threads = 1", "SET enable_external_access = true", "ATTACH 'other.duckdb' AS o",
    "COPY runs TO 'out.csv'", "EXPORT DATABASE 'dump'", "INSTALL httpfs", "LOAD httpfs", "CHECKPOINT",
    "SELECT 1; SELECT 2", "SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_blob('/etc/passwd')", "SELECT * FROM glob('/*')",
]


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("sql") / "runs.duckdb")
    pair, spectra = make_pair(5)
    s.save_pair(pair, spectra)
    return s


@pytest.mark.parametrize("sql", REFUSED)
def test_sql_console_refuses_writes_settings_and_files(filled, sql):
    with pytest.raises(QueryError, match="refused|one statement at a time"):
        filled.query(sql)


def test_sql_console_refuses_reading_files_even_a_parquet_file(filled, tmp_path):
    data = tmp_path / "x.parquet"
    with duckdb.connect() as con:
        con.execute(f"COPY (SELECT 1 AS a) TO '{data.as_posix()}' (FORMAT parquet)")
    for sql in (f"SELECT * FROM read_parquet('{data}')", f"SELECT * FROM '{data}'"):
        with pytest.raises(QueryError, match="refused: the SQL console can't read or write files"):
            filled.query(sql)


# Writes pass the sandbox itself but land in its private in-memory copy, which vanishes with the child.
WRITES = ("INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "CHECKPOINT", "SELECT 1; SELECT 2")


@pytest.mark.parametrize("sql", REFUSED)
def test_the_sandbox_itself_keeps_the_store_unchanged_without_the_statement_check(filled, sql):
    before = filled.path.read_bytes()
    request = dict(path=str(filled.path), sql=sql, max_rows=100, timeout=10, memory_mb=64, threads=1, lock_timeout=5)
    if sql.startswith(WRITES):
        try:
            sandbox.run(**request)
        except QueryError:
            pass
    else:  # files, settings, ATTACH, COPY, EXPORT, extensions: refused by the locked, file-less copy
        with pytest.raises(QueryError):
            sandbox.run(**request)
    assert filled.path.read_bytes() == before and filled.count_runs() == 2 and "x" not in filled.tables()


def test_the_console_runs_in_the_sandbox(filled):
    got = filled.query("SELECT current_setting('enable_external_access') AS external, "
                       "current_setting('lock_configuration') AS locked").frame.iloc[0]
    assert not got["external"] and got["locked"]


def test_sql_console_answers_selects_capped_and_timed(filled):
    r = filled.query("SELECT role, test_acc FROM runs ORDER BY role")
    assert list(r.frame["role"]) == ["bad", "good"] and not r.truncated and r.seconds >= 0
    r = filled.query("SELECT * FROM range(25000) t(i) ORDER BY i", max_rows=10_000)
    assert r.truncated and len(r.frame) == 10_000 and r.frame["i"].iloc[-1] == 9_999
    assert not filled.query("SELECT * FROM range(100)", max_rows=100).truncated
    assert list(filled.query("SELECT * FROM runs WHERE false").frame.columns)[:2] == ["run_id", "pair_id"]
    assert "Projection" in filled.query("EXPLAIN SELECT 1").frame["explain_value"][0]
    with pytest.raises(QueryError, match="SQL syntax error"):
        filled.query("SELEC 1")
    with pytest.raises(QueryError, match="query failed: .*no_such"):
        filled.query("SELECT no_such FROM runs")
    start = time.monotonic()
    with pytest.raises(QueryError, match="time limit of 1 s"):
        filled.query("SELECT count(*) FROM range(10000000000) a, range(1000) b", timeout=1)
    assert time.monotonic() - start < 5


# --- sharing -----------------------------------------------------------------------------

def test_export_import_round_trip_is_exact_and_idempotent(tmp_path):
    a, b = Store(tmp_path / "a" / "runs.duckdb"), Store(tmp_path / "b" / "runs.duckdb")
    ids = []
    for seed in (6, 7):
        pair, spectra = make_pair(seed)
        ids += a.save_pair(pair, spectra, with_checkpoints(a, pair))
    a.save_failed(make_pair(8)[0].config, "boom")
    bundle = a.export(ids, tmp_path / "bundle.zip")
    names = zipfile.ZipFile(bundle).namelist()
    assert "manifest.json" in names and {f"checkpoints/{i}.pt" for i in ids} <= set(names)
    manifest = json.loads(zipfile.ZipFile(bundle).read("manifest.json"))
    assert manifest["schema_version"] == SCHEMA_VERSION and manifest["run_ids"] == ids

    report = b.import_bundle(bundle)
    assert sorted(report.run_ids_added) == sorted(ids) and report.run_ids_skipped == ()
    for name in TABLES:
        mine = a.table(name)
        mine = mine[mine["run_id"].isin(ids)].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, b.table(name))
    for run_id in ids:
        assert b.checkpoint_path(run_id).read_bytes() == a.checkpoint_path(run_id).read_bytes()
        torch.load(b.checkpoint_path(run_id), weights_only=True)
    again = b.import_bundle(bundle)
    assert again.run_ids_added == () and sorted(again.run_ids_skipped) == sorted(ids)
    assert b.count_runs() == 4
    with pytest.raises(BundleError, match="not in store"):
        a.export(["nope-good"], tmp_path / "x.zip")


def rewrite(src: Path, dst: Path, drop: tuple[str, ...] = (), add: dict[str, bytes] | None = None,
            manifest: dict | None = None) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            if name in drop or name in (add or {}):
                continue
            data = zin.read(name)
            if name == "manifest.json" and manifest:
                data = json.dumps(json.loads(data) | manifest).encode()
            zout.writestr(name, data)
        for name, data in (add or {}).items():
            zout.writestr(name, data)
    return dst


def parquet_bytes(sql: str, tmp_path: Path) -> bytes:
    path = tmp_path / "t.parquet"
    with duckdb.connect() as con:
        con.execute(f"COPY ({sql}) TO '{path.as_posix()}' (FORMAT parquet)")
    return path.read_bytes()


class Hostile:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def bad_bundles(src: Path, ids: list[str], tmp: Path):
    ckpt = tmp / "hostile.pt"
    torch.save({"format": 1, "state_dict": {}, "x": Hostile()}, ckpt)
    runs_sql = f"SELECT * FROM read_parquet('{tmp.as_posix()}/src/tables/runs.parquet')"
    curves_sql = f"SELECT * REPLACE ('oops' AS epoch) FROM read_parquet('{tmp.as_posix()}/src/tables/curves.parquet')"
    return {
        "newer schema": (dict(manifest={"schema_version": SCHEMA_VERSION + 1}), "newer lossland.*upgrade lossland"),
        "path traversal": (dict(add={"../evil.pt": b"x"}), "unsafe member name '../evil.pt'"),
        "absolute name": (dict(add={"/etc/evil": b"x"}), "unsafe member name '/etc/evil'"),
        "unexpected member": (dict(add={"tables/secrets.parquet": b"x"}), "unexpected member"),
        "no manifest": (dict(drop=("manifest.json",)), "no manifest.json"),
        "extra column": (dict(add={"tables/runs.parquet": parquet_bytes(f"SELECT *, 1 AS evil FROM ({runs_sql})",
                                                                        tmp)}), "columns don't match.*evil"),
        "stray run": (dict(add={"tables/runs.parquet": parquet_bytes(
            f"SELECT * REPLACE (run_id || 'x' AS run_id) FROM ({runs_sql})", tmp)}), "not in the manifest"),
        "bad types": (dict(add={"tables/curves.parquet": parquet_bytes(curves_sql, tmp)}), "importing bundle"),
        "hostile checkpoint": (dict(add={f"checkpoints/{ids[0]}.pt": ckpt.read_bytes()}),
                               "that loads safely.*cannot be read"),
    }


def test_bad_bundles_are_refused_and_change_nothing(bundle, tmp_path):
    src, ids = bundle
    with zipfile.ZipFile(src) as zf:
        zf.extractall(tmp_path / "src")
    target = Store(tmp_path / "t" / "runs.duckdb")
    for name, (edit, message) in bad_bundles(src, ids, tmp_path).items():
        with pytest.raises(BundleError, match=message):
            target.import_bundle(rewrite(src, tmp_path / f"{name}.zip", **edit))
        assert target.count_runs() == 0, name
        assert not target.checkpoint_dir.exists() or not any(target.checkpoint_dir.iterdir()), name
    with pytest.raises(BundleError, match="over the limit"):
        Store(target.path, max_bundle_bytes=1000).import_bundle(src)
    with pytest.raises(BundleError, match="not a readable run bundle"):
        target.import_bundle(WRITER)
    assert target.import_bundle(src).run_ids_added == tuple(ids)  # the genuine one goes in


def test_a_bundle_of_schema_3_with_its_density_grid_imports(bundle, tmp_path):
    src, ids = bundle
    grid = parquet_bytes(f"SELECT run_id, 0 AS idx, 0.5 AS x, 1.0 AS density, 0.1 AS sigma "
                         f"FROM (VALUES ('{ids[0]}'), ('{ids[1]}')) t(run_id)", tmp_path)
    old = rewrite(src, tmp_path / "v3.zip", add={"tables/density_grid.parquet": grid}, manifest={"schema_version": 3})
    target = Store(tmp_path / "t" / "runs.duckdb")
    assert target.import_bundle(old).run_ids_added == tuple(ids)
    assert "density_grid" not in target.tables() and len(target.runs()) == 2
    current = rewrite(src, tmp_path / "v4.zip", add={"tables/density_grid.parquet": grid})
    with pytest.raises(BundleError, match="unexpected member.*density_grid"):  # not in a bundle of this version
        Store(tmp_path / "u" / "runs.duckdb").import_bundle(current)


# --- start-up cost -------------------------------------------------------------------------

def test_the_store_package_opens_a_store_without_torch(tmp_path):
    # The package is imported under a bare `lossland` (lossland/__init__.py itself imports the checkpoint module).
    code = ("import sys, types; pkg = types.ModuleType('lossland'); pkg.__path__ = [sys.argv[1]]; "
            "pkg.__version__ = '0'; sys.modules['lossland'] = pkg; import lossland.store as s; "
            "st = s.Store(sys.argv[2]); st.runs(); st.query('SELECT 1'); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "lossland"), str(tmp_path / "s.duckdb")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


# --- processes and locks -------------------------------------------------------------------

def test_a_killed_writer_leaves_the_old_rows_whole(store):
    proc = spawn("hang", str(store.path), "10")
    try:
        wait_for(proc, "committed")
        wait_for(proc, "inserted curves")  # inside the transaction, old rows deleted, new half written
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    pair, _ = make_pair(10)
    for role in ("good", "bad"):
        assert counts(store, f"{pair.pair_id}-{role}") == expected_counts(epochs=5)
    assert store.has_pair(pair.pair_id)


def test_a_writer_killed_at_a_random_moment_leaves_whole_runs_or_none(store):
    proc = spawn("forever", str(store.path))
    try:
        wait_for(proc, "saved 0")
        time.sleep(random.uniform(0.0, 0.5))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    runs = store.runs()
    assert len(runs) >= 2
    full = expected_counts(epochs=20_000)
    for seed in range(len(runs) // 2 + 2):
        pair_id = make_pair(seed)[0].pair_id
        for role in ("good", "bad"):
            got = counts(store, f"{pair_id}-{role}")
            assert got in (full, dict.fromkeys(DATA_TABLES, 0)), (seed, role, got)


def test_a_writer_and_a_reader_process_share_the_store(store):
    store.count_runs()
    writer, reader = spawn("loop", str(store.path), "4"), spawn("read", str(store.path), "40")
    for proc in (writer, reader):
        out, err = proc.communicate(timeout=80)
        assert proc.returncode == 0 and out.strip() == "done", err
    assert store.count_runs() == 10


def test_a_lock_held_too_long_names_the_file_and_the_process(store):
    store.count_runs()
    holder = spawn("hold", str(store.path))
    try:
        wait_for(holder, "holding")
        start = time.monotonic()
        with pytest.raises(StoreLockedError) as err:
            Store(store.path, lock_timeout=0.5).runs()
        assert 0.5 <= time.monotonic() - start < 3
    finally:
        holder.kill()
        holder.wait()
    message = str(err.value)
    assert str(store.path) in message and f"PID {holder.pid}" in message and "python" in message
    assert store.count_runs() == 0  # free again


def test_a_clash_inside_one_process_is_waited_out(store):
    store.count_runs()
    con = duckdb.connect(str(store.path))  # read-write beside the sandbox's read-only config
    threading.Timer(0.3, con.close).start()
    assert store.query("SELECT count(*) AS n FROM runs").frame["n"][0] == 0
    con = duckdb.connect(str(store.path))
    try:
        with pytest.raises(StoreLockedError, match=f"PID {os.getpid()}"):
            Store(store.path, lock_timeout=0.2).query("SELECT 1")
    finally:
        con.close()
