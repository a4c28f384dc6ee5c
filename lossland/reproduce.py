"""Reproduce Wu, Zhu & E (2017) in one command: every experiment of the paper, through the store.

A `Plan` names, per dataset, the base config (a preset, with wrong attack labels), how many seeds of
good/bad pairs to train, an attack-size sweep whose pairs start from *other* seeds (so their good
runs are the negative control: good minima of other initialisations, trained without an attack set),
a grid of optimizer settings on a smaller clean set (robustness), two_layer networks of several widths
and attack sizes (the 2-layer claim, with their untrained networks as its control), Figure 1, and the
spec (`lossland.specs`) of each analysis. `run` computes what the store lacks (pairs via
`experiments.sweep`, analyses via `analyses.compute`, all cached), then `evidence.collect` reads every
number back into `claims.Evidence` and the figures' frames. A second run computes nothing.
`reproduce` does both and returns the `Reproduction`; `report.write_report` writes its folder.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__, analyses
from .config import ConfigError, ExperimentConfig, preset
from .data import DatasetError, load_experiment_data
from .evidence import Reproduction, collect
from .experiments import sweep
from .machine import describe
from .pairs import ROLES, Progress, quiet
from .specs import (
    BoundSpec,
    CurveFitSpec,
    EscapeSpec,
    InterpolationSpec,
    RandomInitSpec,
    SharpnessSpec,
    SliceSpec,
    Spec,
    SurfaceSpec,
    TwoLayerSpec,
)
from .store import Store, git_commit

__all__ = ["DATASET_PRESETS", "Plan", "Reproduction", "Setting", "collect", "plan_for", "reports_dir", "reproduce",
           "run"]

DATASET_PRESETS = {"digits": "digits-mlp", "mnist1d": "mnist1d-mlp", "mnist": "mnist-lenet",
                   "fashion-mnist": "fashion-mlp", "cifar10": "cifar10-resnet"}
SCALES = ("small", "full")
LOCAL_DATASETS = ("digits", "mnist1d")  # generated here, always available
FULL_BATCH = 1_000_000  # a batch size no training set here reaches: one step per epoch on the whole set


def slice_specs(n: int, **settings) -> tuple[SliceSpec, ...]:
    """n filter-normalised 1-D slices, direction seeds 0 .. n − 1."""
    return tuple(SliceSpec(seed=d, **settings) for d in range(n))


def surface_specs(**settings) -> tuple[SurfaceSpec, ...]:
    """The same 2-D surface around each minimum."""
    return tuple(SurfaceSpec(role=r, **settings) for r in ROLES)


@dataclass(frozen=True)
class Setting:
    """An optimizer setting of the robustness grid: a name and the config changes it makes. `lr_factor`
    multiplies the base's learning rate (after `changes`, which may set it outright)."""

    name: str
    changes: tuple[tuple[str, object], ...] = ()
    lr_factor: float = 1.0

    def apply(self, base: ExperimentConfig) -> ExperimentConfig:
        cfg = base.with_changes(**dict(self.changes)) if self.changes else base
        return cfg.with_changes(**{"train.lr": cfg.train.lr * self.lr_factor}) if self.lr_factor != 1.0 else cfg


OPTIMIZER_GRID = (
    Setting("Adam, the preset's lr"),
    Setting("Adam, lr ÷ 5", (("train.max_epochs", 4000),), lr_factor=0.2),
    Setting("SGD + momentum 0.9, lr 0.05", (("train.optimizer", "sgd"), ("train.lr", 0.05), ("train.momentum", 0.9))),
    Setting("full-batch GD, lr 0.5", (("train.optimizer", "sgd"), ("train.lr", 0.5), ("train.momentum", 0.0),
                                      ("train.batch_size", FULL_BATCH), ("train.max_epochs", 6000))),
)


@dataclass(frozen=True)
class Plan:
    """What to run. Seeds vary the initialisation (model.seed = base + offset). The main pairs (offsets
    0 .. seeds − 1) are at the base's attack size; each other attack size of the sweep gets its own
    seeds after those, enough that the sweep's good runs give `seeds` control minima. Every main pair
    and every control source gets the slices, the escape trials and the adaptive sharpness; the first
    main pair also the interpolation, the surfaces and the random inits."""

    scale: str
    bases: tuple[tuple[str, ExperimentConfig], ...]  # (dataset, base config), in report order
    seeds: int = 5
    attack_labels: str = "wrong"
    attack_factors: tuple[float, ...] = (0.5, 1.0, 2.0)  # × the base's attack size; sizes past the pool are left out
    sweep_seeds: int = 3  # seeds at each other attack size, at least (more where the control needs them)
    interpolation: InterpolationSpec = InterpolationSpec()
    slices: tuple[SliceSpec, ...] = slice_specs(2)
    surfaces: tuple[SurfaceSpec, ...] = surface_specs()
    escape: EscapeSpec = EscapeSpec()
    random_init: RandomInitSpec = RandomInitSpec()
    sharpness: SharpnessSpec = SharpnessSpec()
    optimizers: tuple[Setting, ...] = OPTIMIZER_GRID
    robustness_seeds: int = 3
    robustness_fraction: float = 1.0  # of the base's clean set (and attack set) for the optimizer grid
    robustness_datasets: tuple[str, ...] | None = None  # where the grid runs (None: every dataset)
    two_layer: ExperimentConfig | None = field(default_factory=lambda: preset("teacher-2layer"))
    two_layer_widths: tuple[int, ...] = (16, 64)
    two_layer_factors: tuple[float, ...] = (0.25, 0.5, 1.0)  # × data.n_train, random labels
    two_layer_seeds: int = 3
    two_layer_spec: TwoLayerSpec = TwoLayerSpec()
    curve_fit: CurveFitSpec | None = CurveFitSpec()

    def __post_init__(self) -> None:
        if self.scale not in SCALES and self.scale != "custom":
            raise ConfigError(f"--scale {self.scale!r} is not allowed: one of {', '.join(SCALES)}")
        if not isinstance(self.seeds, int) or not 1 <= self.seeds <= 1000:
            raise ConfigError(f"--seeds {self.seeds!r} is not allowed: an integer in [1, 1000]")
        if not self.bases and self.two_layer is None:
            raise ConfigError("--datasets: nothing to run (no dataset is available)")
        for name, kind in (("interpolation", InterpolationSpec), ("slices", SliceSpec), ("surfaces", SurfaceSpec),
                           ("escape", EscapeSpec), ("random_init", RandomInitSpec), ("sharpness", SharpnessSpec),
                           ("two_layer_spec", TwoLayerSpec), ("optimizers", Setting)):
            value = getattr(self, name)
            if not all(isinstance(v, kind) for v in (value if isinstance(value, tuple) else (value,))):
                raise ConfigError(f"plan.{name} = {value!r} is not allowed: {kind.__name__}(s)")

    # --- the pairs of one dataset ------------------------------------------------------------------
    def base(self, cfg: ExperimentConfig) -> ExperimentConfig:
        return cfg.with_changes(**{"attack.labels": self.attack_labels})

    def other_sizes(self, base: ExperimentConfig) -> list[int]:
        """The sweep's attack sizes besides the base's, those that fit the held-out pool."""
        free = base.data.pool_size() - base.data.n_train
        sizes = {int(round(f * base.attack.n_attack)) for f in self.attack_factors}
        return sorted(s for s in sizes if s <= free and s != base.attack.n_attack)

    def main_configs(self, base: ExperimentConfig) -> list[ExperimentConfig]:
        """The main pair of each seed (at the base's attack size)."""
        b = self.base(base)
        return [b.with_changes(**{"model.seed": b.model.seed + s}) for s in range(self.seeds)]

    def sweep_configs(self, base: ExperimentConfig) -> dict[int, list[ExperimentConfig]]:
        """attack size -> the sweep's pairs there, on seeds after the main ones (the main size: the mains)."""
        b, sizes = self.base(base), self.other_sizes(base)
        per = max(self.sweep_seeds, math.ceil(self.seeds / len(sizes))) if sizes else 0
        out = {b.attack.n_attack: self.main_configs(base)}
        for j, n in enumerate(sizes):
            first = b.model.seed + self.seeds + j * per
            out[n] = [b.with_changes(**{"model.seed": first + s, "attack.n_attack": n}) for s in range(per)]
        return dict(sorted(out.items()))

    def control_configs(self, base: ExperimentConfig) -> list[ExperimentConfig]:
        """The pairs whose good runs are the control's "bad" minima, one per main seed (fewer if the sweep
        has no other size)."""
        b = self.base(base).attack.n_attack
        others = [c for n, cs in self.sweep_configs(base).items() if n != b for c in cs]
        return others[:self.seeds]

    def robustness_configs(self, base: ExperimentConfig) -> dict[str, list[ExperimentConfig]]:
        """setting name -> its pairs: the grid on a clean set of robustness_fraction × the base's, its
        log-volume from SLQ (no dense Hessian); none where the grid does not run."""
        name = next((d for d, c in self.bases if c == base), None)
        if self.robustness_datasets is not None and name not in self.robustness_datasets:
            return {}
        b = self.base(base)
        n = max(10, int(round(b.data.n_train * self.robustness_fraction)))
        a = min(int(round(b.attack.n_attack * self.robustness_fraction)), b.data.pool_size() - n)
        small = b.with_changes(**{"data.n_train": n, "attack.n_attack": a, "spectrum.exact_max_params": 0})
        return {s.name: [s.apply(small).with_changes(**{"model.seed": small.model.seed + k})
                         for k in range(self.robustness_seeds)] for s in self.optimizers}

    # --- the two_layer networks ----------------------------------------------------------------------
    def two_layer_configs(self) -> list[ExperimentConfig]:
        if self.two_layer is None:
            return []
        t, out = self.two_layer, []
        for w in self.two_layer_widths:
            for s in range(self.two_layer_seeds):
                for f in self.two_layer_factors:
                    out.append(t.with_changes(**{"model.widths": (w,), "model.seed": t.model.seed + s,
                                                 "attack.n_attack": int(round(f * t.data.n_train))}))
        return out

    def specs(self) -> list[Spec]:
        """Every analysis spec of the plan (for the operator's caps)."""
        return [self.interpolation, *self.slices, *self.surfaces, self.escape, self.random_init, self.sharpness] + (
            [self.two_layer_spec, BoundSpec()] if self.two_layer is not None else []) + (
            [self.curve_fit] if self.curve_fit is not None else [])

    def to_dict(self) -> dict:
        return {"scale": self.scale, "datasets": [d for d, _ in self.bases], "seeds": self.seeds,
                "attack_labels": self.attack_labels, "attack_factors": list(self.attack_factors),
                "sweep_seeds": self.sweep_seeds, "interpolation": self.interpolation.settings(),
                "slices": [s.settings() for s in self.slices], "surfaces": [s.settings() for s in self.surfaces],
                "escape": self.escape.settings(), "random_init": self.random_init.settings(),
                "sharpness": self.sharpness.settings(), "optimizers": [s.name for s in self.optimizers],
                "robustness_seeds": self.robustness_seeds, "robustness_fraction": self.robustness_fraction,
                "robustness_datasets": list(self.robustness_datasets or [d for d, _ in self.bases]),
                "two_layer": self.two_layer.config_hash() if self.two_layer else None,
                "two_layer_widths": list(self.two_layer_widths), "two_layer_factors": list(self.two_layer_factors),
                "two_layer_seeds": self.two_layer_seeds,
                "curve_fit": self.curve_fit.settings() if self.curve_fit else None}


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
    if scale == "small":  # no dense Hessian (SLQ log-volumes, Hutch++ trace and ‖H‖_F) and top-10 spectra: time
        lean = {"spectrum.exact_max_params": 0, "spectrum.k": 10}
        two_layer = preset("teacher-2layer").with_changes(**{"data.n_train": 200})
        plan = Plan("small", tuple((d, c.with_changes(**lean)) for d, c in bases), seeds=5 if seeds is None else seeds,
                    surfaces=surface_specs(n=21), escape=EscapeSpec(radii=(0.4,), n_trials=4, retrain_epochs=200),
                    random_init=RandomInitSpec(n_seeds=16), robustness_seeds=3, robustness_fraction=0.2,
                    robustness_datasets=("mnist1d",), two_layer=two_layer, two_layer_seeds=2)
    else:
        plan = Plan("full", tuple(bases), seeds=8 if seeds is None else seeds, attack_factors=(0.5, 1.0, 1.5, 2.0),
                    slices=slice_specs(3), sweep_seeds=5, robustness_seeds=5, two_layer_widths=(16, 64, 256),
                    two_layer_factors=(0.25, 0.5, 1.0, 2.0), two_layer_seeds=5)
    return plan, skipped


# --- running ---------------------------------------------------------------------------------------

Step = tuple[float, str, Callable[[Progress], bool]]  # (weight, label, work -> computed something?)


def _pairs_step(label: str, configs: list[ExperimentConfig], store: Store, device, executor) -> Step:
    """Train (or find in the store) the pairs of `configs`: one sweep over the model seeds of each group of
    configs that differ only in their seed (so an executor can run a group's points together)."""
    groups: dict[str, tuple[ExperimentConfig, list[int]]] = {}
    for cfg in configs:
        key = cfg.with_changes(**{"model.seed": 0}).config_hash()
        groups.setdefault(key, (cfg, []))[1].append(cfg.model.seed)

    def work(progress: Progress) -> bool:
        ids = [c.config_hash() for c in configs]
        runs = store.runs(pair_id=ids)
        if set(ids) <= set(runs["pair_id"]):  # one query instead of a sweep that reads every pair back
            progress(1.0, f"all {len(ids)} pairs answered from the store")
            return False
        computed = False
        for i, (cfg, seeds) in enumerate(groups.values()):
            part = lambda f, m, i=i: progress((i + f) / len(groups), m)  # noqa: E731
            computed |= not all(o.from_store for o in sweep(cfg, {"model.seed": seeds}, store, part, device=device,
                                                            executor=executor))
        return computed
    return 2.0 * len(configs), f"{label}: {len(configs)} good/bad pairs", work


def analysis_step(store: Store, pair_id: str, spec: Spec, done: set[str] | None = None) -> Callable[[Progress], bool]:
    """A step computing one analysis of a pair; a pair that failed to train is skipped (its seed is then
    left out of the claims, which say so) instead of stopping the whole reproduction. `done`: the ids of
    the analyses the store held complete when the run began (those are answered without a query)."""
    def work(progress: Progress) -> bool:
        if done is not None and spec.analysis_id(pair_id) in done:
            progress(1.0, "answered from the store")
            return False
        if not store.has_pair(pair_id):
            progress(1.0, f"skipped: pair {pair_id} failed (see the Runs page)")
            return False
        return not analyses.compute(store, pair_id, spec, progress).from_store
    return work


def _per_minimum(plan: Plan, analysis, tag: str, cfg: ExperimentConfig) -> list[Step]:
    """The analyses of every compared minimum: slices, escape trials, adaptive sharpness."""
    pid = cfg.config_hash()
    out: list[Step] = [(0.2, f"{tag}: 1-D slice {s.seed}", analysis(pid, s)) for s in plan.slices]
    return out + [(1.5, f"{tag}: escape trials", analysis(pid, plan.escape)),
                  (0.2, f"{tag}: adaptive sharpness", analysis(pid, plan.sharpness))]


def steps(plan: Plan, store: Store, device=None, executor=None) -> list[Step]:
    """Every step of the plan, in order: pairs first, then their analyses."""
    rows = store.analyses()
    done = set(rows.loc[rows["status"] == "done", "analysis_id"]) if len(rows) else set()

    def analysis(pair_id: str, spec: Spec) -> Callable[[Progress], bool]:
        return analysis_step(store, pair_id, spec, done)

    out: list[Step] = []
    for name, base in plan.bases:
        sweep_cfgs = [c for cs in plan.sweep_configs(base).values() for c in cs]
        out.append(_pairs_step(f"{name}: main pairs and the attack-size sweep", sweep_cfgs, store, device, executor))
        grid = [c for cs in plan.robustness_configs(base).values() for c in cs]
        if grid:
            out.append(_pairs_step(f"{name}: optimizer grid", grid, store, device, executor))
    if plan.two_layer is not None:
        out.append(_pairs_step("two_layer networks", plan.two_layer_configs(), store, device, executor))
    for name, base in plan.bases:
        mains = plan.main_configs(base)
        first, tag = mains[0].config_hash(), f"{name} seed {mains[0].model.seed}"
        out.append((0.2, f"{tag}: interpolation", analysis(first, plan.interpolation)))
        out += [(0.5, f"{tag}: 2-D surface of the {s.role} minimum", analysis(first, s)) for s in plan.surfaces]
        out.append((3.0, f"{name}: {plan.random_init.n_seeds} random inits", analysis(first, plan.random_init)))
        for cfg in mains + plan.control_configs(base):
            out += _per_minimum(plan, analysis, f"{name} seed {cfg.model.seed} attack {cfg.attack.n_attack}", cfg)
        for cfg in (c for cs in plan.robustness_configs(base).values() for c in cs):
            out.append((0.2, f"{name} grid seed {cfg.model.seed}: adaptive sharpness",
                        analysis(cfg.config_hash(), plan.sharpness)))
    for cfg in plan.two_layer_configs():
        tag = f"two_layer width {cfg.model.widths[0]} seed {cfg.model.seed} attack {cfg.attack.n_attack}"
        out.append((0.3, f"{tag}: 2-layer measurement", analysis(cfg.config_hash(), plan.two_layer_spec)))
        if cfg.model.seed == plan.two_layer.model.seed:  # an identity: one seed shows it
            out.append((0.1, f"{tag}: identity check", analysis(cfg.config_hash(), BoundSpec())))
    if plan.curve_fit is not None:
        spec = plan.curve_fit
        out.append((1.0, "Figure 1: curve fits", lambda p: not analyses.compute_curve_fit(store, spec, p).from_store))
    return out


def run(plan: Plan, store: Store, progress: Progress = quiet, device: torch.device | str | None = None,
        executor=None) -> int:
    """Compute everything the plan needs that the store lacks; returns how many steps computed something
    (0 when every result came from the store)."""
    todo = steps(plan, store, device, executor)
    total, done, computed = sum(w for w, _, _ in todo), 0.0, 0
    for weight, label, work in todo:
        sub = lambda f, m, done=done, weight=weight, label=label: progress(  # noqa: E731
            (done + weight * min(max(f, 0.0), 1.0)) / total, f"{label}: {m}")
        progress(done / total, label)
        computed += bool(work(sub))
        done += weight
    progress(1.0, f"all {len(todo)} steps done ({computed} computed, {len(todo) - computed} from the store)")
    return computed


# --- one command -----------------------------------------------------------------------------------

def reproduce(plan: Plan, store: Store, progress: Progress = quiet, device: torch.device | str | None = None,
              executor=None, skipped: list[tuple[str, str]] | None = None) -> Reproduction:
    """Run the plan (cached), read it back and test the claims. Write its report with
    `report.write_report(rep, reports_dir(store))`."""
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    computed = run(plan, store, lambda f, m: progress(0.95 * f, m), device=device, executor=executor)
    progress(0.95, "reading the results back from the store")
    found = collect(plan, store)
    rep = Reproduction(plan, *found, skipped=tuple(skipped or ()), seconds=time.perf_counter() - t0,
                       computed=computed, machine=describe(device), code=_code_version(),
                       started=started.isoformat(timespec="seconds"))
    progress(1.0, f"claims tested: {sum(c.verdict == 'PASS' for c in rep.claims)} of {len(rep.claims)} pass")
    return rep


def _code_version() -> str:
    commit = git_commit()
    return f"lossland {__version__}" + (f" at commit {commit[:12]}" if commit else "")


def reports_dir(store: Store) -> Path:
    """Where a store's reproduction reports go: reports/ beside it."""
    return Path(store.path).parent / "reports"
