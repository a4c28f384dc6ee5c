"""Where escape becomes likely: the radius at which a minimum's escape probability crosses 50%.

The escape experiment (basins.escape_trials) at fixed radii often says nothing: on digits every radius
of the default grid gives 0% for the good minimum and 100% for the bad one. `bisect_escape` finds the
transition instead, per minimum: a bracket in radius widened until it holds the 50% crossing, then
bisected in log-radius with a few trials per radius. It is pure (its counts come from an oracle), so
stored trials replay a search exactly and a stopped search resumes where it stopped;
`escape_transition` runs it with real perturb-and-retrain trials.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
from torch import nn

from .basins import EscapeResult, escape_trials
from .config import ExperimentConfig
from .data import Dataset
from .pairs import Progress, quiet, scaled

Oracle = Callable[[float], tuple[int, int]]  # radius -> (trials that escaped, trials)


@dataclass(frozen=True)
class EscapeTransition:
    """The radii one search probed (in order) with their counts, and the final bracket of the 50% point:
    p(lo) < 0.5 ≤ p(hi) (k ≥ n/2 counts as half). Unbracketed, lo is nan when even the smallest radius
    escaped half the time (the crossing lies below hi; r = 0 is then probed too, the control that says
    whether retraining alone, unperturbed, already escapes), hi is nan when the largest radius still did
    not (it lies above lo)."""

    radii: tuple[float, ...]
    escaped: tuple[int, ...]
    trials: tuple[int, ...]
    lo: float
    hi: float

    @property
    def bracketed(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    @property
    def r50(self) -> float:
        """The 50% radius, interpolated linearly in log r between the bracket's ends (nan unbracketed)."""
        if not self.bracketed:
            return math.nan
        p = {r: k / n for r, k, n in zip(self.radii, self.escaped, self.trials, strict=True)}
        p_lo, p_hi = p[self.lo], p[self.hi]
        t = (0.5 - p_lo) / (p_hi - p_lo)
        return float(math.exp(math.log(self.lo) + t * (math.log(self.hi) - math.log(self.lo))))

    @property
    def at_zero(self) -> tuple[int, int] | None:
        """(escaped, trials) of the unperturbed control r = 0, when the search probed it."""
        return next(((k, n) for r, k, n in zip(self.radii, self.escaped, self.trials, strict=True) if r == 0), None)


def _radius(r: float) -> float:
    return float(f"{r:.4g}")  # 4 significant digits: readable, and the same float when read back


def bisect_escape(oracle: Oracle, r_lo: float, r_hi: float, steps: int, expand: int = 2, factor: float = 10.0,
                  scan: int = 3) -> EscapeTransition:
    """Bracket the smallest radius where the escape probability crosses 50%: probe `scan` radii evenly in
    log r from r_lo to r_hi; the first that escapes half the time or more and the one before it are the
    bracket. Where r_lo already does, probe r_lo / factor (then / factor², ...), where none does r_hi ×
    factor (...), at most `expand` times (and where even the smallest does, r = 0: the unperturbed
    control); then halve the bracket `steps` times at its geometric mean.
    Pure: every count comes from `oracle`, so stored counts replay a search exactly (and a stopped one
    resumes)."""
    if not (0 < r_lo < r_hi and steps >= 0 and expand >= 0 and factor > 1 and scan >= 2):
        raise ValueError(f"need 0 < r_lo = {r_lo} < r_hi = {r_hi}, steps = {steps} ≥ 0, expand = {expand} ≥ 0, "
                         f"factor = {factor} > 1 and scan = {scan} ≥ 2")
    seen: dict[float, tuple[int, int]] = {}

    def half(r: float) -> bool:
        if r not in seen:
            seen[r] = oracle(r)
        k, n = seen[r]
        return k >= n / 2

    grid = [_radius(r_lo * (r_hi / r_lo) ** (i / (scan - 1))) for i in range(scan)]
    hits = [half(r) for r in grid]
    lo, hi = math.nan, math.nan
    if hits[0]:
        hi = grid[0]
        for _ in range(expand):
            r = _radius(hi / factor)
            if not half(r):
                lo = r
                break
            hi = r
        if math.isnan(lo):
            half(0.0)
    elif any(hits):
        j = hits.index(True)
        lo, hi = grid[j - 1], grid[j]
    else:
        lo = grid[-1]
        for _ in range(expand):
            r = _radius(lo * factor)
            if half(r):
                hi = r
                break
            lo = r
    for _ in range(steps if math.isfinite(lo) and math.isfinite(hi) else 0):
        mid = _radius(math.sqrt(lo * hi))
        if not lo < mid < hi:
            break
        lo, hi = (lo, mid) if half(mid) else (mid, hi)
    return EscapeTransition(radii=tuple(seen), escaped=tuple(k for k, _ in seen.values()),
                            trials=tuple(n for _, n in seen.values()), lo=lo, hi=hi)


def escape_transition(cfg: ExperimentConfig, data: Dataset, model: nn.Module, role: str, *, r_lo: float,
                      r_hi: float, steps: int, expand: int, factor: float, scan: int, n_trials: int, seed: int,
                      retrain_epochs: int, margin: float, done: dict[float, tuple[int, int]] | None = None,
                      on_radius: Callable[[EscapeResult], None] | None = None,
                      progress: Progress = quiet) -> EscapeTransition:
    """bisect_escape with escape_trials at each new radius (n_trials trials, seeds seed + t, as there);
    radii in `done` (radius -> counts, e.g. stored trials) are not retrained. Each new radius's trials
    go to `on_radius` as they finish."""
    done = dict(done or {})
    budget = scan + expand + steps

    def oracle(r: float) -> tuple[int, int]:
        if r in done:
            return done[r]
        part = scaled(progress, min(len(done), budget - 1) / budget, min(len(done) + 1, budget) / budget)
        res = escape_trials(cfg, data, model, [r], n_trials, seed, retrain_epochs=retrain_epochs, role=role,
                            escape_margin=margin, progress=part)
        if on_radius is not None:
            on_radius(res)
        done[r] = (int(res.escaped.sum()), n_trials)
        return done[r]

    return bisect_escape(oracle, r_lo, r_hi, steps, expand, factor, scan)


def stored_counts(trials: pd.DataFrame) -> dict[float, tuple[int, int]]:
    """radius -> (escaped, trials) of one minimum's stored trials (columns radius, escaped)."""
    g = trials.assign(escaped=trials["escaped"].astype(bool)).groupby("radius")["escaped"]
    return {float(r): (int(k), int(n)) for (r, k), n in zip(g.sum().items(), g.size(), strict=True)}


def replay_transition(trials: pd.DataFrame, **search) -> EscapeTransition:
    """The search that produced one minimum's stored trials, replayed from them (bisect_escape's settings
    in `search`); KeyError when it probes a radius the trials lack (a search that did not finish)."""
    counts = stored_counts(trials)
    return bisect_escape(lambda r: counts[r], **search)
