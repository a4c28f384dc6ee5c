"""Results as rows: a pair's runs, curves, spectra, densities and estimates as Arrow tables typed like
the store, the one reader of query results, and the one way rows go into a table.

Rows travel as Arrow (no per-row Python on the way in or out); NaN becomes NULL on the way in.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import platform
import re
import subprocess
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from .. import __version__, pairs
from ..factory_spec import describe
from .errors import StoreError
from .schema import (
    ARROW_TYPES,
    CHILD_TABLES,
    LOCAL_TABLES,
    ORDER,
    PANDAS_TYPES,
    RUN_COLUMNS,
    SPECTRUM_TABLES,
    TABLES,
    Columns,
    column_names,
)
from .search import EXTRA_COLUMNS, LABEL_JOINS, LIVE, Condition, where_sql

if TYPE_CHECKING:
    from ..config import ExperimentConfig
    from ..curvature import SpectrumResult
    from ..train import PairResult, TrainResult


# --- versions -----------------------------------------------------------------------------

@functools.cache
def git_commit() -> str | None:
    """HEAD of the git checkout holding this package, or None (not a checkout, no git)."""
    here = Path(__file__).resolve().parents[1]
    try:
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "__init__.py"], cwd=here,
                                 capture_output=True, timeout=5)  # not an installed copy inside some other repo
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if tracked.returncode == 0 and out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", sha) else None


@functools.cache
def _torch_version() -> str | None:
    try:  # the installed distribution's version: importing torch would cost seconds
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    return {"lossland_version": __version__, "torch_version": _torch_version(),
            "python_version": platform.python_version(), "git_commit": git_commit()}


def now() -> datetime:
    """UTC now, without a time zone (TIMESTAMP columns hold UTC)."""
    return datetime.now(UTC).replace(tzinfo=None)


# --- Arrow tables typed like the store --------------------------------------------------------

def arrow(columns: Columns, rows: dict[str, Any]) -> pa.Table:
    """Columns of equal length (lists or arrays) -> an Arrow table typed like the store; NaN -> NULL."""
    return pa.table({c: pa.array(rows[c], type=ARROW_TYPES[t], from_pandas=True) for c, t in columns})


def columnar(columns: Columns, rows: list[dict[str, Any]]) -> pa.Table:
    """Row dicts -> an Arrow table typed like the store."""
    return arrow(columns, {c: [r[c] for r in rows] for c, _ in columns})


def frame_arrow(table: str, df: pd.DataFrame) -> pa.Table:
    """A DataFrame -> an Arrow table with exactly `table`'s columns (missing ones NULL)."""
    columns = CHILD_TABLES[table]
    n = len(df)
    rows = {c: (df[c].tolist() if c in df.columns else [None] * n) for c, _ in columns}
    if "created_at" in rows and "created_at" not in df.columns:
        rows["created_at"] = [now()] * n
    return arrow(columns, rows)


# --- the rows of a pair ---------------------------------------------------------------------

def config_facts(cfg: ExperimentConfig) -> dict[str, Any]:
    """The runs columns that restate cfg (filters and the console read them), and its pair id."""
    return dict(pair_id=cfg.config_hash(), dataset=describe(cfg.data), model=describe(cfg.model),
                widths="" if cfg.model.factory else ",".join(map(str, cfg.model.widths)), seed=cfg.model.seed,
                data_seed=cfg.data.seed,
                train_seed=cfg.train.seed, n_train=cfg.data.n_train, n_attack=cfg.attack.n_attack,
                attack_labels=cfg.attack.labels, optimizer=cfg.train.optimizer, lr=cfg.train.lr,
                batch_size=cfg.train.batch_size, loss_target=cfg.train.loss_target)


def run_rows(cfg: ExperimentConfig, created_at: datetime) -> dict[str, dict[str, Any]]:
    """The runs rows of both roles of cfg's pair, by role: the config's facts and the versions; the rest NULL."""
    facts = config_facts(cfg) | dict(config_json=cfg.to_json(), created_at=created_at, **versions())
    return {role: dict.fromkeys(column_names(RUN_COLUMNS)) | facts | {"run_id": pairs.run_id(facts["pair_id"], role),
                                                                       "role": role, "train_id": train_id(cfg, role),
                                                                       "spectrum_id": cfg.spectrum_id()}
            for role in pairs.ROLES}


def train_id(cfg: ExperimentConfig, role: str) -> str:
    """The id of a role's minimum: the good one's leaves the attack out (see ExperimentConfig.good_hash)."""
    return cfg.good_hash() if pairs.check_role(role) == "good" else cfg.training_hash()


def spectrum_run_facts(s: SpectrumResult) -> dict[str, Any]:
    """The headline curvature of a run: λ1, trace, ||H||_F², the log volume over the top k, cost."""
    top = tuple(s.top.eigenvalues)
    lv = tuple(s.log_volume_k)
    log_volume = lv[len(top) - 1] if top and len(lv) >= len(top) else (lv[-1] if lv else None)
    return {"top_eigenvalue": top[0] if top else None, "trace": s.trace.value, "frobenius_sq": s.frobenius_sq.value,
            "log_volume": log_volume, "spectrum_hvps": s.hvps, "spectrum_seconds": s.seconds}


def estimate_rows(run_id: str, s: SpectrumResult) -> list[dict[str, Any]]:
    settings = json.dumps(dataclasses.asdict(s.settings), sort_keys=True)
    base = dict.fromkeys(column_names(CHILD_TABLES["estimates"])) | {"run_id": run_id, "settings_json": settings,
                                                                       "spectrum_id": s.settings.spectrum_id()}
    rows = [base | {"name": name, "value": e.value, "stderr": e.stderr, "samples": e.samples, "hvps": e.hvps,
                    "method": e.method} for name, e in (("trace", s.trace), ("frobenius_sq", s.frobenius_sq))]
    for name in ("trace_exact", "frobenius_sq_exact"):
        value = getattr(s, name)
        if value is not None:
            rows.append(base | {"name": name, "value": value, "method": "exact"})
    if s.log_volume_exact is not None:
        rows.append(base | {"name": "log_volume_exact", "value": s.log_volume_exact, "method": "exact",
                            "eps": s.settings.eps})
    rows += [base | {"name": "log_volume_k", "k": k, "value": v, "method": "lanczos", "eps": s.settings.eps}
             for k, v in enumerate(s.log_volume_k, start=1)]
    return rows


def spectrum_tables(run_id: str, s: SpectrumResult) -> dict[str, pa.Table]:
    """spectra (idx from 1: Lanczos top-k with residuals, then the exact eigenvalues), the raw SLQ
    densities and the estimates of one run."""
    top_vals, top_res = np.asarray(s.top.eigenvalues, float), np.asarray(s.top.residuals, float)
    exact = np.asarray(s.exact_eigenvalues if s.exact_eigenvalues is not None else (), float)
    n_top, n_exact = len(top_vals), len(exact)
    sid = s.settings.spectrum_id()
    spectra = {"run_id": [run_id] * (n_top + n_exact), "spectrum_id": [sid] * (n_top + n_exact),
               "kind": ["lanczos"] * n_top + ["exact"] * n_exact,
               "idx": np.concatenate([np.arange(1, n_top + 1), np.arange(1, n_exact + 1)]).astype(np.int32),
               "eigenvalue": np.concatenate([top_vals, exact]),
               "residual": np.concatenate([top_res, np.full(n_exact, np.nan)])}
    nodes, weights = np.asarray(s.density.nodes, float), np.asarray(s.density.weights, float)
    n_vec, m = nodes.shape if nodes.ndim == 2 else (0, 0)
    densities = {"run_id": [run_id] * (n_vec * m), "spectrum_id": [sid] * (n_vec * m),
                 "vector": np.repeat(np.arange(n_vec), m).astype(np.int32),
                 "idx": np.tile(np.arange(m), n_vec).astype(np.int32), "node": nodes.ravel(), "weight": weights.ravel()}
    return {"spectra": arrow(CHILD_TABLES["spectra"], spectra),
            "densities": arrow(CHILD_TABLES["densities"], densities),
            "estimates": columnar(CHILD_TABLES["estimates"], estimate_rows(run_id, s))}


def with_spectrum_facts(runs: pd.DataFrame, spectra: pd.DataFrame, estimates: pd.DataFrame,
                        spectrum_id: str) -> pd.DataFrame:
    """runs with their curvature columns (as spectrum_run_facts writes them) from the stored spectrum
    `spectrum_id` instead of their config's; NULL for a run that has no such spectrum."""
    out = runs.copy()
    for i, rid in enumerate(out["run_id"]):
        top = spectra[(spectra["run_id"] == rid) & (spectra["kind"] == "lanczos")].sort_values("idx")
        est = estimates[(estimates["run_id"] == rid) & (estimates["spectrum_id"] == spectrum_id)]
        value = dict(zip(est["name"], est["value"], strict=True))
        lv = est[(est["name"] == "log_volume_k") & (est["k"] == len(top))]["value"]
        facts = {"top_eigenvalue": top["eigenvalue"].iloc[0] if len(top) else None, "trace": value.get("trace"),
                 "frobenius_sq": value.get("frobenius_sq"), "log_volume": lv.iloc[0] if len(lv) else None,
                 "spectrum_hvps": None, "spectrum_seconds": None, "spectrum_id": spectrum_id}
        for column, v in facts.items():
            out.loc[out.index[i], column] = v
    return out


def curve_table(run_id: str, result: TrainResult) -> pa.Table:
    c = result.curves
    cols = {name: list(getattr(c, name)) for name, _ in CHILD_TABLES["curves"][1:]}
    return arrow(CHILD_TABLES["curves"], {"run_id": [run_id] * len(c.epoch), **cols})


def pair_tables(pair: PairResult, spectra: dict[str, SpectrumResult], checkpoints: dict[str, str],
                extra_json: str | None, created_at: datetime) -> dict[str, list[pa.Table]]:
    """Every row of both runs of a pair, by table; spectra and the stored checkpoint paths by role."""
    tables: dict[str, list[pa.Table]] = {name: [] for name in TABLES}
    for role, row in run_rows(pair.config, created_at).items():
        result: TrainResult = getattr(pair, role)
        row.update({k: getattr(result, k) for k in ("status", "stop_reason", "n_params", "epochs", "seconds",
                                                    "device", *pairs.METRICS)},
                   extra_json=extra_json, checkpoint=checkpoints.get(role))
        if role in spectra:  # the spectrum the runs row sums up: the config's, as the pipeline measures it
            row.update(spectrum_run_facts(spectra[role]), spectrum_id=spectra[role].settings.spectrum_id())
            for name, t in spectrum_tables(row["run_id"], spectra[role]).items():
                tables[name].append(t)
        tables["runs"].append(columnar(RUN_COLUMNS, [row]))
        tables["curves"].append(curve_table(row["run_id"], result))
    return tables


def external_tables(facts: dict[str, Any], s: SpectrumResult, created_at: datetime) -> dict[str, list[pa.Table]]:
    """The rows of an external run (lossland.external): its runs row from `facts` (run_id, pair_id, role,
    config_json, metrics …) with its headline curvature and the versions, and its spectrum's rows."""
    row = dict.fromkeys(column_names(RUN_COLUMNS)) | versions() | facts | spectrum_run_facts(s) | {
        "created_at": created_at}
    tables: dict[str, list[pa.Table]] = {"runs": [columnar(RUN_COLUMNS, [row])]}
    for name, t in spectrum_tables(row["run_id"], s).items():
        tables[name] = [t]
    return tables


def failed_tables(cfg: ExperimentConfig, error: str, created_at: datetime) -> dict[str, list[pa.Table]]:
    """The runs rows of cfg's pair recorded as 'failed' with the error."""
    rows = [row | {"status": "failed", "error": str(error)} for row in run_rows(cfg, created_at).values()]
    return {"runs": [columnar(RUN_COLUMNS, rows)]}


# --- in and out ----------------------------------------------------------------------------

def query_frame(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pd.DataFrame:
    """A query's rows as a DataFrame via Arrow (several times faster than .df() on wide text),
    with nullable integer, boolean and string dtypes whether or not a NULL turned up, so a
    column's dtype never depends on which rows were selected."""
    return con.sql(sql, params=params or None).to_arrow_table().to_pandas(types_mapper=PANDAS_TYPES.get)


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table) -> None:
    """Append an Arrow table's rows to `table` (by column name)."""
    if rows.num_rows == 0:
        return
    cols = ", ".join(rows.column_names)
    con.register("_lossland_rows", rows)
    try:
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _lossland_rows")
    finally:
        con.unregister("_lossland_rows")


def marks(values: list) -> str:
    """Placeholders for `column IN (...)`; NULL for no values, so the test is never true."""
    return ", ".join("?" * len(values)) or "NULL"


def delete_runs(con: duckdb.DuckDBPyConnection, run_ids: list[str]) -> None:
    """Every row of these runs, in every table (this store's own facts of them too)."""
    marks = ", ".join("?" * len(run_ids))
    for table in (*CHILD_TABLES, *LOCAL_TABLES, "runs"):
        con.execute(f"DELETE FROM {table} WHERE run_id IN ({marks})", run_ids)


def runs_query(filters: dict[str, Any], conditions: Iterable[Condition] = (),
               deleted: bool | None = False) -> tuple[str, list]:
    """The SELECT of Store.runs: runs where every filter column equals its value (a list/tuple/set means
    any of; None means NULL) and every search condition holds, newest first, with the columns of
    EXTRA (imported, checkpoint_missing, deleted, tags, note). deleted: False the live runs, True the
    soft-deleted ones, None both."""
    allowed = column_names(RUN_COLUMNS)
    unknown = [k for k in filters if k not in allowed]
    if unknown:
        raise StoreError(f"unknown filter(s) {', '.join(unknown)} for runs; allowed: {', '.join(allowed)}")
    where, params = [], []
    for key, value in filters.items():
        if value is None:
            where.append(f"r.{key} IS NULL")
        elif isinstance(value, (list, tuple, set, frozenset)):
            values = list(value)
            where.append(f"r.{key} IN ({', '.join('?' * len(values))})" if values else "FALSE")
            params += values
        else:
            where.append(f"r.{key} = ?")
            params.append(value)
    terms, values = where_sql(conditions)
    where += terms + ([] if deleted is None else [f"d.run_id IS {'NOT ' if deleted else ''}NULL"])
    params += values
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    return (f"SELECT {', '.join(f'r.{c}' for c in allowed)}, {EXTRA_COLUMNS} FROM runs r "
            f"LEFT JOIN provenance p USING (run_id) LEFT JOIN missing_checkpoints m USING (run_id)"
            f"{LABEL_JOINS}{clause} ORDER BY r.created_at DESC, r.run_id", params)


def analysis_row(run_id: str, analysis_id: str, kind: str, status: str, settings_json: str,
                 seconds: float | None) -> pa.Table:
    """The analyses row of one analysis."""
    return frame_arrow("analyses", pd.DataFrame([{
        "run_id": run_id, "analysis_id": analysis_id, "kind": kind, "status": status,
        "settings_json": settings_json, "seconds": seconds, "created_at": now()}]))


def write_spectrum(con: duckdb.DuckDBPyConnection, run_id: str, s: SpectrumResult, insert=insert_rows) -> None:
    """One more spectrum of a stored run, replacing one of the same settings; the runs row's curvature columns
    follow when it is the spectrum they sum up (runs.spectrum_id)."""
    sid = s.settings.spectrum_id()
    if not con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchone()[0]:
        raise StoreError(f"no run {run_id!r} in the store: a spectrum is stored under its run")
    for table, part in spectrum_tables(run_id, s).items():
        con.execute(f"DELETE FROM {table} WHERE run_id = ? AND spectrum_id = ?", [run_id, sid])
        insert(con, table, part)
    facts = spectrum_run_facts(s)
    con.execute(f"UPDATE runs SET {', '.join(f'{c} = ?' for c in facts)} WHERE run_id = ? AND spectrum_id = ?",
                [*facts.values(), run_id, sid])


def spectrum_frames(con: duckdb.DuckDBPyConnection, run_id: str, spectrum_id: str) -> dict[str, pd.DataFrame]:
    """spectra, densities and estimates of one spectrum of a run."""
    return {t: query_frame(con, f"SELECT {', '.join(column_names(CHILD_TABLES[t]))} FROM {t} WHERE run_id = ? "
                                f"AND spectrum_id = ? ORDER BY {ORDER[t]}", [run_id, spectrum_id])
            for t in SPECTRUM_TABLES}


def one_spectrum(table: str, spectrum_id: str | None = None) -> str:
    """SQL true of the rows of `table` (alias t) that belong to one spectrum of their run: `spectrum_id`, or
    the run's config's (runs.spectrum_id) when None; rows of no spectrum (curves, analyses' estimates) too."""
    if table not in SPECTRUM_TABLES:
        return "TRUE"
    chosen = "?" if spectrum_id is not None else "(SELECT r.spectrum_id FROM runs r WHERE r.run_id = t.run_id)"
    return f"(t.spectrum_id IS NULL OR t.spectrum_id IS NOT DISTINCT FROM {chosen})"


def pair_frames(con: duckdb.DuckDBPyConnection, ids: list[str],
                spectrum_id: str | None = None) -> dict[str, pd.DataFrame]:
    """curves, spectra, densities and estimates of a pair's runs (ids good first), each with run_id and
    role, good rows first; of the spectra, each run's config's (or those of `spectrum_id`) only."""
    role = "CASE WHEN run_id = ? THEN 'good' ELSE 'bad' END AS role"
    frames = {}
    for name in ("curves", *SPECTRUM_TABLES):
        cols = column_names(CHILD_TABLES[name])
        extra = [spectrum_id] if spectrum_id is not None and name in SPECTRUM_TABLES else []
        frames[name] = query_frame(con, f"SELECT {cols[0]}, {role}, {', '.join(cols[1:])} FROM {name} t WHERE run_id "
                                        f"IN (?, ?) AND {LIVE} AND {one_spectrum(name, spectrum_id)} "
                                        f"ORDER BY role DESC, {ORDER[name].removeprefix('run_id, ')}",
                                   [ids[0], *ids, *extra])
    return frames
