"""Orchestration: a config becomes a stored, cached good/bad pair.

The pair id is the config's hash. A pair already in the store comes back at once; otherwise both
minima are trained, their spectra measured, checkpoints saved, and everything is written to the
store in one transaction. The dashboard and the CLI both call these functions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import save_checkpoint
from .config import ConfigError, ExperimentConfig
from .curvature import SpectrumResult, spectrum
from .data import load_experiment_data
from .store import PairView, Store
from .train import PairResult, TrainResult, loss_function, resolve_device, train_pair

Progress = Callable[[float, str], None]
SWEEP_FIELDS = ("train.seed", "model.seed", "data.seed", "attack.seed", "attack.n_attack", "model.widths",
                "data.n_train", "train.lr", "train.batch_size", "train.loss_target")


def _quiet(fraction: float, message: str) -> None:
    pass


@dataclass(frozen=True)
class PairOutcome:
    pair_id: str
    from_store: bool  # True: answered from the store without training
    view: PairView


def pair_spectra(pair: PairResult, cfg: ExperimentConfig, progress: Progress = _quiet) -> dict[str, SpectrumResult]:
    """Hessian spectra of the clean training loss at both minima (skipping a diverged one)."""
    data = load_experiment_data(cfg)
    loss_fn = loss_function(cfg.train.loss)
    out: dict[str, SpectrumResult] = {}
    runs: list[TrainResult] = [r for r in (pair.good, pair.bad) if r.status != "diverged"]
    for i, r in enumerate(runs):
        dev = torch.device(r.device)
        part = lambda f, m, i=i, role=r.role: progress((i + f) / len(runs), f"spectrum of {role}: {m}")  # noqa: E731
        out[r.role] = spectrum(r.model, data.x_train.to(dev), data.y_train.to(dev), loss_fn, cfg.spectrum, part)
    return out


def run_pair(cfg: ExperimentConfig, store: Store, progress: Progress = _quiet,
             device: torch.device | str | None = None) -> PairOutcome:
    """The stored pair for `cfg`, computing and storing it first when it is not there yet."""
    pair_id = cfg.config_hash()
    if store.has_pair(pair_id):
        progress(1.0, f"pair {pair_id} answered from the store")
        return PairOutcome(pair_id, True, store.pair(pair_id))
    dev = torch.device(device) if device is not None else resolve_device(cfg.train.device)
    progress(0.0, "loading data")
    pair = train_pair(cfg, lambda f, m: progress(0.7 * f, m), dev)
    spectra = pair_spectra(pair, cfg, lambda f, m: progress(0.7 + 0.28 * f, m))
    checkpoints = {}
    for r in (pair.good, pair.bad):
        path = Path(store.checkpoint_dir) / f"{pair_id}-{r.role}.pt"
        save_checkpoint(path, cfg, r.role, r.model)
        checkpoints[r.role] = str(path)
    progress(0.99, "writing to the store")
    store.save_pair(pair, spectra, checkpoints)
    progress(1.0, f"pair {pair_id} stored")
    return PairOutcome(pair_id, False, store.pair(pair_id))


def grid_configs(base: ExperimentConfig, grid: dict[str, Iterable[Any]],
                 max_points: int = 100_000) -> list[ExperimentConfig]:
    """Every combination of the grid's values applied to `base` (validated, in grid order)."""
    for key in grid:
        if key not in SWEEP_FIELDS:
            raise ConfigError(f"sweep field {key!r} is not allowed: one of {', '.join(SWEEP_FIELDS)}")
    keys = list(grid)
    values = [list(grid[k]) for k in keys]
    total = math.prod(len(v) for v in values)
    if total > max_points:  # checked before building a single config: a huge grid must not exhaust memory
        raise ConfigError(f"sweep grid = {total:,} points is over the limit of {max_points:,}; sweep fewer values")
    for k, v in zip(keys, values, strict=True):
        if not v:
            raise ConfigError(f"sweep field {k!r} has no values")
    return [base.with_changes(**dict(zip(keys, combo, strict=True))) for combo in itertools.product(*values)]


def sweep(base: ExperimentConfig, grid: dict[str, Iterable[Any]], store: Store, progress: Progress = _quiet,
          device: torch.device | str | None = None, executor: Any = None,
          threads: int | None = None) -> list[PairOutcome]:
    """Every grid point, computed by `executor` ("local", the default: here, one after another; "ray":
    one Ray task each; or an `executors.Executor`) and written to the store by this process as each
    arrives. Stored points are skipped, so an interrupted sweep resumes; a point that raises is stored
    as failed (its outcome's runs say why) and the others go on. Every point runs with `threads`
    torch threads (default: this process's), whatever the executor: the thread count changes the
    floating-point results, so both executors store the same numbers."""
    from .executors import PointTask, make_executor

    configs = grid_configs(base, grid)
    ids = [c.config_hash() for c in configs]
    chosen = make_executor(executor)
    stored = {pid for pid in dict.fromkeys(ids) if store.has_pair(pid)}
    dev = str(torch.device(device)) if device is not None else None
    tasks = list({pid: PointTask(cfg, dev, threads or torch.get_num_threads())
                  for pid, cfg in zip(ids, configs, strict=True) if pid not in stored}.values())
    tally = _SweepTally(tasks, len(stored), progress)
    tally.report()
    for result in chosen.map(tasks, tally.point):
        failed = store_point(result, store)
        tally.finish(result, failed)
    return [PairOutcome(pid, pid in stored, store.pair(pid)) for pid in ids]


def store_point(result: Any, store: Store) -> bool:
    """Write one executor result (an `executors.PointResult`) to the store: checkpoints from their bytes
    (atomically, beside the store as run_pair puts them), then the pair in one transaction, or the
    point as failed. Returns True when the point failed."""
    if result.error is not None:
        store.save_failed(result.config, result.error)
        return True
    paths = {}
    for role, blob in result.checkpoints.items():
        path = Path(store.checkpoint_dir) / f"{result.pair_id}-{role}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(blob)
        tmp.replace(path)  # a reader never sees half a file
        paths[role] = str(path)
    store.save_pair(result.pair, result.spectra, paths)
    return False


class _SweepTally:
    """Progress of a sweep point by point: how many are done, new, from the store, failed."""

    def __init__(self, tasks: list, stored: int, progress: Progress):
        self.tasks, self.total, self.stored, self.progress = tasks, len(tasks) + stored, stored, progress
        self.new = self.failed = 0
        self.running: dict[str, float] = {}  # pair id -> fraction of that point done

    def report(self, detail: str = "") -> None:
        done = self.stored + self.new + self.failed
        fraction = (done + sum(self.running.values())) / self.total if self.total else 1.0
        self.progress(min(fraction, 1.0), f"{done}/{self.total} points done ({self.new} new, {self.stored} from "
                                          f"the store, {self.failed} failed)" + (f"; {detail}" if detail else ""))

    def point(self, index: int, fraction: float, message: str) -> None:
        pair_id = self.tasks[index].pair_id
        self.running[pair_id] = min(max(fraction, 0.0), 0.999)
        self.report(f"{pair_id}: {message}")

    def finish(self, result: Any, failed: bool) -> None:
        self.running.pop(result.pair_id, None)
        self.failed += failed
        self.new += not failed
        self.report(f"{result.pair_id} " + (f"failed: {result.error}" if failed else "stored"))
