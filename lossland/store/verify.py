"""A bundle's rows, verified before anything of it is written (a bundle is untrusted input).

    runs          each config valid (ExperimentConfig.from_json) and hashing to its pair id (by today's rule,
                  or, for a run stored before schema 7, the one of its time: `legacy_hash`); run_id =
                  <pair_id>-<role>; one good and one bad run per pair; the columns that restate the config
                  equal to it; n_params that of the config's model, which is within the parameter cap
    every table   its columns of the store's types; its keys unique; required values present; numbers
                  finite (a loss may be +inf where training diverged or a far point overflowed, never NaN)
                  and in range (accuracies in [0, 1], counts and indices ≥ 0); timestamps between
                  2000-01-01 and tomorrow; text of bounded length
    counts        what the config can produce: curves ≤ train.max_epochs per run, Lanczos eigenvalues
                  ≤ spectrum.k, exact ones ≤ n_params (none above spectrum.exact_max_params), densities
                  ≤ slq_vectors × slq_steps, estimates ≤ MAX_ESTIMATE_NAMES names (+ k log-volumes); a bundle
                  carries of each run the spectrum its runs row sums up (runs.spectrum_id)
    labels        tags and notes of the bundle's runs and pairs only, well-formed keys, bounded text (labels.verify)
    analyses      each id recomputed from its kind, settings and pair (specs.Spec.analysis_id); its rows
                  of runs of that pair only, landscape points ≤ the spec's grid, basin trials ≤ its count

Row totals are checked from the Parquet files before a table is read into memory, so a small file of
millions of rows is refused cheaply. The checks run in a private in-memory database, not the store.
Landscape and basin rows that belong to no analysis (schema 2) are left out: nothing reads them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from .. import pairs
from ..config import RESULT_FORMAT_VERSION, ConfigError, ExperimentConfig, digest
from ..specs import from_stored
from .errors import BundleError, first_line
from .labels import verify_labels
from .rows import config_facts, now, train_id
from .schema import SCHEMA_VERSION, TABLES, column_names

if TYPE_CHECKING:
    from .bundles import Unpacked

MAX_RUNS = 10_000
MAX_ANALYSES_PER_RUN = 1_000
MAX_ESTIMATE_NAMES = 100
EARLIEST = datetime(2000, 1, 1)
TEXT_MAX = {"config_json": 100_000, "extra_json": 2_000_000, "settings_json": 100_000, "error": 100_000}
TEXT_DEFAULT_MAX = 1_000

KEYS = {"runs": ("run_id",), "curves": ("run_id", "epoch"), "spectra": ("run_id", "kind", "idx"),
        "densities": ("run_id", "vector", "idx"), "estimates": ("run_id", "name", "k"),
        "landscapes": ("analysis_id", "run_id", "point"),
        "basin_trials": ("analysis_id", "run_id", "kind", "radius", "trial"), "analyses": ("analysis_id",)}
REQUIRED = {"runs": ("run_id", "pair_id", "role", "status", "config_json", "created_at"), "curves": ("epoch", "lr"),
            "spectra": ("kind", "idx", "eigenvalue"), "densities": ("vector", "idx", "node", "weight"),
            "estimates": ("name",), "landscapes": ("kind", "point", "alpha"),
            "basin_trials": ("kind", "radius", "trial"),
            "analyses": ("analysis_id", "kind", "status", "settings_json", "created_at")}
_NON_NEGATIVE = {"seconds", "spectrum_seconds", "residual", "weight", "stderr", "distance", "radius", "lr", "eps",
                 "threshold"}
# (what is wrong, SQL true of a wrong row): t is the row, b its run's bounds, a its analysis' bounds.
RULES: dict[str, tuple[tuple[str, str], ...]] = {
    "runs": (("status is not converged, max_epochs, diverged or failed",
              "t.status NOT IN ('converged', 'max_epochs', 'diverged', 'failed')"),
             ("epochs over train.max_epochs", "t.epochs > b.max_epochs"),
             ("n_params is not the parameter count of its config's model", "t.n_params <> b.n_params")),
    "curves": (("epoch outside [1, train.max_epochs]", "t.epoch < 1 OR t.epoch > b.max_epochs"),),
    "spectra": (("kind is not lanczos or exact", "t.kind NOT IN ('lanczos', 'exact')"),
                ("spectrum_id is not the one its run sums up", "t.spectrum_id <> b.spectrum_id"),
                ("idx outside [1, spectrum.k] (lanczos) or [1, n_params] (exact, none past exact_max_params)",
                 "t.idx < 1 OR t.idx > CASE t.kind WHEN 'lanczos' THEN b.k ELSE b.n_exact END")),
    "densities": (("vector or idx outside [0, spectrum.slq_vectors) × [0, spectrum.slq_steps)",
                   "t.vector >= b.slq_vectors OR t.idx >= b.slq_steps"),
                  ("spectrum_id is not the one its run sums up", "t.spectrum_id <> b.spectrum_id")),
    "estimates": (("k outside [1, spectrum.k]", "t.k < 1 OR t.k > b.k"), ("eps is not positive", "t.eps <= 0"),
                  ("spectrum_id is not the one its run sums up", "t.spectrum_id <> b.spectrum_id")),
    "landscapes": (("belongs to no analysis of its pair in the bundle, or to one of another kind",
                    "a.kind IS NULL OR t.kind <> a.kind OR a.pair_id <> b.pair_id"),
                   ("point outside the analysis' grid", "t.point >= a.grid_points"),
                   ("other_run_id is not a run of its pair",
                    "t.other_run_id NOT IN (b.pair_id || '-good', b.pair_id || '-bad')")),
    "basin_trials": (("belongs to no analysis of its pair in the bundle, or to one of another kind",
                      "a.kind IS NULL OR t.kind <> a.kind OR a.pair_id <> b.pair_id"),
                     ("trial outside the analysis' count", "t.trial >= a.trials")),
    "analyses": (("status is not running or done", "t.status NOT IN ('running', 'done')"),),
}
# (group, what may not exceed its bound, SQL of the bound over the group's rows)
GROUPS = {"estimates": ("run_id", f"more than {MAX_ESTIMATE_NAMES} estimate names", "count(DISTINCT t.name)",
                        str(MAX_ESTIMATE_NAMES)),
          "analyses": ("run_id", f"more than {MAX_ANALYSES_PER_RUN} analyses", "count(*)", str(MAX_ANALYSES_PER_RUN)),
          "landscapes": ("analysis_id", "more points than the analysis' grid has", "count(*)",
                         "any_value(a.grid_points)"),
          "basin_trials": ("analysis_id", "more trials than the analysis has", "count(*)", "any_value(a.trials)")}
_BY_ANALYSIS = ("landscapes", "basin_trials")


@dataclass(frozen=True)
class Verified:
    """What verification learnt: each run's config and parameter count, and the rows left out by table."""

    configs: dict[str, ExperimentConfig]
    n_params: dict[str, int]
    kept: dict[str, str] = field(default_factory=dict)  # table -> WHERE clause of its rows that are imported
    left_out: dict[str, int] = field(default_factory=dict)


def verify(bundle: Unpacked, caps: Any = None) -> Verified:
    """Every check above, or BundleError naming the table, the run and what is wrong. caps (a
    lossland.limits.Limits, optional) also bounds max_epochs, grids and trials by the operator's caps."""
    with _database() as con:
        check = _Check(con, bundle, caps)
        if len(bundle.run_ids) > MAX_RUNS:
            check.fail(None, f"{len(bundle.run_ids):,} runs, more than the {MAX_RUNS:,} a bundle may hold")
        for table, file in bundle.tables.items():
            check.columns(table, file)
        configs = check.runs()
        sizes = check.sizes(configs)
        check.bounds(configs, sizes)
        check.values("runs")
        for table in ("curves", "spectra", "densities", "estimates"):
            check.table(table, sum(_run_bound(table, configs[r], sizes[r]) for r in configs))
        check.analyses(configs)
        left_out = {table: check.table(table, check.analysis_rows(table)) for table in _BY_ANALYSIS}
        check.minima(configs)
        verify_labels(con, bundle.path, bundle.run_ids, bundle.labels)
        return Verified(configs, sizes, check.kept, {t: n for t, n in left_out.items() if n})


@contextmanager
def _database() -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect(":memory:", config={"threads": 1, "memory_limit": "2GB"})
    try:
        yield con
    finally:
        con.close()


def legacy_hash(config_json: str) -> str | None:
    """The pair id a run got before schema 7 (every section but `record` hashed, spectrum and device too): stored
    runs keep it."""
    try:
        config = json.loads(config_json)
        return digest({"v": RESULT_FORMAT_VERSION, "config": {k: v for k, v in config.items() if k != "record"}})
    except (ValueError, TypeError, AttributeError, RecursionError):
        return None


def _run_bound(table: str, cfg: ExperimentConfig, n_params: int) -> int:
    """The most rows of `table` one run of cfg can have."""
    s = cfg.spectrum
    return {"curves": cfg.train.max_epochs, "spectra": s.k + _exact(cfg, n_params),
            "densities": s.slq_vectors * s.slq_steps, "estimates": MAX_ESTIMATE_NAMES + s.k}[table]


def _exact(cfg: ExperimentConfig, n_params: int) -> int:
    return n_params if n_params <= cfg.spectrum.exact_max_params else 0


class _Check:
    """The checks of one bundle over one in-memory database; each raises BundleError."""

    def __init__(self, con: duckdb.DuckDBPyConnection, bundle: Unpacked, caps: Any):
        self.con, self.bundle, self.caps = con, bundle, caps
        self.present: dict[str, list[str]] = {}  # table -> the columns its file has
        self.kept: dict[str, str] = {}
        self.analysis_bounds: dict[str, dict] = {}
        self.latest = now() + timedelta(days=1)

    def fail(self, table: str | None, what: str) -> None:
        where = f"tables/{table}.parquet: " if table else ""
        raise BundleError(f"importing bundle {self.bundle.path}: {where}{what}; refused")

    def columns(self, table: str, file) -> None:
        """The file's columns are the table's, each of the store's type; all of them in a bundle of this schema."""
        try:
            found = dict(self.con.execute("SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM "
                                          "read_parquet(?))", [file.as_posix()]).fetchall())
        except duckdb.Error as e:
            raise BundleError(f"bundle {self.bundle.path}: tables/{table}.parquet is not readable Parquet "
                              f"({first_line(e)})") from None
        expected = dict(TABLES[table])
        unknown = [c for c in found if c not in expected]
        missing = [c for c in expected if c not in found]
        if unknown or (missing and self.bundle.schema_version == SCHEMA_VERSION) or "run_id" not in found:
            raise BundleError(f"bundle {self.bundle.path}: tables/{table}.parquet columns don't match table {table} "
                              f"(unknown: {unknown or 'none'}; missing: {missing or 'none'})")
        for column, kind in found.items():
            if kind != expected[column]:
                self.fail(table, f"column {column} is {kind}, table {table} stores {expected[column]}")
        self.present[table] = list(found)
        stray = self.con.execute(f"SELECT DISTINCT run_id FROM read_parquet(?) WHERE run_id IS NULL OR run_id NOT IN "
                                 f"({', '.join('?' * len(self.bundle.run_ids))}) LIMIT 5",
                                 [file.as_posix(), *self.bundle.run_ids]).fetchall()
        if stray:
            raise BundleError(f"bundle {self.bundle.path}: tables/{table}.parquet has rows of runs not in the "
                              f"manifest: {', '.join(str(r[0]) for r in stray)}")

    def load(self, table: str, bound: int) -> int:
        """Read the table's kept rows into memory once their total is within bound; returns the rows left out."""
        file = self.bundle.tables.get(table)
        if file is None:
            select = ", ".join(f"CAST(NULL AS {t}) AS {c}" for c, t in TABLES[table])
            self.con.execute(f"CREATE TABLE {table} AS SELECT {select} LIMIT 0")
            return 0
        if table in _BY_ANALYSIS:
            self.kept[table] = "analysis_id IS NOT NULL" if "analysis_id" in self.present[table] else "FALSE"
        kept = self.kept.get(table, "TRUE")
        total, n = self.con.execute(f"SELECT count(*), count(*) FILTER (WHERE {kept}) FROM read_parquet(?)",
                                    [file.as_posix()]).fetchone()
        if n > bound:
            self.fail(table, f"{n:,} rows, more than the {bound:,} its runs' configs and analyses can produce")
        select = ", ".join(c if c in self.present[table] else f"CAST(NULL AS {t}) AS {c}" for c, t in TABLES[table])
        self.con.execute(f"CREATE TABLE {table} AS SELECT {select} FROM read_parquet(?) WHERE {kept}",
                         [file.as_posix()])
        return total - n

    def table(self, table: str, bound: int) -> int:
        left_out = self.load(table, bound)
        self.keys(table)
        self.values(table)
        return left_out

    def keys(self, table: str) -> None:
        keys = ", ".join(KEYS[table])
        dup = self.con.execute(f"SELECT {keys} FROM {table} GROUP BY ALL HAVING count(*) > 1 LIMIT 1").fetchone()
        if dup:
            self.fail(table, f"two rows with the same ({keys}) = {dup}")

    def values(self, table: str) -> None:
        """Required values present, every value in range, group counts within bounds."""
        joins = " JOIN bounds b USING (run_id)"
        joins += " LEFT JOIN abounds a USING (analysis_id)" if table in _BY_ANALYSIS else ""
        for what, bad in (*_column_rules(table, self.latest), *RULES.get(table, ())):
            row = self.con.execute(f"SELECT t.run_id FROM {table} t{joins} WHERE coalesce(({bad}), false) "
                                   f"LIMIT 1").fetchone()
            if row:
                self.fail(table, f"{what} (a row of run {row[0]})")
        if table in GROUPS:
            group, what, count, bound = GROUPS[table]
            row = self.con.execute(f"SELECT {group} FROM {table} t{joins} GROUP BY {group} HAVING {count} > {bound} "
                                   f"LIMIT 1").fetchone()
            if row:
                self.fail(table, f"{what} ({group} {row[0]})")

    def runs(self) -> dict[str, ExperimentConfig]:
        """Load runs; each config valid, hashing to its pair id, restated by its columns; whole pairs."""
        ids = self.bundle.run_ids
        self.load("runs", len(ids))
        self.keys("runs")
        long = self.con.execute(f"SELECT run_id FROM runs WHERE length(config_json) > {TEXT_MAX['config_json']} "
                                f"LIMIT 1").fetchone()
        if long:
            self.fail("runs", f"run {long[0]}: config_json is longer than {TEXT_MAX['config_json']:,} characters")
        names = column_names(TABLES["runs"])
        found = [dict(zip(names, r, strict=True)) for r in self.con.execute(
            f"SELECT {', '.join(names)} FROM runs").fetchall()]
        if {r["run_id"] for r in found} != set(ids):
            self.fail("runs", f"lacks manifest run(s) {', '.join(sorted(set(ids) - {r['run_id'] for r in found})[:5])}")
        configs = {r["run_id"]: self._config(r) for r in found}
        roles: dict[str, set[str]] = {}
        for r in found:
            roles.setdefault(r["pair_id"], set()).add(r["role"])
        lone = sorted(p for p, found_roles in roles.items() if found_roles != set(pairs.ROLES))
        if lone:
            self.fail("runs", f"pair {lone[0]} lacks its {'good' if 'bad' in roles[lone[0]] else 'bad'} run "
                              f"(a bundle holds whole pairs: one good and one bad run each)")
        return configs

    def _config(self, row: dict[str, Any]) -> ExperimentConfig:
        rid = row["run_id"]
        try:
            cfg = ExperimentConfig.from_json(row["config_json"])
        except ConfigError as e:
            self.fail("runs", f"run {rid} has an invalid config ({e})")
        if row["pair_id"] not in (cfg.config_hash(), legacy_hash(row["config_json"])):
            self.fail("runs", f"run {rid} claims pair {row['pair_id']}, but its config hashes to {cfg.config_hash()}")
        if row["role"] not in pairs.ROLES or rid != pairs.run_id(row["pair_id"], row["role"]):
            self.fail("runs", f"run id {rid} is not <pair_id>-<role> of its pair {row['pair_id']} and role "
                              f"{row['role']!r}")
        for column, value in (config_facts(cfg) | {"pair_id": row["pair_id"]}).items():
            if row[column] != value and not (row[column] is None and column not in self.present["runs"]):
                self.fail("runs", f"run {rid}: {column} = {row[column]!r}, its config says {value!r}")
        if self.caps is not None and cfg.train.max_epochs > self.caps.max_epochs:
            self.fail("runs", f"run {rid}: train.max_epochs = {cfg.train.max_epochs:,} is over this store's cap of "
                              f"{self.caps.max_epochs:,} (LOSSLAND_MAX_EPOCHS)")
        return cfg

    def minima(self, configs: dict[str, ExperimentConfig]) -> None:
        """Each run's train_id, where the bundle has one, is the id of its minimum (a later run may reuse it)."""
        for rid, role, claimed in self.con.execute("SELECT run_id, role, train_id FROM runs").fetchall():
            if claimed is not None and claimed != train_id(configs[rid], role):
                self.fail("runs", f"run {rid}: train_id = {claimed!r} is not the id of its minimum")

    def sizes(self, configs: dict[str, ExperimentConfig]) -> dict[str, int]:
        """Each run's parameter count, its model built on the meta device (torch is imported only here)."""
        from ..checkpoint import CheckpointError, model_size

        cap = self.caps.max_params if self.caps is not None else None
        by_pair: dict[str, int] = {}
        out = {}
        stated = dict(self.con.execute("SELECT run_id, n_params FROM runs").fetchall())  # a factory model's count
        for rid, cfg in configs.items():
            pair_id = cfg.config_hash()  # the model's size: the same for a legacy pair id
            if pair_id not in by_pair:
                try:
                    by_pair[pair_id] = model_size(cfg, cap, stated.get(rid))
                except (CheckpointError, ConfigError) as e:
                    self.fail("runs", f"run {rid}: {e}")
            out[rid] = by_pair[pair_id]
        return out

    def bounds(self, configs: dict[str, ExperimentConfig], sizes: dict[str, int]) -> None:
        diverged = {r[0] for r in self.con.execute("SELECT run_id FROM runs WHERE status = 'diverged'").fetchall()}
        ids = {r[0]: r[1:] for r in self.con.execute("SELECT run_id, pair_id, spectrum_id FROM runs").fetchall()}
        rows = [{"run_id": rid, "pair_id": ids[rid][0], "spectrum_id": ids[rid][1],
                 "max_epochs": cfg.train.max_epochs, "k": cfg.spectrum.k,
                 "n_exact": _exact(cfg, sizes[rid]), "slq_vectors": cfg.spectrum.slq_vectors,
                 "slq_steps": cfg.spectrum.slq_steps, "n_params": sizes[rid], "diverged": rid in diverged}
                for rid, cfg in configs.items()]
        self.con.register("bounds", pa.Table.from_pylist(rows))

    def analyses(self, configs: dict[str, ExperimentConfig]) -> None:
        """Load analyses; each id the hash of its kind, settings and pair; the rows each may have."""
        self.load("analyses", len(configs) * MAX_ANALYSES_PER_RUN)
        self.keys("analyses")
        self.values("analyses")  # text lengths and counts before any settings are parsed
        rows = []
        found = self.con.execute("SELECT run_id, analysis_id, kind, settings_json FROM analyses").fetchall()
        for run_id, analysis_id, kind, settings_json in found:
            try:
                spec = from_stored(kind, settings_json)
            except ConfigError as e:
                self.fail("analyses", f"analysis {analysis_id} of run {run_id} has invalid settings ({e})")
            pair_id = pairs.pair_of(run_id)
            if spec.analysis_id(pair_id) != analysis_id:
                self.fail("analyses", f"analysis {analysis_id} of run {run_id} is not the id of its kind, settings "
                                      f"and pair ({spec.analysis_id(pair_id)})")
            self._within_caps(spec, analysis_id)
            rows.append({"analysis_id": analysis_id, "kind": kind, "pair_id": pair_id,
                         "grid_points": spec.grid_points(), "trials": spec.trials()})
        schema = pa.schema([("analysis_id", pa.string()), ("kind", pa.string()), ("pair_id", pa.string()),
                            ("grid_points", pa.int64()), ("trials", pa.int64())])
        self.con.register("abounds", pa.Table.from_pylist(rows, schema=schema))
        self.analysis_bounds = {r["analysis_id"]: r for r in rows}

    def _within_caps(self, spec, analysis_id: str) -> None:
        if self.caps is None:
            return
        for what, n, cap, name in (("grid points", spec.grid_points(), self.caps.max_grid_points, "MAX_GRID_POINTS"),
                                   ("trials", spec.trials(), self.caps.max_trials, "MAX_TRIALS")):
            if n > cap:
                self.fail("analyses", f"analysis {analysis_id} has {n:,} {what}, over this store's cap of {cap:,} "
                                      f"(LOSSLAND_{name})")

    def analysis_rows(self, table: str) -> int:
        """The most rows of `table` the bundle's analyses can have (their grid points, or their trials)."""
        return sum(a["grid_points" if table == "landscapes" else "trials"] for a in self.analysis_bounds.values())


def _column_rules(table: str, latest: datetime) -> Iterator[tuple[str, str]]:
    """The rules every column of a type obeys (see the module's docstring)."""
    growing = table in ("runs", "curves")  # where a loss is +inf only if training diverged
    for c in REQUIRED.get(table, ()):
        yield f"{c} is missing", f"t.{c} IS NULL"
    for c, kind in TABLES[table]:
        col = f"t.{c}"
        if kind == "DOUBLE" and c.endswith("_loss"):
            inf = f" OR (isinf({col}) AND NOT b.diverged)" if growing else ""
            yield f"{c} is NaN or negative" + (" (or infinite in a run that did not diverge)" if growing else ""), \
                f"isnan({col}) OR {col} < 0{inf}"
        elif kind == "DOUBLE" and c.endswith("_acc"):
            yield f"{c} outside [0, 1]", f"NOT ({col} BETWEEN 0 AND 1)"
        elif kind == "DOUBLE":
            yield (f"{c} is not a finite number ≥ 0", f"NOT isfinite({col}) OR {col} < 0") if c in _NON_NEGATIVE \
                else (f"{c} is not a finite number", f"NOT isfinite({col})")
        elif kind in ("BIGINT", "INTEGER"):
            yield f"{c} is negative", f"{col} < 0"
        elif kind == "VARCHAR":
            most = TEXT_MAX.get(c, TEXT_DEFAULT_MAX)
            yield f"{c} is longer than {most:,} characters", f"length({col}) > {most}"
        elif kind == "TIMESTAMP":
            yield (f"{c} outside {EARLIEST:%Y-%m-%d} .. {latest:%Y-%m-%d %H:%M}",
                   f"{col} < TIMESTAMP '{EARLIEST:%Y-%m-%d}' OR {col} > TIMESTAMP '{latest:%Y-%m-%d %H:%M:%S}'")
