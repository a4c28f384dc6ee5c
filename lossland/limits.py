"""Resource caps of a served dashboard, set by its operator through environment variables.

A collaborator's form or button can't start more compute than these allow: a config or an
analysis over a cap is refused with a ConfigError naming the field, the value and the variable
that sets the cap, before anything runs. The library and the CLI are not capped (the person at
the keyboard owns the machine); the dashboard checks every launch here, an analysis by its spec.

    LOSSLAND_MAX_PARAMS        model parameters of a new experiment      (default 2,000,000)
    LOSSLAND_MAX_EPOCHS        train.max_epochs of a new experiment      (default 5,000)
    LOSSLAND_MAX_GRID_POINTS   points of a landscape grid or a sweep     (default 10,000)
    LOSSLAND_MAX_TRIALS        retraining trials or seeds of an analysis (default 1,000)
    LOSSLAND_MAX_UPLOAD_MB     size of an imported bundle, in MB         (default 200; keep
                               .streamlit/config.toml's server.maxUploadSize the same)
    LOSSLAND_SQL_TIMEOUT_S     time limit of a SQL console query         (default 10)
    LOSSLAND_SQL_MAX_ROWS      rows a SQL console query returns          (default 10,000)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields

import torch

from .config import ConfigError, ExperimentConfig
from .models import build_model, n_params
from .specs import Spec


@dataclass(frozen=True)
class Limits:
    max_params: int = 2_000_000
    max_epochs: int = 5_000
    max_grid_points: int = 10_000
    max_trials: int = 1_000
    max_upload_mb: int = 200
    sql_timeout_s: float = 10.0
    sql_max_rows: int = 10_000

    @staticmethod
    def variable(name: str) -> str:
        return f"LOSSLAND_{name.upper()}"


def limits() -> Limits:
    """The caps in force now (read from the environment at each call, so an operator's change applies)."""
    values = {}
    for f in fields(Limits):
        var = Limits.variable(f.name)
        raw = os.environ.get(var, "").strip()
        if not raw:
            continue
        try:
            value = float(raw) if f.type == "float" else int(raw.replace("_", ""))
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value <= 0:
            kind = "number" if f.type == "float" else "integer"
            raise ConfigError(f"{var} = {raw!r} is not allowed: a positive {kind}")
        values[f.name] = value
    return Limits(**values)


def _over(field: str, value: int, cap: int, name: str, what: str) -> None:
    raise ConfigError(f"{field} = {value:,} is over this dashboard's cap of {cap:,} {what} "
                      f"({Limits.variable(name)}, set by its operator)")


def model_params(cfg: ExperimentConfig) -> int:
    """Parameters of cfg's model, counted on the meta device: no memory, no data loaded."""
    in_shape = (cfg.data.teacher_dim,) if cfg.data.name == "teacher" else _IN_SHAPES[cfg.data.name]
    with torch.device("meta"):
        return n_params(build_model(cfg.model, in_shape, cfg.data.n_classes()))


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
