"""What a reproduction runs: the `Plan` (per dataset a base config; seeds, the attack-size sweep and its
control minima, the optimizer grid, the 2-layer networks, Figure 1 and the spec of each analysis) and
`plan_for`, the plan of each scale. `lossland.reproduce` runs a plan; `lossland.evidence` reads it back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .config import ConfigError, ExperimentConfig, preset
from .data import DatasetError, load_experiment_data
from .pairs import ROLES
from .specs import (
    BoundSpec,
    CurveFitSpec,
    EscapeSearchSpec,
    EscapeSpec,
    InterpolationSpec,
    RandomInitSpec,
    SharpnessSpec,
    SliceSpec,
    Spec,
    SurfaceSpec,
    TrajectorySpec,
    TwoLayerSpec,
)

__all__ = ["DATASET_MODELS", "DATASET_PRESETS", "LOCAL_DATASETS", "OPTIMIZER_GRID", "SCALES", "Plan", "Setting",
           "dataset_problem", "plan_for", "slice_specs", "surface_specs"]

DATASET_PRESETS = {"digits": "digits-mlp", "mnist1d": "mnist1d-mlp", "mnist": "mnist-lenet",
                   "fashion-mnist": "fashion-mlp", "cifar10": "cifar10-resnet"}
# Datasets with several models: model -> preset. The full scale runs every model (the small one the first);
# `--models` picks some. Each model is its own row of the report, named "<dataset> <model>".
DATASET_MODELS = {"fashion-mnist": {"mlp": "fashion-mlp", "lenet": "fashion-lenet", "cnn": "fashion-cnn"}}
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
    escape: EscapeSpec = EscapeSpec()  # a radius 0 in it is the unperturbed retrain: claim 6's control
    random_init: RandomInitSpec = RandomInitSpec()
    sharpness: SharpnessSpec = SharpnessSpec()
    optimizers: tuple[Setting, ...] = OPTIMIZER_GRID
    robustness_seeds: int = 3
    robustness_fraction: float = 1.0  # of the base's clean set (and attack set) for the optimizer grid
    robustness_datasets: tuple[str, ...] | None = None  # where the grid runs (None: every dataset)
    # where the first main pair's costliest analyses run: random inits, the escape search, trajectories (None: all)
    extras_datasets: tuple[str, ...] | None = None
    two_layer: ExperimentConfig | None = field(default_factory=lambda: preset("teacher-2layer"))
    two_layer_widths: tuple[int, ...] = (16, 64)
    two_layer_factors: tuple[float, ...] = (0.25, 0.5, 1.0)  # × data.n_train, random labels
    two_layer_seeds: int = 3
    two_layer_spec: TwoLayerSpec = TwoLayerSpec()
    curve_fit: CurveFitSpec | None = CurveFitSpec()
    escape_search: EscapeSearchSpec | None = EscapeSearchSpec()  # the first main pair's 50% escape radii
    trajectory: TrajectorySpec | None = TrajectorySpec()  # the first main pair's optimizer trajectories

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

    def extras(self, name: str) -> bool:
        """Whether dataset `name` gets the random inits, the escape search and the optimizer trajectories."""
        return self.extras_datasets is None or name in self.extras_datasets

    def describe(self) -> list[str]:
        """What the plan runs, a line per part, for the report."""
        def on(names: list[str]) -> str:
            return ", ".join(names) or "no dataset"

        def base_line(d: str, c: ExperimentConfig) -> str:
            channels = f"channels {list(c.model.channels)}, " if c.model.name != "mlp" else ""
            shape = f"{c.model.name}, {channels}widths {list(c.model.widths)}"
            return (f"{d}: {shape}, {c.data.n_train} clean + {c.attack.n_attack} attack ({self.attack_labels} "
                    f"labels), attack sizes {', '.join(map(str, self.sweep_configs(c)))}; top-{c.spectrum.k} "
                    f"spectra, SLQ {c.spectrum.slq_vectors} × {c.spectrum.slq_steps} steps")

        lines = [base_line(d, c) for d, c in self.bases]
        e, names = self.escape, [d for d, _ in self.bases]
        lines += [f"{self.seeds} seed(s); {len(self.slices)} 1-D slice(s); 2-D surfaces of "
                  f"{self.surfaces[0].n if self.surfaces else 0}² points; escape trials at r = "
                  f"{', '.join(f'{r:g}' for r in e.radii)}, {e.n_trials} each",
                  f"{self.random_init.n_seeds} random inits, the 50% escape radii and the optimizer trajectories on "
                  f"{on([d for d in names if self.extras(d)])}",
                  f"the optimizer grid ({len(self.optimizers)} settings × {self.robustness_seeds} seed(s)) on "
                  f"{on([d for d in names if self.robustness_configs(dict(self.bases)[d])])}"]
        if self.two_layer is not None:
            fractions = ", ".join(f"{f:g}" for f in self.two_layer_factors)
            lines.append(f"2-layer networks: widths {', '.join(map(str, self.two_layer_widths))}, random-label "
                         f"fractions {fractions}, {self.two_layer_seeds} seeds")
        return lines

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
            [self.curve_fit] if self.curve_fit is not None else []) + [
            s for s in (self.escape_search, self.trajectory) if s is not None]

    def to_dict(self) -> dict:
        return {"scale": self.scale, "datasets": [d for d, _ in self.bases], "seeds": self.seeds,
                "attack_labels": self.attack_labels, "attack_factors": list(self.attack_factors),
                "sweep_seeds": self.sweep_seeds, "interpolation": self.interpolation.settings(),
                "slices": [s.settings() for s in self.slices], "surfaces": [s.settings() for s in self.surfaces],
                "escape": self.escape.settings(), "random_init": self.random_init.settings(),
                "sharpness": self.sharpness.settings(), "optimizers": [s.name for s in self.optimizers],
                "robustness_seeds": self.robustness_seeds, "robustness_fraction": self.robustness_fraction,
                "robustness_datasets": list(self.robustness_datasets or [d for d, _ in self.bases]),
                "extras_datasets": [d for d, _ in self.bases if self.extras(d)],
                "two_layer": self.two_layer.config_hash() if self.two_layer else None,
                "two_layer_widths": list(self.two_layer_widths), "two_layer_factors": list(self.two_layer_factors),
                "two_layer_seeds": self.two_layer_seeds,
                "curve_fit": self.curve_fit.settings() if self.curve_fit else None,
                "escape_search": self.escape_search.settings() if self.escape_search else None,
                "trajectory": self.trajectory.settings() if self.trajectory else None}


def dataset_problem(cfg: ExperimentConfig) -> str | None:
    """Why `cfg`'s dataset can't be loaded here (missing or damaged files), or None when it can."""
    if cfg.data.name in LOCAL_DATASETS:
        return None
    try:
        load_experiment_data(cfg)
    except DatasetError as e:
        return str(e)
    return None


# the default radii and the unperturbed retrain (r = 0): does the perturbation make a minimum escape, or retraining?
FULL_ESCAPE = EscapeSpec(radii=(0.0, *EscapeSpec().radii))


def _wanted_bases(scale: str, datasets: list[str], models: list[str] | None
                  ) -> list[tuple[str, str, ExperimentConfig]]:
    """(dataset, row name, preset) of each requested dataset and model."""
    known = sorted({m for ms in DATASET_MODELS.values() for m in ms})
    unknown = [m for m in models or () if m not in known]
    if unknown:
        raise ConfigError(f"--models {','.join(unknown)} is not allowed: any of {', '.join(known)} "
                          f"(the models of {', '.join(DATASET_MODELS)})")
    out = []
    for name in dict.fromkeys(datasets):
        choices = DATASET_MODELS.get(name)
        if not choices:
            out.append((name, name, preset(DATASET_PRESETS[name])))
            continue
        picked = [m for m in choices if m in models] if models else list(choices)[:1 if scale == "small" else None]
        out += [(name, f"{name} {m}", preset(choices[m])) for m in picked]
    return out


def plan_for(scale: str = "small", datasets: list[str] | None = None, seeds: int | None = None,
             models: list[str] | None = None) -> tuple[Plan, list[tuple[str, str]]]:
    """The plan of a scale ("small": minutes on a laptop CPU; "full": sized for a GPU), and the
    requested datasets that were skipped, each with the reason. `models` picks among the models of a
    dataset that has several (Fashion-MNIST: mlp, lenet, cnn). At the full scale, fewer seeds than the
    default also shrink the sweep, the optimizer grid, the 2-layer seeds, the random inits and the escape
    trials, so `--seeds 1` is a one-seed version of the whole plan (its report lists what ran)."""
    if scale not in SCALES:
        raise ConfigError(f"--scale {scale!r} is not allowed: one of {', '.join(SCALES)}")
    wanted = list(datasets) if datasets else (list(LOCAL_DATASETS) if scale == "small" else list(DATASET_PRESETS))
    unknown = [d for d in wanted if d not in DATASET_PRESETS]
    if unknown:
        raise ConfigError(f"--datasets {','.join(unknown)} is not allowed: any of {', '.join(DATASET_PRESETS)}")
    bases, skipped = [], []
    for dataset, name, cfg in _wanted_bases(scale, wanted, models):
        problem = dataset_problem(cfg)
        if problem:
            if dataset not in dict(skipped):  # the data is missing for each of its models: say it once
                skipped.append((dataset, problem))
        else:
            bases.append((name, cfg))
    if scale == "small":  # no dense Hessian (SLQ log-volumes, Hutch++ trace and ‖H‖_F) and top-10 spectra: time
        lean = {"spectrum.exact_max_params": 0, "spectrum.k": 10, "spectrum.slq_steps": 40}
        # the 2-layer claim measures its own ‖H‖_F and λ₁ (TwoLayerSpec): the pairs' spectra stay minimal
        two_layer = preset("teacher-2layer").with_changes(**{"data.n_train": 200, **lean, "spectrum.k": 1,
                                                             "spectrum.slq_vectors": 1, "spectrum.slq_steps": 20})
        plan = Plan("small", tuple((d, c.with_changes(**lean)) for d, c in bases), seeds=5 if seeds is None else seeds,
                    surfaces=surface_specs(n=21), escape=EscapeSpec(radii=(0.0, 0.4), n_trials=2, retrain_epochs=200),
                    random_init=RandomInitSpec(n_seeds=16), robustness_seeds=3, robustness_fraction=0.2,
                    robustness_datasets=("mnist1d",), two_layer=two_layer, two_layer_seeds=2,
                    escape_search=EscapeSearchSpec(retrain_epochs=200))
    else:
        n = 8 if seeds is None else seeds
        plan = (_few_seed_plan(bases, n) if n < 5 else
                Plan("full", tuple(bases), seeds=n, attack_factors=FULL_ATTACK_FACTORS, slices=slice_specs(3),
                     sweep_seeds=5, robustness_seeds=5, escape=FULL_ESCAPE, random_init=RandomInitSpec(n_seeds=32),
                     two_layer_widths=FULL_TWO_LAYER_WIDTHS, two_layer_factors=FULL_TWO_LAYER_FACTORS,
                     two_layer_seeds=5))
    return plan, skipped


FULL_ATTACK_FACTORS = (0.5, 1.0, 1.5, 2.0)
FEW_ATTACK_FACTORS = (0.5, 1.0, 2.0)
FULL_TWO_LAYER_WIDTHS = (16, 64, 256)
FULL_TWO_LAYER_FACTORS = (0.25, 0.5, 1.0, 2.0)
FEW_CLEAN_MAX = 1000  # the few-seed plan's clean set at most (the attack set keeps its ratio to it)


def _few_seed_plan(bases: list[tuple[str, ExperimentConfig]], n: int) -> Plan:
    """The full plan's experiments with fewer of everything, sized to finish on a 2-core CPU at one seed (the
    Fashion-MNIST MLP and LeNet: BENCHMARKS.md): n seeds; every attack size and 2-layer width; clean sets of at
    most FEW_CLEAN_MAX images (the LeNet's 2,000 + 4,000 become 1,000 + 2,000) and attack sets at ½, 1 and 2× the
    main one; the small plan's spectra (top 10, SLQ log-volumes) and 21 × 21 surfaces; escape trials at r = 0 and
    0.4; the optimizer grid, the random inits, the escape search and the trajectories on the small model of each
    dataset (the MLP of Fashion-MNIST, when it is picked: on a 2-core CPU the LeNet's 8 random inits took 10
    minutes, its escape search 6, and full-batch GD on a CNN runs for hours)."""
    lean = {"spectrum.exact_max_params": 0, "spectrum.k": 10, "spectrum.slq_steps": 40}

    def sized(cfg: ExperimentConfig) -> ExperimentConfig:
        if cfg.data.n_train <= FEW_CLEAN_MAX:
            return cfg.with_changes(**lean)
        ratio = cfg.attack.n_attack / cfg.data.n_train
        return cfg.with_changes(**lean, **{"data.n_train": FEW_CLEAN_MAX,
                                           "attack.n_attack": int(round(ratio * FEW_CLEAN_MAX))})

    def small(name: str) -> bool:  # a dataset's only model, or the first of its several (Fashion-MNIST's MLP)
        dataset, _, model = name.partition(" ")
        return dataset not in DATASET_MODELS or model == next(iter(DATASET_MODELS[dataset]))

    grid = tuple(name for name, _ in bases if small(name))  # none where the small model was not picked
    return Plan("full", tuple((d, sized(c)) for d, c in bases), seeds=n, attack_factors=FEW_ATTACK_FACTORS,
                slices=slice_specs(1), sweep_seeds=n, robustness_seeds=n, surfaces=surface_specs(n=21),
                escape=EscapeSpec(radii=(0.0, 0.4), n_trials=2, retrain_epochs=100),
                random_init=RandomInitSpec(n_seeds=8 * n), robustness_datasets=grid, extras_datasets=grid,
                two_layer_widths=FULL_TWO_LAYER_WIDTHS, two_layer_factors=FULL_TWO_LAYER_FACTORS,
                two_layer_seeds=max(2, n), escape_search=EscapeSearchSpec(n_trials=2, retrain_epochs=100))
