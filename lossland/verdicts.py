"""Verdicts: a `Comparison` (one tested effect with its interval), a `Check` (one claim on one dataset, with its
control) and a `Claim`, and the rules that turn tests into verdicts (`lossland.claims` states the claims).

A check is PASS when every test of its rule passes and none passes on the control, NOT INFORMATIVE when its
rule passes but a test also passes on the control (or there is no control), FAIL when a test of its rule fails,
and NO DATA without the evidence it needs — also when the only failing tests are effects measured without an
interval (one seed has none: a one-seed run shows its effects, it does not fail them). A claim is judged on the
datasets whose checks have evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .stats import Interval

PASS, FAIL, NO_DATA, NOT_INFORMATIVE = "PASS", "FAIL", "NO DATA", "NOT INFORMATIVE"


@dataclass(frozen=True)
class Comparison:
    """One tested effect of a check: its value and interval, and whether it passed its rule."""

    name: str
    passed: bool
    effect: str  # as shown: "+0.52 [+0.31, +0.70] over 5 seeds"
    value: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    n: int = 0
    rule: bool = True  # part of the claim's rule (False: reported beside it)
    controlled: bool = True  # must not pass on the control (False: a precondition, true of any good run)
    interval: bool = False  # an effect judged by its interval (see `effect`)

    @property
    def unjudged(self) -> bool:
        """An effect measured on too few units for an interval (e.g. one seed)."""
        return self.interval and self.n > 0 and not (math.isfinite(self.lo) and math.isfinite(self.hi))


@dataclass(frozen=True)
class Check:
    """One claim on one dataset (or on the 2-layer runs), with the same rule on its control."""

    dataset: str
    verdict: str  # the rule on this evidence: PASS | FAIL | NO DATA
    measured: str
    detail: str = ""  # what failed, in numbers; or why there is no data
    tests: tuple[Comparison, ...] = ()
    control: Check | None = None

    def passing_on_control(self) -> list[str]:
        """Names of this check's controlled rule tests that also pass on the control."""
        if self.control is None:
            return []
        ours = {t.name for t in self.tests if t.rule and t.controlled}
        return [t.name for t in self.control.tests if t.passed and t.name in ours]

    @property
    def result(self) -> str:
        if self.verdict != PASS:
            return self.verdict
        if self.control is None or self.control.verdict == NO_DATA or self.passing_on_control():
            return NOT_INFORMATIVE
        return PASS

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "verdict": self.verdict, "result": self.result, "measured": self.measured,
                "detail": self.detail, "tests": [t.__dict__ for t in self.tests],
                "control": self.control.to_dict() if self.control is not None else None}


@dataclass(frozen=True)
class Claim:
    number: int
    statement: str
    test: str
    checks: tuple[Check, ...]

    @property
    def verdict(self) -> str:
        """Over the checks with evidence (a dataset without any, NO DATA in the table, neither passes nor fails
        the claim: the one-seed plan runs random inits on the small model only): FAIL if one fails, NOT
        INFORMATIVE if one is, PASS if all pass, NO DATA when none has evidence."""
        results = {c.result for c in self.checks} - {NO_DATA}
        if not results or results == {PASS}:
            return results.pop() if results else NO_DATA
        return NOT_INFORMATIVE if results <= {PASS, NOT_INFORMATIVE} else FAIL

    @property
    def measured(self) -> str:
        return "; ".join(f"{c.dataset}: {c.measured}" for c in self.checks)

    def to_dict(self) -> dict:
        return {"number": self.number, "statement": self.statement, "test": self.test, "verdict": self.verdict,
                "measured": self.measured, "checks": [c.to_dict() for c in self.checks]}


def effect(name: str, iv: Interval, unit: str = "seeds", fmt: str = "{:+.3g}", rule: bool = True) -> Comparison:
    """A test that passes when the interval of the effect lies above 0."""
    return Comparison(name, iv.above_zero, f"{iv.text(fmt)} over {iv.n} {unit}", iv.value, iv.lo, iv.hi, iv.n, rule,
                      interval=True)


def _no_data(dataset: str, why: str) -> Check:
    return Check(dataset, NO_DATA, "—", why)


def _judge(dataset: str, tests: list[Comparison], measured: str, notes: str = "") -> Check:
    failed = [t for t in tests if t.rule and not t.passed]
    if failed and all(t.unjudged for t in failed):
        short = "; ".join(f"{t.name}: {t.effect}" for t in failed)
        return Check(dataset, NO_DATA, measured, f"too few units for an interval ({short})"
                     + (f"; {notes}" if notes else ""), tuple(tests))
    detail = "; ".join([f"{t.name}: {t.effect} does not pass" for t in failed] + ([notes] if notes else []))
    return Check(dataset, FAIL if failed else PASS, measured, detail, tuple(tests))
