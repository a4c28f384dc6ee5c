"""Every run in one DuckDB file: the `Store` facade over the modules of this package.

    schema      tables, columns and types; migrations from older files (SCHEMA_VERSION)
    rows        results -> Arrow rows typed like the store; the query reader; inserts
    errors      StoreError and its kinds; the advice a message ends with
    connection  short-lived connections with a bounded retry on lock conflicts; one-transaction writes
    sandbox     the SQL console's sandbox: one read-only SELECT on an in-memory copy, within hard limits
    console     ... run in a child process, so it never holds a lock the app needs, killed when it overruns
    bundles     export and import of run bundles (untrusted input: verified before anything is written)
    verify      the checks of a bundle's rows: ids re-derived from configs, types, ranges, keys, counts
    health      checkpoint files against rows: check() and repair()
    manage      soft delete, restore, gc; tags and notes (labels); --where as parameterised SQL (search); leases

A Store is cheap to create: nothing is opened until the first call, which creates or migrates the
file. Connections are short-lived (open, work, close), so a dashboard and a CLI sweep can share one
file; every write is one transaction or nothing. runs.checkpoint is relative to the store's folder
when the file lies under it (a store folder moves whole), absolute otherwise. Failed runs are runs rows
with status 'failed' and `error`. All of lossland's SQL lives in this package."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pandas as pd
import pyarrow as pa

from .. import pairs
from . import bundles, connection, health, rows, schema
from .bundles import BUNDLE_FORMAT, DEFAULT_MAX_BUNDLE_BYTES, ImportReport
from .console import run_query
from .errors import BundleError, QueryError, StoreError, StoreLockedError, UnknownPairError
from .health import CheckReport, RepairReport
from .leases import Leases
from .manage import Management
from .rows import git_commit, query_frame
from .sandbox import EXAMPLE_QUERIES, QueryResult
from .schema import CHILD_TABLES, LABEL_TABLES, LOCAL_TABLES, ORDER, SCHEMA_VERSION, TABLES, column_names
from .search import LIVE, Condition
from .verify import verify

if TYPE_CHECKING:
    from ..config import ExperimentConfig
    from ..curvature import SpectrumResult
    from ..train import PairResult

__all__ = ["BUNDLE_FORMAT", "EXAMPLE_QUERIES", "SCHEMA_VERSION", "TABLES", "BundleError", "CheckReport",
           "Condition", "ImportReport", "PairView", "QueryError", "QueryResult", "RepairReport", "Store", "StoreError",
           "StoreLockedError", "UnknownPairError", "default_store_path", "git_commit", "import_allowed"]

_insert = rows.insert_rows  # every write's rows go through this name (tests fail it midway)


def default_store_path() -> Path:
    return Path(os.environ.get("LOSSLAND_STORE", "data/runs.duckdb"))


def import_allowed() -> bool:
    """LOSSLAND_ALLOW_IMPORT, set by a served dashboard's operator: unset or 1/true/yes/on allows imports,
    0/false/no/off refuses them; any other value refuses them too (an operator's typo fails closed)."""
    raw = os.environ.get("LOSSLAND_ALLOW_IMPORT", "").strip().lower()
    return raw in ("", "1", "true", "yes", "on")


@dataclass(frozen=True, eq=False)
class PairView:
    """Everything stored for one pair; each frame has run_id and role, good rows first."""

    pair_id: str
    runs: pd.DataFrame
    curves: pd.DataFrame
    spectra: pd.DataFrame
    densities: pd.DataFrame
    estimates: pd.DataFrame

    def run(self, role: str) -> pd.Series:
        found = self.runs[self.runs["role"] == role]
        if found.empty:
            raise StoreError(f"pair {self.pair_id} has no {role!r} run")
        return found.iloc[0]


class Store(Management, Leases):
    """One DuckDB file of runs. Cheap to create: nothing is opened until the first call."""

    def __init__(self, path: str | Path | None = None, lock_timeout: float = 10.0,
                 checkpoint_dir: str | Path | None = None, max_bundle_bytes: int = DEFAULT_MAX_BUNDLE_BYTES,
                 allow_import: bool | None = None, caps: Any = None, read_only: bool = False):
        """allow_import: False refuses every import; None (the default) asks LOSSLAND_ALLOW_IMPORT at each
        import (see import_allowed). caps (a lossland.limits.Limits) bounds what an import may hold by the
        operator's caps (parameters, epochs, grid points, trials); without it only the parameter cap
        applies (LOSSLAND_MAX_PARAMS) and the rest is bounded by each run's config and analysis spec.
        read_only: never create, migrate or write the file (a served read-only dashboard)."""
        self.path = Path(path) if path is not None else default_store_path()
        self.lock_timeout = float(lock_timeout)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else self.path.parent / "checkpoints"
        self.max_bundle_bytes = int(max_bundle_bytes)
        self.allow_import, self.caps, self.read_only = allow_import, caps, bool(read_only)
        self._ready = False

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # --- connections ------------------------------------------------------------------
    def _ensure_schema(self) -> None:
        if not self._ready:
            schema.ensure(self.path, self.lock_timeout, may_migrate=not self.read_only)
            self._ready = True

    @contextmanager
    def _connect(self, read_only: bool = False, config: dict | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        self._ensure_schema()
        with connection.connected(self.path, self.lock_timeout, read_only, config) as con:
            yield con

    def _write(self, work: connection.Work, what: str) -> Any:
        if self.read_only:
            raise StoreError(f"{what} refused: store {self.path} is open read-only")
        self._ensure_schema()
        return connection.write(self.path, self.lock_timeout, work, what)

    def _frame(self, sql: str, params: list | None = None) -> pd.DataFrame:
        with self._connect(read_only=True) as con:
            return query_frame(con, sql, params)

    # --- writes -------------------------------------------------------------------------
    def save_pair(self, pair: PairResult, spectra: dict[str, SpectrumResult] | None = None,
                  checkpoints: dict[str, str | Path] | None = None, extra: dict | None = None) -> list[str]:
        """Write both runs of a pair and all their rows in one transaction, replacing any earlier
        rows of the same run ids. spectra/checkpoints are keyed by role; extra is JSON-able facts
        recorded with both runs (extra_json). Returns the run ids."""
        return self._save([(pair, spectra or {}, checkpoints or {})], extra, f"saving pair {pair.pair_id}")

    def save_pairs(self, results: Iterable[tuple[PairResult, dict[str, SpectrumResult] | None]],
                   extra: dict | None = None) -> list[str]:
        """Write many (pair, spectra by role) in one transaction, each as save_pair would; returns the run ids."""
        items = [(pair, spectra or {}, {}) for pair, spectra in results]
        return self._save(items, extra, f"saving {len(items)} pairs")

    def _save(self, items: list[tuple[PairResult, dict, dict]], extra: dict | None, what: str) -> list[str]:
        extra_json = json.dumps(extra, sort_keys=True, default=str) if extra else None
        tables: dict[str, list[pa.Table]] = {name: [] for name in TABLES}
        run_ids: list[str] = []
        for pair, spectra, checkpoints in items:
            unknown = (set(spectra) | set(checkpoints)) - set(pairs.ROLES)
            if unknown:
                raise StoreError(f"spectra and checkpoints are keyed by role (good, bad); got {sorted(unknown)}")
            stored = {role: self._relative(Path(p)) for role, p in checkpoints.items()}
            for name, parts in rows.pair_tables(pair, spectra, stored, extra_json, rows.now()).items():
                tables[name] += parts
            run_ids += pairs.run_ids(pair.pair_id)
        return self.save_runs(run_ids, tables, what)

    def save_failed(self, cfg: ExperimentConfig, error: str) -> list[str]:
        """Record both runs of cfg's pair as 'failed' with the error (replacing earlier rows)."""
        return self.save_runs(pairs.run_ids(cfg.config_hash()), rows.failed_tables(cfg, error, rows.now()),
                              f"recording failed pair {cfg.config_hash()}")

    def save_runs(self, run_ids: list[str], tables: dict[str, list[pa.Table]], what: str) -> list[str]:
        """Rows shaped by lossland.store.rows replacing these runs' rows, in one transaction (an external run)."""
        self._write(lambda con: self._replace(con, run_ids, tables), what)
        return run_ids

    @staticmethod
    def _replace(con: duckdb.DuckDBPyConnection, run_ids: list[str], tables: dict[str, list[pa.Table]]) -> None:
        rows.delete_runs(con, run_ids)
        for name in TABLES:
            if tables.get(name):  # one contiguous table each: DuckDB scans many small chunks slowly
                _insert(con, name, pa.concat_tables(tables[name]).combine_chunks())

    def _relative(self, path: Path) -> str:
        """Checkpoint paths under the store's folder are kept relative to it, so a store folder moves whole."""
        full = path if path.is_absolute() else Path.cwd() / path
        try:
            return full.resolve().relative_to(self.path.parent.resolve()).as_posix()
        except ValueError:
            return str(full.resolve())

    def _resolve(self, recorded: str) -> Path:
        """A runs.checkpoint value as a path (relative ones lie under the store's folder)."""
        path = Path(recorded)
        return path if path.is_absolute() else self.path.parent / path

    # --- analyses: landscapes, basins, theory (each cached by the hash of its settings) ------------
    def analysis(self, analysis_id: str) -> pd.Series | None:
        """The analyses row of `analysis_id` (status 'running' or 'done'), or None."""
        found = self._frame(f"SELECT {', '.join(column_names(CHILD_TABLES['analyses']))} FROM analyses "
                            "WHERE analysis_id = ?", [analysis_id])
        return None if found.empty else found.iloc[0]

    def analyses(self, run_ids: Iterable[str] | None = None, kind: str | None = None) -> pd.DataFrame:
        clauses, params = [], []
        if run_ids is not None:
            ids = list(run_ids)
            clauses.append(f"run_id IN ({rows.marks(ids)})")
            params += ids
        if kind is not None:
            clauses.append("kind = ?")
            params.append(kind)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return self._frame(f"SELECT {', '.join(column_names(CHILD_TABLES['analyses']))} FROM analyses{where} "
                           "ORDER BY created_at DESC", params)

    def begin_analysis(self, run_id: str, analysis_id: str, kind: str, settings_json: str) -> None:
        """Mark an analysis as running (a no-op when it is already recorded), so its rows can land in parts."""
        def work(con):
            found = con.execute("SELECT count(*) FROM analyses WHERE analysis_id = ?", [analysis_id]).fetchall()[0][0]
            if not found:
                _insert(con, "analyses", rows.analysis_row(run_id, analysis_id, kind, "running", settings_json, None))
        self._write(work, f"starting analysis {analysis_id}")

    def append_landscape(self, analysis_id: str, points: pd.DataFrame) -> None:
        """Add grid points of a running analysis in one transaction (a stopped grid keeps them)."""
        self._write(lambda con: _insert(con, "landscapes", rows.frame_arrow("landscapes", points.assign(
            analysis_id=analysis_id))), f"storing {len(points)} landscape points of {analysis_id}")

    def append_trials(self, analysis_id: str, trials: pd.DataFrame) -> None:
        """Add basin trials of a running analysis in one transaction (a stopped search keeps them)."""
        self._write(lambda con: _insert(con, "basin_trials", rows.frame_arrow("basin_trials", trials.assign(
            analysis_id=analysis_id))), f"storing {len(trials)} trials of {analysis_id}")

    def save_analysis(self, run_id: str, analysis_id: str, kind: str, settings_json: str, seconds: float,
                      landscapes: pd.DataFrame | None = None, trials: pd.DataFrame | None = None,
                      estimates: pd.DataFrame | None = None) -> None:
        """Write a finished analysis in one transaction: its rows replace any earlier ones of the same id
        (landscape rows already appended by a resumable grid are kept unless new ones are given)."""
        def work(con):
            for table, frame in (("landscapes", landscapes), ("basin_trials", trials)):
                if frame is not None:
                    con.execute(f"DELETE FROM {table} WHERE analysis_id = ?", [analysis_id])
                    _insert(con, table, rows.frame_arrow(table, frame.assign(analysis_id=analysis_id)))
            if estimates is not None and len(estimates):
                for rid, name in estimates[["run_id", "name"]].drop_duplicates().itertuples(index=False):
                    con.execute("DELETE FROM estimates WHERE run_id = ? AND name = ?", [rid, name])
                _insert(con, "estimates", rows.frame_arrow("estimates", estimates))
            con.execute("DELETE FROM analyses WHERE analysis_id = ?", [analysis_id])
            _insert(con, "analyses", rows.analysis_row(run_id, analysis_id, kind, "done", settings_json, seconds))
        self._write(work, f"storing analysis {analysis_id}")

    def landscape(self, analysis_id: str) -> pd.DataFrame:
        return self._frame(f"SELECT {', '.join(column_names(CHILD_TABLES['landscapes']))} FROM landscapes "
                           "WHERE analysis_id = ? ORDER BY run_id, point, alpha, beta", [analysis_id])

    def basin_trials(self, analysis_id: str) -> pd.DataFrame:
        return self._frame(f"SELECT {', '.join(column_names(CHILD_TABLES['basin_trials']))} FROM basin_trials "
                           "WHERE analysis_id = ? ORDER BY run_id, radius, trial", [analysis_id])

    def estimates(self, run_ids: Iterable[str], names: Iterable[str] | None = None,
                  spectrum_id: str | None = None) -> pd.DataFrame:
        """Estimates of these runs: analyses' and, of the spectra, each run's config's (or `spectrum_id`'s)."""
        ids = list(run_ids)
        sql = (f"SELECT {', '.join(column_names(CHILD_TABLES['estimates']))} FROM estimates t "
               f"WHERE run_id IN ({rows.marks(ids)}) AND {rows.one_spectrum('estimates', spectrum_id)}")
        params = [*ids, *([spectrum_id] if spectrum_id is not None else [])]
        if names is not None:
            wanted = list(names)
            sql += f" AND name IN ({rows.marks(wanted)})"
            params += wanted
        return self._frame(sql + " ORDER BY run_id, name, k", params)

    # --- queries ------------------------------------------------------------------------
    def runs(self, where: Iterable[Condition] = (), deleted: bool | None = False, **filters: Any) -> pd.DataFrame:
        """Runs, newest first, where every filter column equals its value (a list/tuple/set means any of;
        None means NULL) and every condition holds (search.parse); deleted: False live runs, True soft-deleted
        ones, None both. Each row also says whether it was `imported` (see provenance), whether its checkpoint
        was found missing (`checkpoint_missing`, see repair), whether it is `deleted`, its tags and note."""
        sql, params = rows.runs_query(filters, where, deleted)
        return self._frame(sql, params)

    def provenance(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Where imported runs came from: run_id, bundle (its file name), bundle_sha256, imported_at; runs
        computed here have no row. All imported runs when run_ids is None."""
        ids = None if run_ids is None else list(run_ids)
        where = "" if ids is None else f" WHERE run_id IN ({rows.marks(ids)})"
        return self._frame(f"SELECT {', '.join(column_names(LOCAL_TABLES['provenance']))} FROM provenance{where} "
                           f"ORDER BY run_id", ids)

    def pair(self, pair_id: str, spectrum_id: str | None = None) -> PairView:
        """Both runs of a pair with their curves, spectra, densities and estimates: of the spectra, each run's
        config's, or those measured with the settings of `spectrum_id` (the runs' curvature columns then theirs)."""
        ids = pairs.run_ids(pair_id)
        sql, params = rows.runs_query({"run_id": ids})
        with self._connect(read_only=True) as con:
            runs = query_frame(con, sql, params).sort_values("role", ascending=False, ignore_index=True)  # good first
            if runs.empty:
                raise UnknownPairError(f"no pair {pair_id!r} in store {self.path} (or deleted: see `lossland restore`)")
            frames = rows.pair_frames(con, ids, spectrum_id)
        runs = runs if spectrum_id is None else rows.with_spectrum_facts(runs, frames["spectra"], frames["estimates"],
                                                                          spectrum_id)
        return PairView(pair_id=pair_id, runs=runs, **frames)

    def save_spectrum(self, run_id: str, s: SpectrumResult) -> None:
        """Store one more spectrum of a stored run under its settings' id (see rows.write_spectrum)."""
        self._write(lambda con: rows.write_spectrum(con, run_id, s, _insert), f"storing a spectrum of {run_id}")

    def spectrum_frames(self, run_id: str, spectrum_id: str) -> dict[str, pd.DataFrame]:
        with self._connect(read_only=True) as con:  # empty frames where the run has no such spectrum
            return rows.spectrum_frames(con, run_id, spectrum_id)

    def has_pair(self, pair_id: str) -> bool:
        """True when both runs are stored, live, and neither failed."""
        with self._connect(read_only=True) as con:
            (n,) = con.execute(f"SELECT count(*) FROM runs WHERE run_id IN (?, ?) AND status <> 'failed' AND {LIVE}",
                               pairs.run_ids(pair_id)).fetchone()
        return n == 2

    def latest_pair_id(self) -> str | None:
        """The pair written last (failed pairs left out), or None in an empty store."""
        with self._connect(read_only=True) as con:
            row = con.execute(f"SELECT pair_id FROM runs WHERE status <> 'failed' AND {LIVE} "
                              "ORDER BY created_at DESC, pair_id LIMIT 1").fetchone()
        return row[0] if row else None

    def count_runs(self) -> int:
        with self._connect(read_only=True) as con:
            return con.execute(f"SELECT count(*) FROM runs WHERE {LIVE}").fetchone()[0]

    def checkpoint_path(self, run_id: str) -> Path | None:
        """The checkpoint file recorded for run_id (it may since have been deleted), or None."""
        df = self._frame("SELECT checkpoint FROM runs WHERE run_id = ?", [run_id])
        if df.empty or pd.isna(df["checkpoint"].iloc[0]):
            return None
        return self._resolve(df["checkpoint"].iloc[0])

    def tables(self) -> dict[str, list[tuple[str, str]]]:
        """Table -> [(column, type)] as stored, for the SQL console."""
        with self._connect(read_only=True) as con:
            found = con.execute("SELECT table_name, column_name, data_type FROM duckdb_columns() "
                                "WHERE database_name = current_database() AND schema_name = 'main' "
                                "ORDER BY table_name, column_index").fetchall()
        out: dict[str, list[tuple[str, str]]] = {}
        for table, column, kind in found:
            out.setdefault(table, []).append((column, kind))
        return out

    def table(self, name: str) -> pd.DataFrame:
        """A whole table (runs, curves, spectra, densities, estimates, landscapes, basin_trials,
        analyses, provenance, missing_checkpoints, deleted_runs, tags, notes, meta)."""
        if name == "meta":
            return self._frame("SELECT key, value FROM meta ORDER BY key")
        known = TABLES | LOCAL_TABLES | LABEL_TABLES
        if name not in known:
            raise StoreError(f"unknown table {name!r}; allowed: {', '.join([*known, 'meta'])}")
        return self._frame(f"SELECT {', '.join(column_names(known[name]))} FROM {name} ORDER BY {ORDER[name]}")

    # --- the SQL console ----------------------------------------------------------------
    def query(self, sql: str, max_rows: int = 10_000, timeout: float = 10.0, memory_mb: int = 512,
              threads: int = 1) -> QueryResult:
        """One read-only SELECT (or EXPLAIN) in a child process, on an in-memory copy of the tables it
        names (the file held only for the copy), no file system or network access, settings locked; at
        most max_rows rows, stopped after timeout seconds, within memory_mb of working memory and
        `threads` threads. Each limit must lie in sandbox.RANGES (QueryError otherwise)."""
        self._ensure_schema()
        return run_query(self.path, sql, max_rows, timeout, memory_mb, threads, self.lock_timeout)

    # --- health ------------------------------------------------------------------------------
    def _files(self) -> health.Files:
        return health.Files(self.checkpoint_dir, self._resolve)

    def check(self) -> CheckReport:
        """Checkpoint files that no run records, runs whose recorded checkpoint is missing, leftovers of
        unfinished writes (.importing, .tmp); changes nothing."""
        with self._connect(read_only=True) as con:
            return health.survey(con, self._files())

    def repair(self, min_age_s: float = health.MIN_AGE_S) -> RepairReport:
        """Fix what check() finds that can be fixed (see lossland.store.health): strays older than
        min_age_s removed, verified leftover imports put in place, missing checkpoints recorded."""
        return self._write(lambda con: health.repair(con, self._files(), float(min_age_s)), "repairing the store")

    # --- sharing ------------------------------------------------------------------------
    def export(self, run_ids: Iterable[str], path: str | Path) -> Path:
        """One zip: manifest.json, tables/<table>.parquet with these runs' rows, and
        checkpoints/<run_id>.pt where the checkpoint file exists."""
        run_ids = list(dict.fromkeys(run_ids))
        if not run_ids:
            raise BundleError("nothing to export: give at least one run id")
        with tempfile.TemporaryDirectory(prefix="lossland-export-") as tmp:
            with self._connect(read_only=True) as con:
                recorded, counts = bundles.write_tables(con, run_ids, Path(tmp), self.path)
            checkpoints = {}
            for run_id in run_ids:
                candidates = [self._resolve(recorded[run_id])] if recorded[run_id] else []
                source = next((c for c in [*candidates, self.checkpoint_dir / f"{run_id}.pt"] if health.is_file(c)),
                              None)
                if source is not None:
                    checkpoints[run_id] = source
            return bundles.write_zip(Path(path), Path(tmp), run_ids, counts, checkpoints)

    def import_bundle(self, path: str | Path, source: str | None = None) -> ImportReport:
        """Merge a bundle from export() into this store: runs already here (and not failed) are
        skipped, the rest added with their rows, checkpoints and provenance (source, default the file's
        name; its sha256) in one transaction, after every check of lossland.store.verify and every
        checkpoint's (verify_checkpoint). A skipped run whose checkpoint is missing gets the bundle's
        when the bundle holds its runs row unchanged. Any problem raises BundleError and leaves the
        store and its checkpoint folder unchanged."""
        if not (import_allowed() if self.allow_import is None else self.allow_import):
            raise BundleError(f"importing is switched off for store {self.path} (LOSSLAND_ALLOW_IMPORT, set by "
                              f"its operator); nothing was read")
        path = Path(path)
        sha256 = bundles.digest(path, self.max_bundle_bytes)
        with bundles.unpacked(path, self.max_bundle_bytes) as bundle:
            checked = verify(bundle, self.caps)
            bundles.verify_checkpoints(bundle, checked, self.caps.max_params if self.caps is not None else None)
            target = bundles.Target(self.checkpoint_dir, self._relative, self._resolve, source or path.name, sha256)
            merge = bundles.Merge(bundle, checked, target)
            try:
                return self._write(merge.into, f"importing bundle {path}")
            except BaseException as e:
                merge.discard()
                if isinstance(e, StoreError) and not isinstance(e, (BundleError, StoreLockedError)):
                    raise BundleError(str(e)) from None
                raise
