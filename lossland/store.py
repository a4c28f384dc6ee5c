"""Every run in one DuckDB file: schema and migrations, writes, queries, sandboxed SQL, bundles.

A run is one trained minimum, `run_id = f"{pair_id}-{role}"`. Long tables keyed by run_id:

  runs          one row per run: config facts, status, final metrics, headline curvature, versions
  curves        per epoch: lr, loss and accuracy on clean train, attack and test
  spectra       kind 'lanczos' (top-k, idx 0 = largest, with residual) or 'exact' (all, residual NULL)
  densities     raw SLQ quadrature: per random vector `vector`, Ritz value `node` and its `weight`
  density_grid  the density smoothed at the config's spectrum.sigma: `x`, `density` (re-smooth from
                densities at any other sigma without new HVPs)
  estimates     name in trace, frobenius_sq, trace_exact, frobenius_sq_exact, log_volume_exact and
                log_volume_k (one row per k); value, stderr, samples, hvps, method, eps, settings_json
  landscapes    loss/accuracy at points (alpha, beta) of slices and interpolations
  basin_trials  perturbation-escape trials: radius, trial, seed, metrics, escaped
  meta          key/value; `schema_version`

NaN is stored as NULL (no value, e.g. attack metrics without an attack set). Timestamps are UTC.
runs.checkpoint is relative to the store's folder when the file lies under it (a store folder
moves whole), absolute otherwise. Failed runs are runs rows with status 'failed' and `error`.
Schema changes are migrations in code: MIGRATIONS[i] takes version i to i + 1 in the one
transaction that opens the store; a store newer than this code is refused.
Connections are short-lived (open, work, close) with a bounded retry on lock conflicts, so a
dashboard and a CLI sweep can share one file; every write is one transaction or nothing.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import os
import platform
import random
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from . import __version__

if TYPE_CHECKING:
    from .config import ExperimentConfig
    from .curvature import SpectrumResult
    from .lanczos import DensityResult
    from .train import PairResult, TrainResult

SCHEMA_VERSION = 3
BUNDLE_FORMAT = 1
ROLES = ("good", "bad")
STATUSES = ("converged", "max_epochs", "diverged", "failed")
GRID_POINTS = 400  # points of the stored smoothed density
DEFAULT_MAX_BUNDLE_BYTES = 2 * 1024**3
SANDBOX_CONFIG = {"enable_external_access": False, "lock_configuration": True, "memory_limit": "2GB"}


class StoreError(RuntimeError):
    """The store can't do what was asked; the message says why and what to do."""


class StoreLockedError(StoreError):
    """Another process (or another configuration in this one) held the file past lock_timeout."""


class QueryError(StoreError):
    """A SQL console query was refused, failed or ran past its time limit."""


class BundleError(StoreError):
    """A run bundle can't be exported or imported; the store is unchanged."""


class UnknownPairError(StoreError, KeyError):
    """No runs of that pair id in the store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def default_store_path() -> Path:
    return Path(os.environ.get("LOSSLAND_STORE", "data/runs.duckdb"))


# --- schema ------------------------------------------------------------------------------

Columns = tuple[tuple[str, str], ...]
_METRICS = ("clean_loss", "clean_acc", "attack_loss", "attack_acc", "test_loss", "test_acc")
_M = tuple((m, "DOUBLE") for m in _METRICS)

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
    ("git_commit", "VARCHAR"), ("created_at", "TIMESTAMP"), ("error", "VARCHAR"), ("extra_json", "VARCHAR"))
_RUN_COLUMNS_NEW_IN_V2 = ("attack_labels", "git_commit", "error", "extra_json")
_RUNS_CONSTRAINTS = (", PRIMARY KEY (run_id), CHECK (role IN ('good', 'bad')), "
                     "CHECK (status IN ('converged', 'max_epochs', 'diverged', 'failed'))")
_RUNS_NOT_NULL = ("run_id", "pair_id", "role", "status", "config_json", "created_at")

# The landscape tables as schema version 2 made them (version 3 appends columns).
_LANDSCAPES_V2: Columns = (("run_id", "VARCHAR"), ("kind", "VARCHAR"), ("other_run_id", "VARCHAR"),
                           ("direction_seed", "BIGINT"), ("normalization", "VARCHAR"), ("alpha", "DOUBLE"),
                           ("beta", "DOUBLE"), *_M, ("settings_json", "VARCHAR"), ("created_at", "TIMESTAMP"))
_BASIN_TRIALS_V2: Columns = (("run_id", "VARCHAR"), ("kind", "VARCHAR"), ("radius", "DOUBLE"), ("trial", "INTEGER"),
                             ("seed", "BIGINT"), *_M, ("threshold", "DOUBLE"), ("escaped", "BOOLEAN"),
                             ("settings_json", "VARCHAR"), ("created_at", "TIMESTAMP"))

# Tables keyed by run_id besides runs, in the current schema; ORDER BY used when reading them.
CHILD_TABLES: dict[str, Columns] = {
    "curves": (("run_id", "VARCHAR"), ("epoch", "INTEGER"), ("lr", "DOUBLE"), *_M),
    # idx counts from 1: idx 1 is the largest eigenvalue (kind 'lanczos': top-k; 'exact': all, descending)
    "spectra": (("run_id", "VARCHAR"), ("kind", "VARCHAR"), ("idx", "INTEGER"), ("eigenvalue", "DOUBLE"),
                ("residual", "DOUBLE")),
    "densities": (("run_id", "VARCHAR"), ("vector", "INTEGER"), ("idx", "INTEGER"), ("node", "DOUBLE"),
                  ("weight", "DOUBLE")),
    "density_grid": (("run_id", "VARCHAR"), ("idx", "INTEGER"), ("x", "DOUBLE"), ("density", "DOUBLE"),
                     ("sigma", "DOUBLE")),
    "estimates": (("run_id", "VARCHAR"), ("name", "VARCHAR"), ("k", "INTEGER"), ("value", "DOUBLE"),
                  ("stderr", "DOUBLE"), ("samples", "BIGINT"), ("hvps", "BIGINT"), ("method", "VARCHAR"),
                  ("eps", "DOUBLE"), ("settings_json", "VARCHAR")),
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
_ORDER = {"runs": "created_at DESC, run_id", "curves": "run_id, epoch", "spectra": "run_id, kind, idx",
          "densities": "run_id, vector, idx", "density_grid": "run_id, idx", "estimates": "run_id, name, k",
          "landscapes": "run_id, analysis_id, point, kind, direction_seed, alpha, beta",
          "basin_trials": "run_id, analysis_id, kind, radius, trial", "analyses": "run_id, created_at, analysis_id"}
_ARROW = {"VARCHAR": pa.string(), "BIGINT": pa.int64(), "INTEGER": pa.int32(), "DOUBLE": pa.float64(),
          "TIMESTAMP": pa.timestamp("us"), "BOOLEAN": pa.bool_()}


_STR = pd.StringDtype(na_value=np.nan)  # pandas' default "str"
_PANDAS = {pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype(), pa.bool_(): pd.BooleanDtype(),
           pa.string(): _STR, pa.large_string(): _STR, pa.string_view(): _STR}


def _df(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pd.DataFrame:
    """A query's rows as a DataFrame via Arrow (several times faster than .df() on wide text),
    with nullable integer, boolean and string dtypes whether or not a NULL turned up, so a
    column's dtype never depends on which rows were selected."""
    return con.sql(sql, params=params or None).to_arrow_table().to_pandas(types_mapper=_PANDAS.get)


def _names(columns: Columns) -> list[str]:
    return [c for c, _ in columns]


def _create_table(con: duckdb.DuckDBPyConnection, name: str, columns: Columns) -> None:
    if name == "runs":
        body = ", ".join(f"{c} {t}{' NOT NULL' if c in _RUNS_NOT_NULL else ''}" for c, t in columns)
        con.execute(f"CREATE TABLE runs ({body}{_RUNS_CONSTRAINTS})")
    else:
        body = ", ".join(f"{c} {t}{' NOT NULL' if c == 'run_id' else ''}" for c, t in columns)
        con.execute(f"CREATE TABLE {name} ({body})")


def create_v1_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Schema version 1, as first released (kept to create old stores in tests): no attack_labels,
    git_commit, error or extra_json in runs; no landscapes or basin_trials."""
    con.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    _create_table(con, "runs", tuple(c for c in RUN_COLUMNS if c[0] not in _RUN_COLUMNS_NEW_IN_V2))
    for name in ("curves", "spectra", "densities", "density_grid", "estimates"):
        _create_table(con, name, CHILD_TABLES[name])
    con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', '1')")


def _v1_to_v2(con: duckdb.DuckDBPyConnection) -> None:
    """Rebuild runs with the new columns (attack_labels recovered from config_json), add the
    landscape tables; a migrated store is column for column a fresh one."""
    old = [c for c, _ in RUN_COLUMNS if c not in _RUN_COLUMNS_NEW_IN_V2]
    con.execute("ALTER TABLE runs RENAME TO runs_v1")
    _create_table(con, "runs", RUN_COLUMNS)
    con.execute(f"INSERT INTO runs ({', '.join(old)}, attack_labels) SELECT {', '.join(old)}, "
                f"json_extract_string(config_json, '$.attack.labels') FROM runs_v1")
    con.execute("DROP TABLE runs_v1")
    _create_table(con, "landscapes", _LANDSCAPES_V2)
    _create_table(con, "basin_trials", _BASIN_TRIALS_V2)


def _v2_to_v3(con: duckdb.DuckDBPyConnection) -> None:
    """Landscape and basin rows learn which analysis they belong to (cache key, resumable grids);
    basin trials gain the top eigenvalue and the distance travelled; the analyses table appears."""
    for table, columns in (("landscapes", _LANDSCAPES_V2), ("basin_trials", _BASIN_TRIALS_V2)):
        for name, kind in CHILD_TABLES[table][len(columns):]:
            con.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
    _create_table(con, "analyses", CHILD_TABLES["analyses"])


# MIGRATIONS[i] takes a store from schema version i to i + 1 (0: an empty file).
MIGRATIONS: list[Callable[[duckdb.DuckDBPyConnection], None]] = [create_v1_schema, _v1_to_v2, _v2_to_v3]
assert len(MIGRATIONS) == SCHEMA_VERSION


# --- results ----------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class PairView:
    """Everything stored for one pair; each frame has run_id and role, good rows first."""

    pair_id: str
    runs: pd.DataFrame
    curves: pd.DataFrame
    spectra: pd.DataFrame
    densities: pd.DataFrame
    density_grid: pd.DataFrame
    estimates: pd.DataFrame

    def run(self, role: str) -> pd.Series:
        rows = self.runs[self.runs["role"] == role]
        if rows.empty:
            raise StoreError(f"pair {self.pair_id} has no {role!r} run")
        return rows.iloc[0]


@dataclass(frozen=True, eq=False)
class QueryResult:
    frame: pd.DataFrame
    truncated: bool  # more rows than max_rows existed; frame holds the first max_rows
    seconds: float


@dataclass(frozen=True)
class ImportReport:
    run_ids_added: tuple[str, ...]
    run_ids_skipped: tuple[str, ...]  # already in the store (and not failed there)


# --- versions ------------------------------------------------------------------------------

@functools.cache
def git_commit() -> str | None:
    """HEAD of the git checkout holding this package, or None (not a checkout, no git)."""
    here = Path(__file__).resolve().parent
    try:
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "__init__.py"], cwd=here,
                                 capture_output=True, timeout=5)  # not an installed copy inside some other repo
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if tracked.returncode == 0 and out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", sha) else None


def _versions() -> dict[str, str | None]:
    return {"lossland_version": __version__, "torch_version": torch.__version__,
            "python_version": platform.python_version(), "git_commit": git_commit()}


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# --- rows of a pair ------------------------------------------------------------------------

def _arrow(columns: Columns, rows: dict[str, Any]) -> pa.Table:
    """Columns of equal length (lists or arrays) -> an Arrow table typed like the store; NaN -> NULL."""
    return pa.table({c: pa.array(rows[c], type=_ARROW[t], from_pandas=True) for c, t in columns})


def _frame_arrow(table: str, df: pd.DataFrame) -> pa.Table:
    """A DataFrame -> an Arrow table with exactly `table`'s columns (missing ones NULL)."""
    columns = CHILD_TABLES[table]
    n = len(df)
    rows = {c: (df[c].tolist() if c in df.columns else [None] * n) for c, _ in columns}
    if "created_at" in rows and "created_at" not in df.columns:
        rows["created_at"] = [_now()] * n
    return _arrow(columns, rows)


def _density_grid(density: DensityResult, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    grid = np.asarray(density.grid(GRID_POINTS, sigma), dtype=float)
    return grid, np.asarray(density.smooth(grid, sigma), dtype=float)


def _run_row(cfg: ExperimentConfig, role: str, created_at: datetime) -> dict[str, Any]:
    pair_id = cfg.config_hash()
    row: dict[str, Any] = dict.fromkeys(_names(RUN_COLUMNS))
    row.update(run_id=f"{pair_id}-{role}", pair_id=pair_id, role=role, config_json=cfg.to_json(),
               dataset=cfg.data.name, model=cfg.model.name, widths=",".join(map(str, cfg.model.widths)),
               seed=cfg.model.seed, data_seed=cfg.data.seed, train_seed=cfg.train.seed, n_train=cfg.data.n_train,
               n_attack=cfg.attack.n_attack, attack_labels=cfg.attack.labels, optimizer=cfg.train.optimizer,
               lr=cfg.train.lr, batch_size=cfg.train.batch_size, loss_target=cfg.train.loss_target,
               created_at=created_at, **_versions())
    return row


def _spectrum_run_facts(s: SpectrumResult) -> dict[str, Any]:
    top = tuple(s.top.eigenvalues)
    lv = tuple(s.log_volume_k)
    log_volume = lv[len(top) - 1] if top and len(lv) >= len(top) else (lv[-1] if lv else None)
    return {"top_eigenvalue": top[0] if top else None, "trace": s.trace.value, "frobenius_sq": s.frobenius_sq.value,
            "log_volume": log_volume, "spectrum_hvps": s.hvps, "spectrum_seconds": s.seconds}


def _estimate_rows(run_id: str, s: SpectrumResult) -> list[dict[str, Any]]:
    settings = json.dumps(dataclasses.asdict(s.settings), sort_keys=True)
    base = dict.fromkeys(_names(CHILD_TABLES["estimates"])) | {"run_id": run_id, "settings_json": settings}
    rows = [base | {"name": name, "value": e.value, "stderr": e.stderr, "samples": e.samples, "hvps": e.hvps,
                    "method": e.method} for name, e in (("trace", s.trace), ("frobenius_sq", s.frobenius_sq))]
    for name in ("trace_exact", "frobenius_sq_exact"):
        value = getattr(s, name, None)
        if value is not None:
            rows.append(base | {"name": name, "value": value, "method": "exact"})
    if s.log_volume_exact is not None:
        rows.append(base | {"name": "log_volume_exact", "value": s.log_volume_exact, "method": "exact",
                            "eps": s.settings.eps})
    rows += [base | {"name": "log_volume_k", "k": k, "value": v, "method": "lanczos", "eps": s.settings.eps}
             for k, v in enumerate(s.log_volume_k, start=1)]
    return rows


def _columnar(columns: Columns, rows: list[dict[str, Any]]) -> pa.Table:
    return _arrow(columns, {c: [r[c] for r in rows] for c, _ in columns})


def _spectrum_tables(run_id: str, s: SpectrumResult) -> dict[str, pa.Table]:
    top_vals, top_res = np.asarray(s.top.eigenvalues, float), np.asarray(s.top.residuals, float)
    exact = np.asarray(s.exact_eigenvalues if s.exact_eigenvalues is not None else (), float)
    n_top, n_exact = len(top_vals), len(exact)
    spectra = {"run_id": [run_id] * (n_top + n_exact), "kind": ["lanczos"] * n_top + ["exact"] * n_exact,
               "idx": np.concatenate([np.arange(1, n_top + 1), np.arange(1, n_exact + 1)]).astype(np.int32),
               "eigenvalue": np.concatenate([top_vals, exact]),
               "residual": np.concatenate([top_res, np.full(n_exact, np.nan)])}
    nodes, weights = np.asarray(s.density.nodes, float), np.asarray(s.density.weights, float)
    n_vec, m = nodes.shape if nodes.ndim == 2 else (0, 0)
    densities = {"run_id": [run_id] * (n_vec * m), "vector": np.repeat(np.arange(n_vec), m).astype(np.int32),
                 "idx": np.tile(np.arange(m), n_vec).astype(np.int32), "node": nodes.ravel(), "weight": weights.ravel()}
    grid, values = _density_grid(s.density, s.settings.sigma) if nodes.size else (np.array([]), np.array([]))
    density_grid = {"run_id": [run_id] * len(grid), "idx": np.arange(len(grid), dtype=np.int32), "x": grid,
                    "density": values, "sigma": np.full(len(grid), s.settings.sigma)}
    return {"spectra": _arrow(CHILD_TABLES["spectra"], spectra),
            "densities": _arrow(CHILD_TABLES["densities"], densities),
            "density_grid": _arrow(CHILD_TABLES["density_grid"], density_grid),
            "estimates": _columnar(CHILD_TABLES["estimates"], _estimate_rows(run_id, s))}


def _curve_table(run_id: str, result: TrainResult) -> pa.Table:
    c = result.curves
    cols = {name: list(getattr(c, name)) for name, _ in CHILD_TABLES["curves"][1:]}
    return _arrow(CHILD_TABLES["curves"], {"run_id": [run_id] * len(c.epoch), **cols})


def _insert(con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table) -> None:
    if rows.num_rows == 0:
        return
    cols = ", ".join(rows.column_names)
    con.register("_lossland_rows", rows)
    try:
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _lossland_rows")
    finally:
        con.unregister("_lossland_rows")


def _delete_runs(con: duckdb.DuckDBPyConnection, run_ids: list[str]) -> None:
    marks = ", ".join("?" * len(run_ids))
    for table in (*CHILD_TABLES, "runs"):
        con.execute(f"DELETE FROM {table} WHERE run_id IN ({marks})", run_ids)


# --- lock messages -----------------------------------------------------------------------

def _is_lock_conflict(e: Exception) -> bool:
    text = str(e)
    return ((isinstance(e, duckdb.IOException) and ("Could not set lock" in text or "Conflicting lock" in text))
            or (isinstance(e, duckdb.ConnectionException) and "different configuration" in text))


def _lock_holder(e: Exception) -> str:
    """'python3.11 (PID 123, /usr/bin/python3.11)' from DuckDB's message, or this process."""
    text = str(e)
    match = re.search(r"Conflicting lock is held in (.*?) \(PID (\d+)\)", text)
    if not match:
        return f"another connection in this process (PID {os.getpid()}) with a different configuration"
    exe, pid = match.group(1), int(match.group(2))
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        name = Path(exe).name or "a process"
    return f"{name} (PID {pid}, {exe})"


# --- the store ---------------------------------------------------------------------------

class Store:
    """One DuckDB file of runs. Cheap to create: nothing is opened until the first call."""

    def __init__(self, path: str | Path | None = None, lock_timeout: float = 10.0,
                 checkpoint_dir: str | Path | None = None, max_bundle_bytes: int = DEFAULT_MAX_BUNDLE_BYTES):
        self.path = Path(path) if path is not None else default_store_path()
        self.lock_timeout = float(lock_timeout)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else self.path.parent / "checkpoints"
        self.max_bundle_bytes = int(max_bundle_bytes)
        self._ready = False

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # --- connections ------------------------------------------------------------------
    def _open(self, read_only: bool = False, config: dict | None = None) -> duckdb.DuckDBPyConnection:
        """duckdb.connect with exponential backoff on lock conflicts, up to lock_timeout in all."""
        start = time.monotonic()
        delay = 0.005
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only, config=config or {})
            except duckdb.Error as e:
                if not _is_lock_conflict(e):
                    raise StoreError(f"cannot open store {self.path}: {_first_line(e)}"
                                     f"{_advice(self.path, e)}") from None
                waited = time.monotonic() - start
                if waited >= self.lock_timeout:
                    raise StoreLockedError(
                        f"store {self.path} is locked by {_lock_holder(e)}; gave up after {waited:.1f} s "
                        f"(lock_timeout = {self.lock_timeout:g} s). Let that process finish or close it, "
                        f"then retry") from None
                time.sleep(min(delay * random.uniform(0.5, 1.0), self.lock_timeout - waited))
                delay = min(2 * delay, 0.25)

    @contextmanager
    def _connect(self, read_only: bool = False, config: dict | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        self._ensure_schema()
        con = self._open(read_only, config)
        try:
            yield con
        except duckdb.Error as e:
            raise StoreError(f"store {self.path}: {_first_line(e)}{_advice(self.path, e)}") from None
        finally:
            con.close()

    def _ensure_schema(self) -> None:
        if self._ready:
            return
        if self.path.exists():
            con = self._open(read_only=True)
            try:
                found = self._schema_version(con)
            except duckdb.Error as e:
                raise StoreError(f"cannot read store {self.path}: {_first_line(e)}{_advice(self.path, e)}") from None
            finally:
                con.close()
            if found == SCHEMA_VERSION:
                self._ready = True
                return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create store {self.path}: its folder {self.path.parent} can't be made "
                             f"({e.strerror or e}); choose a writable path (--store or LOSSLAND_STORE)") from None
        con = self._open()
        try:
            con.execute("BEGIN TRANSACTION")
            try:
                found = self._schema_version(con)
                for version in range(found, SCHEMA_VERSION):
                    MIGRATIONS[version](con)
                    con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(version + 1)])
                con.execute("COMMIT")
            except BaseException as e:
                try:
                    con.execute("ROLLBACK")
                except duckdb.Error:
                    pass  # a failed COMMIT already ended the transaction
                if isinstance(e, duckdb.Error):
                    raise StoreError(f"migrating store {self.path} from schema version {found} to "
                                     f"{SCHEMA_VERSION} failed, nothing changed: {e}") from None
                raise
        finally:
            con.close()
        self._ready = True

    def _schema_version(self, con: duckdb.DuckDBPyConnection) -> int:
        tables = {r[0] for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()").fetchall()}
        if "meta" not in tables:
            if tables:
                raise StoreError(f"{self.path} is a DuckDB file but not a lossland store (no meta table; "
                                 f"tables {sorted(tables)}); choose another path")
            return 0
        row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        found = int(row[0]) if row else 0
        if found > SCHEMA_VERSION:
            raise StoreError(f"store {self.path} has schema version {found}, newer than the {SCHEMA_VERSION} "
                             f"this lossland {__version__} knows; upgrade lossland to open it")
        return found

    def _write(self, work: Callable[[duckdb.DuckDBPyConnection], Any], what: str) -> Any:
        """Run work(con) in one transaction: all of it is committed or none. Write-write conflicts
        with another connection of this process are retried until lock_timeout."""
        start = time.monotonic()
        while True:
            with self._connect() as con:
                con.execute("BEGIN TRANSACTION")
                try:
                    result = work(con)
                    con.execute("COMMIT")
                    return result
                except BaseException as e:
                    try:
                        con.execute("ROLLBACK")
                    except duckdb.Error:
                        pass  # a failed COMMIT already ended the transaction
                    conflict = isinstance(e, duckdb.TransactionException) and "onflict" in str(e)
                    if conflict and time.monotonic() - start < self.lock_timeout:
                        pass
                    elif isinstance(e, duckdb.Error):
                        raise StoreError(f"{what} failed, nothing was written to {self.path}: {_first_line(e)}"
                                         f"{_advice(self.path, e)}") from None
                    elif isinstance(e, OSError):
                        raise StoreError(f"{what} failed, nothing was written to {self.path}: {e}"
                                         f"{_advice(self.path, e)}") from None
                    else:
                        raise
            time.sleep(random.uniform(0.005, 0.05))

    def _frame(self, sql: str, params: list | None = None) -> pd.DataFrame:
        with self._connect(read_only=True) as con:
            return _df(con, sql, params)

    # --- writes -------------------------------------------------------------------------
    def save_pair(self, pair: PairResult, spectra: dict[str, SpectrumResult] | None = None,
                  checkpoints: dict[str, str | Path] | None = None, extra: dict | None = None) -> list[str]:
        """Write both runs of a pair and all their rows in one transaction, replacing any earlier
        rows of the same run ids. spectra/checkpoints are keyed by role; extra is JSON-able facts
        recorded with both runs (extra_json). Returns the run ids."""
        spectra, checkpoints = spectra or {}, checkpoints or {}
        unknown = (set(spectra) | set(checkpoints)) - set(ROLES)
        if unknown:
            raise StoreError(f"spectra and checkpoints are keyed by role (good, bad); got {sorted(unknown)}")
        extra_json = json.dumps(extra, sort_keys=True, default=str) if extra else None
        created_at = _now()
        tables: dict[str, list[pa.Table]] = {name: [] for name in TABLES}
        for role in ROLES:
            result: TrainResult = getattr(pair, role)
            row = _run_row(pair.config, role, created_at)
            run_id = row["run_id"]
            row.update({k: getattr(result, k) for k in ("status", "stop_reason", "n_params", "epochs", "seconds",
                                                        "device", *_METRICS)}, extra_json=extra_json)
            if role in checkpoints:
                row["checkpoint"] = self._relative(Path(checkpoints[role]))
            if role in spectra:
                row.update(_spectrum_run_facts(spectra[role]))
                for name, t in _spectrum_tables(run_id, spectra[role]).items():
                    tables[name].append(t)
            tables["runs"].append(_columnar(RUN_COLUMNS, [row]))
            tables["curves"].append(_curve_table(run_id, result))
        run_ids = [f"{pair.pair_id}-{role}" for role in ROLES]
        self._write(lambda con: self._replace(con, run_ids, tables), f"saving pair {pair.pair_id}")
        return run_ids

    def save_failed(self, cfg: ExperimentConfig, error: str) -> list[str]:
        """Record both runs of cfg's pair as 'failed' with the error (replacing earlier rows)."""
        created_at = _now()
        rows = [_run_row(cfg, role, created_at) | {"status": "failed", "error": str(error)} for role in ROLES]
        run_ids = [r["run_id"] for r in rows]
        tables = {"runs": [_columnar(RUN_COLUMNS, rows)]}
        self._write(lambda con: self._replace(con, run_ids, tables), f"recording failed pair {cfg.config_hash()}")
        return run_ids

    # --- analyses: landscapes, basins, theory (each cached by the hash of its settings) ------------
    def analysis(self, analysis_id: str) -> pd.Series | None:
        """The analyses row of `analysis_id` (status 'running' or 'done'), or None."""
        rows = self._frame(f"SELECT {', '.join(_names(CHILD_TABLES['analyses']))} FROM analyses "
                           "WHERE analysis_id = ?", [analysis_id])
        return None if rows.empty else rows.iloc[0]

    def analyses(self, run_ids: Iterable[str] | None = None, kind: str | None = None) -> pd.DataFrame:
        clauses, params = [], []
        if run_ids is not None:
            ids = list(run_ids)
            clauses.append(f"run_id IN ({', '.join('?' * len(ids)) or 'NULL'})")
            params += ids
        if kind is not None:
            clauses.append("kind = ?")
            params.append(kind)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return self._frame(f"SELECT {', '.join(_names(CHILD_TABLES['analyses']))} FROM analyses{where} "
                           "ORDER BY created_at DESC", params)

    def begin_analysis(self, run_id: str, analysis_id: str, kind: str, settings_json: str) -> None:
        """Mark an analysis as running (a no-op when it is already recorded), so its rows can land in parts."""
        def work(con):
            found = con.execute("SELECT count(*) FROM analyses WHERE analysis_id = ?", [analysis_id]).fetchall()[0][0]
            if not found:
                _insert(con, "analyses", _frame_arrow("analyses", pd.DataFrame([{
                    "run_id": run_id, "analysis_id": analysis_id, "kind": kind, "status": "running",
                    "settings_json": settings_json, "seconds": None, "created_at": _now()}])))
        self._write(work, f"starting analysis {analysis_id}")

    def append_landscape(self, analysis_id: str, rows: pd.DataFrame) -> None:
        """Add grid points of a running analysis in one transaction (a stopped grid keeps them)."""
        self._write(lambda con: _insert(con, "landscapes", _frame_arrow("landscapes", rows.assign(
            analysis_id=analysis_id))), f"storing {len(rows)} landscape points of {analysis_id}")

    def save_analysis(self, run_id: str, analysis_id: str, kind: str, settings_json: str, seconds: float,
                      landscapes: pd.DataFrame | None = None, trials: pd.DataFrame | None = None,
                      estimates: pd.DataFrame | None = None) -> None:
        """Write a finished analysis in one transaction: its rows replace any earlier ones of the same id
        (landscape rows already appended by a resumable grid are kept unless new ones are given)."""
        def work(con):
            if landscapes is not None:
                con.execute("DELETE FROM landscapes WHERE analysis_id = ?", [analysis_id])
                _insert(con, "landscapes", _frame_arrow("landscapes", landscapes.assign(analysis_id=analysis_id)))
            if trials is not None:
                con.execute("DELETE FROM basin_trials WHERE analysis_id = ?", [analysis_id])
                _insert(con, "basin_trials", _frame_arrow("basin_trials", trials.assign(analysis_id=analysis_id)))
            if estimates is not None and len(estimates):
                for rid, name in estimates[["run_id", "name"]].drop_duplicates().itertuples(index=False):
                    con.execute("DELETE FROM estimates WHERE run_id = ? AND name = ?", [rid, name])
                _insert(con, "estimates", _frame_arrow("estimates", estimates))
            con.execute("DELETE FROM analyses WHERE analysis_id = ?", [analysis_id])
            _insert(con, "analyses", _frame_arrow("analyses", pd.DataFrame([{
                "run_id": run_id, "analysis_id": analysis_id, "kind": kind, "status": "done",
                "settings_json": settings_json, "seconds": seconds, "created_at": _now()}])))
        self._write(work, f"storing analysis {analysis_id}")

    def landscape(self, analysis_id: str) -> pd.DataFrame:
        cols = _names(CHILD_TABLES["landscapes"])
        return self._frame(f"SELECT {', '.join(cols)} FROM landscapes WHERE analysis_id = ? "
                           "ORDER BY run_id, point, alpha, beta", [analysis_id])

    def basin_trials(self, analysis_id: str) -> pd.DataFrame:
        cols = _names(CHILD_TABLES["basin_trials"])
        return self._frame(f"SELECT {', '.join(cols)} FROM basin_trials WHERE analysis_id = ? "
                           "ORDER BY run_id, radius, trial", [analysis_id])

    def estimates(self, run_ids: Iterable[str], names: Iterable[str] | None = None) -> pd.DataFrame:
        ids = list(run_ids)
        sql = (f"SELECT {', '.join(_names(CHILD_TABLES['estimates']))} FROM estimates "
               f"WHERE run_id IN ({', '.join('?' * len(ids)) or 'NULL'})")
        params = list(ids)
        if names is not None:
            nm = list(names)
            sql += f" AND name IN ({', '.join('?' * len(nm)) or 'NULL'})"
            params += nm
        return self._frame(sql + " ORDER BY run_id, name, k", params)

    @staticmethod
    def _replace(con: duckdb.DuckDBPyConnection, run_ids: list[str], tables: dict[str, list[pa.Table]]) -> None:
        _delete_runs(con, run_ids)
        for name in TABLES:
            for t in tables.get(name, ()):
                _insert(con, name, t)

    def _relative(self, path: Path) -> str:
        """Checkpoint paths under the store's folder are kept relative to it, so a store folder moves whole."""
        full = path if path.is_absolute() else Path.cwd() / path
        try:
            return full.resolve().relative_to(self.path.parent.resolve()).as_posix()
        except ValueError:
            return str(full.resolve())

    def checkpoint_path(self, run_id: str) -> Path | None:
        """The checkpoint file recorded for run_id (it may since have been deleted), or None."""
        df = self._frame("SELECT checkpoint FROM runs WHERE run_id = ?", [run_id])
        if df.empty or pd.isna(df["checkpoint"].iloc[0]):
            return None
        path = Path(df["checkpoint"].iloc[0])
        return path if path.is_absolute() else self.path.parent / path

    # --- queries ------------------------------------------------------------------------
    def runs(self, **filters: Any) -> pd.DataFrame:
        """Runs, newest first, where every filter column equals its value (a list/tuple/set means
        any of; None means NULL)."""
        allowed = _names(RUN_COLUMNS)
        unknown = [k for k in filters if k not in allowed]
        if unknown:
            raise StoreError(f"unknown filter(s) {', '.join(unknown)} for runs; allowed: {', '.join(allowed)}")
        where, params = [], []
        for key, value in filters.items():
            if value is None:
                where.append(f"{key} IS NULL")
            elif isinstance(value, (list, tuple, set, frozenset)):
                values = list(value)
                where.append(f"{key} IN ({', '.join('?' * len(values))})" if values else "FALSE")
                params += values
            else:
                where.append(f"{key} = ?")
                params.append(value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return self._frame(f"SELECT {', '.join(allowed)} FROM runs{clause} ORDER BY {_ORDER['runs']}", params)

    def pair(self, pair_id: str) -> PairView:
        """Both runs of a pair with their curves, spectra, densities and estimates."""
        ids = [f"{pair_id}-{role}" for role in ROLES]
        role = "CASE WHEN run_id = ? THEN 'good' ELSE 'bad' END AS role"
        frames = {}
        with self._connect(read_only=True) as con:
            runs = _df(con, f"SELECT {', '.join(_names(RUN_COLUMNS))} FROM runs WHERE run_id IN (?, ?) "
                                 f"ORDER BY role DESC", ids)
            if runs.empty:
                raise UnknownPairError(f"no pair {pair_id!r} in store {self.path}")
            for name in ("curves", "spectra", "densities", "density_grid", "estimates"):
                cols = _names(CHILD_TABLES[name])
                frames[name] = _df(
                    con, f"SELECT {cols[0]}, {role}, {', '.join(cols[1:])} FROM {name} WHERE run_id IN (?, ?) "
                         f"ORDER BY role DESC, {_ORDER[name].removeprefix('run_id, ')}", [ids[0], *ids])
        return PairView(pair_id=pair_id, runs=runs, **frames)

    def has_pair(self, pair_id: str) -> bool:
        """True when both runs are stored and neither failed."""
        with self._connect(read_only=True) as con:
            (n,) = con.execute("SELECT count(*) FROM runs WHERE run_id IN (?, ?) AND status <> 'failed'",
                               [f"{pair_id}-{role}" for role in ROLES]).fetchone()
        return n == 2

    def latest_pair_id(self) -> str | None:
        """The pair written last (failed pairs left out), or None in an empty store."""
        with self._connect(read_only=True) as con:
            row = con.execute("SELECT pair_id FROM runs WHERE status <> 'failed' "
                              "ORDER BY created_at DESC, pair_id LIMIT 1").fetchone()
        return row[0] if row else None

    def count_runs(self) -> int:
        with self._connect(read_only=True) as con:
            return con.execute("SELECT count(*) FROM runs").fetchone()[0]

    def tables(self) -> dict[str, list[tuple[str, str]]]:
        """Table -> [(column, type)] as stored, for the SQL console."""
        with self._connect(read_only=True) as con:
            rows = con.execute("SELECT table_name, column_name, data_type FROM duckdb_columns() "
                               "WHERE database_name = current_database() AND schema_name = 'main' "
                               "ORDER BY table_name, column_index").fetchall()
        out: dict[str, list[tuple[str, str]]] = {}
        for table, column, kind in rows:
            out.setdefault(table, []).append((column, kind))
        return out

    def table(self, name: str) -> pd.DataFrame:
        """A whole table (runs, curves, spectra, densities, density_grid, estimates, landscapes,
        basin_trials, meta)."""
        if name == "meta":
            return self._frame("SELECT key, value FROM meta ORDER BY key")
        if name not in TABLES:
            raise StoreError(f"unknown table {name!r}; allowed: {', '.join([*TABLES, 'meta'])}")
        return self._frame(f"SELECT {', '.join(_names(TABLES[name]))} FROM {name} ORDER BY {_ORDER[name]}")

    # --- the SQL console ----------------------------------------------------------------
    def query(self, sql: str, max_rows: int = 10_000, timeout: float = 10.0) -> QueryResult:
        """One read-only SELECT (or EXPLAIN) on a sandboxed connection: the file opened read-only,
        no file system or network access, settings locked; at most max_rows rows, stopped after
        timeout seconds."""
        _check_select(sql)
        if max_rows < 0 or not timeout > 0:
            raise QueryError(f"max_rows must be ≥ 0 and timeout > 0 (got {max_rows}, {timeout})")
        start = time.perf_counter()
        with self._connect(read_only=True, config=SANDBOX_CONFIG) as con:
            timer = threading.Timer(timeout, con.interrupt)
            timer.daemon = True
            timer.start()
            try:
                result = con.execute(sql)
                chunks, n = [], 0
                while n <= max_rows:
                    chunk = result.fetch_df_chunk(8)
                    if not chunks or len(chunk):
                        chunks.append(chunk)
                    if not len(chunk):
                        break
                    n += len(chunk)
            except duckdb.InterruptException:
                raise QueryError(f"query stopped: it ran past the time limit of {timeout:g} s; "
                                 f"narrow it (WHERE, LIMIT) or raise the limit") from None
            except duckdb.PermissionException as e:
                raise QueryError(f"refused: the SQL console can't read or write files, attach databases or "
                                 f"load extensions ({_first_line(e)})") from None
            except duckdb.Error as e:
                raise QueryError(f"query failed: {_first_line(e)}") from None
            finally:
                timer.cancel()
                if timer.is_alive():
                    timer.join()
        frame = pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]
        truncated = len(frame) > max_rows
        return QueryResult(frame=frame.iloc[:max_rows].reset_index(drop=True) if truncated else frame,
                           truncated=truncated, seconds=time.perf_counter() - start)

    # --- sharing ------------------------------------------------------------------------
    def export(self, run_ids: Iterable[str], path: str | Path) -> Path:
        """One zip: manifest.json, tables/<table>.parquet with these runs' rows, and
        checkpoints/<run_id>.pt where the checkpoint file exists."""
        run_ids = list(dict.fromkeys(run_ids))
        if not run_ids:
            raise BundleError("nothing to export: give at least one run id")
        path = Path(path)
        with tempfile.TemporaryDirectory(prefix="lossland-export-") as tmp_name:
            tmp = Path(tmp_name)
            (tmp / "tables").mkdir()
            counts: dict[str, int] = {}
            with self._connect(read_only=True) as con:
                con.register("_lossland_ids", pa.table({"run_id": pa.array(run_ids, pa.string())}))
                found = dict(con.execute("SELECT run_id, checkpoint FROM runs "
                                         "WHERE run_id IN (SELECT run_id FROM _lossland_ids)").fetchall())
                missing = [r for r in run_ids if r not in found]
                if missing:
                    raise BundleError(f"run id(s) not in store {self.path}: {', '.join(missing)}")
                for name, columns in TABLES.items():
                    target = (tmp / "tables" / f"{name}.parquet").as_posix().replace("'", "''")
                    select = (f"SELECT {', '.join(_names(columns))} FROM {name} WHERE run_id IN "
                              f"(SELECT run_id FROM _lossland_ids) ORDER BY {_ORDER[name]}")
                    con.execute(f"COPY ({select}) TO '{target}' (FORMAT parquet)")
                    counts[name] = con.execute(f"SELECT count(*) FROM ({select})").fetchone()[0]
            checkpoints = {}
            for run_id in run_ids:
                recorded = found[run_id]
                candidates = ([Path(recorded) if Path(recorded).is_absolute() else self.path.parent / recorded]
                              if recorded else []) + [self.checkpoint_dir / f"{run_id}.pt"]
                source = next((c for c in candidates if c.is_file()), None)
                if source is not None:
                    checkpoints[f"checkpoints/{run_id}.pt"] = source
            manifest = {"format_version": BUNDLE_FORMAT, "schema_version": SCHEMA_VERSION,
                        "lossland_version": __version__, "run_ids": run_ids,
                        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                        "rows": counts, "checkpoints": sorted(checkpoints)}
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".partial")
            with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.writestr("manifest.json", json.dumps(manifest, indent=2))
                for name in TABLES:
                    zf.write(tmp / "tables" / f"{name}.parquet", f"tables/{name}.parquet")
                for member, source in checkpoints.items():
                    zf.write(source, member)
            partial.replace(path)
        return path

    def import_bundle(self, path: str | Path) -> ImportReport:
        """Merge a bundle from export() into this store: runs already here (and not failed) are
        skipped, the rest added with their rows and checkpoints, in one transaction. Any problem
        raises BundleError and leaves the store unchanged."""
        path = Path(path)
        try:
            zf = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as e:
            raise BundleError(f"{path} is not a readable run bundle (zip): {e}") from None
        with zf, tempfile.TemporaryDirectory(prefix="lossland-import-") as tmp_name:
            tmp = Path(tmp_name)
            manifest, members = self._check_bundle(path, zf)
            budget = self.max_bundle_bytes
            for member in members:
                budget -= _extract(zf, member, tmp, budget, path)
            run_ids = manifest["run_ids"]
            ckpts = {r: tmp / "checkpoints" / f"{r}.pt" for r in run_ids if f"checkpoints/{r}.pt" in members}
            for run_id, file in ckpts.items():
                _check_checkpoint(file, run_id, path)
            files = {name: tmp / "tables" / f"{name}.parquet" for name in TABLES if f"tables/{name}.parquet" in members}
            staged: set[Path] = set()  # checkpoints copied beside their final names, renamed after COMMIT

            def merge(con: duckdb.DuckDBPyConnection) -> ImportReport:
                marks = ", ".join("?" * len(run_ids))
                existing = {r[0] for r in con.execute(
                    f"SELECT run_id FROM runs WHERE status <> 'failed' AND run_id IN ({marks})", run_ids).fetchall()}
                added = [r for r in run_ids if r not in existing]
                for name, file in files.items():
                    _check_parquet(con, name, file, set(run_ids), manifest["schema_version"], path)
                if not added:
                    return ImportReport(run_ids_added=(), run_ids_skipped=tuple(run_ids))
                for run_id in added:
                    if run_id in ckpts:
                        staging = self.checkpoint_dir / f"{run_id}.pt.importing"
                        staging.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(ckpts[run_id], staging)
                        staged.add(staging)
                _delete_runs(con, added)
                con.register("_lossland_ids", pa.table({"run_id": pa.array(added, pa.string())}))
                for name, file in files.items():
                    cols = ", ".join(_parquet_columns(con, file))
                    con.execute(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM read_parquet(?) "
                                f"WHERE run_id IN (SELECT run_id FROM _lossland_ids)", [file.as_posix()])
                for run_id in added:
                    target = self._relative(self.checkpoint_dir / f"{run_id}.pt") if run_id in ckpts else None
                    con.execute("UPDATE runs SET checkpoint = ? WHERE run_id = ?", [target, run_id])
                return ImportReport(run_ids_added=tuple(added), run_ids_skipped=tuple(r for r in run_ids
                                                                                       if r in existing))

            try:
                report = self._write(merge, f"importing bundle {path}")
            except BaseException as e:
                for f in staged:
                    f.unlink(missing_ok=True)
                if isinstance(e, StoreError) and not isinstance(e, (BundleError, StoreLockedError)):
                    raise BundleError(str(e)) from None
                raise
            for staging in staged:
                staging.replace(staging.with_name(staging.name.removesuffix(".importing")))
            return report

    def _check_bundle(self, path: Path, zf: zipfile.ZipFile) -> tuple[dict, set[str]]:
        """Validate names, sizes and the manifest; returns (manifest, member names)."""
        infos = [i for i in zf.infolist() if i.filename not in ("tables/", "checkpoints/")]  # folder entries
        names = [i.filename for i in infos]
        for name in names:
            parts = name.replace("\\", "/").split("/")
            if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts or "\\" in name:
                raise BundleError(f"bundle {path} has an unsafe member name {name!r} (absolute or with '..'); "
                                  f"refused")
        if len(set(names)) != len(names):
            raise BundleError(f"bundle {path} has duplicate member names; refused")
        for info in infos:
            kind = stat.S_IFMT(info.external_attr >> 16)
            if info.is_dir() or kind not in (0, stat.S_IFREG):  # 0: written by a tool that records no mode
                what = "a symlink" if kind == stat.S_IFLNK else "a folder" if info.is_dir() else "not a plain file"
                raise BundleError(f"bundle {path}: member {info.filename!r} is {what}; a run bundle holds plain "
                                  f"files only; refused")
        total = sum(i.file_size for i in infos)
        if total > self.max_bundle_bytes:
            raise BundleError(f"bundle {path} unpacks to {total:,} bytes, over the limit of "
                              f"{self.max_bundle_bytes:,} (max_bundle_bytes)")
        if "manifest.json" not in names:
            raise BundleError(f"bundle {path} has no manifest.json; not a lossland run bundle")
        try:
            manifest = json.loads(zf.read("manifest.json").decode("utf-8"))
        except (ValueError, RecursionError, zipfile.BadZipFile, zlib.error, EOFError, RuntimeError) as e:
            raise BundleError(f"bundle {path}: manifest.json is not valid JSON ({e})") from None
        if not isinstance(manifest, dict):
            raise BundleError(f"bundle {path}: manifest.json must be an object")
        fmt, schema = manifest.get("format_version"), manifest.get("schema_version")
        if not isinstance(fmt, int) or not isinstance(schema, int):
            raise BundleError(f"bundle {path}: manifest.json lacks integer format_version and schema_version")
        if fmt > BUNDLE_FORMAT or schema > SCHEMA_VERSION:
            raise BundleError(f"bundle {path} was written by a newer lossland ({manifest.get('lossland_version')}: "
                              f"bundle format {fmt}, schema version {schema}; this lossland {__version__} reads "
                              f"format {BUNDLE_FORMAT}, schema {SCHEMA_VERSION}); upgrade lossland to import it")
        if schema < 1:
            raise BundleError(f"bundle {path}: schema_version {schema} is not a valid version")
        run_ids = manifest.get("run_ids")
        if (not isinstance(run_ids, list) or not run_ids or len(set(run_ids)) != len(run_ids)
                or not all(isinstance(r, str) and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", r)
                           for r in run_ids)):
            raise BundleError(f"bundle {path}: manifest run_ids must be a non-empty list of distinct run ids "
                              f"(letters, digits, '_', '.', '-')")
        expected = ({"manifest.json"} | {f"tables/{t}.parquet" for t in TABLES}
                    | {f"checkpoints/{r}.pt" for r in run_ids})
        unexpected = [n for n in names if n not in expected]
        if unexpected:
            raise BundleError(f"bundle {path} has unexpected member(s) {', '.join(map(repr, unexpected[:5]))}; "
                              f"allowed: manifest.json, tables/<table>.parquet, checkpoints/<run_id>.pt")
        if "tables/runs.parquet" not in names:
            raise BundleError(f"bundle {path} has no tables/runs.parquet")
        return manifest, set(names) - {"manifest.json"}


_CORRUPT = ("not a valid DuckDB database file", "Could not read enough bytes", "checksum", "orrupt")
_NO_SPACE = ("No space left", "ENOSPC", "Disk quota exceeded")


def _advice(path: Path, e: BaseException) -> str:
    """What to do about a store that can't be read or written, appended to the error's message."""
    text = str(e)
    if (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or any(s in text for s in _NO_SPACE):
        return (f". The disk holding {path.parent} is full: free space and retry; the runs already stored are "
                f"unchanged")
    if isinstance(e, (duckdb.SerializationException, duckdb.InternalException)) or any(s in text for s in _CORRUPT):
        return (f". The file is corrupt or truncated; lossland never replaces or overwrites it. Restore {path} from "
                f"a backup, or move it aside (mv {path} {path}.corrupt) and start a fresh store there, re-importing "
                f"your run bundles (lossland import BUNDLE)")
    if isinstance(e, PermissionError) or "Permission denied" in text or "Read-only file system" in text:
        return f". Check that {path} and its folder are writable by this user, or choose another store path"
    return ""


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _check_select(sql: str) -> None:
    if not isinstance(sql, str) or not sql.strip():
        raise QueryError("empty query: write one SELECT statement")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(f"SQL syntax error: {_first_line(e)}") from None
    if len(statements) != 1:
        raise QueryError(f"one statement at a time: found {len(statements)}; the SQL console runs a single "
                         f"read-only SELECT")
    kind = statements[0].type
    if kind not in (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN):
        raise QueryError(f"refused: {kind.name} statements can't run in the SQL console; it runs read-only "
                         f"SELECT queries (no writes, schema changes, settings, ATTACH, COPY, EXPORT or extensions)")


def _extract(zf: zipfile.ZipFile, member: str, root: Path, budget: int, bundle: Path) -> int:
    """Copy one member out counting real bytes (a zip may lie about sizes); returns the bytes."""
    target = root / member
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with zf.open(member) as src, open(target, "wb") as dst:
            while chunk := src.read(1 << 20):
                written += len(chunk)
                if written > budget:
                    raise BundleError(f"bundle {bundle} unpacks past the size limit (max_bundle_bytes) at {member}")
                dst.write(chunk)
    except BundleError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as e:  # damaged, encrypted
        raise BundleError(f"bundle {bundle}: member {member} can't be unpacked ({type(e).__name__}: "
                          f"{_first_line(e)}); the zip is damaged or truncated; refused") from None
    return written


def _check_checkpoint(file: Path, run_id: str, bundle: Path) -> None:
    from .checkpoint import FORMAT

    try:
        blob = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt or hostile: one clear error
        raise BundleError(f"bundle {bundle}: checkpoints/{run_id}.pt can't be loaded safely "
                          f"({type(e).__name__}: {_first_line(e)}); refused") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or "state_dict" not in blob:
        raise BundleError(f"bundle {bundle}: checkpoints/{run_id}.pt is not a lossland checkpoint of format {FORMAT}")


def _parquet_columns(con: duckdb.DuckDBPyConnection, file: Path) -> list[str]:
    return [r[0] for r in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [file.as_posix()]).fetchall()]


def _check_parquet(con: duckdb.DuckDBPyConnection, table: str, file: Path, run_ids: set[str], schema: int,
                   bundle: Path) -> None:
    try:
        columns = _parquet_columns(con, file)
    except duckdb.Error as e:
        raise BundleError(f"bundle {bundle}: tables/{table}.parquet is not readable Parquet "
                          f"({_first_line(e)})") from None
    expected = _names(TABLES[table])
    unknown = [c for c in columns if c not in expected]
    missing = [c for c in expected if c not in columns]
    if unknown or (missing and schema == SCHEMA_VERSION) or "run_id" not in columns:
        raise BundleError(f"bundle {bundle}: tables/{table}.parquet columns don't match table {table} "
                          f"(unknown: {unknown or 'none'}; missing: {missing or 'none'})")
    found = {r[0] for r in con.execute("SELECT DISTINCT run_id FROM read_parquet(?)", [file.as_posix()]).fetchall()}
    stray = sorted(map(str, found - run_ids))
    if stray:
        raise BundleError(f"bundle {bundle}: tables/{table}.parquet has rows of runs not in the manifest: "
                          f"{', '.join(stray[:5])}")
    if table == "runs" and found != run_ids:
        raise BundleError(f"bundle {bundle}: tables/runs.parquet lacks manifest run(s) "
                          f"{', '.join(sorted(run_ids - found)[:5])}")
