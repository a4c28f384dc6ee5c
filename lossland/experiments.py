"""Orchestration: a config becomes a stored, cached good/bad pair.

The pair id is the hash of what determines the minima (`ExperimentConfig.training_hash`: not the spectrum
settings, not the device). A pair already in the store comes back at once (its spectra measured again from
the checkpoints when the config asks for other spectrum settings); otherwise the bad minimum is trained and
the good one too, unless a good run of the same data, model and training (`good_hash`, no attack) is
stored, which is reused; their spectra are measured, checkpoints saved, and everything is written to the
store in one transaction. A sweep trains each good minimum once, before the points that share it.
The dashboard and the CLI both call these functions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from . import leases
from .basins import attack_size_grid
from .checkpoint import CheckpointError, load_checkpoint, write_checkpoint_bytes
from .config import ConfigError, ExperimentConfig
from .executors import Executor, PointResult, PointTask, make_executor
from .factories import pinned
from .measure import ensure_spectra
from .pairs import CURVE_COLUMNS, METRICS, ROLES, Progress, pair_of, quiet, run_id, run_ids
from .pipeline import ComputedPair, compute_pair
from .store import PairView, Store
from .store.rows import spectrum_run_facts
from .train import Curves, OnEpoch, TrainResult

VERIFIED = ("epochs", "clean_loss", "clean_acc", "attack_acc", "test_acc", "top_eigenvalue", "trace",
            "frobenius_sq", "log_volume")  # what `verify_pair` compares
VERIFY_RTOL = 1e-6  # CPU runs of one config agree far closer than this; a forged number does not


@dataclass(frozen=True)
class PairOutcome:
    pair_id: str
    from_store: bool  # True: answered from the store without training
    view: PairView

    imported_from: str | None = None  # "bundle.zip (sha256 1a2b3c4d…)" when the stored pair came from a bundle


def run_pair(cfg: ExperimentConfig, store: Store, progress: Progress = quiet,
             device: torch.device | str | None = None, on_epoch: OnEpoch | None = None) -> PairOutcome:
    """The stored pair for `cfg`, computing and storing it first when it is not there yet (`on_epoch` sees
    each epoch's curve row while it trains). A pair that was imported from a bundle is answered too, and
    says so (`PairOutcome.imported`; `verify_pair` recomputes it).
    A config naming factories is pinned first (lossland.factories.pinned): its id covers their source."""
    cfg = pinned(cfg)
    pair_id = cfg.config_hash()
    if store.has_pair(pair_id):
        return _answered(store, cfg, progress)
    with leases.claimed(store, lambda message: progress(0.0, message)) as claim:  # one job per pair, any process
        for _ in claim.batches([pair_id]):
            good = stored_good(store, cfg)
            computed = compute_pair(cfg, progress, device, on_epoch=on_epoch, good=good[0] if good else None)
            progress(0.99, "writing to the store")
            store_computed(computed, store, good[1] if good else None)
            progress(1.0, f"pair {pair_id} stored")
            return PairOutcome(pair_id, False, store.pair(pair_id))
    return _answered(store, cfg, progress)  # another process stored it while this one waited


def _answered(store: Store, cfg: ExperimentConfig, progress: Progress) -> PairOutcome:
    """A stored pair; its spectra with cfg's settings, measured on its checkpoints where they are other ones."""
    pair_id = cfg.config_hash()
    view = store.pair(pair_id)
    if not (view.runs["spectrum_id"] == cfg.spectrum_id()).all():
        ensure_spectra(store, pair_id, cfg.spectrum, progress)
        view = store.pair(pair_id, cfg.spectrum_id())
    outcome = PairOutcome(pair_id, True, view, _imported_from(store, pair_id))
    origin = (f", imported from {outcome.imported_from}: verify_pair (lossland run --verify) recomputes it"
              if outcome.imported_from else "")
    progress(1.0, f"pair {pair_id} answered from the store{origin}")
    return outcome


def _imported_from(store: Store, pair_id: str) -> str | None:
    prov = store.provenance(run_ids(pair_id))
    if prov.empty:
        return None
    row = prov.iloc[0]
    return f"{row['bundle']} (sha256 {str(row['bundle_sha256'])[:12]}…, imported {row['imported_at']})"


@dataclass(frozen=True)
class Verification:
    """A stored pair against the same config computed again here: per role and quantity, both values."""

    pair_id: str
    rows: tuple[tuple[str, str, float | None, float | None], ...]  # (role, quantity, stored, recomputed)
    rtol: float = VERIFY_RTOL

    @staticmethod
    def _agree(a: float | None, b: float | None, rtol: float) -> bool:
        if a is None or b is None or math.isnan(a) or math.isnan(b):
            return (a is None or math.isnan(a)) and (b is None or math.isnan(b))
        return abs(a - b) <= rtol * max(abs(a), abs(b), 1e-12)

    @property
    def differing(self) -> list[tuple[str, str, float | None, float | None]]:
        return [r for r in self.rows if not self._agree(r[2], r[3], self.rtol)]

    @property
    def ok(self) -> bool:
        return not self.differing


def verify_pair(cfg: ExperimentConfig, store: Store, progress: Progress = quiet,
                device: torch.device | str | None = None) -> Verification:
    """Recompute the pair of `cfg` (nothing is written) and compare it with what the store holds for it:
    the way to trust, or expose, a pair that came from someone else's bundle."""
    cfg = pinned(cfg)
    pair_id = cfg.config_hash()
    stored = store.pair(pair_id).runs.set_index("role")
    computed = compute_pair(cfg, progress, device)
    fresh = {role: _run_numbers(computed, role) for role in ROLES}
    rows = tuple((role, q, _number(stored.loc[role, q]) if role in stored.index else None, fresh[role].get(q))
                 for role in ROLES for q in VERIFIED)
    return Verification(pair_id, rows)


def _number(v: Any) -> float | None:
    try:
        return None if v is None or v is pd.NA else float(v)
    except (TypeError, ValueError):
        return None


def _run_numbers(computed: ComputedPair, role: str) -> dict[str, float | None]:
    """The headline numbers the store would record for this role of a freshly computed pair."""
    r, s = getattr(computed.pair, role), computed.spectra.get(role)
    facts = spectrum_run_facts(s) if s is not None else {}
    return {"epochs": float(r.epochs), **{q: _number(getattr(r, q, facts.get(q))) for q in VERIFIED[1:5]},
            **{q: _number(facts.get(q)) for q in VERIFIED[5:]}}


def store_computed(computed: ComputedPair, store: Store, good_from: str | None = None) -> list[str]:
    """Write a computed pair: both checkpoints (atomically, beside the store), then its rows in one
    transaction, with the factories' source text (extra_json "factory_sources") for review and the run its
    good minimum was reused from ("good_from"). Returns the run ids."""
    paths = {role: str(write_checkpoint_bytes(store.checkpoint_dir / f"{run_id(computed.pair_id, role)}.pt", blob))
             for role, blob in computed.checkpoints.items()}
    extra = {k: v for k, v in (("factory_sources", computed.sources), ("good_from", good_from)) if v}
    return store.save_pair(computed.pair, computed.spectra, paths, extra or None)


def stored_good(store: Store, cfg: ExperimentConfig) -> tuple[TrainResult, str] | None:
    """The good minimum of cfg's data, model and training as some stored pair (of another attack set) holds it,
    with its run id; None when no run computed here has it with its checkpoint. Its id is re-derived from its
    stored config and its checkpoint must be of that config, so a wrong train_id is never trusted."""
    runs = store.runs(train_id=cfg.good_hash(), role="good").iloc[::-1]  # oldest first: the one that trained it
    for row in runs[(runs["status"] != "failed") & ~runs["imported"] & ~runs["checkpoint_missing"]].itertuples():
        path = store.checkpoint_path(row.run_id)
        try:
            if path is None or ExperimentConfig.from_json(row.config_json).good_hash() != cfg.good_hash():
                continue
            ck = load_checkpoint(path)
        except (ConfigError, CheckpointError):
            continue
        if ck.role == "good" and ck.config.good_hash() == cfg.good_hash():
            curves = store.pair(pair_of(row.run_id)).curves
            curves = curves[curves["run_id"] == row.run_id].sort_values("epoch")
            return _train_result(row, curves, ck), row.run_id
    return None


def _train_result(row: Any, curves: pd.DataFrame, ck: Any) -> TrainResult:
    """A stored good run as the TrainResult training returned (its model and trajectory from its checkpoint)."""
    values = {c: tuple(curves[c].astype(float).to_numpy(na_value=math.nan).tolist()) for c in CURVE_COLUMNS}
    values["epoch"] = tuple(int(e) for e in curves["epoch"])
    return TrainResult(role="good", status=row.status, stop_reason=str(row.stop_reason), epochs=int(row.epochs),
                       seconds=float(row.seconds), device=str(row.device), n_params=int(row.n_params),
                       **{m: float(_number(getattr(row, m)) or math.nan) for m in METRICS},
                       curves=Curves(**values), model=ck.model, trajectory=ck.trajectory)


def grid_configs(base: ExperimentConfig, grid: dict[str, Iterable[Any]],
                 max_points: int = 100_000) -> list[ExperimentConfig]:
    """Every combination of the grid's values applied to `base` (validated, in grid order)."""
    keys = list(grid)  # any config field: the first config below names a wrong one
    values = [list(grid[k]) for k in keys]
    total = math.prod(len(v) for v in values)
    if total > max_points:  # checked before building a single config: a huge grid must not exhaust memory
        raise ConfigError(f"sweep grid = {total:,} points is over the limit of {max_points:,}; sweep fewer values")
    for k, v in zip(keys, values, strict=True):
        if not v:
            raise ConfigError(f"sweep field {k!r} has no values")
    return [base.with_changes(**dict(zip(keys, combo, strict=True))) for combo in itertools.product(*values)]


def sweep(base: ExperimentConfig, grid: dict[str, Iterable[Any]], store: Store, progress: Progress = quiet,
          device: torch.device | str | None = None, executor: str | Executor | None = None,
          threads: int | None = None) -> list[PairOutcome]:
    """Every grid point, computed by `executor` ("local", the default: here, one after another; "ray":
    one Ray task each; or an `executors.Executor`) and written to the store by this process as each
    arrives. Stored points are skipped, so an interrupted sweep resumes; a point that raises is stored
    as failed (its outcome's runs say why) and the others go on. Points that share a good minimum (an
    attack-size sweep) train it once: the first of them in a first wave, the rest after it, reusing it.
    Every point runs with `threads` torch threads (default: this process's), whatever the executor: the
    thread count changes the floating-point results, so both executors store the same numbers."""
    configs = [pinned(c) for c in grid_configs(base, grid)]
    ids = [c.config_hash() for c in configs]
    chosen = make_executor(executor)
    stored = {pid for pid in dict.fromkeys(ids) if store.has_pair(pid)}
    dev = str(torch.device(device)) if device is not None else None
    todo = {pid: cfg for pid, cfg in zip(ids, configs, strict=True) if pid not in stored}
    first: dict[str, str] = {}
    for pid, cfg in todo.items():
        first.setdefault(cfg.good_hash(), pid)  # the first point of each good minimum trains it
    waves = [list(first.values()), [pid for pid in todo if pid not in first.values()]]
    tally = _SweepTally(len(todo), len(stored), progress)
    tally.report()
    with leases.claimed(store, tally.report) as claim:  # points another process is training are waited for
        for batch in (b for wave in waves for b in claim.batches(wave)):
            tally.tasks = [_task(store, todo[pid], dev, threads) for pid in batch]
            for result in chosen.map(tally.tasks, tally.point):
                failed = store_point(result, store)
                claim.release([result.pair_id])
                tally.finish(result, failed)
        if claim.stored_elsewhere:
            stored |= claim.stored_elsewhere
            tally.stored = len(stored)
            tally.report(f"{len(claim.stored_elsewhere)} stored by another process while this one waited")
    return [PairOutcome(pid, pid in stored, store.pair(pid)) for pid in ids]


def _task(store: Store, cfg: ExperimentConfig, device: str | None, threads: int | None) -> PointTask:
    good = stored_good(store, cfg)
    return PointTask(cfg, device, threads or torch.get_num_threads(), *(good or (None, None)))


def store_point(result: PointResult, store: Store) -> bool:
    """Write one executor result to the store: the pair, or the point as failed. True when it failed."""
    if result.error is not None:
        store.save_failed(result.config, result.error)
        return True
    store_computed(result.computed, store, result.good_from)
    return False


class _SweepTally:
    """Progress of a sweep point by point: how many are done, new, from the store, failed."""

    def __init__(self, new: int, stored: int, progress: Progress):
        self.tasks: list[PointTask] = []  # those of the batch being computed
        self.total, self.stored, self.progress = new + stored, stored, progress
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

    def finish(self, result: PointResult, failed: bool) -> None:
        self.running.pop(result.pair_id, None)
        self.failed += failed
        self.new += not failed
        self.report(f"{result.pair_id} " + (f"failed: {result.error}" if failed else "stored"))


# --- the attack-size sweep ---------------------------------------------------------------------

def attack_sweep_grid(cfg: ExperimentConfig, n_points: int = 5, seeds: int = 3) -> dict[str, list]:
    """Attack sizes from 0 to 2× the clean size (clipped to the pool) × seeds, for experiments.sweep."""
    return {"attack.n_attack": attack_size_grid(cfg, 2.0, n_points), "train.seed": list(range(seeds))}


def attack_sweep_frame(store: Store, cfg: ExperimentConfig, grid: dict[str, list]) -> pd.DataFrame:
    """The stored runs of an attack-size sweep (points not yet stored are simply absent)."""
    ids = [c.config_hash() for c in grid_configs(cfg, grid)]
    runs = store.runs(pair_id=ids) if ids else store.runs(pair_id="")
    return runs[runs["status"] != "failed"]
