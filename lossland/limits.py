"""Resource caps and switches of a served dashboard, set by its operator through environment variables.

A collaborator's form or button can't start more compute than these allow: a config or an
analysis over a cap is refused with a ConfigError naming the field, the value and the variable
that sets the cap, before anything runs. The library and the CLI are not capped (the person at
the keyboard owns the machine); the dashboard checks every launch here, an analysis by its spec.

    variable                   caps                                       default    allowed
    LOSSLAND_MAX_PARAMS        model parameters of a new experiment       2,000,000  1 .. 10^9
    LOSSLAND_MAX_EPOCHS        train.max_epochs of a new experiment       5,000      1 .. 10^6
    LOSSLAND_MAX_GRID_POINTS   points of a landscape grid or a sweep      10,000     1 .. 10^6
    LOSSLAND_MAX_TRIALS        retraining trials or seeds of an analysis  1,000      1 .. 10^5
    LOSSLAND_MAX_UPLOAD_MB     size of an imported bundle, in MB          200        1 .. 10,240
                               (keep .streamlit/config.toml's server.maxUploadSize the same)
    LOSSLAND_SQL_TIMEOUT_S     time limit of a SQL console query, s       10         0.1 .. 600
    LOSSLAND_SQL_MAX_ROWS      rows a SQL console query returns           10,000     1 .. 10^6
    LOSSLAND_SQL_MEMORY_MB     working memory of a SQL console query, MB  512        16 .. 16,384

Every cap has a range, so no value switches it off (0, negative, huge, NaN, inf and text are refused):
a bad value is a ConfigError naming the variable and its range, and the dashboard refuses to start.

    LOSSLAND_READONLY          serve read-only: 1, true, yes, on; or 0, false, no, off, empty or unset
                               (any case, surrounding spaces ignored); any other value is refused
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

import torch

from . import factories
from .config import CUSTOM, ConfigError, ExperimentConfig
from .models import build_model, n_params
from .specs import Spec


@dataclass(frozen=True)
class Limits:
    """The caps in force; each must lie in RANGES (a ConfigError naming it otherwise)."""

    max_params: int = 2_000_000
    max_epochs: int = 5_000
    max_grid_points: int = 10_000
    max_trials: int = 1_000
    max_upload_mb: int = 200
    sql_timeout_s: float = 10.0
    sql_max_rows: int = 10_000
    sql_memory_mb: int = 512

    def __post_init__(self) -> None:
        for f in fields(self):
            lo, hi = RANGES[f.name]
            value = getattr(self, f.name)
            kind = float if f.type == "float" else int
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi or (
                    kind is int and value != int(value)):
                raise ConfigError(f"{f.name} = {value!r} is not allowed: {_range(f.name, kind)}")

    @staticmethod
    def variable(name: str) -> str:
        return f"LOSSLAND_{name.upper()}"


# The values each cap may take: none switches its limit off. The SQL ones lie within the console's own
# (lossland.store.sandbox.RANGES).
RANGES: dict[str, tuple[float, float]] = {
    "max_params": (1, 10**9), "max_epochs": (1, 10**6), "max_grid_points": (1, 10**6), "max_trials": (1, 10**5),
    "max_upload_mb": (1, 10_240), "sql_timeout_s": (0.1, 600), "sql_max_rows": (1, 10**6),
    "sql_memory_mb": (16, 16_384)}


def _number(x: float) -> str:
    return f"{int(x):,}" if x == int(x) else f"{x:g}"


def _range(name: str, kind: type) -> str:
    lo, hi = RANGES[name]
    return f"{'a number' if kind is float else 'an integer'} from {_number(lo)} to {_number(hi)}"


def limits() -> Limits:
    """The caps in force now (read from the environment at each call, so an operator's change applies);
    a ConfigError naming the variable and its range where one is set to anything else."""
    values = {}
    for f in fields(Limits):
        var = Limits.variable(f.name)
        raw = os.environ.get(var, "").strip()
        if not raw:
            continue
        kind = float if f.type == "float" else int
        try:
            value = kind(raw.replace("_", ""))
        except ValueError:
            value = None
        lo, hi = RANGES[f.name]
        if value is None or not lo <= value <= hi:
            raise ConfigError(f"{var} = {raw[:80]!r} is not allowed: {_range(f.name, kind)} "
                              f"(unset it for the default, {_number(getattr(Limits, f.name))})")
        values[f.name] = value
    return Limits(**values)


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")


def switch(var: str) -> bool:
    """An operator's on/off variable: TRUE_WORDS or FALSE_WORDS (unset is off) in any case, surrounding
    spaces ignored; anything else is a ConfigError naming it (a typo never picks a side silently)."""
    raw = os.environ.get(var, "")
    word = raw.strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise ConfigError(f"{var} = {raw[:80]!r} is not allowed: one of {', '.join(TRUE_WORDS)} (on) or "
                      f"{', '.join(FALSE_WORDS[:-1])}, empty or unset (off); case and surrounding spaces don't matter")


def read_only() -> bool:
    """LOSSLAND_READONLY: serve read-only (see `switch`)."""
    return switch("LOSSLAND_READONLY")


def _over(field: str, value: int, cap: int, name: str, what: str) -> None:
    raise ConfigError(f"{field} = {value:,} is over this dashboard's cap of {cap:,} {what} "
                      f"({Limits.variable(name)}, set by its operator)")


def model_params(cfg: ExperimentConfig) -> int:
    """Parameters of cfg's model, counted on the meta device: no memory, no data loaded. A factory's data are
    loaded for their shape, and a factory's model is built for real (its code may not run on the meta device)."""
    if cfg.data.name == CUSTOM:
        a = factories.load_data(cfg.data)
        in_shape, n_classes = tuple(a.x_pool.shape[1:]), a.n_classes
    else:
        in_shape = (cfg.data.teacher_dim,) if cfg.data.name == "teacher" else _IN_SHAPES[cfg.data.name]
        n_classes = cfg.data.n_classes()
    if cfg.model.name == CUSTOM:
        return n_params(build_model(cfg.model, in_shape, n_classes))
    with torch.device("meta"):
        return n_params(build_model(cfg.model, in_shape, n_classes))


# Input shapes of the datasets, known without loading them (teacher: (teacher_dim,)).
_IN_SHAPES: dict[str, tuple[int, ...]] = {"digits": (1, 8, 8), "mnist1d": (40,), "mnist": (1, 28, 28),
                                          "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def check_experiment(cfg: ExperimentConfig, caps: Limits | None = None) -> None:
    """Refuse a config whose model or training exceeds the caps (ConfigError naming the field)."""
    caps = caps or limits()
    if cfg.train.max_epochs > caps.max_epochs:
        _over("train.max_epochs", cfg.train.max_epochs, caps.max_epochs, "max_epochs", "epochs")
    params = model_params(cfg)
    if params > caps.max_params:
        _over("model", params, caps.max_params, "max_params", f"parameters ({cfg.model.name} with widths "
              f"{list(cfg.model.widths)} and channels {list(cfg.model.channels)} has {params:,})")


def check_grid(points: int, what: str = "grid points", caps: Limits | None = None) -> None:
    caps = caps or limits()
    if points > caps.max_grid_points:
        _over(what, points, caps.max_grid_points, "max_grid_points", "grid points")


def check_trials(trials: int, what: str = "trials", caps: Limits | None = None) -> None:
    caps = caps or limits()
    if trials > caps.max_trials:
        _over(what, trials, caps.max_trials, "max_trials", "trials")


def check_analysis(spec: Spec, what: str, caps: Limits | None = None) -> None:
    """Refuse an analysis whose grid or trials (spec.grid_points(), spec.trials()) exceed the caps."""
    caps = caps or limits()
    check_grid(spec.grid_points(), f"{what}: grid points", caps)
    check_trials(spec.trials(), f"{what}: trials", caps)


def check_upload(n_bytes: int, caps: Limits | None = None) -> None:
    caps = caps or limits()
    if n_bytes > caps.max_upload_mb * 1024**2:
        raise ConfigError(f"upload = {n_bytes / 1024**2:,.1f} MB is over this dashboard's cap of "
                          f"{caps.max_upload_mb:,} MB ({Limits.variable('max_upload_mb')}, set by its operator)")
