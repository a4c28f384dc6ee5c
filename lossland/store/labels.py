"""Tags and notes: what a user writes about a run or a pair (its `subject`: a run id or a pair id).

    tags   subject, key, value: one value per key; keys are letters, digits and _ . : - (at most 64)
    notes  subject, note: one free-text note per subject (an empty note removes it)

They are kept when a run is recomputed (a re-save replaces only its results), travel in bundles
(tables/tags.parquet, tables/notes.parquet, checked like every other table of a bundle) and go with their
runs when `Store.collect_garbage` removes them. A subject must be a run, or a pair with a run, in the store.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path

import duckdb
import pyarrow as pa

from .. import pairs
from .errors import BundleError, StoreError
from .rows import now
from .schema import LABEL_KEYS, LABEL_TABLES, column_names
from .search import TAG_KEY

VALUE_MAX = 1_000
NOTE_MAX = 10_000
MAX_TAGS_PER_SUBJECT = 100


def subject_of(con: duckdb.DuckDBPyConnection, subject: str) -> str:
    """`subject` when it is a run id or a pair id of the store (soft-deleted runs included); StoreError otherwise."""
    column = "run_id" if pairs.is_run_id(subject) else "pair_id"
    ((n,),) = con.execute(f"SELECT count(*) FROM runs WHERE {column} = ?", [subject]).fetchall()
    if not n:
        raise StoreError(f"no {'run' if column == 'run_id' else 'pair'} {subject!r} in the store; tags and notes go "
                         f"on a stored run id (<pair_id>-good, <pair_id>-bad) or pair id")
    return subject


def check_tags(tags: dict[str, str]) -> None:
    for key, value in tags.items():
        if not re.fullmatch(TAG_KEY, key):
            raise StoreError(f"tag key {key[:80]!r}: letters, digits and _ . : - (starting with a letter, digit or "
                             f"_), at most 64 characters")
        if not isinstance(value, str) or len(value) > VALUE_MAX:
            raise StoreError(f"tag {key}: the value must be text of at most {VALUE_MAX:,} characters")


def set_tags(con: duckdb.DuckDBPyConnection, subject: str, tags: dict[str, str]) -> None:
    check_tags(tags)
    subject_of(con, subject)
    for key, value in tags.items():
        con.execute("INSERT OR REPLACE INTO tags VALUES (?, ?, ?, ?)", [subject, key, value, now()])
    ((n,),) = con.execute("SELECT count(*) FROM tags WHERE subject = ?", [subject]).fetchall()
    if n > MAX_TAGS_PER_SUBJECT:
        raise StoreError(f"{subject} would have {n} tags, more than {MAX_TAGS_PER_SUBJECT}")


def remove_tags(con: duckdb.DuckDBPyConnection, subject: str, keys: Iterable[str]) -> list[str]:
    """Remove these tags of the subject; returns the keys it had."""
    subject_of(con, subject)
    keys = list(keys)
    had = [r[0] for r in con.execute(f"SELECT key FROM tags WHERE subject = ? AND key IN ({', '.join('?' * len(keys))})"
                                     f" ORDER BY key", [subject, *keys]).fetchall()] if keys else []
    if had:
        con.execute(f"DELETE FROM tags WHERE subject = ? AND key IN ({', '.join('?' * len(had))})", [subject, *had])
    return had


def set_note(con: duckdb.DuckDBPyConnection, subject: str, note: str) -> None:
    subject_of(con, subject)
    if len(note) > NOTE_MAX:
        raise StoreError(f"the note of {subject} is {len(note):,} characters, at most {NOTE_MAX:,}")
    con.execute("DELETE FROM notes WHERE subject = ?", [subject])
    if note.strip():
        con.execute("INSERT INTO notes VALUES (?, ?, ?)", [subject, note, now()])


def subjects(run_ids: Iterable[str]) -> list[str]:
    """The runs and their pairs: every subject whose labels belong with these runs."""
    ids = list(run_ids)
    return list(dict.fromkeys([*ids, *(pairs.pair_of(r) for r in ids)]))


# --- bundles --------------------------------------------------------------------------------------

def export_labels(con: duckdb.DuckDBPyConnection, run_ids: list[str], folder: Path) -> dict[str, int]:
    """The labels of these runs and their pairs as folder/tables/<table>.parquet; rows per table."""
    con.register("_lossland_subjects", pa.table({"subject": pa.array(subjects(run_ids), pa.string())}))
    counts = {}
    for name, columns in LABEL_TABLES.items():
        target = (folder / "tables" / f"{name}.parquet").as_posix().replace("'", "''")
        select = (f"SELECT {', '.join(column_names(columns))} FROM {name} WHERE subject IN "
                  f"(SELECT subject FROM _lossland_subjects) ORDER BY {', '.join(LABEL_KEYS[name])}")
        con.execute(f"COPY ({select}) TO '{target}' (FORMAT parquet)")
        counts[name] = con.execute(f"SELECT count(*) FROM ({select})").fetchall()[0][0]
    return counts


def verify_labels(con: duckdb.DuckDBPyConnection, path: Path, run_ids: list[str], files: dict[str, Path]) -> None:
    """A bundle's label files (untrusted): the table's columns and types, subjects of the bundle's runs and
    pairs, well-formed unique keys, bounded text, sane times; BundleError otherwise."""
    allowed = subjects(run_ids)
    for name, file in files.items():
        def fail(what: str, name: str = name) -> None:
            raise BundleError(f"importing bundle {path}: tables/{name}.parquet: {what}; refused")

        try:
            found = con.execute("SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet(?))",
                                [file.as_posix()]).fetchall()
        except duckdb.Error:
            fail("not readable Parquet")
        if dict(found) != dict(LABEL_TABLES[name]):
            fail(f"columns {dict(found)} are not those of table {name} {dict(LABEL_TABLES[name])}")
        rows = f"read_parquet('{file.as_posix().replace(chr(39), chr(39) * 2)}')"
        ((n,),) = con.execute(f"SELECT count(*) FROM {rows}").fetchall()
        if n > len(allowed) * MAX_TAGS_PER_SUBJECT:
            fail(f"{n:,} rows, more than {MAX_TAGS_PER_SUBJECT} per run or pair")
        text = ("key", VALUE_MAX, "value") if name == "tags" else (None, NOTE_MAX, "note")
        bad = con.execute(f"SELECT subject FROM {rows} WHERE subject IS NULL OR subject NOT IN "
                          f"({', '.join('?' * len(allowed))}) OR {text[2]} IS NULL OR length({text[2]}) > {text[1]} "
                          f"OR {LABEL_TABLES[name][-1][0]} IS NULL OR {LABEL_TABLES[name][-1][0]} > ? LIMIT 1",
                          [*allowed, now() + timedelta(days=1)]).fetchall()
        if bad:
            fail(f"a row of subject {str(bad[0][0])[:80]!r} is not of a run or pair of the bundle, or its text is "
                 f"missing or longer than {text[1]:,} characters, or its time is missing or in the future")
        if name == "tags":
            keys = con.execute(f"SELECT key FROM {rows}").fetchall()
            wrong = [k for (k,) in keys if k is None or not re.fullmatch(TAG_KEY, k)]
            if wrong:
                fail(f"tag key {str(wrong[0])[:80]!r} is not letters, digits and _ . : - (at most 64)")
        keys = ", ".join(LABEL_KEYS[name])
        if con.execute(f"SELECT {keys} FROM {rows} GROUP BY ALL HAVING count(*) > 1 LIMIT 1").fetchall():
            fail(f"two rows with the same ({keys})")


def merge_labels(con: duckdb.DuckDBPyConnection, files: dict[str, Path], added: list[str]) -> None:
    """The labels of the added runs and their pairs; a label this store already has is kept."""
    if not added:
        return
    wanted = subjects(added)
    for name, file in files.items():
        cols = ", ".join(column_names(LABEL_TABLES[name]))
        con.execute(f"INSERT OR IGNORE INTO {name} ({cols}) SELECT {cols} FROM read_parquet(?) WHERE subject IN "
                    f"({', '.join('?' * len(wanted))})", [file.as_posix(), *wanted])
