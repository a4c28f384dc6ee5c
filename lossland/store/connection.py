"""Short-lived DuckDB connections that wait out lock conflicts, and all-or-nothing writes.

DuckDB lets one process hold a file read-write, and then refuses every other process, read-only
included; inside one process a second connection with another configuration is refused too. So
every store call opens a connection, does its work and closes it, and an open that meets a lock
retries with exponential backoff up to `lock_timeout` seconds, then names the process holding it.
Inside one process a gate per file orders them instead of retries: read-only connections share it,
a read-write one has it alone, and a waiting writer goes before new readers (so a steady stream of
page reads can't starve a finishing job's save).
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from .errors import StoreError, StoreLockedError, advice, first_line

Work = Callable[[duckdb.DuckDBPyConnection], Any]


def is_lock_conflict(e: Exception) -> bool:
    text = str(e)
    return ((isinstance(e, duckdb.IOException) and ("Could not set lock" in text or "Conflicting lock" in text))
            or (isinstance(e, duckdb.ConnectionException) and "different configuration" in text))


def lock_holder(e: Exception) -> str:
    """'python3.11 (PID 123, /usr/bin/python3.11)' from DuckDB's message, or this process."""
    match = re.search(r"Conflicting lock is held in (.*?) \(PID (\d+)\)", str(e))
    if not match:
        return f"another connection in this process (PID {os.getpid()}) with a different configuration"
    exe, pid = match.group(1), int(match.group(2))
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        name = Path(exe).name or "a process"
    return f"{name} (PID {pid}, {exe})"


def retry_on_lock(attempt: Callable[[], Any], path: Path, lock_timeout: float) -> Any:
    """attempt() retried with exponential backoff while it meets a lock conflict on `path`, up to
    lock_timeout in all; then StoreLockedError naming the holder. Other DuckDB errors become StoreError."""
    start = time.monotonic()
    delay = 0.005
    while True:
        try:
            return attempt()
        except duckdb.Error as e:
            if not is_lock_conflict(e):
                raise StoreError(f"cannot open store {path}: {first_line(e)}{advice(path, e)}") from None
            waited = time.monotonic() - start
            if waited >= lock_timeout:
                raise StoreLockedError(
                    f"store {path} is locked by {lock_holder(e)}; gave up after {waited:.1f} s "
                    f"(lock_timeout = {lock_timeout:g} s). Let that process finish or close it, then retry") from None
            time.sleep(min(delay * random.uniform(0.5, 1.0), lock_timeout - waited))
            delay = min(2 * delay, 0.25)


def open_connection(path: Path, lock_timeout: float, read_only: bool = False,
                    config: dict | None = None) -> duckdb.DuckDBPyConnection:
    """duckdb.connect with exponential backoff on lock conflicts, up to lock_timeout in all."""
    return retry_on_lock(lambda: duckdb.connect(str(path), read_only=read_only, config=config or {}), path,
                         lock_timeout)


class _Gate:
    """This process's connections to one file: readers share it, a writer has it alone and goes first."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.readers, self.writing, self.waiting = 0, False, 0

    @contextmanager
    def held(self, path: Path, read_only: bool, lock_timeout: float) -> Iterator[None]:
        deadline = time.monotonic() + lock_timeout
        with self.cond:
            self.waiting += not read_only
            try:
                while self.writing or (self.waiting if read_only else self.readers):
                    if not self.cond.wait(timeout=max(0.0, deadline - time.monotonic())):
                        raise StoreLockedError(f"store {path} is held by another connection of this process "
                                               f"(PID {os.getpid()}); gave up after {lock_timeout:g} s (lock_timeout)")
            finally:
                self.waiting -= not read_only
            self.readers += read_only
            self.writing = not read_only
        try:
            yield
        finally:
            with self.cond:
                self.readers -= read_only
                self.writing = self.writing and read_only
                self.cond.notify_all()


_GATES: dict[str, _Gate] = {}
_GATES_LOCK = threading.Lock()


def _gate(path: Path) -> _Gate:
    with _GATES_LOCK:
        return _GATES.setdefault(str(Path(path).resolve()), _Gate())


@contextmanager
def connected(path: Path, lock_timeout: float, read_only: bool = False,
              config: dict | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """An open connection for one piece of work, closed after it; DuckDB errors become StoreError."""
    with _gate(path).held(path, read_only, lock_timeout):
        con = open_connection(path, lock_timeout, read_only, config)
        try:
            yield con
        except duckdb.Error as e:
            raise StoreError(f"store {path}: {first_line(e)}{advice(path, e)}") from None
        finally:
            con.close()


def in_transaction(con: duckdb.DuckDBPyConnection, work: Work) -> Any:
    """work(con) in one transaction: committed whole, or rolled back and its error raised."""
    con.execute("BEGIN TRANSACTION")
    try:
        result = work(con)
        con.execute("COMMIT")
        return result
    except BaseException:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass  # a failed COMMIT already ended the transaction
        raise


def write(path: Path, lock_timeout: float, work: Work, what: str) -> Any:
    """work(con) in one transaction on a read-write connection: all of it is committed or none.
    Write-write conflicts with another connection of this process are retried until lock_timeout."""
    start = time.monotonic()
    while True:
        with connected(path, lock_timeout) as con:
            try:
                return in_transaction(con, work)
            except duckdb.Error as e:
                conflict = isinstance(e, duckdb.TransactionException) and "onflict" in str(e)
                if not conflict or time.monotonic() - start >= lock_timeout:
                    raise StoreError(f"{what} failed, nothing was written to {path}: {first_line(e)}"
                                     f"{advice(path, e)}") from None
            except OSError as e:
                raise StoreError(f"{what} failed, nothing was written to {path}: {e}{advice(path, e)}") from None
        time.sleep(random.uniform(0.005, 0.05))
