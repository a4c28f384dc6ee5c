"""Run bundles: runs with every row and checkpoint in one zip, to share a result with a collaborator.

    manifest.json               format and schema versions, run ids, row counts
    tables/<table>.parquet      the runs' rows of each table (of the spectra, the one each runs row sums up), and
                                the tags and notes of the runs and their pairs
    checkpoints/<run_id>.pt     the trained weights, where the file exists

A bundle is untrusted input. Before anything is written its member names are checked (no absolute
paths, no '..', plain files only, no duplicates), its unpacked size is bounded twice (the sizes the
zip states, then the bytes it really yields), its manifest is checked, its rows are verified
(`verify`: ids re-derived from the configs, types, ranges, keys, counts) and every checkpoint is
checked against its run's config (`lossland.checkpoint.verify_checkpoint`). Bundles of older schema
versions import (columns they lack are NULL; tables since dropped are ignored). A bundle holds whole
pairs. Imported runs carry their provenance (the bundle's file name, its sha256 digest, the time).

Checkpoints are put in place inside the import's transaction, just before its COMMIT: a killed import
leaves at worst checkpoint files that no row names (`Store.check` finds them, `Store.repair` removes
them, a re-import uses them), never rows whose checkpoint is missing. A re-import of a bundle holding
a run already stored, row for row, restores that run's checkpoint when the store's is missing.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from .. import __version__, pairs
from .errors import BundleError, first_line
from .labels import export_labels, merge_labels
from .rows import delete_runs, insert_rows, now, one_spectrum
from .schema import LABEL_TABLES, ORDER, RUN_COLUMNS, SCHEMA_VERSION, TABLES, column_names, fill_ids
from .verify import Verified

BUNDLE_FORMAT = 1
DEFAULT_MAX_BUNDLE_BYTES = 2 * 1024**3
_DROPPED_TABLES = {"density_grid": 3}  # table -> the last schema version that had it
_RUN_ID = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"


@dataclass(frozen=True)
class ImportReport:
    run_ids_added: tuple[str, ...]
    run_ids_skipped: tuple[str, ...]  # already in the store (and not failed there)
    checkpoints_restored: tuple[str, ...] = ()  # skipped runs whose missing checkpoint the bundle put back
    rows_left_out: tuple[tuple[str, int], ...] = ()  # (table, rows) of schema-2 rows that belong to no analysis


# --- export ---------------------------------------------------------------------------------

def write_tables(con: duckdb.DuckDBPyConnection, run_ids: list[str], folder: Path,
                 store: Path) -> tuple[dict[str, str | None], dict[str, int]]:
    """These runs' rows of every table as folder/tables/<table>.parquet; returns (the checkpoint
    recorded for each run id, rows per table). BundleError when a run id is not in the store."""
    (folder / "tables").mkdir()
    con.register("_lossland_ids", pa.table({"run_id": pa.array(run_ids, pa.string())}))
    recorded = dict(con.execute("SELECT run_id, checkpoint FROM runs "
                                "WHERE run_id IN (SELECT run_id FROM _lossland_ids)").fetchall())
    missing = [r for r in run_ids if r not in recorded]
    if missing:
        raise BundleError(f"run id(s) not in store {store}: {', '.join(missing)}")
    deleted = [r[0] for r in con.execute("SELECT run_id FROM deleted_runs WHERE run_id IN (SELECT run_id FROM "
                                         "_lossland_ids) ORDER BY run_id").fetchall()]
    if deleted:
        raise BundleError(f"run(s) {', '.join(deleted)} are deleted and deleted runs are not exported; "
                          f"`lossland restore` brings them back")
    external = [r for r in run_ids if r.startswith("ext-")]
    if external:
        raise BundleError(f"{external[0]} is an external run (lossland.analyze): bundles hold lossland pairs, whose "
                          f"ids a receiving store re-derives from their configs; an external run has no such config")
    lone = [r for r in run_ids if pairs.is_run_id(r) and _partner(r) not in run_ids]
    if lone:
        raise BundleError(f"a bundle holds whole pairs: add {_partner(lone[0])} (the other run of {lone[0]})")
    counts: dict[str, int] = {}
    for name, columns in TABLES.items():
        target = (folder / "tables" / f"{name}.parquet").as_posix().replace("'", "''")
        select = (f"SELECT {', '.join(column_names(columns))} FROM {name} t WHERE run_id IN "
                  f"(SELECT run_id FROM _lossland_ids) AND {one_spectrum(name)} ORDER BY {ORDER[name]}")
        con.execute(f"COPY ({select}) TO '{target}' (FORMAT parquet)")
        counts[name] = con.execute(f"SELECT count(*) FROM ({select})").fetchall()[0][0]
    return recorded, counts | export_labels(con, run_ids, folder)


def _partner(run_id: str) -> str:
    pair_id, role = pairs.split_run_id(run_id)
    return pairs.run_id(pair_id, "bad" if role == "good" else "good")


def write_zip(path: Path, folder: Path, run_ids: list[str], counts: dict[str, int],
              checkpoints: dict[str, Path]) -> Path:
    """The bundle at `path` from the tables in `folder` and the checkpoint files by run id; a reader
    never sees half a bundle (it is written beside and renamed)."""
    members = {f"checkpoints/{r}.pt": source for r, source in checkpoints.items()}
    manifest = {"format_version": BUNDLE_FORMAT, "schema_version": SCHEMA_VERSION,
                "lossland_version": __version__, "run_ids": run_ids,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "rows": counts, "checkpoints": sorted(members)}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps(manifest, indent=2))
        for name in (*TABLES, *LABEL_TABLES):
            zf.write(folder / "tables" / f"{name}.parquet", f"tables/{name}.parquet")
        for member, source in members.items():
            zf.write(source, member)
    partial.replace(path)
    return path


# --- import: check and unpack ------------------------------------------------------------------

@dataclass(frozen=True)
class Unpacked:
    """A bundle checked and unpacked into a temporary folder; nothing of it is in the store yet."""

    path: Path  # the bundle, for messages
    schema_version: int
    run_ids: list[str]
    tables: dict[str, Path]  # table -> its Parquet file
    checkpoints: dict[str, Path]  # run id -> its checkpoint file
    labels: dict[str, Path] = field(default_factory=dict)  # tags, notes -> its Parquet file (bundles of schema ≥ 6)


@contextmanager
def unpacked(path: Path, max_bytes: int) -> Iterator[Unpacked]:
    """Open, check and unpack the bundle at `path` (BundleError when anything is wrong); the unpacked
    files are removed on leaving."""
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise BundleError(f"{path} is not a readable run bundle (zip): {e}") from None
    with zf, tempfile.TemporaryDirectory(prefix="lossland-import-") as tmp_name:
        tmp = Path(tmp_name)
        manifest, members = _check_members(path, zf, max_bytes)
        budget = max_bytes
        for member in members:
            budget -= _extract(zf, member, tmp, budget, path)
        run_ids = manifest["run_ids"]
        checkpoints = {r: tmp / "checkpoints" / f"{r}.pt" for r in run_ids if f"checkpoints/{r}.pt" in members}
        tables, found = {}, {}
        for name in (*TABLES, *LABEL_TABLES):
            if f"tables/{name}.parquet" in members:
                (tables if name in TABLES else found)[name] = tmp / "tables" / f"{name}.parquet"
        yield Unpacked(path=path, schema_version=manifest["schema_version"], run_ids=run_ids, tables=tables,
                       checkpoints=checkpoints, labels=found)


def _check_names(path: Path, infos: list[zipfile.ZipInfo]) -> None:
    """Member names that can't escape the folder, no duplicates, plain files only."""
    member_names = [i.filename for i in infos]
    for name in member_names:
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts or "\\" in name:
            raise BundleError(f"bundle {path} has an unsafe member name {name!r} (absolute or with '..'); refused")
    if len(set(member_names)) != len(member_names):
        raise BundleError(f"bundle {path} has duplicate member names; refused")
    for info in infos:
        kind = stat.S_IFMT(info.external_attr >> 16)
        if info.is_dir() or kind not in (0, stat.S_IFREG):  # 0: written by a tool that records no mode
            what = "a symlink" if kind == stat.S_IFLNK else "a folder" if info.is_dir() else "not a plain file"
            raise BundleError(f"bundle {path}: member {info.filename!r} is {what}; a run bundle holds plain "
                              f"files only; refused")


def _read_manifest(path: Path, zf: zipfile.ZipFile) -> dict:
    """manifest.json, with versions this code reads and a list of distinct, well-formed run ids."""
    try:
        manifest = json.loads(zf.read("manifest.json").decode("utf-8"))
    except (ValueError, RecursionError, zipfile.BadZipFile, zlib.error, EOFError, RuntimeError) as e:
        raise BundleError(f"bundle {path}: manifest.json is not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"bundle {path}: manifest.json must be an object")
    fmt, schema = manifest.get("format_version"), manifest.get("schema_version")
    if not isinstance(fmt, int) or not isinstance(schema, int):
        raise BundleError(f"bundle {path}: manifest.json lacks integer format_version and schema_version")
    if fmt > BUNDLE_FORMAT or schema > SCHEMA_VERSION:
        raise BundleError(f"bundle {path} was written by a newer lossland ({manifest.get('lossland_version')}: "
                          f"bundle format {fmt}, schema version {schema}; this lossland {__version__} reads "
                          f"format {BUNDLE_FORMAT}, schema {SCHEMA_VERSION}); upgrade lossland to import it")
    if schema < 1:
        raise BundleError(f"bundle {path}: schema_version {schema} is not a valid version")
    run_ids = manifest.get("run_ids")
    if (not isinstance(run_ids, list) or not run_ids or len(set(run_ids)) != len(run_ids)
            or not all(isinstance(r, str) and re.fullmatch(_RUN_ID, r) for r in run_ids)):
        raise BundleError(f"bundle {path}: manifest run_ids must be a non-empty list of distinct run ids "
                          f"(letters, digits, '_', '.', '-')")
    return manifest


def _check_members(path: Path, zf: zipfile.ZipFile, max_bytes: int) -> tuple[dict, set[str]]:
    """Validate names, sizes and the manifest; returns (manifest, the members to unpack)."""
    infos = [i for i in zf.infolist() if i.filename not in ("tables/", "checkpoints/")]  # folder entries
    _check_names(path, infos)
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        raise BundleError(f"bundle {path} unpacks to {total:,} bytes, over the limit of {max_bytes:,} "
                          f"(max_bundle_bytes)")
    found = {i.filename for i in infos}
    if "manifest.json" not in found:
        raise BundleError(f"bundle {path} has no manifest.json; not a lossland run bundle")
    manifest = _read_manifest(path, zf)
    dropped = {f"tables/{t}.parquet" for t, last in _DROPPED_TABLES.items() if manifest["schema_version"] <= last}
    expected = ({"manifest.json"} | {f"tables/{t}.parquet" for t in (*TABLES, *LABEL_TABLES)} | dropped
                | {f"checkpoints/{r}.pt" for r in manifest["run_ids"]})
    unexpected = [i.filename for i in infos if i.filename not in expected]
    if unexpected:
        raise BundleError(f"bundle {path} has unexpected member(s) {', '.join(map(repr, unexpected[:5]))}; "
                          f"allowed: manifest.json, tables/<table>.parquet, checkpoints/<run_id>.pt")
    if "tables/runs.parquet" not in found:
        raise BundleError(f"bundle {path} has no tables/runs.parquet")
    return manifest, found - {"manifest.json"} - dropped


def _extract(zf: zipfile.ZipFile, member: str, root: Path, budget: int, bundle: Path) -> int:
    """Copy one member out counting real bytes (a zip may lie about sizes); returns the bytes."""
    target = root / member
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with zf.open(member) as src, open(target, "wb") as dst:
            while chunk := src.read(1 << 20):
                written += len(chunk)
                if written > budget:
                    raise BundleError(f"bundle {bundle} unpacks past the size limit (max_bundle_bytes) at {member}")
                dst.write(chunk)
    except BundleError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as e:  # damaged, encrypted
        raise BundleError(f"bundle {bundle}: member {member} can't be unpacked ({type(e).__name__}: "
                          f"{first_line(e)}); the zip is damaged or truncated; refused") from None
    return written


def digest(path: Path, max_bytes: int) -> str:
    """The sha256 of the bundle file (refused past max_bytes: a zip is no larger than what it unpacks to)."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise BundleError(f"bundle {path} is {size:,} bytes, over the limit of {max_bytes:,} (max_bundle_bytes)")
        sha = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                sha.update(chunk)
    except OSError as e:
        raise BundleError(f"{path} is not a readable run bundle: {e}") from None
    return sha.hexdigest()


def verify_checkpoints(bundle: Unpacked, verified: Verified, max_params: int | None) -> None:
    """Every checkpoint of the bundle checked against its run's config and role (see verify_checkpoint), and
    the factories' source text its runs carry (see verify_sources)."""
    verify_sources(bundle, verified)
    # imported here: checking checkpoints needs torch, which only importing a bundle should pay for
    from ..checkpoint import CheckpointError, verify_checkpoint

    for run_id, file in bundle.checkpoints.items():
        try:
            verify_checkpoint(file, verified.configs[run_id], pairs.role_of(run_id), max_params)
        except CheckpointError as e:
            raise BundleError(f"bundle {bundle.path}: checkpoints/{run_id}.pt is not a checkpoint of run {run_id} "
                              f"that loads safely ({first_line(e)}); refused") from None


def verify_sources(bundle: Unpacked, verified: Verified) -> None:
    """The source text of a factory that a run carries (extra_json "factory_sources", shown for review) hashes
    to the sha256 its config was pinned to, so a reviewer reads the code the run was made with. The text is
    only hashed and stored: nothing of it is imported or run."""
    with duckdb.connect(":memory:") as con:
        found = con.execute("SELECT run_id, extra_json FROM read_parquet(?)",
                            [bundle.tables["runs"].as_posix()]).fetchall()
    for run_id, extra in found:
        try:
            carried = (json.loads(extra) if extra else {}).get("factory_sources") or {}
        except (ValueError, RecursionError, AttributeError):
            raise BundleError(f"bundle {bundle.path}: run {run_id}: extra_json is not a JSON object; refused") from None
        cfg = verified.configs[run_id]
        for name in ("data", "model"):
            section, s = getattr(cfg, name), carried.get(name) if isinstance(carried, dict) else None
            if s is None and name not in (carried or {}):
                continue  # a run that carries no source (e.g. failed before it ran)
            text = s.get("source") if isinstance(s, dict) else None
            if section.factory is None or not isinstance(text, str) or (
                    hashlib.sha256(text.encode("utf-8")).hexdigest() != section.factory_sha256):
                raise BundleError(f"bundle {bundle.path}: run {run_id} carries source text for {name}.factory that is "
                                  f"not the code its config was made with (sha256 {section.factory_sha256}); refused")


# --- import: merge into the store ----------------------------------------------------------------

def _parquet_columns(con: duckdb.DuckDBPyConnection, file: Path) -> list[str]:
    return [r[0] for r in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [file.as_posix()]).fetchall()]


@dataclass(frozen=True)
class Target:
    """Where an import writes: the store's checkpoint folder, and how it records and finds a checkpoint path."""

    checkpoint_dir: Path
    stored_path: Callable[[Path], str]
    resolve: Callable[[str], Path]
    source: str  # the bundle's file name, for provenance
    sha256: str


class Merge:
    """The write of a verified bundle into a store: `into(con)` inside the store's transaction (checkpoints
    put in place last, before the COMMIT), then `discard()` after a failure."""

    def __init__(self, bundle: Unpacked, verified: Verified, target: Target):
        self.bundle, self.verified, self.target = bundle, verified, target
        self.created: set[Path] = set()  # checkpoint files this import made

    def into(self, con: duckdb.DuckDBPyConnection) -> ImportReport:
        run_ids = self.bundle.run_ids
        con.register("_lossland_ids", pa.table({"run_id": pa.array(run_ids, pa.string())}))
        stored = dict(con.execute("SELECT run_id, checkpoint FROM runs WHERE status <> 'failed' AND run_id IN "
                                  "(SELECT run_id FROM _lossland_ids)").fetchall())
        added = [r for r in run_ids if r not in stored]
        restore = self._restorable(con, {r: c for r, c in stored.items() if r in self.bundle.checkpoints})
        if added:
            self._insert(con, added)
            merge_labels(con, self.bundle.labels, added)
        for run_id in (*added, *restore):
            has = run_id in self.bundle.checkpoints
            target = self.target.stored_path(self.target.checkpoint_dir / f"{run_id}.pt") if has else None
            con.execute("UPDATE runs SET checkpoint = ? WHERE run_id = ?", [target, run_id])
        if restore:
            con.execute(f"DELETE FROM missing_checkpoints WHERE run_id IN ({', '.join('?' * len(restore))})", restore)
        self._place([r for r in (*added, *restore) if r in self.bundle.checkpoints])
        return ImportReport(run_ids_added=tuple(added), run_ids_skipped=tuple(r for r in run_ids if r in stored),
                            checkpoints_restored=tuple(restore),
                            rows_left_out=tuple(sorted(self.verified.left_out.items())))

    def _insert(self, con: duckdb.DuckDBPyConnection, added: list[str]) -> None:
        delete_runs(con, added)
        con.register("_lossland_added", pa.table({"run_id": pa.array(added, pa.string())}))
        for name, file in self.bundle.tables.items():
            cols = ", ".join(_parquet_columns(con, file))
            con.execute(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM read_parquet(?) WHERE run_id IN "
                        f"(SELECT run_id FROM _lossland_added) AND {self.verified.kept.get(name, 'TRUE')}",
                        [file.as_posix()])
        fill_ids(con)  # a bundle from before schema 7: ids from its configs
        imported_at = now()
        insert_rows(con, "provenance", pa.table({
            "run_id": pa.array(added, pa.string()), "bundle": pa.array([self.target.source] * len(added)),
            "bundle_sha256": pa.array([self.target.sha256] * len(added)),
            "imported_at": pa.array([imported_at] * len(added), pa.timestamp("us"))}))

    def _restorable(self, con: duckdb.DuckDBPyConnection, stored: dict[str, str | None]) -> list[str]:
        """Runs already here whose checkpoint is missing and whose runs row the bundle holds unchanged."""
        missing = [r for r, c in stored.items() if c is None or not self.target.resolve(c).is_file()]
        if not missing:
            return []
        present = set(_parquet_columns(con, self.bundle.tables["runs"]))
        same = " AND ".join(f"r.{c} IS NOT DISTINCT FROM b.{c}" for c in column_names(RUN_COLUMNS)
                            if c in present and c not in ("run_id", "checkpoint"))
        found = {r[0] for r in con.execute(
            f"SELECT r.run_id FROM runs r JOIN read_parquet(?) b USING (run_id) WHERE {same} AND r.run_id IN "
            f"({', '.join('?' * len(missing))})", [self.bundle.tables["runs"].as_posix(), *missing]).fetchall()}
        return [r for r in missing if r in found]

    def _place(self, run_ids: list[str]) -> None:
        """Each checkpoint copied beside its final name, then renamed onto it (a reader never sees half a file)."""
        for run_id in run_ids:
            final = self.target.checkpoint_dir / f"{run_id}.pt"
            staging = final.with_name(final.name + ".importing")
            final.parent.mkdir(parents=True, exist_ok=True)
            existed = final.exists()
            shutil.copyfile(self.bundle.checkpoints[run_id], staging)
            staging.replace(final)
            if not existed:
                self.created.add(final)

    def discard(self) -> None:
        for run_id in self.bundle.run_ids:
            (self.target.checkpoint_dir / f"{run_id}.pt.importing").unlink(missing_ok=True)
        for path in self.created:
            path.unlink(missing_ok=True)
