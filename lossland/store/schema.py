"""The tables of a store, their column types, and the migrations that bring an older file up to date.

A run is one trained minimum, `run_id = <pair_id>-<role>` (see `lossland.pairs`). Long tables keyed
by run_id:

  runs          one row per run: config facts, status, final metrics, headline curvature, versions
  curves        per epoch: lr, loss and accuracy on clean train, attack and test
  spectra       kind 'lanczos' (top-k, with residual) or 'exact' (all, residual NULL); idx counts from 1,
                idx 1 is the largest eigenvalue; spectrum_id: the settings they were measured with (a run
                may hold several spectra; runs.spectrum_id names the one its runs row sums up, its config's)
  densities     raw SLQ quadrature: per random vector `vector`, Ritz value `node` and its `weight`
                (the dashboard smooths them at any sigma without new HVPs)
  estimates     name in trace, frobenius_sq, trace_exact, frobenius_sq_exact, log_volume_exact and
                log_volume_k (one row per k), spectrum_id as in spectra; analyses' estimates (spectrum_id
                NULL); value, stderr, samples, hvps, method, eps, settings_json
  landscapes    loss/accuracy at points (alpha, beta) of slices and interpolations
  basin_trials  perturbation-escape trials: radius, trial, seed, metrics, escaped
  analyses      one row per analysis of a run (its settings' hash, status 'running' or 'done')
  meta          key/value; `schema_version`

Facts of this store only, never exported (LOCAL_TABLES), keyed by run_id too:

  provenance           runs imported from a bundle: its file name, its sha256 digest, when
  missing_checkpoints  runs whose recorded checkpoint file was found missing (by `Store.repair`)
  deleted_runs         runs soft-deleted (`lossland delete`): hidden everywhere until restored or collected

Labels, keyed by `subject` (a run id or a pair id), carried by bundles (LABEL_TABLES):

  tags          key = value per subject; notes  one free-text note per subject

  leases        one row per pair being trained now: owner (pid, host, token), started_at, heartbeat_at

NaN is stored as NULL (no value, e.g. attack metrics without an attack set). Timestamps are UTC.
Schema changes are migrations in code: MIGRATIONS[i] takes version i to i + 1, all of them in the one
transaction that opens the store; a store newer than this code is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from .. import __version__
from ..config import ConfigError, ExperimentConfig, SpectrumConfig
from ..pairs import METRICS, ROLES
from .connection import in_transaction, open_connection
from .errors import StoreError, advice, first_line

SCHEMA_VERSION = 7

Columns = tuple[tuple[str, str], ...]
_M = tuple((m, "DOUBLE") for m in METRICS)

RUN_COLUMNS: Columns = (
    ("run_id", "VARCHAR"), ("pair_id", "VARCHAR"), ("role", "VARCHAR"), ("status", "VARCHAR"),
    ("stop_reason", "VARCHAR"), ("config_json", "VARCHAR"), ("dataset", "VARCHAR"), ("model", "VARCHAR"),
    ("widths", "VARCHAR"), ("n_params", "BIGINT"), ("seed", "BIGINT"), ("data_seed", "BIGINT"),
    ("train_seed", "BIGINT"), ("n_train", "BIGINT"), ("n_attack", "BIGINT"), ("attack_labels", "VARCHAR"),
    ("optimizer", "VARCHAR"), ("lr", "DOUBLE"), ("batch_size", "BIGINT"), ("loss_target", "DOUBLE"),
    *_M, ("epochs", "BIGINT"), ("seconds", "DOUBLE"), ("device", "VARCHAR"),
    ("top_eigenvalue", "DOUBLE"), ("trace", "DOUBLE"), ("frobenius_sq", "DOUBLE"), ("log_volume", "DOUBLE"),
    ("spectrum_hvps", "BIGINT"), ("spectrum_seconds", "DOUBLE"), ("checkpoint", "VARCHAR"),
    ("lossland_version", "VARCHAR"), ("torch_version", "VARCHAR"), ("python_version", "VARCHAR"),
    ("git_commit", "VARCHAR"), ("created_at", "TIMESTAMP"), ("error", "VARCHAR"), ("extra_json", "VARCHAR"),
    # train_id: the id of the minimum (good: config.good_hash, no attack; bad: the pair id); spectrum_id: that of
    # the spectrum the curvature columns above sum up (the config's settings, SpectrumConfig.spectrum_id)
    ("train_id", "VARCHAR"), ("spectrum_id", "VARCHAR"))
_RUN_COLUMNS_NEW_IN_V2 = ("attack_labels", "git_commit", "error", "extra_json")
_RUN_COLUMNS_NEW_IN_V7 = ("train_id", "spectrum_id")
_RUNS_CONSTRAINTS = (f", PRIMARY KEY (run_id), CHECK (role IN ({', '.join(repr(r) for r in ROLES)})), "
                     "CHECK (status IN ('converged', 'max_epochs', 'diverged', 'failed'))")
_RUNS_NOT_NULL = ("run_id", "pair_id", "role", "status", "config_json", "created_at")

# Tables as older schema versions made them (later versions append columns or drop the table).
_LANDSCAPES_V2: Columns = (("run_id", "VARCHAR"), ("kind", "VARCHAR"), ("other_run_id", "VARCHAR"),
                           ("direction_seed", "BIGINT"), ("normalization", "VARCHAR"), ("alpha", "DOUBLE"),
                           ("beta", "DOUBLE"), *_M, ("settings_json", "VARCHAR"), ("created_at", "TIMESTAMP"))
_BASIN_TRIALS_V2: Columns = (("run_id", "VARCHAR"), ("kind", "VARCHAR"), ("radius", "DOUBLE"), ("trial", "INTEGER"),
                             ("seed", "BIGINT"), *_M, ("threshold", "DOUBLE"), ("escaped", "BOOLEAN"),
                             ("settings_json", "VARCHAR"), ("created_at", "TIMESTAMP"))
# The density smoothed at the config's sigma (versions 1 to 3); written, never read, dropped in version 4.
_DENSITY_GRID_V1: Columns = (("run_id", "VARCHAR"), ("idx", "INTEGER"), ("x", "DOUBLE"), ("density", "DOUBLE"),
                             ("sigma", "DOUBLE"))

# The spectrum tables as versions 1 to 6 made them (version 7 appends spectrum_id to each).
_SPECTRA_V1: dict[str, Columns] = {
    "spectra": (("run_id", "VARCHAR"), ("kind", "VARCHAR"), ("idx", "INTEGER"), ("eigenvalue", "DOUBLE"),
                ("residual", "DOUBLE")),
    "densities": (("run_id", "VARCHAR"), ("vector", "INTEGER"), ("idx", "INTEGER"), ("node", "DOUBLE"),
                  ("weight", "DOUBLE")),
    "estimates": (("run_id", "VARCHAR"), ("name", "VARCHAR"), ("k", "INTEGER"), ("value", "DOUBLE"),
                  ("stderr", "DOUBLE"), ("samples", "BIGINT"), ("hvps", "BIGINT"), ("method", "VARCHAR"),
                  ("eps", "DOUBLE"), ("settings_json", "VARCHAR"))}
SPECTRUM_TABLES = tuple(_SPECTRA_V1)
# The estimates a spectrum writes (the rest are analyses', with spectrum_id NULL).
SPECTRUM_ESTIMATES = ("trace", "frobenius_sq", "trace_exact", "frobenius_sq_exact", "log_volume_exact", "log_volume_k")

# Tables keyed by run_id besides runs, in the current schema.
CHILD_TABLES: dict[str, Columns] = {
    "curves": (("run_id", "VARCHAR"), ("epoch", "INTEGER"), ("lr", "DOUBLE"), *_M),
    # idx counts from 1: idx 1 is the largest eigenvalue (kind 'lanczos': top-k; 'exact': all, descending)
    **{name: columns + (("spectrum_id", "VARCHAR"),) for name, columns in _SPECTRA_V1.items()},
    # kind: 'interpolation' (alpha along the segment to other_run_id), 'slice1d', 'surface2d', ...;
    # point: index of the grid point (row-major), so a stopped grid resumes; analysis_id: see `analyses`
    "landscapes": _LANDSCAPES_V2 + (("analysis_id", "VARCHAR"), ("point", "INTEGER")),
    # kind: 'escape' (perturb, retrain on clean data), 'random_init' (a clean seed), 'radius' (a direction)
    "basin_trials": _BASIN_TRIALS_V2 + (("analysis_id", "VARCHAR"), ("top_eigenvalue", "DOUBLE"),
                                        ("distance", "DOUBLE")),
    # one row per analysis of a run (landscape grid, escape sweep, random-init statistics, ...), keyed by
    # the hash of its settings: status 'running' while a resumable grid fills, 'done' when complete
    "analyses": (("run_id", "VARCHAR"), ("analysis_id", "VARCHAR"), ("kind", "VARCHAR"), ("status", "VARCHAR"),
                 ("settings_json", "VARCHAR"), ("seconds", "DOUBLE"), ("created_at", "TIMESTAMP")),
}
TABLES: dict[str, Columns] = {"runs": RUN_COLUMNS, **CHILD_TABLES}
# What this store knows of its runs that a bundle does not carry (keyed by run_id, one row per run at most).
LOCAL_TABLES: dict[str, Columns] = {
    "provenance": (("run_id", "VARCHAR"), ("bundle", "VARCHAR"), ("bundle_sha256", "VARCHAR"),
                   ("imported_at", "TIMESTAMP")),
    "missing_checkpoints": (("run_id", "VARCHAR"), ("checkpoint", "VARCHAR"), ("noticed_at", "TIMESTAMP")),
    "deleted_runs": (("run_id", "VARCHAR"), ("deleted_at", "TIMESTAMP")),
}
# What a user wrote about a run or a pair (subject: its id); exported with it, kept when it is recomputed.
LABEL_TABLES: dict[str, Columns] = {
    "tags": (("subject", "VARCHAR"), ("key", "VARCHAR"), ("value", "VARCHAR"), ("created_at", "TIMESTAMP")),
    "notes": (("subject", "VARCHAR"), ("note", "VARCHAR"), ("updated_at", "TIMESTAMP")),
}
LABEL_KEYS = {"tags": ("subject", "key"), "notes": ("subject",)}
# Who is training a pair now (see lossland.leases): one row per pair, gone when its owner finishes.
LEASE_COLUMNS: Columns = (("pair_id", "VARCHAR"), ("pid", "BIGINT"), ("host", "VARCHAR"), ("token", "VARCHAR"),
                          ("started_at", "TIMESTAMP"), ("heartbeat_at", "TIMESTAMP"))

# ORDER BY of each table when it is read whole or exported.
ORDER = {"runs": "created_at DESC, run_id", "curves": "run_id, epoch", "spectra": "run_id, spectrum_id, kind, idx",
         "densities": "run_id, spectrum_id, vector, idx", "estimates": "run_id, spectrum_id, name, k",
         "landscapes": "run_id, analysis_id, point, kind, direction_seed, alpha, beta",
         "basin_trials": "run_id, analysis_id, kind, radius, trial", "analyses": "run_id, created_at, analysis_id",
         "provenance": "run_id", "missing_checkpoints": "run_id", "deleted_runs": "run_id",
         "tags": "subject, key", "notes": "subject", "leases": "pair_id"}

ARROW_TYPES = {"VARCHAR": pa.string(), "BIGINT": pa.int64(), "INTEGER": pa.int32(), "DOUBLE": pa.float64(),
               "TIMESTAMP": pa.timestamp("us"), "BOOLEAN": pa.bool_()}
# Read back as nullable dtypes whether or not a NULL turned up, so a column's dtype never depends on the rows.
_STR = pd.StringDtype(na_value=np.nan)  # pandas' default "str"
PANDAS_TYPES = {pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype(), pa.bool_(): pd.BooleanDtype(),
                pa.string(): _STR, pa.large_string(): _STR, pa.string_view(): _STR}


def column_names(columns: Columns) -> list[str]:
    return [c for c, _ in columns]


# --- migrations -----------------------------------------------------------------------------

def create_table(con: duckdb.DuckDBPyConnection, name: str, columns: Columns) -> None:
    if name == "runs":
        body = ", ".join(f"{c} {t}{' NOT NULL' if c in _RUNS_NOT_NULL else ''}" for c, t in columns)
        con.execute(f"CREATE TABLE runs ({body}{_RUNS_CONSTRAINTS})")
    elif name in LOCAL_TABLES or name in LABEL_TABLES or name == "leases":
        body = ", ".join(f"{c} {t} NOT NULL" for c, t in columns)
        key = ", ".join(LABEL_KEYS.get(name, ("pair_id",) if name == "leases" else ("run_id",)))
        con.execute(f"CREATE TABLE {name} ({body}, PRIMARY KEY ({key}))")
    else:
        body = ", ".join(f"{c} {t}{' NOT NULL' if c == 'run_id' else ''}" for c, t in columns)
        con.execute(f"CREATE TABLE {name} ({body})")


def create_v1_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Schema version 1, as first released (also how tests make old stores): no attack_labels,
    git_commit, error or extra_json in runs; no landscapes, basin_trials or analyses; density_grid."""
    con.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    later = _RUN_COLUMNS_NEW_IN_V2 + _RUN_COLUMNS_NEW_IN_V7
    create_table(con, "runs", tuple(c for c in RUN_COLUMNS if c[0] not in later))
    create_table(con, "curves", CHILD_TABLES["curves"])
    for name in ("spectra", "densities"):
        create_table(con, name, _SPECTRA_V1[name])
    create_table(con, "density_grid", _DENSITY_GRID_V1)
    create_table(con, "estimates", _SPECTRA_V1["estimates"])
    con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', '1')")


def _v1_to_v2(con: duckdb.DuckDBPyConnection) -> None:
    """Rebuild runs with the new columns (attack_labels recovered from config_json), add the
    landscape tables; a migrated store is column for column a fresh one."""
    old = [c for c, _ in RUN_COLUMNS if c not in _RUN_COLUMNS_NEW_IN_V2 + _RUN_COLUMNS_NEW_IN_V7]
    con.execute("ALTER TABLE runs RENAME TO runs_v1")
    create_table(con, "runs", tuple(c for c in RUN_COLUMNS if c[0] not in _RUN_COLUMNS_NEW_IN_V7))
    con.execute(f"INSERT INTO runs ({', '.join(old)}, attack_labels) SELECT {', '.join(old)}, "
                f"json_extract_string(config_json, '$.attack.labels') FROM runs_v1")
    con.execute("DROP TABLE runs_v1")
    create_table(con, "landscapes", _LANDSCAPES_V2)
    create_table(con, "basin_trials", _BASIN_TRIALS_V2)


def _v2_to_v3(con: duckdb.DuckDBPyConnection) -> None:
    """Landscape and basin rows learn which analysis they belong to (cache key, resumable grids);
    basin trials gain the top eigenvalue and the distance travelled; the analyses table appears."""
    for table, columns in (("landscapes", _LANDSCAPES_V2), ("basin_trials", _BASIN_TRIALS_V2)):
        for name, kind in CHILD_TABLES[table][len(columns):]:
            con.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
    create_table(con, "analyses", CHILD_TABLES["analyses"])


def _v3_to_v4(con: duckdb.DuckDBPyConnection) -> None:
    """density_grid goes: nothing read it; the densities table re-smooths at any sigma."""
    con.execute("DROP TABLE density_grid")


def _v4_to_v5(con: duckdb.DuckDBPyConnection) -> None:
    """Imported runs learn where they came from; a missing checkpoint can be recorded (no rows yet in either)."""
    for name in ("provenance", "missing_checkpoints"):
        create_table(con, name, LOCAL_TABLES[name])


def _v5_to_v6(con: duckdb.DuckDBPyConnection) -> None:
    """Run management: soft-deleted runs, tags and notes on runs and pairs, leases on pairs being trained."""
    create_table(con, "deleted_runs", LOCAL_TABLES["deleted_runs"])
    for name, columns in LABEL_TABLES.items():
        create_table(con, name, columns)
    create_table(con, "leases", LEASE_COLUMNS)


def _v6_to_v7(con: duckdb.DuckDBPyConnection) -> None:
    """Training and measurement part: runs learn the id of their minimum and of their config's spectrum, each
    spectrum row the settings it was measured with; ids from each run's stored config (pair ids stay)."""
    for name in _RUN_COLUMNS_NEW_IN_V7:
        con.execute(f"ALTER TABLE runs ADD COLUMN {name} VARCHAR")
    for name in SPECTRUM_TABLES:
        con.execute(f"ALTER TABLE {name} ADD COLUMN spectrum_id VARCHAR")
    fill_ids(con)


def _measured_with(settings_json: str | None) -> str | None:
    """The spectrum id of the settings a stored spectrum's estimates record, None where they don't parse."""
    try:
        return SpectrumConfig(**json.loads(settings_json)).spectrum_id() if settings_json else None
    except (ValueError, TypeError, RecursionError):  # ConfigError is a ValueError
        return None


def run_ids_of(config_json: str, role: str, settings_json: str | None = None) -> tuple[str, str] | None:
    """(train_id, spectrum_id) of a stored run: from its config, the spectrum's from the settings its estimates
    record (else its config's); None where the config does not parse."""
    try:
        cfg = ExperimentConfig.from_json(config_json)
    except ConfigError:
        return None
    train_id = cfg.good_hash() if role == "good" else cfg.training_hash()
    return train_id, _measured_with(settings_json) or cfg.spectrum_id()


def fill_ids(con: duckdb.DuckDBPyConnection) -> None:
    """Give runs without them their train_id and spectrum_id, and the spectrum rows without one their run's
    spectrum_id (a store or bundle from before schema 7)."""
    found = con.execute("SELECT run_id, config_json, role, (SELECT any_value(e.settings_json) FROM estimates e "
                        "WHERE e.run_id = runs.run_id AND e.name = 'trace') FROM runs "
                        "WHERE spectrum_id IS NULL").fetchall()
    ids = {rid: run_ids_of(text, role, settings) for rid, text, role, settings in found}
    ids = {rid: v for rid, v in ids.items() if v is not None}
    if ids:
        con.register("_lossland_ids_v7", pa.table({"run_id": list(ids), "train_id": [v[0] for v in ids.values()],
                                                   "spectrum_id": [v[1] for v in ids.values()]}))
        con.execute("UPDATE runs SET train_id = i.train_id, spectrum_id = i.spectrum_id FROM _lossland_ids_v7 i "
                    "WHERE runs.run_id = i.run_id")
        con.unregister("_lossland_ids_v7")
    names = ", ".join(f"'{n}'" for n in SPECTRUM_ESTIMATES)
    for table in SPECTRUM_TABLES:
        only = f" AND {table}.name IN ({names})" if table == "estimates" else ""
        con.execute(f"UPDATE {table} SET spectrum_id = r.spectrum_id FROM runs r WHERE {table}.run_id = r.run_id "
                    f"AND {table}.spectrum_id IS NULL{only}")


# MIGRATIONS[i] takes a store from schema version i to i + 1 (0: an empty file).
MIGRATIONS: list[Callable[[duckdb.DuckDBPyConnection], None]] = [create_v1_schema, _v1_to_v2, _v2_to_v3, _v3_to_v4,
                                                                  _v4_to_v5, _v5_to_v6, _v6_to_v7]
assert len(MIGRATIONS) == SCHEMA_VERSION


def version(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    """The schema version of an open store (0: an empty file); StoreError for a foreign or newer file."""
    tables = {r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()").fetchall()}
    if "meta" not in tables:
        if tables:
            raise StoreError(f"{path} is a DuckDB file but not a lossland store (no meta table; "
                             f"tables {sorted(tables)}); choose another path")
        return 0
    row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    found = int(row[0]) if row else 0
    if found > SCHEMA_VERSION:
        raise StoreError(f"store {path} has schema version {found}, newer than the {SCHEMA_VERSION} "
                         f"this lossland {__version__} knows; upgrade lossland to open it")
    return found


def migrate(con: duckdb.DuckDBPyConnection, path: Path, target: int = SCHEMA_VERSION) -> None:
    """Take the open store to schema version `target` in one transaction; a failing step changes nothing."""
    found = None

    def steps(con: duckdb.DuckDBPyConnection) -> None:
        nonlocal found
        found = version(con, path)
        for v in range(found, target):
            MIGRATIONS[v](con)
            con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(v + 1)])

    try:
        in_transaction(con, steps)
    except duckdb.Error as e:
        raise StoreError(f"migrating store {path} from schema version {found} to {target} failed, "
                         f"nothing changed: {e}") from None


def ensure(path: Path, lock_timeout: float, may_migrate: bool = True) -> None:
    """Create the store at `path` or migrate it to this code's schema; returns at once when it is current.
    With may_migrate=False (a read-only store) a missing or older store is a StoreError that says what to run."""
    if not path.exists() and not may_migrate:
        raise StoreError(f"no store at {path}: a read-only store is never created; create it with "
                         f"`python -m lossland runs --store {path}`")
    if path.exists():
        with open_connection(path, lock_timeout, read_only=True) as con:
            try:
                found = version(con, path)
            except duckdb.Error as e:
                raise StoreError(f"cannot read store {path}: {first_line(e)}{advice(path, e)}") from None
        if found == SCHEMA_VERSION:
            return
        if not may_migrate:
            raise StoreError(f"store {path} has schema version {found}, older than the {SCHEMA_VERSION} this "
                             f"lossland reads; a read-only dashboard never migrates it: run `python -m lossland "
                             f"runs --store {path}` once where the file is writable (that migrates it), then reload")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create store {path}: its folder {path.parent} can't be made "
                         f"({e.strerror or e}); choose a writable path (--store or LOSSLAND_STORE)") from None
    with open_connection(path, lock_timeout) as con:
        migrate(con, path)
