"""What the store raises, and the advice its messages end with.

Every failure of the store is a StoreError whose message says what went wrong and what to do;
the subclasses let a caller tell a lock held too long, a refused SQL query, a refused bundle and
an unknown pair apart.
"""

from __future__ import annotations

import errno
from pathlib import Path

import duckdb


class StoreError(RuntimeError):
    """The store can't do what was asked; the message says why and what to do."""


class StoreLockedError(StoreError):
    """Another process (or another configuration in this one) held the file past lock_timeout."""


class QueryError(StoreError):
    """A SQL console query was refused, failed or ran past its time limit."""


class BundleError(StoreError):
    """A run bundle can't be exported or imported; the store is unchanged."""


class UnknownPairError(StoreError, KeyError):
    """No runs of that pair id in the store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


_CORRUPT = ("not a valid DuckDB database file", "Could not read enough bytes", "checksum", "orrupt")
_NO_SPACE = ("No space left", "ENOSPC", "Disk quota exceeded")


def advice(path: Path, e: BaseException) -> str:
    """What to do about a store that can't be read or written, appended to the error's message."""
    text = str(e)
    if (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or any(s in text for s in _NO_SPACE):
        return (f". The disk holding {path.parent} is full: free space and retry; the runs already stored are "
                f"unchanged")
    if isinstance(e, (duckdb.SerializationException, duckdb.InternalException)) or any(s in text for s in _CORRUPT):
        return (f". The file is corrupt or truncated; lossland never replaces or overwrites it. Restore {path} from "
                f"a backup, or move it aside (mv {path} {path}.corrupt) and start a fresh store there, re-importing "
                f"your run bundles (lossland import BUNDLE)")
    if isinstance(e, PermissionError) or "Permission denied" in text or "Read-only file system" in text:
        return f". Check that {path} and its folder are writable by this user, or choose another store path"
    return ""


def first_line(e: Exception) -> str:
    """The first line of an error's message (DuckDB's go on for many), or its type's name."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
