"""The vocabulary of a pair of minima, written once.

A *pair* is two trained minima of one config: the **good** one (clean data) and the **bad** one
(clean data plus an attack set). Its id is the hash of what determines both minima
(`ExperimentConfig.training_hash`: no spectrum settings, no device); each run's id is `<pair_id>-<role>`.
The six training metrics are loss and accuracy on the clean training set, the attack set and the
test set. Long computations report progress as `progress(fraction, message)`, fraction in [0, 1].
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

ROLES: tuple[str, str] = ("good", "bad")
METRICS: tuple[str, ...] = ("clean_loss", "clean_acc", "attack_loss", "attack_acc", "test_loss", "test_acc")
CURVE_COLUMNS: tuple[str, ...] = ("epoch", "lr", *METRICS)
# One visual language (Okabe & Ito's colour-blind-safe palette): blue and vermillion are the roles and
# nothing else; dataset splits are greys with dash patterns; any other category takes OTHER_COLORS.
ROLE_COLORS: dict[str, str] = {"good": "#0072B2", "bad": "#D55E00"}
SPLITS: tuple[str, ...] = ("clean train", "attack", "test")
SPLIT_COLORS: dict[str, str] = {"clean train": "#1a1a1a", "attack": "#6b6b6b", "test": "#9e9e9e"}
SPLIT_DASHES: dict[str, list[int]] = {"clean train": [1, 0], "attack": [6, 3], "test": [2, 2]}
OTHER_COLORS: tuple[str, ...] = ("#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#000000", "#F0E442", "#999999")

Progress = Callable[[float, str], None]


def quiet(fraction: float, message: str) -> None:
    """The progress callback that reports nothing (the default everywhere)."""


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role = {role!r} is not allowed: one of {', '.join(ROLES)}")
    return role


def run_id(pair_id: str, role: str) -> str:
    """The id of one run of a pair: `<pair_id>-<role>`."""
    return f"{pair_id}-{check_role(role)}"


def run_ids(pair_id: str, roles: Iterable[str] = ROLES) -> list[str]:
    """Both run ids of a pair, good first."""
    return [run_id(pair_id, r) for r in roles]


def split_run_id(rid: str) -> tuple[str, str]:
    """(pair_id, role) of a run id; ValueError when it does not end in -good or -bad."""
    pair_id, sep, role = str(rid).rpartition("-")
    if not sep or not pair_id or role not in ROLES:
        raise ValueError(f"run id {rid!r} is not <pair_id>-good or <pair_id>-bad")
    return pair_id, role


def is_run_id(text: str) -> bool:
    return str(text).endswith(tuple(f"-{r}" for r in ROLES)) and len(str(text)) > max(map(len, ROLES)) + 1


def pair_of(rid: str) -> str:
    """The pair id of a run id (the text itself when it already names a pair)."""
    return split_run_id(rid)[0] if is_run_id(rid) else str(rid)


def role_of(rid: str) -> str:
    return split_run_id(rid)[1]


def scaled(progress: Progress, start: float, stop: float, prefix: str = "") -> Progress:
    """A callback that maps a part's [0, 1] onto [start, stop] of `progress`."""
    return lambda f, m: progress(start + (stop - start) * f, f"{prefix}{m}")


class Throttled:
    """Forwards progress at most every `interval` seconds, never moving the fraction backwards:
    a UI that redraws on every epoch would cost more than the epoch."""

    def __init__(self, progress: Progress, interval: float = 0.2):
        self.progress, self.interval, self.last, self.best = progress, interval, -1e9, 0.0

    def __call__(self, fraction: float, message: str, force: bool = False) -> None:
        self.best = max(self.best, fraction)
        now = time.perf_counter()
        if force or now - self.last >= self.interval:
            self.last = now
            self.progress(self.best, message)
