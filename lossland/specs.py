"""Analysis specs: every setting of an analysis of a stored pair as frozen, self-validating plain data.

They live beside the experiment config (`config.py`) and follow its rules: a spec validates itself on
construction (a ConfigError naming `<kind>.<field>`, the value and what is allowed), serialises to JSON
(the `settings_json` the store keeps) and hashes, with the run or pair it looks at, to its analysis
id. Each setting has one default, here: the dashboard's widgets, `analyses` and `reproduce` start from
these. The hashed settings are the dicts analyses have always stored, so the ids of existing stores
stay valid.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from .config import (
    ConfigError,
    _fail,
    _int,
    _is_num,
    _num,
    _shown,
)
from .pairs import ROLES

# The base every spec extends, and its helpers (spec_base.py: path_specs extends it too without a cycle)
from .spec_base import MAX_RADII, SEED_MAX, Spec, _seed, _text  # noqa: E402, F401

# --- landscapes ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class InterpolationSpec(Spec):
    """Loss and accuracy along θ(α) = (1 − α) θ_good + α θ_bad at n_points α in [alpha_min, alpha_max]."""

    kind: ClassVar[str] = "interpolation"
    title: ClassVar[str] = "interpolation"
    n_points: int = 41
    alpha_min: float = -0.5
    alpha_max: float = 1.5

    def validate(self) -> None:
        _int(self.field("n_points"), self.n_points, 2, 100_000)
        _num(self.field("alpha_min"), self.alpha_min, -1000.0, 1000.0)
        _num(self.field("alpha_max"), self.alpha_max, -1000.0, 1000.0)
        if not self.alpha_max > self.alpha_min:
            _fail(self.field("alpha_max"), self.alpha_max, f"greater than alpha_min = {self.alpha_min}")

    def grid_points(self) -> int:
        return self.n_points


@dataclass(frozen=True)
class SliceSpec(Spec):
    """1-D slices θ* + α d, α in [−span, span], around both minima: d filter-normalised Gaussian of the
    direction seed, the same for both ("random"), or each minimum's top Hessian eigenvector scaled to
    the weights' norm ("eigen")."""

    kind: ClassVar[str] = "slice1d"
    title: ClassVar[str] = "1-D slices"
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"directions": ("random", "eigen")}
    directions: str = "random"
    seed: int = 0
    n_points: int = 41
    span: float = 1.0

    def validate(self) -> None:
        super().validate()
        _seed(self, "seed")
        _int(self.field("n_points"), self.n_points, 2, 100_000)
        _num(self.field("span"), self.span, 0.0, 1000.0, lo_open=True)

    def grid_points(self) -> int:
        return len(ROLES) * self.n_points


@dataclass(frozen=True)
class SurfaceSpec(Spec):
    """A 2-D n × n grid θ* + α d₁ + β d₂ around one minimum, α, β in [−span, span], d₁ and d₂
    filter-normalised of direction seeds seed and seed + 1 (the same for both minima, so they compare)."""

    kind: ClassVar[str] = "surface2d"
    title: ClassVar[str] = "2-D surface"
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"role": ROLES}
    role: str = "good"
    seed: int = 0
    n: int = 41
    span: float = 1.0

    def validate(self) -> None:
        super().validate()
        _seed(self, "seed")
        _int(self.field("n"), self.n, 2, 10_000)
        _num(self.field("span"), self.span, 0.0, 1000.0, lo_open=True)

    def grid_points(self) -> int:
        return self.n * self.n

    def for_role(self, role: str) -> SurfaceSpec:
        """The same surface around the other minimum."""
        return replace(self, role=role)


# --- basins ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EscapeSpec(Spec):
    """From each minimum, n_trials filter-normalised perturbations of each relative radius, each
    retrained for retrain_epochs on the clean set only. A trial escapes when its retraining reaches the
    loss target with a test accuracy more than `margin` away from the minimum's, in either direction,
    for both roles alike (`margin` is new in the settings, so trials stored under the old, one-sided
    rule for bad minima get other ids and are never read as these)."""

    kind: ClassVar[str] = "escape"
    title: ClassVar[str] = "escape trials"
    radii: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4)
    n_trials: int = 8
    seed: int = 0
    retrain_epochs: int = 300
    margin: float = 0.05

    def validate(self) -> None:
        r = self.radii
        if (not isinstance(r, tuple) or not 1 <= len(r) <= MAX_RADII
                or not all(_is_num(v) and 0.0 <= v <= 1000.0 for v in r)):
            _fail(self.field("radii"), r, f"a list of 1 to {MAX_RADII} numbers in [0, 1000]")
        _int(self.field("n_trials"), self.n_trials, 1, 1_000_000)
        _seed(self, "seed")
        _int(self.field("retrain_epochs"), self.retrain_epochs, 1, 1_000_000)
        _num(self.field("margin"), self.margin, 0.0, 1.0)

    def trials(self) -> int:
        return len(ROLES) * len(self.radii) * self.n_trials


@dataclass(frozen=True)
class RandomInitSpec(Spec):
    """n_seeds random initialisations (seeds seed0, seed0 + 1, ...) trained on the clean set."""

    kind: ClassVar[str] = "random_init"
    title: ClassVar[str] = "random inits"
    n_seeds: int = 32
    seed0: int = 1000

    def validate(self) -> None:
        _int(self.field("n_seeds"), self.n_seeds, 1, 100_000)
        _seed(self, "seed0")

    def trials(self) -> int:
        return self.n_seeds


@dataclass(frozen=True)
class RadiusSpec(Spec):
    """Per minimum and random direction (seeds seed, seed + 1, ...), the largest relative perturbation
    keeping the clean loss below threshold_factor × the clean-loss target."""

    kind: ClassVar[str] = "radius"
    title: ClassVar[str] = "empirical radius"
    threshold_factor: float = 10.0
    n_directions: int = 8
    seed: int = 0

    def validate(self) -> None:
        _num(self.field("threshold_factor"), self.threshold_factor, 1.0, 1e6, lo_open=True)
        _int(self.field("n_directions"), self.n_directions, 1, 100_000)
        _seed(self, "seed")

    def trials(self) -> int:
        return len(ROLES) * self.n_directions


# --- the 2-layer theory ----------------------------------------------------------------------------

@dataclass(frozen=True)
class BoundSpec(Spec):
    """Both sides of C ≤ √m ‖W‖₂² ‖G‖_F at each minimum of a two_layer pair (nothing to set)."""

    kind: ClassVar[str] = "bound"
    title: ClassVar[str] = "2-layer bound"


# --- sharpness beyond the spectrum ---------------------------------------------------------------

@dataclass(frozen=True)
class SharpnessSpec(Spec):
    """At each minimum, the adaptive sharpness λ₁(|θ| H |θ|) of the clean training loss
    (curvature.adaptive_sharpness: unchanged by a layer-wise rescaling of the weights), by Lanczos."""

    kind: ClassVar[str] = "adaptive_sharpness"
    title: ClassVar[str] = "adaptive sharpness"
    tol: float = 1e-6
    max_steps: int = 200
    seed: int = 0

    def validate(self) -> None:
        _num(self.field("tol"), self.tol, 0.0, 1.0, lo_open=True)
        _int(self.field("max_steps"), self.max_steps, 2, 100_000)
        _seed(self, "seed")


@dataclass(frozen=True)
class TwoLayerSpec(Spec):
    """basins.two_layer_measure (complexity E‖∇ₓf‖², ‖H‖_F and λ₁ of the Hessian of the clean training
    loss) at both minima of a two_layer pair, and, as the claim's negative control, at the network both
    started from (untrained) with the true labels and with uniformly random labels (seed label_seed)."""

    kind: ClassVar[str] = "two_layer"
    title: ClassVar[str] = "2-layer measurement"
    label_seed: int = 0

    def validate(self) -> None:
        _seed(self, "label_seed")


SPECS: dict[str, type[Spec]] = {s.kind: s for s in (InterpolationSpec, SliceSpec, SurfaceSpec, EscapeSpec,
                                                     RandomInitSpec, RadiusSpec, BoundSpec, SharpnessSpec,
                                                     TwoLayerSpec)}


def from_stored(kind: str, settings_json: str) -> Spec:
    """The spec of a stored analysis (its `analyses` row's kind and settings_json)."""
    if kind not in SPECS:
        raise ConfigError(f"analysis kind {_shown(kind)} is not allowed: one of {', '.join(SPECS)}")
    return SPECS[kind].from_json(settings_json)


# --- the paper's Figure 1 (no pair: its subject is CURVE_FIT) --------------------------------------

CURVE_FIT = "curve-fit"  # the subject of the analysis id, in place of a pair id
CURVE_FIT_TARGETS = ("sin", "cubic")  # fitting.TARGETS (specs stays free of torch)


def _ints(spec: Spec, name: str, lo: int, hi: int, count: tuple[int, int]) -> None:
    v = getattr(spec, name)
    if (not isinstance(v, tuple) or not count[0] <= len(v) <= count[1]
            or not all(isinstance(i, int) and not isinstance(i, bool) and lo <= i <= hi for i in v)):
        _fail(spec.field(name), v, f"a list of {count[0]} to {count[1]} integers in [{lo}, {hi}]")


@dataclass(frozen=True)
class CurveFitSpec(Spec):
    """Figure 1 (lossland.fitting.curve_fit): for each n in ns and n_seeds seeds, n noisy points of the
    target fitted by a tanh MLP of `widths` (Adam, `steps` full-batch steps from `lr`) and by polynomials
    of degree n − 1 + k (k in extra_degrees) and low_degree; scored on n_grid points."""

    kind: ClassVar[str] = "curve_fit"
    title: ClassVar[str] = "curve fit (Figure 1)"
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"target": CURVE_FIT_TARGETS}
    target: str = "sin"
    noise: float = 0.1
    ns: tuple[int, ...] = (5, 8, 11, 14)
    n_seeds: int = 3
    seed: int = 0
    widths: tuple[int, ...] = (64, 64)
    steps: int = 2000
    lr: float = 0.01
    extra_degrees: tuple[int, ...] = (0, 20)
    low_degree: int = 3
    n_grid: int = 401

    def validate(self) -> None:
        super().validate()
        _num(self.field("noise"), self.noise, 0.0, 10.0)
        _ints(self, "ns", 2, 200, (1, 16))
        _int(self.field("n_seeds"), self.n_seeds, 1, 100)
        _seed(self, "seed")
        _ints(self, "widths", 1, 4096, (1, 4))
        _int(self.field("steps"), self.steps, 1, 1_000_000)
        _num(self.field("lr"), self.lr, 0.0, 10.0, lo_open=True)
        _ints(self, "extra_degrees", 0, 1000, (0, 8))
        _int(self.field("low_degree"), self.low_degree, 0, 100)
        _int(self.field("n_grid"), self.n_grid, 3, 100_000)

    def trials(self) -> int:  # the cost is the networks trained; its grid is evaluated in one pass
        return len(self.ns) * self.n_seeds


SPECS[CurveFitSpec.kind] = CurveFitSpec


# --- per-layer curvature ---------------------------------------------------------------------------

LAYER_BLOCKINGS = ("module", "tensor")  # layers.BLOCKINGS (specs stays free of torch)


@dataclass(frozen=True)
class LayerSpec(Spec):
    """At each minimum, per parameter block (each module's weights and bias, or each tensor), the top
    eigenvalue and the trace of the block's diagonal Hessian block H_bb of the clean training loss
    (layers.layer_curvature): Lanczos to tol and Hutch++ with trace_samples HVPs, both exact from the
    dense H_bb where the block has at most exact_max_params parameters."""

    kind: ClassVar[str] = "layers"
    title: ClassVar[str] = "per-layer curvature"
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"blocks": LAYER_BLOCKINGS}
    blocks: str = "module"
    trace_samples: int = 30
    exact_max_params: int = 100
    tol: float = 1e-6
    max_steps: int = 200
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        _int(self.field("trace_samples"), self.trace_samples, 3, 100_000)
        _int(self.field("exact_max_params"), self.exact_max_params, 0, 5000)
        _num(self.field("tol"), self.tol, 0.0, 1.0, lo_open=True)
        _int(self.field("max_steps"), self.max_steps, 2, 100_000)
        _seed(self, "seed")


SPECS[LayerSpec.kind] = LayerSpec


# The specs of paths (the optimizer's trajectory, the escape transition) live in path_specs; registered here.
from .path_specs import EscapeSearchSpec, TrajectorySpec  # noqa: E402

SPECS[TrajectorySpec.kind] = TrajectorySpec
SPECS[EscapeSearchSpec.kind] = EscapeSearchSpec
