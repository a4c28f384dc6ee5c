"""The SQL console's process: each query runs in a child Python process (see `sandbox`), so it never
holds a connection of the app's process (DuckDB refuses a second configuration in one process, and a
long query would make page reads wait and a finishing job's save fail) and is killed when it overruns.

The child holds the store file only while it copies the tables the query names (read-only, waiting
out a lock like any store call); the app's reads and writes wait at most that long. It imports the
sandbox alone (no pandas, no torch), so a query costs about 0.3 s of start-up on top of its own time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa

from .errors import QueryError, StoreError, StoreLockedError
from .sandbox import QueryResult, check_limits, check_query
from .schema import PANDAS_TYPES

START_GRACE_S = 10.0  # on top of the query's time limit and the lock wait: the child's start and copy
NICE = 5  # the child's CPU priority below the app's from its first line: a busy console barely slows pages
# Imports the store package's sandbox without running the package's __init__ (pandas) or lossland's.
_BOOT = (f"import os; os.nice({NICE}); import sys, types; p = types.ModuleType('_lossland_store'); "
         "p.__path__ = [sys.argv[1]]; sys.modules['_lossland_store'] = p; "
         "from _lossland_store.sandbox import serve; serve()")
_ERRORS = {"locked": StoreLockedError, "query": QueryError, "store": StoreError}


def run_query(path: Path, sql: str, max_rows: int, timeout: float, memory_mb: int, threads: int,
              lock_timeout: float) -> QueryResult:
    """One read-only SELECT in a child process within the limits (each checked against its range first);
    QueryError when it is refused, fails or overruns (the child is killed), StoreLockedError when the
    store stayed locked past lock_timeout."""
    check_query(sql)
    check_limits(max_rows=max_rows, timeout=timeout, memory_mb=memory_mb, threads=threads)
    request = {"path": str(Path(path).resolve()), "sql": sql, "max_rows": int(max_rows), "timeout": float(timeout),
               "memory_mb": int(memory_mb), "threads": int(threads), "lock_timeout": float(lock_timeout)}
    start = time.perf_counter()
    limit = timeout + lock_timeout + START_GRACE_S
    proc = subprocess.Popen([sys.executable, "-I", "-c", _BOOT, str(Path(__file__).resolve().parent)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(json.dumps(request).encode(), timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise QueryError(f"query stopped: its process ran past {limit:g} s (the time limit of {timeout:g} s, the "
                         f"wait for the store's lock and {START_GRACE_S:g} s to start) and was killed; narrow it "
                         f"(WHERE, LIMIT) or raise the limit") from None
    header, _, body = out.partition(b"\n")
    try:
        answer = json.loads(header)
    except ValueError:
        tail = (err.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise QueryError(f"the SQL console's process ended without an answer (exit code {proc.returncode}: "
                         f"{tail}); the query may need more memory than the console allows") from None
    if not answer.get("ok"):
        raise _ERRORS.get(answer.get("kind"), QueryError)(answer.get("message", "query failed"))
    table = pa.ipc.open_stream(pa.py_buffer(body)).read_all()
    frame = table.to_pandas(types_mapper=PANDAS_TYPES.get)
    return QueryResult(frame=frame, truncated=bool(answer.get("truncated")), seconds=time.perf_counter() - start)
