"""One job per config across processes: before training a pair, a process takes its lease in the store.

A CLI `run`, a sweep point and a dashboard job all go through `claimed`: the pairs whose leases this
process gets are trained here; for a pair whose lease another live process holds, it waits with a message
("pair X is being trained by pid N on host H since T; waiting") and, once that process has stored the pair,
answers from the store instead of training again. A lease is kept alive by a heartbeat thread while its
pairs train, and expires when its owner's process is gone (same host) or its heartbeat is older than the
timeout; then the next process takes it over. A pair whose owner gave up without storing it (a failure, a
cancel) is taken and trained by the next process in line.

The store is a DuckDB file that one process at a time may open: taking, renewing and releasing are short
write transactions, and waiting only reads, once per poll.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from .store import Store, StoreError
from .store.leases import Lease

TIMEOUT_S = 60.0  # a lease whose heartbeat is older than this has expired
HEARTBEAT_S = 5.0
POLL_S = 1.0  # how often a waiting process looks again

Report = Callable[[str], None]


class Claim:
    """The leases one caller holds on a store, under one token; `batches` hands out the pairs to train."""

    def __init__(self, store: Store, report: Report, timeout_s: float = TIMEOUT_S, heartbeat_s: float = HEARTBEAT_S,
                 poll_s: float = POLL_S):
        self.store, self.report = store, report
        self.timeout_s, self.heartbeat_s, self.poll_s = float(timeout_s), float(heartbeat_s), float(poll_s)
        self.token = uuid.uuid4().hex
        self.stored_elsewhere: set[str] = set()  # pairs another process stored while this one waited
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def batches(self, pair_ids: Iterable[str]) -> Iterator[list[str]]:
        """The given pairs in batches this claim holds the leases of and the store lacks: train and store each
        batch, then take the next. Between batches it waits while live owners elsewhere hold the rest."""
        pending = list(dict.fromkeys(pair_ids))
        while pending:
            others, expired = self.store.take_leases(pending, self.token, self.timeout_s)
            for lease in expired:
                self.report(f"took over the lease of {lease.describe()}: its owner is gone")
            mine = [p for p in pending if p not in others]
            done = [p for p in mine if self.store.has_pair(p)]  # stored by the owner before it let go
            self.release(done)
            self.stored_elsewhere.update(done)
            todo = [p for p in mine if p not in done]
            pending = [p for p in pending if p in others]
            if todo:
                self._start_heartbeat()
                yield todo
            if pending:
                pending = self._wait(pending, others)

    def _wait(self, pending: list[str], others: dict[str, Lease]) -> list[str]:
        """Poll (reading only) until some pending pair is stored or its lease is no longer live; returns the
        pairs still pending."""
        first = others[pending[0]]
        more = f" (and {len(pending) - 1} more pair(s) held elsewhere)" if len(pending) > 1 else ""
        start = time.monotonic()
        while True:
            self.report(f"{first.describe()}; waiting{more} ({time.monotonic() - start:.0f} s)")
            time.sleep(self.poll_s)
            stored = {p for p in pending if self.store.has_pair(p)}
            self.stored_elsewhere.update(stored)
            now_held = self.store.leases()
            left = [p for p in pending if p not in stored]
            if stored or any(p not in now_held or now_held[p].token != others[p].token
                             or not now_held[p].live(self.timeout_s) for p in left):
                return left

    def release(self, pair_ids: Iterable[str]) -> None:
        """Give up the leases of these pairs (trained and stored, or failed)."""
        ids = list(pair_ids)
        if ids:
            self.store.release_leases(self.token, ids)

    def _start_heartbeat(self) -> None:
        if self._beat is None:
            self._beat = threading.Thread(target=self._heartbeat, name="lossland-lease", daemon=True)
            self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.store.renew_leases(self.token)
            except StoreError:
                pass  # the store is busy: the next beat renews it, well before the timeout

    def close(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        try:
            self.store.release_leases(self.token)
        except StoreError:
            pass  # the store stayed locked: without heartbeats these leases expire after timeout_s


@contextmanager
def claimed(store: Store, report: Report, **timing: float) -> Iterator[Claim]:
    """A Claim on `store` whose leases are all released on leaving (trained, failed or interrupted alike)."""
    claim = Claim(store, report, **timing)
    try:
        yield claim
    finally:
        claim.close()
