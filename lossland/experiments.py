"""Orchestration: a config becomes a stored, cached good/bad pair.

The pair id is the config's hash. A pair already in the store comes back at once; otherwise both
minima are trained, their spectra measured, checkpoints saved, and everything is written to the
store in one transaction. The dashboard and the CLI both call these functions.
"""

from __future__ import annotations

import itertools
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


def grid_configs(base: ExperimentConfig, grid: dict[str, Iterable[Any]]) -> list[ExperimentConfig]:
    """Every combination of the grid's values applied to `base` (validated, in grid order)."""
    for key in grid:
        if key not in SWEEP_FIELDS:
            raise ConfigError(f"sweep field {key!r} is not allowed: one of {', '.join(SWEEP_FIELDS)}")
    keys = list(grid)
    values = [list(grid[k]) for k in keys]
    for k, v in zip(keys, values, strict=True):
        if not v:
            raise ConfigError(f"sweep field {k!r} has no values")
    return [base.with_changes(**dict(zip(keys, combo, strict=True))) for combo in itertools.product(*values)]


def sweep(base: ExperimentConfig, grid: dict[str, Iterable[Any]], store: Store, progress: Progress = _quiet,
          device: torch.device | str | None = None) -> list[PairOutcome]:
    """run_pair over a grid; stored points are skipped, so an interrupted sweep resumes."""
    configs = grid_configs(base, grid)
    outcomes = []
    for i, cfg in enumerate(configs):
        part = lambda f, m, i=i: progress((i + f) / len(configs), f"point {i + 1}/{len(configs)}: {m}")  # noqa: E731
        outcomes.append(run_pair(cfg, store, part, device))
    return outcomes
