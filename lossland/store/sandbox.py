"""The SQL console: one read-only SELECT, in a sandbox, capped in rows and time.

Two walls, each enough alone: a statement check that lets only SELECT and EXPLAIN through, and a
connection that opens the file read-only with external access disabled and the configuration locked
(no files, no network, no ATTACH, no extensions, no writes). Rows are fetched in chunks up to the
cap; a timer interrupts a query that runs past its time limit.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import duckdb
import pandas as pd

from .errors import QueryError, first_line

SANDBOX_CONFIG = {"enable_external_access": False, "lock_configuration": True, "memory_limit": "2GB"}

# Shown in the dashboard's SQL console to start from (name -> query).
EXAMPLE_QUERIES = {
    "mean test accuracy by role": "SELECT role, count(*) AS runs, avg(test_acc) AS test_acc, "
                                  "avg(top_eigenvalue) AS lambda1 FROM runs GROUP BY role",
    "sharpness vs attack size": "SELECT n_attack, role, avg(top_eigenvalue) AS lambda1, avg(trace) AS trace "
                                "FROM runs GROUP BY ALL ORDER BY n_attack, role",
    "top-5 eigenvalues of the latest pair": "SELECT r.role, s.idx, s.eigenvalue FROM spectra s JOIN runs r "
                                            "USING (run_id) WHERE r.pair_id = (SELECT pair_id FROM runs "
                                            "ORDER BY created_at DESC LIMIT 1) AND s.kind = 'lanczos' "
                                            "AND s.idx <= 5 ORDER BY r.role, s.idx",
}


@dataclass(frozen=True, eq=False)
class QueryResult:
    frame: pd.DataFrame
    truncated: bool  # more rows than max_rows existed; frame holds the first max_rows
    seconds: float


def check_query(sql: str, max_rows: int, timeout: float) -> None:
    """Refuse (QueryError) anything but one SELECT or EXPLAIN statement, and impossible limits."""
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
    if max_rows < 0 or not timeout > 0:
        raise QueryError(f"max_rows must be ≥ 0 and timeout > 0 (got {max_rows}, {timeout})")


def fetch_capped(con: duckdb.DuckDBPyConnection, sql: str, max_rows: int, timeout: float) -> tuple[pd.DataFrame, bool]:
    """Run sql on `con` (a connection opened with SANDBOX_CONFIG): its first max_rows rows and whether
    there were more; stopped by an interrupt after timeout seconds. DuckDB's errors become QueryError."""
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
                         f"load extensions ({first_line(e)})") from None
    except duckdb.Error as e:
        raise QueryError(f"query failed: {first_line(e)}") from None
    finally:
        timer.cancel()
        if timer.is_alive():
            timer.join()
    frame = pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]
    truncated = len(frame) > max_rows
    return (frame.iloc[:max_rows].reset_index(drop=True) if truncated else frame), truncated
