"""The SQL console's sandbox: one read-only SELECT, run in a child process (`console`) on a private
in-memory copy of the tables it names, within hard limits.

Walls, each enough alone to keep the store unchanged: a statement check that lets only SELECT and
EXPLAIN through; the copy (the query never sees the store file: the child attaches it read-only,
copies the tables the query names into memory and detaches it, holding the file only for the copy,
with the store's bounded lock retry); then external access disabled and the configuration locked (no
files, no network, no ATTACH, no extensions, no settings). Limits: time (the child interrupts the query;
the parent kills the child a grace later), memory (DuckDB's memory_limit above the copied data, nothing
spilled to disk), threads, rows and result bytes; and a lower CPU priority than the app's.

This module is what the child process imports (alone with `errors` and `connection`: no pandas, no
torch), so it starts in a fraction of a second.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from .connection import retry_on_lock
from .errors import QueryError, StoreError, StoreLockedError, first_line

if TYPE_CHECKING:
    import pandas as pd

# Each limit's allowed range: a value outside is refused, so no limit can be switched off by an extreme value.
RANGES: dict[str, tuple[float, float]] = {"max_rows": (0, 1_000_000), "timeout": (0.05, 600),
                                          "memory_mb": (16, 16_384), "threads": (1, 8)}
MAX_RESULT_BYTES = 64 * 1024**2
MAX_COPY_MB = 8_192  # the tables a query names, copied into the child's memory

# Shown in the dashboard's SQL console to start from (name -> query).
EXAMPLE_QUERIES = {
    "mean test accuracy by role": "SELECT role, count(*) AS runs, avg(test_acc) AS test_acc, "
                                  "avg(top_eigenvalue) AS lambda1 FROM runs GROUP BY role",
    "sharpness vs attack size": "SELECT n_attack, role, avg(top_eigenvalue) AS lambda1, avg(trace) AS trace "
                                "FROM runs GROUP BY ALL ORDER BY n_attack, role",
    "top-5 eigenvalues of the latest pair": "SELECT r.role, s.idx, s.eigenvalue FROM spectra s JOIN runs r "
                                            "USING (run_id, spectrum_id) WHERE r.pair_id = (SELECT pair_id FROM runs "
                                            "ORDER BY created_at DESC LIMIT 1) AND s.kind = 'lanczos' "
                                            "AND s.idx <= 5 ORDER BY r.role, s.idx",
}


@dataclass(frozen=True, eq=False)
class QueryResult:
    frame: pd.DataFrame
    truncated: bool  # more rows than max_rows existed (or past MAX_RESULT_BYTES); frame holds the first ones
    seconds: float  # the whole call: the child's start, the copy and the query


def check_query(sql: str) -> None:
    """Refuse (QueryError) anything but one SELECT or EXPLAIN statement."""
    if not isinstance(sql, str) or not sql.strip():
        raise QueryError("empty query: write one SELECT statement")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(f"SQL syntax error: {first_line(e)}") from None
    if len(statements) != 1:
        raise QueryError(f"one statement at a time: found {len(statements)}; the SQL console runs a single "
                         f"read-only SELECT")
    kind = statements[0].type
    if kind not in (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN):
        raise QueryError(f"refused: {kind.name} statements can't run in the SQL console; it runs read-only "
                         f"SELECT queries (no writes, schema changes, settings, ATTACH, COPY, EXPORT or extensions)")


def check_limits(**limits: float) -> None:
    """Refuse (QueryError) a limit outside its range (RANGES), naming it and the range."""
    for name, value in limits.items():
        lo, hi = RANGES[name]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not lo <= value <= hi or (name != "timeout" and value != int(value)):
            raise QueryError(f"{name} = {value!r} is not allowed: {'a number' if name == 'timeout' else 'an integer'}"
                             f" in [{lo:g}, {hi:g}] (the SQL console's limits can't be switched off)")


# --- the child process -------------------------------------------------------------------------------

def serve() -> None:
    """The child's main: a request (JSON) on stdin; on stdout a JSON header line, then the rows as an
    Arrow IPC stream when the header says ok."""
    request = json.loads(sys.stdin.read())
    try:
        table, truncated = run(**request)
    except StoreError as e:
        kind = "locked" if isinstance(e, StoreLockedError) else "query" if isinstance(e, QueryError) else "store"
        sys.stdout.buffer.write(json.dumps({"ok": False, "kind": kind, "message": str(e)}).encode() + b"\n")
        return
    out = sys.stdout.buffer
    out.write(json.dumps({"ok": True, "truncated": truncated}).encode() + b"\n")
    with pa.ipc.new_stream(out, table.schema) as writer:
        writer.write_table(table)
    out.flush()


def run(path: str, sql: str, max_rows: int, timeout: float, memory_mb: int, threads: int,
        lock_timeout: float) -> tuple[pa.Table, bool]:
    """The query on an in-memory copy of the tables it names, then sandboxed: its first max_rows rows
    and whether there were more. No statement check here (the parent made it)."""
    con = duckdb.connect(":memory:", config={"threads": int(threads), "memory_limit": f"{MAX_COPY_MB}MB",
                                             "max_temp_directory_size": "0B"})
    try:
        con.execute("SET enable_progress_bar = false")  # it would draw on stdout, which carries the answer
        _copy(con, Path(path), sql, lock_timeout)
        used = con.execute("SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory()").fetchone()[0]
        con.execute(f"SET memory_limit = '{int(used // 2**20) + int(memory_mb)}MB'")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        return _fetch(con, sql, int(max_rows), float(timeout))
    finally:
        con.close()


def _named_tables(con: duckdb.DuckDBPyConnection, sql: str) -> set[str] | None:
    """The table names a SELECT mentions (parsed, not bound), or None when it can't tell (EXPLAIN, ...)."""
    try:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
    except (duckdb.Error, ValueError, TypeError):
        return None
    if tree.get("error"):
        return None
    names: set[str] = set()
    todo: list[Any] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            if node.get("type") == "BASE_TABLE" and isinstance(node.get("table_name"), str):
                names.add(node["table_name"])
            todo += node.values()
        elif isinstance(node, list):
            todo += node
    return names


def _copy(con: duckdb.DuckDBPyConnection, path: Path, sql: str, lock_timeout: float) -> None:
    """Attach the store read-only (waiting out a lock), copy the tables the query names, detach."""
    if not path.exists():
        raise StoreError(f"no store at {path}")
    escaped = str(path).replace("'", "''")
    retry_on_lock(lambda: con.execute(f"ATTACH '{escaped}' AS store (READ_ONLY)"), path, lock_timeout)
    try:
        stored = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = 'store' "
                                            "AND schema_name = 'main'").fetchall()]
        named = _named_tables(con, sql)
        for table in stored if named is None else [t for t in stored if t in named]:
            con.execute(f'CREATE TABLE memory.main."{table}" AS SELECT * FROM store.main."{table}"')
    except duckdb.OutOfMemoryException:
        raise QueryError(f"the tables this query reads don't fit the console's {MAX_COPY_MB:,} MB; "
                         f"query fewer tables") from None
    finally:
        con.execute("DETACH store")


def _fetch(con: duckdb.DuckDBPyConnection, sql: str, max_rows: int, timeout: float) -> tuple[pa.Table, bool]:
    """Run sql: its first max_rows rows (and at most MAX_RESULT_BYTES) and whether there were more;
    interrupted after timeout seconds. DuckDB's errors become QueryError."""
    timer = threading.Timer(timeout, con.interrupt)
    timer.daemon = True
    timer.start()
    try:
        relation = con.sql(sql)
        if relation is None:  # a statement that returns nothing (only without the statement check)
            return pa.table({}), False
        reader = relation.to_arrow_reader(2048)
        batches, rows, size = [], 0, 0
        for batch in reader:
            batches.append(batch)
            rows, size = rows + batch.num_rows, size + batch.nbytes
            if rows > max_rows or size > MAX_RESULT_BYTES:
                break
        table = pa.Table.from_batches(batches, schema=reader.schema)
    except duckdb.InterruptException:
        raise QueryError(f"query stopped: it ran past the time limit of {timeout:g} s; "
                         f"narrow it (WHERE, LIMIT) or raise the limit") from None
    except duckdb.PermissionException as e:
        raise QueryError(f"refused: the SQL console can't read or write files, attach databases or "
                         f"load extensions ({first_line(e)})") from None
    except duckdb.OutOfMemoryException as e:
        raise QueryError(f"query stopped: it needs more than the console's memory ({first_line(e)}); "
                         f"narrow it (WHERE, LIMIT, fewer columns)") from None
    except duckdb.Error as e:
        raise QueryError(f"query failed: {first_line(e)}") from None
    finally:
        timer.cancel()
        if timer.is_alive():
            timer.join()
    truncated = rows > max_rows or size > MAX_RESULT_BYTES
    return (table.slice(0, max_rows) if rows > max_rows else table), truncated
