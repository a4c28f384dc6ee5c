"""Reproduce Wu, Zhu & E (2017) in one command: every experiment of the paper, through the store.

A `Plan` names, per dataset, the base config (a preset), how many seeds and attack sizes of good/bad
pairs to train, and the spec (`lossland.specs`) of each analysis: interpolation, 1-D slices, 2-D
surfaces, perturb-and-retrain escape trials, random initialisations, and a two_layer sweep for the
2-layer bound. `run` computes what the store lacks (pairs via `experiments.sweep`, analyses via
`analyses.compute`, all cached), then `collect` reads every number back from the store into
`claims.Evidence` and the figures' frames. A second run computes nothing. `reproduce` does both and
returns the `Reproduction`; `report.write_report` writes its folder.
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

from . import __version__, analyses, claims
from .config import ConfigError, ExperimentConfig, preset
from .data import DatasetError, load_experiment_data
from .experiments import grid_configs, sweep
from .frames import density_frame
from .machine import describe
from .pairs import ROLES, Progress, quiet
from .specs import BoundSpec, EscapeSpec, InterpolationSpec, RandomInitSpec, SliceSpec, Spec, SurfaceSpec
from .store import Store, git_commit

DATASET_PRESETS = {"digits": "digits-mlp", "mnist1d": "mnist1d-mlp", "mnist": "mnist-lenet",
                   "fashion-mnist": "fashion-mlp", "cifar10": "cifar10-resnet"}
SCALES = ("small", "full")
LOCAL_DATASETS = ("digits", "mnist1d")  # generated here, always available


def slice_specs(n: int, **settings) -> tuple[SliceSpec, ...]:
    """n filter-normalised 1-D slices, direction seeds 0 .. n − 1."""
    return tuple(SliceSpec(seed=d, **settings) for d in range(n))


def surface_specs(**settings) -> tuple[SurfaceSpec, ...]:
    """The same 2-D surface around each minimum."""
    return tuple(SurfaceSpec(role=r, **settings) for r in ROLES)


@dataclass(frozen=True)
class Plan:
    """What to run. Seeds vary the initialisation (model.seed = base + s); the main pair of a seed is
    the one at the base config's attack size, which is always one of the sweep's sizes. Every main
    pair gets the interpolation, the slices and the escape trials; the first seed's pair also the
    surfaces and the random inits."""

    scale: str
    bases: tuple[tuple[str, ExperimentConfig], ...]  # (dataset, base config), in report order
    seeds: int = 3
    attack_factors: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)  # × the base's attack size, clipped to the pool
    interpolation: InterpolationSpec = InterpolationSpec()
    slices: tuple[SliceSpec, ...] = slice_specs(2)
    surfaces: tuple[SurfaceSpec, ...] = surface_specs()
    escape: EscapeSpec = EscapeSpec()
    random_init: RandomInitSpec = RandomInitSpec()
    two_layer: ExperimentConfig | None = field(default_factory=lambda: preset("teacher-2layer"))
    two_layer_factors: tuple[float, ...] = (0.0, 0.5, 1.0)

    def __post_init__(self) -> None:
        if self.scale not in SCALES and self.scale != "custom":
            raise ConfigError(f"--scale {self.scale!r} is not allowed: one of {', '.join(SCALES)}")
        if not isinstance(self.seeds, int) or not 1 <= self.seeds <= 1000:
            raise ConfigError(f"--seeds {self.seeds!r} is not allowed: an integer in [1, 1000]")
        if not self.bases and self.two_layer is None:
            raise ConfigError("--datasets: nothing to run (no dataset is available)")
        for name, kind in (("interpolation", InterpolationSpec), ("slices", SliceSpec), ("surfaces", SurfaceSpec),
                           ("escape", EscapeSpec), ("random_init", RandomInitSpec)):
            value = getattr(self, name)
            if not all(isinstance(v, kind) for v in (value if isinstance(value, tuple) else (value,))):
                raise ConfigError(f"plan.{name} = {value!r} is not allowed: {kind.__name__}(s)")

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

    def specs(self) -> list[Spec]:
        """Every analysis spec of the plan (for the operator's caps)."""
        return [self.interpolation, *self.slices, *self.surfaces, self.escape, self.random_init] + (
            [BoundSpec()] if self.two_layer is not None else [])

    def to_dict(self) -> dict:
        return {"scale": self.scale, "datasets": [d for d, _ in self.bases], "seeds": self.seeds,
                "attack_factors": list(self.attack_factors), "interpolation": self.interpolation.settings(),
                "slices": [s.settings() for s in self.slices], "surfaces": [s.settings() for s in self.surfaces],
                "escape": self.escape.settings(), "random_init": self.random_init.settings(),
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
        plan = Plan("small", tuple(bases), seeds=3 if seeds is None else seeds, surfaces=surface_specs(n=21),
                    escape=EscapeSpec(n_trials=4), random_init=RandomInitSpec(n_seeds=16))
    else:
        plan = Plan("full", tuple(bases), seeds=5 if seeds is None else seeds, attack_factors=(0.0, 0.5, 1.0, 1.5, 2.0),
                    slices=slice_specs(3), two_layer_factors=(0.0, 0.5, 1.0, 1.5, 2.0))
    return plan, skipped


# --- running ---------------------------------------------------------------------------------------

def run(plan: Plan, store: Store, progress: Progress = quiet, device: torch.device | str | None = None,
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

    def analysis_step(weight: float, label: str, pair_id: str, spec: Spec) -> None:
        steps.append((weight, label, _analysis(store, pair_id, spec)))

    for name, base in plan.bases:
        pairs_step(name, base, plan.attack_factors)
    if plan.two_layer is not None:
        pairs_step(plan.two_layer.data.name + " (two_layer)", plan.two_layer, plan.two_layer_factors)
    for name, base in plan.bases:
        for i, cfg in enumerate(plan.main_configs(base)):
            pid, tag = cfg.config_hash(), f"{name} seed {cfg.model.seed}"
            analysis_step(0.2, f"{tag}: interpolation", pid, plan.interpolation)
            for spec in plan.slices:
                analysis_step(0.2, f"{tag}: 1-D slice {spec.seed}", pid, spec)
            analysis_step(1.5, f"{tag}: escape trials", pid, plan.escape)
            if i == 0:
                for spec in plan.surfaces:
                    analysis_step(0.5, f"{tag}: 2-D surface of the {spec.role} minimum", pid, spec)
                analysis_step(3.0, f"{name}: {plan.random_init.n_seeds} random inits", pid, plan.random_init)
    if plan.two_layer is not None:
        for cfg in grid_configs(plan.two_layer, plan.grid(plan.two_layer, plan.two_layer_factors)):
            analysis_step(0.1, f"two_layer seed {cfg.model.seed} attack {cfg.attack.n_attack}: bound",
                          cfg.config_hash(), BoundSpec())

    total, done, computed = sum(w for w, _, _ in steps), 0.0, 0
    for weight, label, work in steps:
        sub = lambda f, m, done=done, weight=weight, label=label: progress(  # noqa: E731
            (done + weight * min(max(f, 0.0), 1.0)) / total, f"{label}: {m}")
        progress(done / total, label)
        computed += bool(work(sub))
        done += weight
    progress(1.0, f"all {len(steps)} steps done ({computed} computed, {len(steps) - computed} from the store)")
    return computed


def _analysis(store: Store, pair_id: str, spec: Spec) -> Callable[[Progress], bool]:
    """A step computing one analysis of a pair; a pair that failed to train is skipped (its seed is then
    left out of the claims, which say so) instead of stopping the whole reproduction."""
    def work(progress: Progress) -> bool:
        if not store.has_pair(pair_id):
            progress(1.0, f"skipped: pair {pair_id} failed (see the Runs page)")
            return False
        return not analyses.compute(store, pair_id, spec, progress).from_store
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


def _stored(store: Store, pair_id: str, spec: Spec) -> pd.DataFrame:
    a = analyses.get(store, pair_id, spec)
    return a.frame if a is not None else pd.DataFrame()


def _seeded(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    return frame.assign(seed=seed) if len(frame) else frame


def _cat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    kept = [f for f in frames if len(f)]
    return pd.concat(kept, ignore_index=True) if kept else pd.DataFrame()


def collect_dataset(plan: Plan, store: Store, name: str, base: ExperimentConfig) -> DatasetResults:
    """Everything stored for one dataset of the plan (what isn't stored is simply absent)."""
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
        slices += [_seeded(_stored(store, pid, spec), seed) for spec in plan.slices]
        escape.append(_seeded(_stored(store, pid, plan.escape), seed))
    first = ids[0]
    random_init = _stored(store, first, plan.random_init)
    if len(random_init):
        status = json.loads(random_init["settings_json"].iloc[0]).get("status")
        random_init = random_init.assign(status=list(status) if status else "converged")
    density, interpolation = pd.DataFrame(), pd.DataFrame()
    if first in views:
        v = views[first]
        density = density_frame(v.densities, v.runs, base.spectrum.sigma)
        interpolation = _stored(store, first, plan.interpolation)
    sweep_frame = sweep_runs.assign(seed=sweep_runs["seed"].astype(int)) if len(sweep_runs) else sweep_runs
    evidence = claims.DatasetEvidence(
        dataset=name, pairs=pairs.assign(seed=pairs["seed"].astype(int)) if len(pairs) else pairs,
        sweep=sweep_frame, log_volume=_cat(log_volume), random_init=random_init, slices=_cat(slices),
        escape=_cat(escape))
    return DatasetResults(name, mains[0], tuple(ids), evidence, _cat(spectra), density, interpolation,
                          _cat([_stored(store, first, spec) for spec in plan.surfaces]))


def collect_two_layer(plan: Plan, store: Store) -> pd.DataFrame:
    """The 2-layer bound at every stored two_layer minimum of the plan, with its seed and attack size."""
    if plan.two_layer is None:
        return pd.DataFrame()
    rows = []
    for cfg in grid_configs(plan.two_layer, plan.grid(plan.two_layer, plan.two_layer_factors)):
        b = analyses.get(store, cfg.config_hash(), BoundSpec())
        if b is not None:
            rows.append(b.frame.assign(dataset=cfg.data.name, seed=cfg.model.seed, n_attack=cfg.attack.n_attack))
    return _cat(rows)


def collect(plan: Plan, store: Store) -> tuple[tuple[DatasetResults, ...], pd.DataFrame, list[claims.Claim]]:
    """Read every result of the plan back from the store and test the claims on it."""
    datasets = tuple(collect_dataset(plan, store, name, base) for name, base in plan.bases)
    two_layer = collect_two_layer(plan, store)
    found = claims.evaluate(claims.Evidence(tuple(d.evidence for d in datasets), two_layer))
    return datasets, two_layer, found


# --- one command -----------------------------------------------------------------------------------

def reproduce(plan: Plan, store: Store, progress: Progress = quiet, device: torch.device | str | None = None,
              executor=None, skipped: list[tuple[str, str]] | None = None) -> Reproduction:
    """Run the plan (cached), read it back and test the claims. Write its report with
    `report.write_report(rep, reports_dir(store))`."""
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    computed = run(plan, store, lambda f, m: progress(0.95 * f, m), device=device, executor=executor)
    progress(0.95, "reading the results back from the store")
    datasets, two_layer, found = collect(plan, store)
    rep = Reproduction(plan, datasets, two_layer, tuple(found), skipped=tuple(skipped or ()),
                       seconds=time.perf_counter() - t0, computed=computed, machine=describe(device),
                       code=_code_version(), started=started.isoformat(timespec="seconds"))
    progress(1.0, f"claims tested: {sum(c.verdict == 'PASS' for c in rep.claims)} of {len(rep.claims)} pass")
    return rep


def _code_version() -> str:
    commit = git_commit()
    return f"lossland {__version__}" + (f" at commit {commit[:12]}" if commit else "")


def reports_dir(store: Store) -> Path:
    """Where a store's reproduction reports go: reports/ beside it."""
    return Path(store.path).parent / "reports"
