"""Leases on pairs being trained: the store's side (lossland.leases waits on them and keeps them alive).

One row per pair: its owner (pid, host and a token per claim), when it started and its last heartbeat. A
lease is live while its heartbeat is younger than the timeout and, on this host, its pid runs; a lease that
is not live is taken over. Taking, renewing and releasing are each one transaction, and a store has one
writer at a time across processes (DuckDB's file lock), so two processes can't both take one pair.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb

from .rows import now
from .schema import LEASE_COLUMNS, column_names

_COLUMNS = ", ".join(column_names(LEASE_COLUMNS))


@dataclass(frozen=True)
class Lease:
    pair_id: str
    pid: int
    host: str
    token: str
    started_at: datetime
    heartbeat_at: datetime

    def describe(self) -> str:
        return (f"pair {self.pair_id} is being trained by pid {self.pid} on host {self.host} since "
                f"{self.started_at:%Y-%m-%d %H:%M:%S} UTC")

    def live(self, timeout_s: float, at: datetime | None = None) -> bool:
        """Its heartbeat is younger than timeout_s and, when it is of this host, its process runs."""
        if ((at or now()) - self.heartbeat_at).total_seconds() > timeout_s:
            return False
        return self.host != socket.gethostname() or pid_alive(self.pid)


def pid_alive(pid: int) -> bool:
    """A process of this id runs here (a zombie, dead but not yet reaped, does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _lease(row: tuple) -> Lease:
    return Lease(*row)


class Leases:
    """The lease methods of Store (mixed in: it provides _write and _connect)."""

    def take_leases(self, pair_ids: Iterable[str], token: str,
                    timeout_s: float) -> tuple[dict[str, Lease], list[Lease]]:
        """Take the lease of every pair that is free, already this token's, or held by an owner that is not
        live. Returns (the live leases of other owners by pair id, the expired leases taken over)."""
        ids = list(dict.fromkeys(pair_ids))

        def work(con: duckdb.DuckDBPyConnection) -> tuple[dict[str, Lease], list[Lease]]:
            others, expired = {}, []
            at = now()
            for pair_id in ids:
                found = con.execute(f"SELECT {_COLUMNS} FROM leases WHERE pair_id = ?", [pair_id]).fetchall()
                held = _lease(found[0]) if found else None
                if held is not None and held.token != token and held.live(timeout_s, at):
                    others[pair_id] = held
                    continue
                if held is not None and held.token != token:
                    expired.append(held)
                started = held.started_at if held is not None and held.token == token else at
                con.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?, ?)",
                            [pair_id, os.getpid(), socket.gethostname(), token, started, at])
            return others, expired

        return self._write(work, "taking leases") if ids else ({}, [])

    def renew_leases(self, token: str) -> None:
        """The heartbeat of every lease of this token."""
        self._write(lambda con: con.execute("UPDATE leases SET heartbeat_at = ? WHERE token = ?", [now(), token]),
                    "renewing leases")

    def release_leases(self, token: str, pair_ids: Iterable[str] | None = None) -> None:
        """Give up these leases of this token (None: all of them)."""
        ids = None if pair_ids is None else list(pair_ids)
        if ids == []:
            return
        where = "" if ids is None else f" AND pair_id IN ({', '.join('?' * len(ids))})"
        self._write(lambda con: con.execute(f"DELETE FROM leases WHERE token = ?{where}", [token, *(ids or [])]),
                    "releasing leases")

    def leases(self) -> dict[str, Lease]:
        """Every lease, by pair id."""
        with self._connect(read_only=True) as con:
            return {r[0]: _lease(r) for r in con.execute(f"SELECT {_COLUMNS} FROM leases ORDER BY pair_id").fetchall()}
