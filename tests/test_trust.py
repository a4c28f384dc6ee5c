"""Issue 16, the store's side: a bundle is untrusted data. Each hostile bundle is refused before anything is
written (the store file and the checkpoint folder byte for byte unchanged); imported runs carry their
provenance; the SQL console runs in a child process and never blocks the app; no orphans survive a
failed or killed import, and check()/repair() find and fix what is left."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from store_writer import make_pair, with_checkpoints  # noqa: E402
from test_store import rewrite  # noqa: E402

from lossland.checkpoint import CheckpointError, _payload, meta_model, verify_checkpoint  # noqa: E402
from lossland.config import PRESETS, ExperimentConfig  # noqa: E402
from lossland.limits import Limits  # noqa: E402
from lossland.specs import EscapeSpec, InterpolationSpec  # noqa: E402
from lossland.store import BundleError, QueryError, Store, console, schema  # noqa: E402
from lossland.store.schema import migrate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under a store's folder (the DuckDB file, its WAL, the checkpoints)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def save_with_analyses(store: Store, seed: int) -> tuple[str, list[str]]:
    """A synthetic pair with checkpoints, an interpolation (5 points) and an escape analysis (2 × 2 trials)."""
    pair, spectra = make_pair(seed)
    ids = store.save_pair(pair, spectra, with_checkpoints(store, pair))
    good, bad = ids
    interp = InterpolationSpec(n_points=5)
    store.save_analysis(good, interp.analysis_id(pair.pair_id), interp.kind, interp.to_json(), 1.0,
                        landscapes=pd.DataFrame({"run_id": good, "kind": interp.kind, "other_run_id": bad,
                                                 "alpha": [i / 4 for i in range(5)], "beta": 0.0, "point": range(5),
                                                 "clean_loss": 0.1, "clean_acc": 0.9, "normalization": "none"}))
    esc = EscapeSpec(radii=(0.1,), n_trials=2)
    store.save_analysis(good, esc.analysis_id(pair.pair_id), esc.kind, esc.to_json(), 2.0,
                        trials=pd.DataFrame({"run_id": [good, good, bad, bad], "kind": esc.kind, "radius": 0.1,
                                             "trial": [0, 1, 0, 1], "seed": [1, 2, 3, 4], "test_acc": 0.5,
                                             "escaped": [False, True, True, True], "distance": 0.3}))
    return pair.pair_id, ids


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A bundle of one pair with checkpoints and analyses: (bundle path, pair id, run ids, folder)."""
    root = tmp_path_factory.mktemp("trust")
    store = Store(root / "src" / "runs.duckdb")
    pair_id, ids = save_with_analyses(store, 31)
    return store.export(ids, root / "bundle.zip"), pair_id, ids, root


@pytest.fixture
def target(tmp_path) -> Store:
    """A store holding one pair of its own (with checkpoints) to import into."""
    store = Store(tmp_path / "target" / "runs.duckdb")
    pair, spectra = make_pair(32)
    store.save_pair(pair, spectra, with_checkpoints(store, pair))
    return store


def members(bundle: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(bundle) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def table_bytes(bundle: Path, table: str, select: str, tmp: Path) -> bytes:
    """tables/<table>.parquet of the bundle rewritten by `select`, a query over {t} (its rows)."""
    src, out = tmp / f"{table}.in.parquet", tmp / f"{table}.out.parquet"
    src.write_bytes(members(bundle)[f"tables/{table}.parquet"])
    with duckdb.connect() as con:
        query = select.replace("{t}", f"read_parquet('{src.as_posix()}')")
        con.execute(f"COPY ({query}) TO '{out.as_posix()}' (FORMAT parquet)")
    return out.read_bytes()


def edited(bundle: Path, tmp: Path, name: str, tables: dict[str, str] | None = None, **edit) -> Path:
    add = {f"tables/{t}.parquet": table_bytes(bundle, t, sql, tmp) for t, sql in (tables or {}).items()}
    return rewrite(bundle, tmp / f"{name}.zip", add=add | edit.pop("add", {}), **edit)


def relabelled(bundle: Path, tmp: Path, name: str, old: str, new: str, runs: tuple[str, ...] = (),
               empty: tuple[str, ...] = ()) -> Path:
    """The bundle with pair id `old` replaced by `new` everywhere (run ids, member names, manifest), the
    runs rows also changed by `runs` (REPLACE items) and the tables `empty` emptied."""
    tables = {}
    for table, columns in schema.TABLES.items():
        swaps = [f"replace({c}, '{old}', '{new}') AS {c}" for c, _ in columns if c in ("run_id", "pair_id",
                                                                                        "other_run_id")]
        swaps += list(runs) if table == "runs" else []
        where = " WHERE false" if table in empty else ""
        tables[table] = f"SELECT * REPLACE ({', '.join(swaps)}) FROM {{t}}{where}"
    found = members(bundle)
    moved = {n.replace(old, new): d for n, d in found.items() if n.startswith("checkpoints/")}
    ids = [r.replace(old, new) for r in json.loads(found["manifest.json"])["run_ids"]]
    add = {f"tables/{t}.parquet": table_bytes(bundle, t, sql, tmp) for t, sql in tables.items()}
    return rewrite(bundle, tmp / f"{name}.zip", drop=tuple(n for n in found if n.startswith("checkpoints/")),
                   add=add | moved, manifest={"run_ids": ids})


def refused(store: Store, bundle: Path, message: str, **kw) -> None:
    """Importing `bundle` raises BundleError matching message; the store's folder is byte for byte unchanged."""
    before = snapshot(store.path.parent)
    with pytest.raises(BundleError, match=message):
        store.import_bundle(bundle, **kw)
    assert snapshot(store.path.parent) == before


# --- 1. verified before anything is written ------------------------------------------------------------

def test_a_genuine_bundle_still_imports_whole(source, target):
    bundle, pair_id, ids, _ = source
    report = target.import_bundle(bundle)
    assert report.run_ids_added == tuple(ids) and report.checkpoints_restored == () and report.rows_left_out == ()
    assert len(target.analyses(ids)) == 2 and len(target.table("landscapes")) == 5
    assert len(target.table("basin_trials")) == 4 and target.has_pair(pair_id) and target.check().ok


def test_a_bundle_relabelled_as_the_default_preset_is_refused_at_every_layer_it_lies_in(source, target, tmp_path):
    bundle, pair_id, ids, _ = source
    preset = PRESETS["digits-mlp"]
    claim = preset.config_hash()
    refused(target, relabelled(bundle, tmp_path, "ids", pair_id, claim),
            f"run {claim}-(good|bad) claims pair {claim}, but its config hashes to {pair_id}")
    as_preset = (f"'{preset.to_json()}' AS config_json",)
    refused(target, relabelled(bundle, tmp_path, "config", pair_id, claim, as_preset),
            f"run {claim}-(good|bad): seed = 31, its config says 0")
    seeded = (*as_preset, "0::BIGINT AS seed")
    analyses = ("analyses", "landscapes", "basin_trials")
    refused(target, relabelled(bundle, tmp_path, "analyses", pair_id, claim, seeded),
            "is not the id of its kind, settings and pair")
    refused(target, relabelled(bundle, tmp_path, "minimum", pair_id, claim, seeded, analyses),
            f"run {claim}-(good|bad): train_id = .* is not the id of its minimum")
    facts = (*seeded, f"CASE role WHEN 'good' THEN '{preset.good_hash()}' ELSE '{claim}' END AS train_id")
    refused(target, relabelled(bundle, tmp_path, "facts", pair_id, claim, facts, analyses),
            f"checkpoints/{claim}-(good|bad).pt is not a checkpoint of run .* is of another config")
    assert not target.has_pair(claim)


def _runs(select: str) -> dict[str, str]:
    return {"runs": select}


HOSTILE_ROWS = {  # name -> (tables edited: table -> SELECT over {t}, the refusal's words)
    "roles swapped": (_runs("SELECT * REPLACE (CASE role WHEN 'good' THEN 'bad' ELSE 'good' END AS role) FROM {t}"),
                      r"run id \w+-(good|bad) is not <pair_id>-<role> of its pair"),
    "invalid config": (_runs("""SELECT * REPLACE ('{"train": {"lr": -1}}' AS config_json) FROM {t}"""),
                       "has an invalid config .*train.lr = -1"),
    "facts disagree": (_runs("SELECT * REPLACE ('mnist' AS dataset) FROM {t}"),
                       "dataset = 'mnist', its config says 'digits'"),
    "n_params invented": (_runs("SELECT * REPLACE (8::BIGINT AS n_params) FROM {t}"),
                          "n_params is not the parameter count of its config's model"),
    "created in 1990": (_runs("SELECT * REPLACE (TIMESTAMP '1990-01-01' AS created_at) FROM {t}"),
                        "created_at outside 2000-01-01"),
    "created in 2100": (_runs("SELECT * REPLACE (TIMESTAMP '2100-01-01' AS created_at) FROM {t}"),
                        "created_at outside"),
    "huge error text": (_runs("SELECT * REPLACE (repeat('x', 200000) AS error) FROM {t}"),
                        "error is longer than 100,000 characters"),
    "epoch as text": ({"curves": "SELECT * REPLACE (epoch::VARCHAR AS epoch) FROM {t}"},
                      "column epoch is VARCHAR, table curves stores INTEGER"),
    "accuracy 1.5": ({"curves": "SELECT * REPLACE (1.5::DOUBLE AS clean_acc) FROM {t}"}, r"clean_acc outside \[0, 1\]"),
    "infinite loss, not diverged": ({"curves": "SELECT * REPLACE ('inf'::DOUBLE AS test_loss) FROM {t}"},
                                    "test_loss is NaN or negative .*did not diverge"),
    "NaN eigenvalue": ({"spectra": "SELECT * REPLACE ('nan'::DOUBLE AS eigenvalue) FROM {t}"},
                       "eigenvalue is not a finite number"),
    "missing eigenvalue": ({"spectra": "SELECT * REPLACE (NULL::DOUBLE AS eigenvalue) FROM {t}"},
                           "eigenvalue is missing"),
    "duplicate epochs": ({"curves": "SELECT * FROM {t} UNION ALL SELECT * FROM {t} WHERE epoch = 1"},
                         r"two rows with the same \(run_id, epoch\)"),
    "lanczos past spectrum.k": ({"spectra": "SELECT * REPLACE (idx + 20 AS idx) FROM {t}"}, "idx outside"),
    "density vector past slq_vectors": ({"densities": "SELECT * REPLACE (vector + 4 AS vector) FROM {t}"},
                                        "vector or idx outside"),
    "log-volume past spectrum.k": ({"estimates": "SELECT * REPLACE (k + 100 AS k) FROM {t}"}, r"k outside \[1, "),
    "forged analysis id": ({"analyses": "SELECT * REPLACE (CASE kind WHEN 'escape' THEN '0123456789abcdef' ELSE "
                                        "analysis_id END AS analysis_id) FROM {t}"},
                           "analysis 0123456789abcdef of run .* is not the id of its kind, settings and pair"),
    "landscape past its grid": ({"landscapes": "SELECT * REPLACE (point + 5 AS point) FROM {t}"},
                                "point outside the analysis' grid"),
    "more landscape points than the grid": ({"landscapes": "SELECT * FROM {t} UNION ALL SELECT * REPLACE (point + 5 "
                                                           "AS point) FROM {t}"}, "10 rows, more than the 5"),
    "trials past their count": ({"basin_trials": "SELECT * REPLACE (trial + 4 AS trial) FROM {t}"},
                                "trial outside the analysis' count"),
    "rows of an analysis not in the bundle": (
        {"landscapes": "SELECT * REPLACE ('fedcba9876543210' AS analysis_id) FROM {t}"},
        "belongs to no analysis of its pair in the bundle"),
}


@pytest.mark.parametrize("name", HOSTILE_ROWS)
def test_hostile_rows_are_refused_naming_what_is_wrong_and_nothing_changes(source, target, tmp_path, name):
    bundle, *_ = source
    tables, message = HOSTILE_ROWS[name]
    refused(target, edited(bundle, tmp_path, name.replace(" ", "-"), tables), message)


def test_a_lone_run_is_refused_a_bundle_holds_whole_pairs(source, target, tmp_path):
    bundle, pair_id, ids, _ = source
    good = {t: f"SELECT * FROM {{t}} WHERE run_id = '{ids[0]}'" for t in schema.TABLES}
    lone = edited(bundle, tmp_path, "lone", good, manifest={"run_ids": ids[:1]},
                  drop=(f"checkpoints/{ids[1]}.pt",))
    refused(target, lone, f"pair {pair_id} lacks its bad run")
    with pytest.raises(BundleError, match=f"a bundle holds whole pairs: add {ids[1]}"):
        Store(source[3] / "src" / "runs.duckdb").export(ids[:1], tmp_path / "x.zip")


def test_a_small_bundle_of_millions_of_rows_is_refused_at_once(source, target, tmp_path):
    bundle, _, ids, _ = source
    millions = "SELECT t.* FROM (SELECT * FROM {t} LIMIT 1) t, range(3000000) e"  # one row, 3 million times
    hostile = edited(bundle, tmp_path, "millions", {"curves": millions})
    start = time.perf_counter()
    refused(target, hostile, "3,000,000 rows, more than the 6,000 its runs' configs and analyses can produce")
    took = time.perf_counter() - start
    print(f"\nmillions: a bundle of {hostile.stat().st_size / 1024:.0f} KB with 3,000,000 curve rows refused in "
          f"{took:.2f} s")
    assert hostile.stat().st_size < 2 * 1024**2 and took < 5


# --- checkpoints ----------------------------------------------------------------------------------------

def _checkpoint(cfg: ExperimentConfig, role: str, state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(_payload(cfg, role, meta_model(cfg).to_empty(device="cpu")) | {"state_dict": state}, buffer)
    return buffer.getvalue()


def test_checkpoints_are_checked_against_their_run(source, target, tmp_path):
    bundle, pair_id, ids, _ = source
    found = members(bundle)
    cfg = make_pair(31)[0].config
    good, bad = (f"checkpoints/{r}.pt" for r in ids)
    real = torch.load(io.BytesIO(found[good]), weights_only=True)["state_dict"]
    expanded = {k: torch.zeros(1).expand(v.shape) for k, v in real.items()}
    cases = {
        "swapped roles": ({good: found[bad], bad: found[good]}, "is of role 'bad', its run is 'good'"),
        "another model": ({good: _checkpoint(cfg, "good", {"weight": torch.zeros(2, 3)})},
                          "does not hold its config's model"),
        "another config": ({good: _checkpoint(make_pair(33)[0].config, "good", real)}, "is of another config"),
        "expanded tensors": ({good: _checkpoint(cfg, "good", expanded)}, "declares 2,048 elements but its storage"),
    }
    for name, (add, message) in cases.items():
        refused(target, rewrite(bundle, tmp_path / f"{name}.zip", add=add), message)
    refused(Store(target.path, caps=Limits(max_params=1000)), bundle, "3,466 parameters, over the cap of 1,000")


def test_a_few_kb_checkpoint_declaring_a_model_past_the_cap_is_refused_before_it_is_read(tmp_path):
    huge = ExperimentConfig().with_changes(**{"model.widths": (4096, 4096, 4096)})
    blob = _checkpoint_of_meta(huge)
    path = tmp_path / "huge.pt"
    path.write_bytes(blob)
    assert len(blob) < 20_000
    with pytest.raises(CheckpointError, match="has 33,869,834 parameters, over the cap of 2,000,000"):
        verify_checkpoint(path, huge, "good")
    with pytest.raises(CheckpointError, match="declares 262,144 elements but its storage holds 4 bytes"):
        verify_checkpoint(path, huge, "good", max_params=10**9)  # the model is never built: shapes on meta


def _checkpoint_of_meta(cfg: ExperimentConfig) -> bytes:
    state = {k: torch.zeros(1, dtype=v.dtype).expand(v.shape) for k, v in meta_model(cfg).state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"format": 1, "config_json": cfg.to_json(), "role": "good", "state_dict": state}, buffer)
    return buffer.getvalue()


def test_a_bundle_whose_config_declares_a_model_past_the_cap_is_refused(source, target, tmp_path):
    bundle, pair_id, ids, _ = source
    huge = make_pair(31)[0].config.with_changes(**{"model.widths": (4096, 4096, 4096)})
    runs = (f"'{huge.to_json()}' AS config_json", "'4096,4096,4096' AS widths")
    hostile = relabelled(bundle, tmp_path, "huge", pair_id, huge.config_hash(), runs)
    refused(target, hostile, "parameters, over the cap of 2,000,000")


# --- 2. provenance, and imports switched off -------------------------------------------------------------

def test_imported_runs_carry_their_provenance(source, target):
    bundle, pair_id, ids, _ = source
    before = pd.Timestamp.now(tz="UTC").tz_localize(None)
    target.import_bundle(bundle, source="shared-by-ana.zip")
    got = target.provenance(ids)
    assert list(got["run_id"]) == sorted(ids) and set(got["bundle"]) == {"shared-by-ana.zip"}
    assert set(got["bundle_sha256"]) == {hashlib.sha256(bundle.read_bytes()).hexdigest()}
    assert (got["imported_at"] >= before - pd.Timedelta(seconds=1)).all()
    runs = target.runs().set_index("run_id")
    assert runs.loc[ids, "imported"].all() and not runs.drop(index=ids)["imported"].any()
    assert not runs["checkpoint_missing"].any()
    assert target.pair(pair_id).runs["imported"].all() and len(target.provenance()) == 2
    target.import_bundle(bundle)  # skipped: its provenance stays the first import's
    assert set(target.provenance(ids)["bundle"]) == {"shared-by-ana.zip"}


def test_imports_can_be_switched_off(source, target, monkeypatch):
    bundle, *_ = source
    refused(Store(target.path, allow_import=False), Path("/no/such/bundle.zip"), "importing is switched off")
    for value in ("0", "false", "off", "flase"):  # a typo fails closed
        monkeypatch.setenv("LOSSLAND_ALLOW_IMPORT", value)
        refused(target, bundle, "importing is switched off .*LOSSLAND_ALLOW_IMPORT")
    monkeypatch.setenv("LOSSLAND_ALLOW_IMPORT", "1")
    assert target.import_bundle(bundle).run_ids_added
    assert Store(target.path, allow_import=True).import_bundle(bundle).run_ids_skipped


def test_a_version_4_store_is_migrated_with_its_rows_and_learns_provenance(tmp_path):
    fresh = Store(tmp_path / "fresh.duckdb")
    save_with_analyses(fresh, 34)
    path = tmp_path / "v4.duckdb"
    with duckdb.connect(str(path)) as con:
        migrate(con, path, target=4)
        con.execute(f"ATTACH '{fresh.path.as_posix()}' AS fresh (READ_ONLY)")
        for table in schema.TABLES:  # the columns a version-4 table has (schema 7 added the spectrum ids)
            cols = ", ".join(r[0] for r in con.execute(f"DESCRIBE {table}").fetchall())
            con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM fresh.{table}")
        assert {"provenance", "missing_checkpoints"}.isdisjoint(
            r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = 'v4'").fetchall())
    old = Store(path)
    assert old.tables() == fresh.tables() and old.table("meta")["value"].tolist() == [str(schema.SCHEMA_VERSION)]
    for table in schema.TABLES:
        pd.testing.assert_frame_equal(old.table(table), fresh.table(table))
    assert old.provenance().empty and not old.runs()["imported"].any()


# --- 3. the console never blocks the app ---------------------------------------------------------------

SLOW = "SELECT count(*) FROM curves c, range(1000000000000) r"  # runs until its time limit


def _reads(store: Store, pair_ids: list[str], until) -> list[float]:
    """Seconds of each store.runs() + store.pair() read, back to back, until until() is true."""
    out = []
    while not until():
        start = time.perf_counter()
        store.runs()
        store.pair(pair_ids[len(out) % 2])
        out.append(time.perf_counter() - start)
    return out


def _median(values: list[float]) -> float:
    return round(sorted(values)[len(values) // 2], 3)


def test_console_queries_never_block_the_apps_reads_and_writes(tmp_path, record_property):
    store = Store(tmp_path / "runs.duckdb")
    pair_ids = [save_with_analyses(store, seed)[0] for seed in (40, 41)]
    errors, console_s, saved = [], [], []
    stop = time.perf_counter() + 2
    quiet = _reads(store, pair_ids, lambda: time.perf_counter() > stop)  # the same reads with no console running

    def slow_query():
        start = time.perf_counter()
        try:
            store.query(SLOW, timeout=4)
        except QueryError as e:
            errors.append(str(e))
        console_s.append(time.perf_counter() - start)

    new_pair, new_spectra = make_pair(42)

    def save():
        time.sleep(1.0)  # while both queries run
        start = time.perf_counter()
        store.save_pair(new_pair, new_spectra, with_checkpoints(store, new_pair))
        saved.append(time.perf_counter() - start)

    queries = [threading.Thread(target=slow_query) for _ in range(2)]
    writer = threading.Thread(target=save)
    for t in (*queries, writer):
        t.start()
    reads = _reads(store, pair_ids, lambda: not any(t.is_alive() for t in queries))
    writer.join()
    assert all("time limit of 4 s" in e for e in errors) and len(errors) == 2, errors
    assert saved and store.has_pair(new_pair.pair_id), "the save landed while the console ran"
    figures = {"console_queries": 2, "console_s": [round(s, 2) for s in console_s], "save_s": round(saved[0], 3),
               "reads": len(reads), "read_max_s": round(max(reads), 3), "read_median_s": _median(reads),
               "quiet_reads": len(quiet), "quiet_read_max_s": round(max(quiet), 3),
               "quiet_read_median_s": _median(quiet), "load_average": os.getloadavg()[0]}
    for k, v in figures.items():
        record_property(k, json.dumps(v))
    print("\nconsole vs app:", json.dumps(figures))
    # Reads never wait for the console: at worst for the save (one process's read-only and read-write
    # connections can't overlap). Under 1 s here, unless other work saturates the machine's cores.
    assert max(reads) < max(1.0, max(quiet) + saved[0] + 0.25) and len(reads) > 10


def test_a_running_console_query_does_not_hold_the_file(tmp_path):
    store = Store(tmp_path / "runs.duckdb")
    save_with_analyses(store, 43)
    thread = threading.Thread(target=lambda: pytest.raises(QueryError, store.query, SLOW, timeout=3))
    thread.start()
    time.sleep(1.5)
    code = ("import duckdb, sys; c = duckdb.connect(sys.argv[1]); c.execute(\"UPDATE meta SET value = value\"); "
            "c.close(); print('wrote')")
    out = subprocess.run([sys.executable, "-c", code, str(store.path)], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "wrote", out.stderr  # another process opened it read-write meanwhile
    assert thread.is_alive()
    thread.join()


@pytest.mark.parametrize("limits, message", [
    ({"timeout": 1e9}, r"timeout = 1000000000.0 is not allowed: a number in \[0.05, 600\]"),
    ({"timeout": math.inf}, "timeout = inf is not allowed"), ({"timeout": math.nan}, "timeout = nan"),
    ({"timeout": 0}, "timeout = 0 is not allowed"), ({"max_rows": 10**12}, r"max_rows = .* in \[0, 1e\+06\]"),
    ({"memory_mb": 10**9}, "memory_mb = 1000000000 is not allowed"), ({"memory_mb": 0}, "memory_mb = 0"),
    ({"threads": 10_000}, "threads = 10000"), ({"threads": True}, "threads = True"),
])
def test_console_limits_cant_be_switched_off_by_extreme_values(tmp_path, limits, message):
    with pytest.raises(QueryError, match=message):
        Store(tmp_path / "runs.duckdb").query("SELECT 1", **limits)


def test_the_console_has_a_memory_limit_and_spills_nothing(tmp_path):
    store = Store(tmp_path / "runs.duckdb")
    with pytest.raises(QueryError, match="more than the console's memory"):
        store.query("SELECT count(DISTINCT range::VARCHAR || 'x') FROM range(30000000)", memory_mb=64, timeout=60)
    assert not list(tmp_path.rglob("*.tmp")) and not (ROOT / ".tmp").exists()


def test_a_console_process_that_overruns_is_killed(tmp_path, monkeypatch):
    store = Store(tmp_path / "runs.duckdb", lock_timeout=0.5)
    store.count_runs()
    monkeypatch.setattr(console, "_BOOT", "import time; time.sleep(120)")
    monkeypatch.setattr(console, "START_GRACE_S", 0.5)
    start = time.perf_counter()
    with pytest.raises(QueryError, match="was killed"):
        store.query("SELECT 1", timeout=0.5)
    assert time.perf_counter() - start < 5


# --- 4. no orphans ---------------------------------------------------------------------------------------

def _import_killed_before_commit(store: Store, bundle: Path) -> None:
    """Import `bundle` in another process that dies the moment its checkpoints are in place."""
    code = ("import os, sys; from lossland.store import Store, bundles; place = bundles.Merge._place; "
            "bundles.Merge._place = lambda self, ids: (place(self, ids), os._exit(9)); "
            "Store(sys.argv[1]).import_bundle(sys.argv[2])")
    out = subprocess.run([sys.executable, "-c", code, str(store.path), str(bundle)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert out.returncode == 9, out.stderr


def test_an_import_killed_before_its_commit_leaves_no_rows_and_a_reimport_or_repair_cleans_up(source, target):
    bundle, pair_id, ids, _ = source
    _import_killed_before_commit(target, bundle)
    assert not target.has_pair(pair_id)
    found = target.check()
    assert sorted(p.name for p in found.orphan_checkpoints) == sorted(f"{r}.pt" for r in ids) and not found.ok
    assert not found.missing_checkpoints and "checkpoint without a run" in found.lines()[0]
    assert target.repair().kept == found.orphan_checkpoints  # young: a write may be in progress
    assert target.import_bundle(bundle).run_ids_added == tuple(ids) and target.check().ok
    _import_killed_before_commit(Store(target.path.parent.parent / "other" / "runs.duckdb"), bundle)
    other = Store(target.path.parent.parent / "other" / "runs.duckdb")
    done = other.repair(min_age_s=0)
    assert sorted(p.name for p in done.removed) == sorted(f"{r}.pt" for r in ids) and other.check().ok


def test_a_reimport_restores_checkpoints_gone_after_a_commit(source, target, tmp_path):
    bundle, pair_id, ids, _ = source
    target.import_bundle(bundle)
    for r in ids:
        target.checkpoint_path(r).unlink()  # as a crash right after the COMMIT of the old import left them
    assert target.check().missing_checkpoints == tuple(sorted(ids))
    report = target.import_bundle(bundle)
    assert report.run_ids_skipped == tuple(ids) and sorted(report.checkpoints_restored) == sorted(ids)
    assert target.check().ok and all(target.checkpoint_path(r).read_bytes() == members(bundle)[f"checkpoints/{r}.pt"]
                                     for r in ids)
    target.checkpoint_path(ids[0]).unlink()
    other = edited(bundle, tmp_path, "other-run", _runs("SELECT * REPLACE (seconds + 1 AS seconds) FROM {t}"))
    assert target.import_bundle(other).checkpoints_restored == ()  # not the same run: its weights aren't trusted
    assert target.check().missing_checkpoints == (ids[0],)


def test_repair_finishes_verified_leftovers_records_what_is_missing_and_removes_strays(source, target):
    bundle, pair_id, ids, _ = source
    target.import_bundle(bundle)
    good, bad = (target.checkpoint_path(r) for r in ids)
    good.rename(good.with_name(good.name + ".importing"))  # an old import's copy, never renamed
    bad.unlink()
    (target.checkpoint_dir / "stray.pt").write_bytes(b"x")
    (target.checkpoint_dir / "half.pt.tmp").write_bytes(b"x")
    found = target.check()
    assert found.missing_checkpoints == tuple(sorted(ids)) and len(found.leftovers) == 2
    assert [p.name for p in found.orphan_checkpoints] == ["stray.pt"]
    done = target.repair(min_age_s=0)
    assert done.completed == (ids[0],) and done.recorded == (ids[1],)
    assert sorted(p.name for p in done.removed) == ["half.pt.tmp", "stray.pt"] and good.is_file()
    runs = target.runs().set_index("run_id")
    assert runs.loc[ids[1], "checkpoint_missing"] and not runs.loc[ids[0], "checkpoint_missing"]
    assert target.check().missing_checkpoints == (ids[1],) and target.check().recorded_missing == (ids[1],)
    assert target.import_bundle(bundle).checkpoints_restored == (ids[1],)
    assert target.check().ok and not target.runs()["checkpoint_missing"].any()
    assert target.repair().lines() == ["nothing to repair"]


def test_a_failed_import_leaves_no_checkpoint_behind(source, target, monkeypatch):
    bundle, pair_id, ids, _ = source
    from lossland.store import bundles

    def fail_after_placing(self, con):
        into(self, con)
        raise OSError("disk full")

    into = bundles.Merge.into
    monkeypatch.setattr(bundles.Merge, "into", fail_after_placing)
    refused(target, bundle, "importing bundle .* failed, nothing was written")
    assert target.check().ok
