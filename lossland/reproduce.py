"""Reproduce Wu, Zhu & E (2017) in one command: every experiment of the paper, through the store.

A `Plan` names, per dataset, the base config (a preset) and how much of each experiment to run:
seeds × attack sizes of good/bad pairs, 1-D slices, 2-D surfaces, perturb-and-retrain escape trials,
random initialisations, and a two_layer sweep for the 2-layer bound. `run` computes what the store
lacks (pairs via `experiments.sweep`, analyses via `analyses`, all cached), then `collect` reads
every number back from the store into `claims.Evidence` and the figures' frames. A second run
computes nothing. `reproduce` does both and writes the report (see `report.write_report`).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from . import analyses, claims
from .config import ConfigError, ExperimentConfig, preset
from .data import DatasetError, load_experiment_data
from .experiments import sweep
from .machine import describe
from .store import Store

Progress = Callable[[float, str], None]
DATASET_PRESETS = {"digits": "digits-mlp", "mnist1d": "mnist1d-mlp", "mnist": "mnist-lenet",
                   "fashion-mnist": "fashion-mlp", "cifar10": "cifar10-resnet"}
SCALES = ("small", "full")
LOCAL_DATASETS = ("digits", "mnist1d")  # generated here, always available


def _quiet(fraction: float, message: str) -> None:
    pass


@dataclass(frozen=True)
class Plan:
    """What to run. Seeds vary the initialisation (model.seed = base + s); the main pair of a seed is
    the one at the base config's attack size, which is always one of the sweep's sizes."""

    scale: str
    bases: tuple[tuple[str, ExperimentConfig], ...]  # (dataset, base config), in report order
    seeds: int = 3
    attack_factors: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)  # × the base's attack size, clipped to the pool
    slice_directions: int = 2
    slice_points: int = 41
    slice_span: float = 1.0
    surface_points: int = 21
    escape_radii: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4)
    escape_trials: int = 4
    escape_epochs: int = 300
    random_init_seeds: int = 16
    two_layer: ExperimentConfig | None = field(default_factory=lambda: preset("teacher-2layer"))
    two_layer_factors: tuple[float, ...] = (0.0, 0.5, 1.0)

    def __post_init__(self) -> None:
        if self.scale not in SCALES and self.scale != "custom":
            raise ConfigError(f"--scale {self.scale!r} is not allowed: one of {', '.join(SCALES)}")
        if not isinstance(self.seeds, int) or not 1 <= self.seeds <= 1000:
            raise ConfigError(f"--seeds {self.seeds!r} is not allowed: an integer in [1, 1000]")
        if not self.bases and self.two_layer is None:
            raise ConfigError("--datasets: nothing to run (no dataset is available)")

    def seed_values(self, base: ExperimentConfig) -> list[int]:
        return [base.model.seed + s for s in range(self.seeds)]

    @staticmethod
    def attack_sizes(base: ExperimentConfig, factors: tuple[float, ...]) -> list[int]:
        free = base.data.pool_size() - base.data.n_train
        sizes = {min(int(round(f * base.attack.n_attack)), free) for f in factors} | {base.attack.n_attack}
        return sorted(sizes)

    def grid(self, base: ExperimentConfig, factors: tuple[float, ...]) -> dict[str, list]:
        return {"model.seed": self.seed_values(base), "attack.n_attack": self.attack_sizes(base, factors)}

    def main_configs(self, base: ExperimentConfig) -> list[ExperimentConfig]:
        """The main pair of each seed (at the base's attack size)."""
        return [base.with_changes(**{"model.seed": s}) for s in self.seed_values(base)]

    # The settings of each analysis: `run` computes with them and `collect` reads back with them.
    def slice_settings(self, direction: int) -> dict:
        return {"seed": direction, "n_points": self.slice_points, "span": self.slice_span}

    def escape_settings(self) -> dict:
        return {"radii": self.escape_radii, "n_trials": self.escape_trials, "retrain_epochs": self.escape_epochs}

    def surface_settings(self, role: str) -> dict:
        return {"role": role, "n": self.surface_points, "span": self.slice_span}

    def random_init_settings(self) -> dict:
        return {"n_seeds": self.random_init_seeds}

    def to_dict(self) -> dict:
        return {"scale": self.scale, "datasets": [d for d, _ in self.bases], "seeds": self.seeds,
                "attack_factors": list(self.attack_factors), "slice_directions": self.slice_directions,
                "slice_points": self.slice_points, "slice_span": self.slice_span,
                "surface_points": self.surface_points, "escape_radii": list(self.escape_radii),
                "escape_trials": self.escape_trials, "escape_epochs": self.escape_epochs,
                "random_init_seeds": self.random_init_seeds,
                "two_layer": self.two_layer.config_hash() if self.two_layer else None,
                "two_layer_factors": list(self.two_layer_factors)}


def dataset_problem(cfg: ExperimentConfig) -> str | None:
    """Why `cfg`'s dataset can't be loaded here (missing or damaged files), or None when it can."""
    if cfg.data.name in LOCAL_DATASETS:
        return None
    try:
        load_experiment_data(cfg)
    except DatasetError as e:
        return str(e)
    return None


def plan_for(scale: str = "small", datasets: list[str] | None = None, seeds: int | None = None
             ) -> tuple[Plan, list[tuple[str, str]]]:
    """The plan of a scale ("small": minutes on a laptop CPU; "full": sized for a GPU), and the
    requested datasets that were skipped, each with the reason."""
    if scale not in SCALES:
        raise ConfigError(f"--scale {scale!r} is not allowed: one of {', '.join(SCALES)}")
    wanted = list(datasets) if datasets else (list(LOCAL_DATASETS) if scale == "small" else list(DATASET_PRESETS))
    unknown = [d for d in wanted if d not in DATASET_PRESETS]
    if unknown:
        raise ConfigError(f"--datasets {','.join(unknown)} is not allowed: any of {', '.join(DATASET_PRESETS)}")
    bases, skipped = [], []
    for name in dict.fromkeys(wanted):
        cfg = preset(DATASET_PRESETS[name])
        problem = dataset_problem(cfg)
        if problem:
            skipped.append((name, problem))
        else:
            bases.append((name, cfg))
    if scale == "small":
        plan = Plan("small", tuple(bases), seeds=3 if seeds is None else seeds)
    else:
        plan = Plan("full", tuple(bases), seeds=5 if seeds is None else seeds, attack_factors=(0.0, 0.5, 1.0, 1.5, 2.0),
                    slice_directions=3, surface_points=41, escape_trials=8, random_init_seeds=32,
                    two_layer_factors=(0.0, 0.5, 1.0, 1.5, 2.0))
    return plan, skipped


# --- running ---------------------------------------------------------------------------------------

def run(plan: Plan, store: Store, progress: Progress = _quiet, device: torch.device | str | None = None,
        executor=None) -> int:
    """Compute everything the plan needs that the store lacks; returns how many steps computed something
    (0 when every result came from the store)."""
    steps: list[tuple[float, str, Callable[[Progress], bool]]] = []  # (weight, label, work -> computed?)

    def pairs_step(name: str, base: ExperimentConfig, factors: tuple[float, ...]) -> None:
        grid = plan.grid(base, factors)
        n = len(grid["model.seed"]) * len(grid["attack.n_attack"])
        steps.append((2.0 * n, f"{name}: {n} good/bad pairs",
                      lambda p: not all(o.from_store for o in sweep(base, grid, store, p, device=device,
                                                                     executor=executor))))

    for name, base in plan.bases:
        pairs_step(name, base, plan.attack_factors)
    if plan.two_layer is not None:
        pairs_step(plan.two_layer.data.name + " (two_layer)", plan.two_layer, plan.two_layer_factors)
    for name, base in plan.bases:
        for i, cfg in enumerate(plan.main_configs(base)):
            pid, tag = cfg.config_hash(), f"{name} seed {cfg.model.seed}"
            steps.append((0.2, f"{tag}: interpolation", _analysis(analyses.interpolation, store, pid)))
            for d in range(plan.slice_directions):
                steps.append((0.2, f"{tag}: 1-D slice {d}",
                              _analysis(analyses.slices_1d, store, pid, **plan.slice_settings(d))))
            steps.append((1.5, f"{tag}: escape trials",
                          _analysis(analyses.escape, store, pid, **plan.escape_settings())))
            if i == 0:
                for role in ("good", "bad"):
                    steps.append((0.5, f"{tag}: 2-D surface of the {role} minimum",
                                  _analysis(analyses.surface, store, pid, **plan.surface_settings(role))))
                steps.append((3.0, f"{name}: {plan.random_init_seeds} random inits",
                              _analysis(analyses.random_init, store, pid, **plan.random_init_settings())))
    if plan.two_layer is not None:
        for s in plan.seed_values(plan.two_layer):
            for n in plan.attack_sizes(plan.two_layer, plan.two_layer_factors):
                pid = plan.two_layer.with_changes(**{"model.seed": s, "attack.n_attack": n}).config_hash()
                steps.append((0.1, f"two_layer seed {s} attack {n}: bound", _bound(store, pid)))

    total, done, computed = sum(w for w, _, _ in steps), 0.0, 0
    for weight, label, work in steps:
        sub = lambda f, m, done=done, weight=weight, label=label: progress(  # noqa: E731
            (done + weight * min(max(f, 0.0), 1.0)) / total, f"{label}: {m}")
        progress(done / total, label)
        computed += bool(work(sub))
        done += weight
    progress(1.0, f"all {len(steps)} steps done ({computed} computed, {len(steps) - computed} from the store)")
    return computed


def _analysis(fn: Callable[..., analyses.Analysis | None], store: Store, pair_id: str, **settings
              ) -> Callable[[Progress], bool]:
    """A step computing one analysis of a pair; a pair that failed to train is skipped (its seed is then
    left out of the claims, which say so) instead of stopping the whole reproduction."""
    def work(progress: Progress) -> bool:
        if not store.has_pair(pair_id):
            progress(1.0, f"skipped: pair {pair_id} failed (see the Runs page)")
            return False
        return not fn(store, pair_id, progress=progress, **settings).from_store
    return work


def _bound(store: Store, pair_id: str) -> Callable[[Progress], bool]:
    def work(progress: Progress) -> bool:
        if not store.has_pair(pair_id):
            progress(1.0, f"skipped: pair {pair_id} failed (see the Runs page)")
            return False
        stored = analyses.bound(store, pair_id, compute=False) is not None
        analyses.bound(store, pair_id, progress=progress)
        return not stored
    return work


# --- reading back --------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class DatasetResults:
    """One dataset's evidence for the claims, and the frames its figures draw."""

    dataset: str
    config: ExperimentConfig  # the first seed's main config
    pair_ids: tuple[str, ...]  # the main pairs, one per seed
    evidence: claims.DatasetEvidence
    spectra: pd.DataFrame  # main pairs' top eigenvalues: seed, role, idx, eigenvalue
    density: pd.DataFrame  # first seed's pair: x, density, role
    interpolation: pd.DataFrame  # first seed's pair
    surfaces: pd.DataFrame  # first seed's pair, both roles: role, alpha, beta, clean_loss


@dataclass(frozen=True, eq=False)
class Reproduction:
    plan: Plan
    datasets: tuple[DatasetResults, ...]
    two_layer: pd.DataFrame
    claims: tuple[claims.Claim, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    seconds: float = 0.0
    computed: int = 0  # steps that computed something; 0: everything came from the store
    machine: str = ""
    code: str = ""  # lossland version and git commit that produced it
    started: str = ""  # UTC, ISO 8601


def _stored(fn: Callable[..., analyses.Analysis | None], store: Store, pair_id: str, **settings) -> pd.DataFrame:
    a = fn(store, pair_id, compute=False, **settings)
    return a.frame if a is not None else pd.DataFrame()


def _seeded(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    return frame.assign(seed=seed) if len(frame) else frame


def collect_dataset(plan: Plan, store: Store, name: str, base: ExperimentConfig) -> DatasetResults:
    """Everything stored for one dataset of the plan (what isn't stored is simply absent)."""
    from .experiments import grid_configs
    from .report import density_frame

    mains = plan.main_configs(base)
    ids = [c.config_hash() for c in mains]
    seed_of = {c.config_hash(): c.model.seed for c in grid_configs(base, plan.grid(base, plan.attack_factors))}
    sweep_runs = store.runs(pair_id=list(seed_of)) if seed_of else pd.DataFrame()
    pairs = sweep_runs[sweep_runs["pair_id"].isin(ids)] if len(sweep_runs) else sweep_runs
    present = [pid for pid in ids if pid in set(pairs.get("pair_id", []))]
    views = {pid: store.pair(pid) for pid in present}
    spectra, log_volume, slices, escape = [], [], [], []
    for pid, view in views.items():
        seed = seed_of[pid]
        s = view.spectra
        spectra.append(_seeded(s[s["kind"] == "lanczos"][["role", "idx", "eigenvalue"]], seed))
        lv = view.estimates[view.estimates["name"] == "log_volume_k"]
        log_volume.append(_seeded(lv[["role", "k", "value"]], seed))
        for d in range(plan.slice_directions):
            f = _stored(analyses.slices_1d, store, pid, **plan.slice_settings(d))
            slices.append(_seeded(f.assign(direction_seed=d) if len(f) else f, seed))
        escape.append(_seeded(_stored(analyses.escape, store, pid, **plan.escape_settings()), seed))
    first = ids[0]
    random_init = _stored(analyses.random_init, store, first, **plan.random_init_settings())
    if len(random_init):
        status = json.loads(random_init["settings_json"].iloc[0]).get("status")
        random_init = random_init.assign(status=list(status) if status else "converged")
    surfaces = [_stored(analyses.surface, store, first, **plan.surface_settings(role)) for role in ("good", "bad")]
    density, interpolation = pd.DataFrame(), pd.DataFrame()
    if first in views:
        v = views[first]
        density = density_frame(v.densities, v.runs, base.spectrum.sigma)
        interpolation = _stored(analyses.interpolation, store, first)
    cat = lambda frames: pd.concat([f for f in frames if len(f)], ignore_index=True) if any(  # noqa: E731
        len(f) for f in frames) else pd.DataFrame()
    sweep_frame = sweep_runs.assign(seed=sweep_runs["seed"].astype(int)) if len(sweep_runs) else sweep_runs
    evidence = claims.DatasetEvidence(
        dataset=name, pairs=pairs.assign(seed=pairs["seed"].astype(int)) if len(pairs) else pairs,
        sweep=sweep_frame, log_volume=cat(log_volume), random_init=random_init, slices=cat(slices),
        escape=cat(escape))
    return DatasetResults(name, mains[0], tuple(ids), evidence, cat(spectra), density, interpolation,
                          cat(surfaces))


def collect_two_layer(plan: Plan, store: Store) -> pd.DataFrame:
    """The 2-layer bound at every stored two_layer minimum of the plan, with its seed and attack size."""
    if plan.two_layer is None:
        return pd.DataFrame()
    from .experiments import grid_configs

    rows = []
    for cfg in grid_configs(plan.two_layer, plan.grid(plan.two_layer, plan.two_layer_factors)):
        b = analyses.bound(store, cfg.config_hash(), compute=False)
        if b is not None:
            rows.append(b.assign(dataset=cfg.data.name, seed=cfg.model.seed, n_attack=cfg.attack.n_attack))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def collect(plan: Plan, store: Store) -> tuple[tuple[DatasetResults, ...], pd.DataFrame, list[claims.Claim]]:
    """Read every result of the plan back from the store and test the claims on it."""
    datasets = tuple(collect_dataset(plan, store, name, base) for name, base in plan.bases)
    two_layer = collect_two_layer(plan, store)
    found = claims.evaluate(claims.Evidence(tuple(d.evidence for d in datasets), two_layer))
    return datasets, two_layer, found


# --- one command -----------------------------------------------------------------------------------

def reproduce(plan: Plan, store: Store, progress: Progress = _quiet, device: torch.device | str | None = None,
              executor=None, skipped: list[tuple[str, str]] | None = None,
              reports: str | Path | None = None) -> tuple[Reproduction, Path]:
    """Run the plan (cached), read it back, test the claims and write the report folder; returns the
    reproduction and the folder (under `reports`, default: reports/ beside the store)."""
    from .report import write_report

    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    computed = run(plan, store, lambda f, m: progress(0.95 * f, m), device=device, executor=executor)
    progress(0.95, "reading the results back from the store")
    datasets, two_layer, found = collect(plan, store)
    rep = Reproduction(plan, datasets, two_layer, tuple(found), skipped=tuple(skipped or ()),
                       seconds=time.perf_counter() - t0, computed=computed, machine=describe(device),
                       code=_code_version(), started=started.isoformat(timespec="seconds"))
    progress(0.97, "writing the report and its figures")
    folder = write_report(rep, Path(reports) if reports else reports_dir(store))
    progress(1.0, f"report written to {folder}")
    return rep, folder


def _code_version() -> str:
    from . import __version__
    from .store import git_commit

    commit = git_commit()
    return f"lossland {__version__}" + (f" at commit {commit[:12]}" if commit else "")


def reports_dir(store: Store) -> Path:
    return Path(store.path).parent / "reports"
