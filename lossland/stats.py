"""The uncertainty the claims state: bootstrap intervals over seeds, exact binomial bounds for counts.

Every interval is two-sided at CONFIDENCE (95%). The bootstrap is the percentile bootstrap of a
statistic over its resampling units (seeds, or minima for a rank correlation) with a fixed generator,
so the same stored results always give the same interval. With one unit there is no interval (nan):
a rule "the interval lies above 0" cannot pass on one seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import beta, rankdata

CONFIDENCE = 0.95
BOOTSTRAP_DRAWS = 4000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Interval:
    """A statistic, its bootstrap interval and the number of units it rests on."""

    value: float
    lo: float = math.nan
    hi: float = math.nan
    n: int = 0

    @property
    def above_zero(self) -> bool:
        return bool(self.n > 1 and self.lo > 0)

    def text(self, fmt: str = "{:+.3g}") -> str:
        """'+0.52 [+0.31, +0.70]' (just the value without an interval; '—' without a value)."""
        if not math.isfinite(self.value):
            return "—"
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            return fmt.format(self.value)
        return f"{fmt.format(self.value)} [{fmt.format(self.lo)}, {fmt.format(self.hi)}]"


def _finite(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[np.isfinite(v)]


def _quantiles(draws: np.ndarray) -> tuple[float, float]:
    tail = (1.0 - CONFIDENCE) / 2
    lo, hi = np.quantile(draws, [tail, 1.0 - tail])
    return float(lo), float(hi)


def bootstrap_mean(values) -> Interval:
    """The mean over units (non-finite values dropped) and its percentile-bootstrap interval."""
    v = _finite(values)
    if v.size == 0:
        return Interval(math.nan)
    if v.size == 1:
        return Interval(float(v[0]), n=1)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = v[rng.integers(0, v.size, (BOOTSTRAP_DRAWS, v.size))].mean(1)
    return Interval(float(v.mean()), *_quantiles(means), n=int(v.size))


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman ρ of each row pair of (draws, n) arrays (average ranks for ties; nan for a constant row)."""
    rx, ry = rankdata(x, axis=-1), rankdata(y, axis=-1)
    rx, ry = rx - rx.mean(-1, keepdims=True), ry - ry.mean(-1, keepdims=True)
    den = np.sqrt((rx ** 2).sum(-1) * (ry ** 2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def bootstrap_spearman(x, y) -> Interval:
    """Spearman's ρ between paired values and its percentile-bootstrap interval over the pairs
    (resamples where either side is constant are dropped). Fewer than 3 pairs: no value."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 3:
        return Interval(math.nan, n=int(x.size))
    rho = float(_spearman_rows(x[None], y[None])[0])
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    idx = rng.integers(0, x.size, (BOOTSTRAP_DRAWS, x.size))
    draws = _spearman_rows(x[idx], y[idx])
    draws = draws[np.isfinite(draws)]
    if draws.size == 0 or not math.isfinite(rho):
        return Interval(rho, n=int(x.size))
    return Interval(rho, *_quantiles(draws), n=int(x.size))


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    """The exact two-sided CONFIDENCE interval of a binomial probability after k successes in n trials."""
    if n <= 0:
        return math.nan, math.nan
    tail = (1.0 - CONFIDENCE) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1.0 - tail, k + 1, n - k))
    return lo, hi


def one_sided_bound(k: int, n: int) -> float:
    """The exact one-sided CONFIDENCE bound of a binomial probability: the upper bound after k = 0 of n
    (1 − 0.05^(1/n) at 95%), the lower bound after k = n; the nearer bound otherwise."""
    if n <= 0:
        return math.nan
    if k < n / 2:
        return 1.0 if k == n else float(beta.ppf(CONFIDENCE, k + 1, n - k))
    return 0.0 if k == 0 else float(beta.ppf(1.0 - CONFIDENCE, k, n - k + 1))


def count_text(k: int, n: int, what: str) -> str:
    """'0 of 32 <what>: probability ≤ 9% (95%)' (one-sided at 0 or n), else the two-sided interval."""
    if n <= 0:
        return f"0 of 0 {what}"
    pct = f"{CONFIDENCE:.0%}"
    if k == 0:
        return f"0 of {n} {what}: probability ≤ {one_sided_bound(k, n):.0%} ({pct})"
    if k == n:
        return f"{n} of {n} {what}: probability ≥ {one_sided_bound(k, n):.0%} ({pct})"
    lo, hi = clopper_pearson(k, n)
    return f"{k} of {n} {what}: probability {lo:.0%}–{hi:.0%} ({pct})"


# --- formatting ----------------------------------------------------------------------------------

def spread(values, fmt: str = "{:.3g}") -> str:
    """mean ± standard deviation over seeds (just the value for one seed)."""
    v = np.asarray(pd.Series(values, dtype=float).dropna())
    if v.size == 0:
        return "—"
    if v.size == 1:
        return fmt.format(v[0])
    return f"{fmt.format(v.mean())} ± {fmt.format(v.std(ddof=1))}"


def percent(values) -> str:
    return spread(np.asarray(pd.Series(values, dtype=float)) * 100, "{:.1f}") + "%"
