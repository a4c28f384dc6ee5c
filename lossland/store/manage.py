"""Run management on a Store: soft delete and restore, garbage collection, tags and notes.

A deleted run stays in the store, rows and checkpoint, but every listing, pair view and page leaves it out
(`search.LIVE`) and no bundle exports it; `restore` brings it back as it was. `collect_garbage` removes
the deleted runs for good: their rows in every table (their analyses' rows too), their tags and notes
(and their pair's, when no run of the pair is left), then their checkpoint files after the commit (a crash
in between leaves only files no run records, which `Store.repair` removes). Recomputing a deleted run's
config stores it afresh, live.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from .. import pairs
from .errors import StoreError
from .labels import remove_tags, set_note, set_tags
from .rows import delete_runs, now
from .schema import CHILD_TABLES, LABEL_TABLES, LOCAL_TABLES, column_names


@dataclass(frozen=True)
class Collected:
    """What collect_garbage removed (or, with dry_run, would remove)."""

    run_ids: tuple[str, ...]
    rows: dict[str, int]  # table -> rows
    files: tuple[tuple[str, int], ...]  # (checkpoint file, bytes)
    dry_run: bool

    def lines(self) -> list[str]:
        verb = "would remove" if self.dry_run else "removed"
        if not self.run_ids:
            return ["no deleted runs: nothing to collect"]
        out = [f"{verb} {len(self.run_ids)} deleted run(s): {', '.join(self.run_ids)}",
               f"{verb} rows: " + (", ".join(f"{t} {n:,}" for t, n in self.rows.items() if n) or "none")]
        out += [f"{verb} {path} ({size:,} bytes)" for path, size in self.files]
        out.append(f"{verb} {len(self.files)} checkpoint file(s), {sum(s for _, s in self.files):,} bytes in all")
        return out


def _run_ids(con: duckdb.DuckDBPyConnection, ids: Iterable[str]) -> list[str]:
    """Run ids and pair ids -> the run ids the store holds (a pair id: its runs); StoreError for one it lacks."""
    out = []
    for given in ids:
        column = "run_id" if pairs.is_run_id(given) else "pair_id"
        found = [r[0] for r in con.execute(f"SELECT run_id FROM runs WHERE {column} = ? ORDER BY role DESC",
                                           [given]).fetchall()]
        if not found:
            raise StoreError(f"no {'run' if column == 'run_id' else 'pair'} {given!r} in the store")
        out += found
    return list(dict.fromkeys(out))


def _deleted(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("SELECT run_id FROM deleted_runs").fetchall()}


def _ids_table(con: duckdb.DuckDBPyConnection, name: str, ids: list[str]) -> None:
    con.register(name, pa.table({"run_id": pa.array(ids, pa.string())}))


class Management:
    """The run-management methods of Store (mixed in: it provides _write, _connect, _frame, _resolve)."""

    def delete(self, ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """Soft-delete runs (pair ids: both runs). Returns (run ids deleted now, run ids already deleted)."""
        def work(con):
            found, gone = _run_ids(con, ids), _deleted(con)
            new = [r for r in found if r not in gone]
            for rid in new:
                con.execute("INSERT INTO deleted_runs VALUES (?, ?)", [rid, now()])
            return new, [r for r in found if r in gone]
        return self._write(work, "deleting runs")

    def restore(self, ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """Undo delete. Returns (run ids restored now, run ids that were not deleted)."""
        def work(con):
            found, gone = _run_ids(con, ids), _deleted(con)
            back = [r for r in found if r in gone]
            if back:
                con.execute(f"DELETE FROM deleted_runs WHERE run_id IN ({', '.join('?' * len(back))})", back)
            return back, [r for r in found if r not in gone]
        return self._write(work, "restoring runs")

    def collect_garbage(self, dry_run: bool = False) -> Collected:
        """Remove the soft-deleted runs for good (see the module's docstring); dry_run: only say what would go."""
        def work(con):
            ids = sorted(_deleted(con))
            recorded = dict(con.execute("SELECT run_id, checkpoint FROM runs WHERE run_id IN "
                                        "(SELECT run_id FROM deleted_runs)").fetchall())
            rows = _collect(con, ids, dry_run)
            return ids, recorded, rows

        if dry_run:
            with self._connect(read_only=True) as con:
                ids, recorded, rows = work(con)
        else:
            ids, recorded, rows = self._write(work, "collecting deleted runs")
        files = []
        for rid in ids:
            for path in {self._resolve(recorded[rid])} if recorded.get(rid) else set():
                files += [(path, path.stat().st_size)] if path.is_file() else []
            own = self.checkpoint_dir / f"{rid}.pt"
            if own.is_file() and all(own.resolve() != p.resolve() for p, _ in files):
                files.append((own, own.stat().st_size))
        if not dry_run:
            for path, _ in files:
                path.unlink(missing_ok=True)
        return Collected(tuple(ids), rows, tuple((str(p), s) for p, s in files), dry_run)

    # --- tags and notes -------------------------------------------------------------------------------
    def set_tags(self, subject: str, tags: dict[str, str]) -> None:
        """Set tags (key -> value) on a run id or a pair id; an existing key gets the new value."""
        self._write(lambda con: set_tags(con, subject, dict(tags)), f"tagging {subject}")

    def remove_tags(self, subject: str, keys: Iterable[str]) -> list[str]:
        """Remove tags by key; returns the keys the subject had."""
        return self._write(lambda con: remove_tags(con, subject, keys), f"untagging {subject}")

    def set_note(self, subject: str, note: str) -> None:
        """The free-text note of a run id or a pair id (empty: no note)."""
        self._write(lambda con: set_note(con, subject, note), f"writing the note of {subject}")

    def tags(self, subjects: Iterable[str] | None = None) -> pd.DataFrame:
        """Tags (subject, key, value, created_at) of these subjects, or all."""
        return self._labels("tags", subjects)

    def notes(self, subjects: Iterable[str] | None = None) -> pd.DataFrame:
        """Notes (subject, note, updated_at) of these subjects, or all."""
        return self._labels("notes", subjects)

    def _labels(self, table: str, subjects: Iterable[str] | None) -> pd.DataFrame:
        wanted = None if subjects is None else list(subjects)
        where = "" if wanted is None else f" WHERE subject IN ({', '.join('?' * len(wanted)) or 'NULL'})"
        return self._frame(f"SELECT {', '.join(column_names(LABEL_TABLES[table]))} FROM {table}{where} "
                           f"ORDER BY subject{', key' if table == 'tags' else ''}", wanted)


def _collect(con: duckdb.DuckDBPyConnection, ids: list[str], dry_run: bool) -> dict[str, int]:
    """Count (and unless dry_run delete) every row of these runs: their tables' rows, the rows of analyses
    they own, their labels and those of pairs left without runs."""
    if not ids:
        return {}
    _ids_table(con, "_lossland_gc", ids)
    owned = "analysis_id IN (SELECT analysis_id FROM analyses WHERE run_id IN (SELECT run_id FROM _lossland_gc))"
    mine = "run_id IN (SELECT run_id FROM _lossland_gc)"
    counts: dict[str, Any] = {}
    for table in ("landscapes", "basin_trials"):
        counts[table] = con.execute(f"SELECT count(*) FROM {table} WHERE {mine} OR {owned}").fetchall()[0][0]
    for table in (*CHILD_TABLES, *LOCAL_TABLES, "runs"):
        if table not in counts:
            counts[table] = con.execute(f"SELECT count(*) FROM {table} WHERE {mine}").fetchall()[0][0]
    left = {r[0] for r in con.execute(f"SELECT DISTINCT pair_id FROM runs WHERE NOT {mine}").fetchall()}
    subjects = [*ids, *{pairs.pair_of(r) for r in ids} - left]
    marks = ", ".join("?" * len(subjects))
    for table in LABEL_TABLES:
        counts[table] = con.execute(f"SELECT count(*) FROM {table} WHERE subject IN ({marks})",
                                    subjects).fetchall()[0][0]
    if not dry_run:
        for table in ("landscapes", "basin_trials"):
            con.execute(f"DELETE FROM {table} WHERE {owned}")
        for table in LABEL_TABLES:
            con.execute(f"DELETE FROM {table} WHERE subject IN ({marks})", subjects)
        delete_runs(con, ids)
    con.unregister("_lossland_gc")
    return counts

