"""The store's checkpoint files against its rows: files no run records, runs whose file is gone, and
the leftovers of writes that never finished (`<run_id>.pt.importing` of an import, `.tmp` of an atomic
write).

`check` only looks. `repair` removes strays older than `min_age_s` (a younger one may belong to a write
in progress: a job writes its checkpoints a moment before its rows), finishes a leftover `.importing`
copy that the run's rows name and that verifies against the run's config, records each run whose
checkpoint is still missing (the `missing_checkpoints` table; `Store.runs()` shows `checkpoint_missing`)
and drops the records of runs whose file is back. Neither touches a file outside the checkpoint folder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from .. import pairs
from ..config import ConfigError, ExperimentConfig
from .rows import insert_rows, now

LEFTOVER_SUFFIXES = (".importing", ".tmp")
MIN_AGE_S = 600.0


@dataclass(frozen=True)
class CheckReport:
    """What `Store.check` found; `ok` when nothing."""

    orphan_checkpoints: tuple[Path, ...]  # checkpoint files (<checkpoint_dir>/*.pt) that no run records
    missing_checkpoints: tuple[str, ...]  # run ids whose recorded checkpoint file does not exist
    leftovers: tuple[Path, ...]  # .importing / .tmp files of writes that never finished
    recorded_missing: tuple[str, ...]  # run ids already recorded as missing their checkpoint

    @property
    def ok(self) -> bool:
        return not (self.orphan_checkpoints or self.missing_checkpoints or self.leftovers)

    def lines(self) -> list[str]:
        if self.ok:
            return ["store and checkpoint folder agree: every recorded checkpoint exists, no stray files"]
        return ([f"checkpoint without a run: {p}" for p in self.orphan_checkpoints]
                + [f"run without its checkpoint: {r}" + (" (recorded)" if r in self.recorded_missing else "")
                   for r in self.missing_checkpoints]
                + [f"leftover of an unfinished write: {p}" for p in self.leftovers])


@dataclass(frozen=True)
class RepairReport:
    """What `Store.repair` did."""

    removed: tuple[Path, ...]  # stray files deleted
    completed: tuple[str, ...]  # runs whose checkpoint was put in place from a verified leftover
    recorded: tuple[str, ...]  # runs newly recorded as missing their checkpoint (pages say so)
    cleared: tuple[str, ...]  # runs no longer recorded as missing: their checkpoint is back
    kept: tuple[Path, ...]  # strays younger than min_age_s, left alone (a write may be in progress)

    def lines(self) -> list[str]:
        out = ([f"removed {p}" for p in self.removed] + [f"restored the checkpoint of {r}" for r in self.completed]
               + [f"recorded the missing checkpoint of {r}" for r in self.recorded]
               + [f"checkpoint of {r} is back; record dropped" for r in self.cleared]
               + [f"left {p} alone: younger than the minimum age (a write may be in progress)" for p in self.kept])
        return out or ["nothing to repair"]


@dataclass(frozen=True)
class Files:
    """The store's checkpoint folder and how a runs.checkpoint value becomes a path."""

    checkpoint_dir: Path
    resolve: Callable[[str], Path]


def is_file(path: Path) -> bool:
    """Path.is_file for a recorded path that may be anything a store holds: a name the OS refuses (too long,
    a NUL byte) is no file, not an exception."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, ValueError):
        return path


def survey(con: duckdb.DuckDBPyConnection, files: Files) -> CheckReport:
    recorded = dict(con.execute("SELECT run_id, checkpoint FROM runs WHERE checkpoint IS NOT NULL").fetchall())
    noted = {r[0] for r in con.execute("SELECT run_id FROM missing_checkpoints").fetchall()}
    paths = {rid: files.resolve(c) for rid, c in recorded.items()}
    named = {_resolved(p) for p in paths.values()}
    found = sorted(f for f in files.checkpoint_dir.iterdir() if f.is_file()) if files.checkpoint_dir.is_dir() else []
    return CheckReport(
        orphan_checkpoints=tuple(f for f in found if f.suffix == ".pt" and f.resolve() not in named),
        missing_checkpoints=tuple(sorted(rid for rid, p in paths.items() if not is_file(p))),
        leftovers=tuple(f for f in found if f.name.endswith(LEFTOVER_SUFFIXES)),
        recorded_missing=tuple(sorted(noted)))


def repair(con: duckdb.DuckDBPyConnection, files: Files, min_age_s: float) -> RepairReport:
    """Run inside the store's write transaction (see the module's docstring)."""
    report = survey(con, files)
    missing = set(report.missing_checkpoints)
    removed, kept, completed = [], [], []
    for path in (*report.leftovers, *report.orphan_checkpoints):
        run_id = path.name.removesuffix(".pt.importing")
        if path.name.endswith(".pt.importing") and run_id in missing and _finish(con, files, path, run_id):
            completed.append(run_id)
            missing.discard(run_id)
        elif time.time() - path.stat().st_mtime < min_age_s:
            kept.append(path)
        else:
            path.unlink(missing_ok=True)
            removed.append(path)
    noted = set(report.recorded_missing)
    recorded = sorted(missing - noted)
    cleared = sorted(noted - missing)
    if cleared:
        con.execute(f"DELETE FROM missing_checkpoints WHERE run_id IN ({', '.join('?' * len(cleared))})", cleared)
    if recorded:
        paths = dict(con.execute(f"SELECT run_id, checkpoint FROM runs WHERE run_id IN "
                                 f"({', '.join('?' * len(recorded))})", recorded).fetchall())
        insert_rows(con, "missing_checkpoints", pa.table({
            "run_id": pa.array(recorded, pa.string()), "checkpoint": pa.array([paths[r] for r in recorded]),
            "noticed_at": pa.array([now()] * len(recorded), pa.timestamp("us"))}))
    return RepairReport(tuple(removed), tuple(completed), tuple(recorded), tuple(cleared), tuple(kept))


def _finish(con: duckdb.DuckDBPyConnection, files: Files, leftover: Path, run_id: str) -> bool:
    """Put a leftover import copy in place when its run records exactly that file and it verifies."""
    from ..checkpoint import CheckpointError, verify_checkpoint  # torch: only to verify a leftover checkpoint

    row = con.execute("SELECT checkpoint, config_json FROM runs WHERE run_id = ?", [run_id]).fetchone()
    final = leftover.with_name(leftover.name.removesuffix(".importing"))
    if row is None or files.resolve(row[0]).resolve() != final.resolve():
        return False
    try:
        verify_checkpoint(leftover, ExperimentConfig.from_json(row[1]), pairs.role_of(run_id))
    except (CheckpointError, ConfigError, ValueError):
        return False
    leftover.replace(final)
    return True
