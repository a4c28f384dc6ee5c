"""Executors: where the points of a sweep are computed.

A sweep hands an executor its unstored points as `PointTask`s; the executor computes each with
`compute_point` and yields a `PointResult` as each finishes. `LocalExecutor` computes them in this
process, one after another; `RayExecutor` makes each a Ray task on a local instance or a cluster.
Neither writes the store: results are frozen and picklable (metrics, curves, spectra and the
checkpoint files as bytes, never a live model), and only the driver writes them, one transaction
per point as it arrives (DuckDB has one writer; `experiments.sweep` does the writing).

A point that raises comes back as a result carrying the error, recorded as failed; a Ray worker
that dies is retried `max_retries` times by Ray, then recorded as failed; a lost connection to
the cluster stops the sweep with an `ExecutorError`, every point written so far kept.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import torch

from .config import ExperimentConfig
from .pairs import Progress, quiet
from .pipeline import ComputedPair, compute_pair
from .train import PairResult, TrainResult

EXECUTORS = ("local", "ray")
ADDRESS_ENV = "LOSSLAND_RAY_ADDRESS"
PointProgress = Callable[[int, float, str], None]  # (index of the task, fraction of that point, message)


class ExecutorError(RuntimeError):
    """An executor can't run: Ray missing, the cluster unreachable or lost, a point no node can host."""


@dataclass(frozen=True)
class PointTask:
    config: ExperimentConfig
    device: str | None = None  # None: the config's train.device
    threads: int | None = None  # torch intra-op threads for the point: they change float results
    good: TrainResult | None = None  # its good minimum, stored for another attack size (not trained again)
    good_from: str | None = None  # ... and the run it is stored as

    @property
    def pair_id(self) -> str:
        return self.config.config_hash()


@dataclass(frozen=True)
class PointResult:
    """One computed point: the pipeline's pair without its live models (computed.pair.good.model is
    None; the weights travel as checkpoint bytes), or the error that stopped it."""

    config: ExperimentConfig
    computed: ComputedPair | None  # None when the point failed
    error: str | None = None  # "ExceptionType: message" when the point failed
    host: str = ""
    seconds: float = 0.0
    good_from: str | None = None  # the run its good minimum was reused from

    @property
    def pair_id(self) -> str:
        return self.config.config_hash()


def compute_point(task: PointTask, progress: Progress = quiet) -> PointResult:
    """`pipeline.compute_pair` for one task, returned without live models; exceptions come back as the
    result's error."""
    cfg, start, threads = task.config, time.perf_counter(), torch.get_num_threads()
    try:
        if task.threads:
            torch.set_num_threads(task.threads)
        computed = compute_pair(cfg, progress, task.device, good=task.good)
        pair = computed.pair
        light = PairResult(config=cfg, good=replace(pair.good, model=None), bad=replace(pair.bad, model=None))
        return PointResult(cfg, replace(computed, pair=light), host=socket.gethostname(),
                           seconds=time.perf_counter() - start, good_from=task.good_from)
    except Exception as e:  # noqa: BLE001 - any failure of one point is that point's result
        return PointResult(cfg, None, error=f"{type(e).__name__}: {e}", host=socket.gethostname(),
                           seconds=time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


class Executor(Protocol):
    name: str

    def map(self, tasks: Sequence[PointTask], progress: PointProgress) -> Iterator[PointResult]:
        """A result for every task, each yielded as it finishes (in any order)."""
        ...


class LocalExecutor:
    """Today's behaviour: every point in this process, one after another, with progress inside each."""

    name = "local"

    def map(self, tasks: Sequence[PointTask], progress: PointProgress) -> Iterator[PointResult]:
        for i, task in enumerate(tasks):
            yield compute_point(task, lambda f, m, i=i: progress(i, f, m))


class RayExecutor:
    """Every point a Ray task: on the cluster at `address` (else $LOSSLAND_RAY_ADDRESS, else Ray's own
    $RAY_ADDRESS, else a local instance of `num_cpus` CPUs started here and stopped after the sweep).
    A Ray session already open in this process (`ray.init` called before) is used as it is.

    Resources: a task asks for one GPU when its device is "cuda", or "auto" on a cluster that has
    GPUs; otherwise only CPUs. It asks for `cpus_per_task` CPUs (default: its torch threads, so
    tasks never oversubscribe a node). `task` is the function a task runs (compute_point; tests
    wrap it to inject faults). `ship_code` sends this lossland package to the workers when this
    executor opens the session (runtime_env py_modules, a job-level option), so workers run the
    driver's code whatever they have installed; a session opened elsewhere brings its own.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, max_retries: int = 2,
                 cpus_per_task: float | None = None, task: Callable[[PointTask], PointResult] = compute_point,
                 ship_code: bool = True, poll_seconds: float = 5.0):
        if max_retries < 0:
            raise ValueError(f"max_retries = {max_retries} is not allowed: 0 or more")
        self.address = address or os.environ.get(ADDRESS_ENV) or os.environ.get("RAY_ADDRESS") or None
        self.num_cpus, self.max_retries, self.cpus_per_task = num_cpus, max_retries, cpus_per_task
        self.task, self.ship_code, self.poll_seconds = task, ship_code, poll_seconds
        self._gcs: tuple[str, int] | None = None
        self._gone = False

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.address or 'local instance'!r}, max_retries={self.max_retries})"

    @property
    def where(self) -> str:
        return f"the Ray cluster at {self.address}" if self.address else "the local Ray instance"

    def map(self, tasks: Sequence[PointTask], progress: PointProgress) -> Iterator[PointResult]:
        ray = _import_ray()
        if not tasks:
            return
        started = self._connect(ray)
        self._gcs, self._gone = _gcs_address(ray), False
        pending: dict = {}
        try:
            remote = ray.remote(self.task)
            gpus, cpus = self._cluster(ray)
            for i, task in enumerate(tasks):
                num_gpus, num_cpus, device = self._resources(task, gpus, cpus)
                ref = remote.options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=self.max_retries,
                                     retry_exceptions=False,
                                     name=f"lossland point {task.pair_id}").remote(replace(task, device=device))
                pending[ref] = i
                progress(i, 0.0, "queued")
            while pending:
                try:
                    done, _ = ray.wait(list(pending), num_returns=1, timeout=self.poll_seconds)
                except Exception as e:  # noqa: BLE001 - whatever wait raises, the cluster is lost
                    raise self._lost(e, len(tasks) - len(pending), len(tasks)) from e
                if not done and not self._reachable():
                    raise self._lost(None, len(tasks) - len(pending), len(tasks))
                for ref in done:
                    i = pending.pop(ref)
                    yield self._fetch(ray, ref, tasks[i], len(tasks) - len(pending), len(tasks))
        finally:
            if not self._gone or self._reachable():  # with the cluster gone they'd hang until Ray ends the process
                for ref in pending:
                    try:
                        ray.cancel(ref, force=True)
                    except Exception:  # noqa: BLE001 - best effort
                        pass
                if started:
                    ray.shutdown()

    def _connect(self, ray) -> bool:
        """Join the cluster (or start a local instance); True when this call did, so map() leaves it."""
        if ray.is_initialized():
            return False
        local = self.address in (None, "local")
        kwargs = {"num_cpus": self.num_cpus, "include_dashboard": False} if local else {}
        if self.ship_code:  # a job-level option: Ray uploads local folders only at init
            kwargs["runtime_env"] = {"py_modules": [str(Path(__file__).parent)], "excludes": ["__pycache__"]}
        try:
            ray.init(address=self.address, logging_level="WARNING", **kwargs)
        except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError here
            raise ExecutorError(f"cannot start or reach {self.where}: {type(e).__name__}: {e} (a cluster with "
                                f"token authentication also needs RAY_AUTH_MODE=token and its token here)") from None
        return True

    def _reachable(self) -> bool:
        """Whether the cluster's control store (GCS) still accepts connections. Asked of the socket, not of
        Ray: a Ray call would wait out Ray's own reconnect timeout and then end this process unannounced."""
        if self._gcs is None:
            return True  # Ray Client (ray://) or unknown: Ray's own errors will tell
        try:
            socket.create_connection(self._gcs, timeout=5).close()
            return True
        except OSError:
            return False

    @staticmethod
    def _cluster(ray) -> tuple[float, float]:
        """The cluster's GPU count and the CPUs of its largest alive node."""
        gpus = ray.cluster_resources().get("GPU", 0.0)
        cpus = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=0.0)
        return gpus, cpus

    def _resources(self, task: PointTask, gpus: float, node_cpus: float) -> tuple[float, float, str]:
        """(num_gpus, num_cpus, device) for one point, checked against what the cluster has."""
        wanted = task.device if task.device is not None else task.config.train.device
        use_gpu = wanted.startswith("cuda") or (wanted == "auto" and gpus > 0)
        if use_gpu and gpus < 1:
            raise ExecutorError(f"point {task.pair_id} wants a CUDA device but {self.where} has no GPU; "
                                f"set train.device to 'auto' or 'cpu', or add GPU nodes")
        num_cpus = self.cpus_per_task if self.cpus_per_task is not None else float(task.threads or 1)
        if num_cpus > node_cpus:
            raise ExecutorError(f"each point asks for {num_cpus:g} CPUs (its torch threads) but the largest node of "
                                f"{self.where} has {node_cpus:g}; sweep with fewer threads (--threads)")
        return (1.0 if use_gpu else 0.0), num_cpus, ("cuda" if use_gpu else "cpu")  # a task sees its GPU as cuda:0

    def _fetch(self, ray, ref, task: PointTask, done: int, total: int) -> PointResult:
        try:
            return ray.get(ref)
        except (ray.exceptions.RaySystemError, ray.exceptions.LocalRayletDiedError, ConnectionError) as e:
            raise self._lost(e, done - 1, total) from e
        except ray.exceptions.RayError as e:  # the task's worker died more than max_retries times, or similar
            if not self._reachable():  # tasks fail when the head goes: that's no fault of the point
                raise self._lost(e, done - 1, total) from e
            cause = getattr(e, "cause", None)  # what the task itself raised, for a RayTaskError
            if isinstance(cause, Exception):
                return PointResult(task.config, None, error=f"{type(cause).__name__}: {cause}")
            first = (str(e).strip().splitlines() or [""])[0]
            return PointResult(task.config, None, error=f"{type(e).__name__} (retried {self.max_retries} times at "
                                                        f"most): {first}")

    def _lost(self, e: BaseException | None, done: int, total: int) -> ExecutorError:
        self._gone = True
        why = f"{type(e).__name__}: {e}" if e is not None else "its head node no longer answers"
        return ExecutorError(f"lost the connection to {self.where} after {done} of {total} points ({why}); "
                             f"every point received so far is stored, run the same sweep again to resume")


def _gcs_address(ray) -> tuple[str, int] | None:
    try:
        host, _, port = ray.get_runtime_context().gcs_address.rpartition(":")
        return host, int(port)
    except Exception:  # noqa: BLE001 - Ray Client sessions have no GCS address here
        return None


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ExecutorError("the 'ray' executor needs Ray: pip install -r requirements-ray.txt") from None
    return ray


def make_executor(executor: str | Executor | None = None, address: str | None = None, **ray_options) -> Executor:
    """An executor from its name ("local" when None) or one given as it is."""
    if executor is None or executor == "local":
        return LocalExecutor()
    if executor == "ray":
        return RayExecutor(address=address, **ray_options)
    if isinstance(executor, str):
        raise ValueError(f"executor = {executor!r} is not allowed: one of {', '.join(EXECUTORS)}")
    return executor
