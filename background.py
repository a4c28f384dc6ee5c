"""The dashboard's background jobs: one worker thread shared by every session, jobs cancelled by a button
or by the server stopping. No Streamlit here: pages poll a job's fields (ui.job_progress)."""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from lossland.config import ExperimentConfig
from lossland.experiments import run_pair
from lossland.store import Store


class JobCancelled(Exception):
    """Raised inside a worker when its job was cancelled; nothing of the run is stored."""


_STOPPING = threading.Event()
# SIGTERM or Ctrl-C stop Streamlit's server; then Python joins the job threads (concurrent.futures' exit
# hook) before it exits. Threading's exit hooks run last-registered first, so this one runs before that
# join (an `atexit` hook would run after it): every job stops at its next progress report.
threading._register_atexit(_STOPPING.set)


def stopping() -> bool:
    """The process is shutting down: jobs stop, storing nothing, so it exits in seconds."""
    return _STOPPING.is_set()


def duration(seconds: float) -> str:
    """12 s, 4.5 min, 2.1 h: a length of time as a person reads it."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 90 * 60 else f"{seconds / 3600:.1f} h"


@dataclass
class Job:
    key: str  # a pair id, or "<analysis>:<pair id>:<settings>"
    work: Callable[[Callable[[float, str], None]], object] = field(repr=False)
    state: str = "queued"  # queued | running | done | failed | cancelled
    fraction: float = 0.0
    message: str = "queued"
    error: str | None = None
    from_store: bool = False
    cancel: bool = False  # set by a Cancel button; the worker stops at its next progress report
    started: float = field(default_factory=time.time)
    began: float | None = None  # when the worker took it up (queued time excluded)
    finished: float | None = None
    curves: list[dict] = field(default_factory=list, repr=False)  # a pair job's epochs so far: role + curve row
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def pair_id(self) -> str:
        return self.key

    def record_epoch(self, role: str, row: dict) -> None:
        """Keep one epoch's curve row of the `role` run (called from the worker thread)."""
        with self._lock:
            self.curves.append({"role": role, **row})

    def curve_rows(self) -> list[dict]:
        """The epochs seen so far, good run first, each in order (a copy: the worker keeps appending)."""
        with self._lock:
            return list(self.curves)

    def remaining_seconds(self, now: float | None = None) -> float | None:
        """Time left at the pace so far (elapsed × (1 − f) / f); None before 1 % or 1 s of it, or once it ended."""
        if self.state != "running" or self.began is None:
            return None
        elapsed = (time.time() if now is None else now) - self.began
        if self.fraction < 0.01 or elapsed < 1.0:
            return None
        return elapsed * (1.0 - self.fraction) / self.fraction

    def progress_text(self, now: float | None = None) -> str:
        """The progress line: the last message, time elapsed and, once it can be told, time left."""
        now = time.time() if now is None else now
        elapsed = now - (self.began or self.started)
        left = self.remaining_seconds(now)
        return f"{self.message} ({duration(elapsed)}" + (f", about {duration(left)} left)" if left is not None else ")")


class JobRunner:
    """One worker thread shared by every session: a long run never blocks a page, and the same
    work submitted twice at once (two users, two clicks) is computed once."""

    def __init__(self, store: Store, workers: int = 1):
        self.store = store
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lossland-job")
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.version = 0  # bumped when a job lands, so cached queries refresh

    def submit(self, cfg: ExperimentConfig) -> Job:
        """Compute (or answer from the store) the pair of `cfg`; its epochs land in `job.curves` as it trains."""
        def work(progress: _Reporter):
            outcome = run_pair(cfg, self.store, progress, on_epoch=progress.epoch)
            return outcome.from_store

        return self.submit_task(cfg.config_hash(), work)

    def submit_task(self, key: str, work: Callable[[Callable[[float, str], None]], object]) -> Job:
        with self.lock:
            job = self.jobs.get(key)
            if job is not None and job.state in ("queued", "running"):
                return job
            job = Job(key=key, work=work)
            self.jobs[key] = job
        self.pool.submit(self._run, job)
        return job

    def _run(self, job: Job) -> None:
        job.state, job.began = "running", time.time()
        progress = _Reporter(job)
        try:
            progress(0.0, "starting")
            job.from_store = job.work(progress) is True
            job.state, job.fraction, job.message = "done", 1.0, "done"
        except JobCancelled:
            job.state, job.message = "cancelled", "cancelled"
            job.error = "cancelled: the dashboard is stopping" if stopping() else "cancelled by the user"
        except Exception as e:  # noqa: BLE001 - shown to the user; the store is left untouched
            job.state, job.error = "failed", f"{type(e).__name__}: {e}"
            job.message = "failed"
            traceback.print_exc()
        finally:
            job.finished = time.time()
            with self.lock:
                self.version += 1

    def get(self, key: str) -> Job | None:
        return self.jobs.get(key)


class _Reporter:
    """A job's progress callback (and its on_epoch): stops the work at the next report once cancelled."""

    def __init__(self, job: Job):
        self.job = job

    def _check(self) -> None:
        if self.job.cancel or stopping():
            raise JobCancelled(self.job.key)

    def __call__(self, fraction: float, message: str) -> None:
        self._check()
        self.job.fraction, self.job.message = min(max(fraction, 0.0), 1.0), message

    def epoch(self, role: str, row: dict) -> None:
        self._check()
        self.job.record_epoch(role, row)
