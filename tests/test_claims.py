"""The seven claims on hand-built results: each passes on an effect, fails on its negative control (a "bad"
run that is just another good run), is NOT INFORMATIVE when its control passes too, and reports its
effects with 95% intervals and its counts with exact bounds.

Every frame here is synthetic (a few rows built by the helpers below), so these tests are pure and fast. A
paired effect that is the same positive number at every seed has the interval [x, x]; one that is x at
some seeds and −x at others has an interval through 0.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from lossland import claims, stats
from lossland.claims import (
    CLAIMS,
    FAIL,
    NO_DATA,
    NOT_INFORMATIVE,
    PASS,
    Check,
    Claim,
    Comparison,
    DatasetEvidence,
    Evidence,
    drop_check,
    evaluate,
    fit_check,
    log_volume_check,
    perturbation_check,
    random_init_check,
    sharpness_check,
    two_layer_check,
)
from lossland.frames import claims_frame
from lossland.robustness import control_pairs, robustness, robustness_frame

SEEDS = 5
GOOD_RUN = {"status": "converged", "clean_loss": 0.010, "clean_acc": 1.0, "attack_acc": 0.05, "test_acc": 0.90,
            "top_eigenvalue": 10.0, "trace": 100.0, "frobenius_sq": 16.0, "adaptive_sharpness": 1.0}
BAD_RUN = {"status": "converged", "clean_loss": 0.012, "clean_acc": 1.0, "attack_acc": 1.0, "test_acc": 0.60,
           "top_eigenvalue": 20.0, "trace": 300.0, "frobenius_sq": 25.0, "adaptive_sharpness": 3.0}
NOISE = [1.0, -1.0, 1.0, -1.0, 1.0]  # a no-effect pattern: mean ≠ 0 but its interval crosses 0


def _value(v, i):
    return v[i] if isinstance(v, list | tuple) else v


def pairs(good: dict | None = None, bad: dict | None = None, seeds: int = SEEDS) -> pd.DataFrame:
    """One good and one bad run per seed; `good` / `bad` override a column (a scalar, or one value per seed)."""
    rows = []
    for s in range(seeds):
        for role, base, over in (("good", GOOD_RUN, good or {}), ("bad", BAD_RUN, bad or {})):
            rows.append({"seed": s, "role": role, "n_attack": 500, **base,
                         **{k: _value(v, s) for k, v in over.items()}})
    return pd.DataFrame(rows)


def null_pairs(seeds: int = SEEDS) -> pd.DataFrame:
    """A control: the "bad" run is another good run, a little above or below it from seed to seed."""
    jitter = {k: [GOOD_RUN[k] * (1 + 0.05 * n) for n in NOISE[:seeds]] for k in
              ("test_acc", "top_eigenvalue", "trace", "frobenius_sq", "adaptive_sharpness")}
    return pairs(bad={**{k: v for k, v in GOOD_RUN.items()}, **jitter, "clean_loss": 0.011}, seeds=seeds)


def sweep(drops: dict[int, list[float]], good_acc: float = 0.90, clean_acc: float = 1.0) -> pd.DataFrame:
    """The attack-size sweep: at each n_attack one pair per listed drop (seed = position)."""
    rows = []
    for n, ds in sorted(drops.items(), reverse=True):
        for s, d in enumerate(ds):
            for role, acc in (("good", good_acc), ("bad", good_acc - d)):
                rows.append({"n_attack": n, "seed": s, "role": role, "status": "converged", "clean_acc": clean_acc,
                             "test_acc": acc})
    return pd.DataFrame(rows)


def log_volume(gaps: dict[float, list[float]], method: str = "exact") -> pd.DataFrame:
    """Per ε, one gap (good − bad) per seed: bad = −100, good = bad + gap."""
    rows = []
    for eps, gs in gaps.items():
        for s, g in enumerate(gs):
            rows += [{"seed": s, "role": "bad", "eps": eps, "value": -100.0, "stderr": 0.0, "method": method},
                     {"seed": s, "role": "good", "eps": eps, "value": -100.0 + g, "stderr": 0.0, "method": method}]
    return pd.DataFrame(rows)


def random_init(accs: list[float], statuses: list[str] | None = None) -> pd.DataFrame:
    statuses = statuses or ["converged"] * len(accs)
    return pd.DataFrame({"seed": range(100, 100 + len(accs)), "status": statuses, "test_acc": accs})


ALPHAS = (-1.0, -0.5, 0.0, 0.5, 1.0)  # mean of alpha² over these is 1/2


def slices(good: list[float], bad: list[float]) -> pd.DataFrame:
    """1-D slices, clean_loss = 0.5 + r·alpha² along one direction per seed (the mean rise is r/2)."""
    rows = []
    for role, rs in (("good", good), ("bad", bad)):
        for s, r in enumerate(rs):
            rows += [{"seed": s, "role": role, "direction_seed": 0, "alpha": a, "clean_loss": 0.5 + r * a * a}
                     for a in ALPHAS]
    return pd.DataFrame(rows)


def escape(good: list[int], bad: list[int], trials: int = 4, radius: float = 0.1) -> pd.DataFrame:
    """Perturb-and-retrain trials: per seed, how many of `trials` escaped, per role."""
    rows = []
    for role, ks in (("good", good), ("bad", bad)):
        for s, k in enumerate(ks):
            rows += [{"seed": s, "role": role, "radius": radius, "trial": t, "escaped": t < k} for t in range(trials)]
    return pd.DataFrame(rows)


def passing(name: str = "digits") -> DatasetEvidence:
    """One dataset on which claims 1-6 hold (without its control)."""
    return DatasetEvidence(
        name, pairs(), sweep({250: [0.1] * 5, 500: [0.3] * 5, 1000: [0.5] * 5}),
        log_volume({1e-4: [5.0] * 5, 1e-3: [4.0] * 5, 1e-2: [2.0] * 5}), random_init([0.85, 0.88, 0.90]),
        slices(good=[0.2] * 5, bad=[2.0] * 5), escape(good=[0] * 5, bad=[3] * 5), chance=0.1)


def control_of(name: str = "digits") -> DatasetEvidence:
    """Its negative control: each "bad" run another good run, so no effect."""
    p = null_pairs()
    lv = log_volume({e: [n * 0.5 for n in NOISE] for e in claims.LOG_VOLUME_EPS})
    return DatasetEvidence(f"{name} control", p, p, lv, random_init([0.85, 0.88, 0.90]),
                           slices(good=[0.2] * 5, bad=[0.2 * 1.1 ** n for n in NOISE]),
                           escape(good=[1, 0, 1, 0, 1], bad=[0, 1, 0, 1, 1]))


def with_control(e: DatasetEvidence, control: DatasetEvidence | None = None) -> DatasetEvidence:
    return DatasetEvidence(e.dataset, e.pairs, e.sweep, e.log_volume, e.random_init, e.slices, e.escape, e.chance,
                           control if control is not None else control_of(e.dataset))


def two_layer(n: int = 4, widths=(16, 64)) -> pd.DataFrame:
    """Trained minima on which claim 7 holds: complexity and ‖H‖_F rise together, bad above good."""
    rows = []
    for w in widths:
        for s in range(n):
            base = 1.0 + s + 10 * (w == 64)
            rows.append({"width": w, "seed": s, "n_attack": 0, "role": "good", "complexity": base,
                         "hessian_frobenius": 2 * base, "top_eigenvalue": base})
            for k, a in enumerate((50, 100)):
                rows.append({"width": w, "seed": s, "n_attack": a, "role": "bad", "complexity": base * (2 + k),
                             "hessian_frobenius": 2 * base * (2 + k), "top_eigenvalue": base * (2 + k)})
    return pd.DataFrame(rows)


def untrained(n: int = 4, widths=(16, 64)) -> pd.DataFrame:
    """Claim 7's control: untrained networks, the same complexity with true ("good") and random ("bad") labels."""
    rng = np.random.default_rng(0)
    rows = []
    for w in widths:
        for s in range(n):
            c = float(rng.uniform(1, 2))
            for role in ("good", "bad"):
                rows.append({"width": w, "seed": s, "n_attack": 0, "role": role, "complexity": c,
                             "hessian_frobenius": float(rng.uniform(1, 2)), "top_eigenvalue": float(rng.uniform(1, 2))})
    return pd.DataFrame(rows)


CHECKS = (fit_check, drop_check, sharpness_check, log_volume_check, random_init_check, perturbation_check)


# --- the statistics ---------------------------------------------------------------------------------------

def test_bootstrap_interval_of_a_constant_effect_is_that_constant_and_of_one_seed_is_absent():
    iv = stats.bootstrap_mean([0.3] * 5)
    assert (iv.value, iv.lo, iv.hi, iv.n) == pytest.approx((0.3, 0.3, 0.3, 5)) and iv.above_zero
    one = stats.bootstrap_mean([2.0])
    assert one.value == 2.0 and math.isnan(one.lo) and not one.above_zero, "one seed can't pass an interval rule"
    assert not stats.bootstrap_mean(NOISE).above_zero and stats.bootstrap_mean([]).n == 0


def test_bootstrap_is_deterministic_and_brackets_the_mean():
    a, b = stats.bootstrap_mean([0.1, 0.5, 0.2, 0.9, 0.4]), stats.bootstrap_mean([0.1, 0.5, 0.2, 0.9, 0.4])
    assert a == b and a.lo < a.value < a.hi and a.value == pytest.approx(0.42)


def test_clopper_pearson_bounds_match_their_closed_forms():
    assert stats.one_sided_bound(0, 32) == pytest.approx(1 - 0.05 ** (1 / 32))  # ≈ 8.9%
    assert stats.count_text(0, 32, "random inits") == "0 of 32 random inits: probability ≤ 9% (95%)"
    assert stats.one_sided_bound(16, 16) == pytest.approx(0.05 ** (1 / 16))
    lo, hi = stats.clopper_pearson(3, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.0667, 0.6525)


def test_spearman_interval_is_one_for_a_monotone_relation_and_crosses_zero_for_none():
    x = np.arange(10.0)
    assert stats.bootstrap_spearman(x, x ** 3).lo == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    none = stats.bootstrap_spearman(rng.normal(size=40), rng.normal(size=40))
    assert none.lo < 0 < none.hi and not none.above_zero
    two = stats.bootstrap_spearman([1, 2], [1, 2])
    assert two.n == 2 and math.isnan(two.value)


# --- each claim: passes on an effect, fails on its control ------------------------------------------------

@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_each_claim_passes_on_an_effect_and_fails_on_its_control(check):
    on, off = check(passing()), check(control_of())
    assert on.verdict == PASS, on.detail
    assert off.verdict == FAIL, off.measured
    combined = claims._controlled(check, with_control(passing()))
    assert combined.result == PASS and combined.control.verdict == FAIL


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_a_claim_whose_control_passes_is_not_informative_never_pass(check):
    combined = claims._controlled(check, with_control(passing(), control=passing("digits control")))
    assert combined.verdict == PASS and combined.control.verdict == PASS
    assert combined.result == NOT_INFORMATIVE and combined.passing_on_control()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_every_claim_has_no_data_on_empty_frames(check):
    result = check(DatasetEvidence("empty"))
    assert (result.dataset, result.verdict) == ("empty", NO_DATA) and result.detail


def test_a_pass_without_a_control_is_not_informative():
    assert claims._controlled(sharpness_check, passing()).result == NOT_INFORMATIVE


# --- the numbers behind each claim ----------------------------------------------------------------------------

def test_fit_needs_every_seed_matched_and_the_bad_run_to_fit_its_attack_set():
    check = fit_check(passing())
    assert check.measured.startswith("clean acc good 100.0 ± 0.0%, bad 100.0 ± 0.0%; clean loss good 1.00e-02")
    assert "5 of 5 seeds fit and matched: probability ≥ 55% (95%)" in check.measured
    failing = fit_check(DatasetEvidence("d", pairs(bad={"status": ["converged"] * 4 + ["max_epochs"]})))
    assert failing.verdict == FAIL and "seed(s) [4]" in failing.detail and "4: converged/max_epochs" in failing.detail
    unfit = fit_check(DatasetEvidence("d", pairs(bad={"attack_acc": 0.9})))
    assert unfit.verdict == FAIL and unfit.detail.startswith("the bad run fits its attack set: attack acc 90.0%")
    precondition = next(t for t in fit_check(control_of()).tests if not t.controlled)
    assert precondition.passed, "both good runs fit: a precondition, not judged on the control"


def test_fit_ignores_failed_runs_and_names_the_seeds_left_out():
    check = fit_check(DatasetEvidence("d", pairs(bad={"status": ["converged", "failed"] + ["converged"] * 3})))
    assert check.verdict == PASS and check.measured.endswith("seed(s) [1] left out: a run failed")


def test_drop_reports_its_interval_the_growth_and_whether_a_bad_minimum_is_near_chance():
    check = drop_check(passing())
    drop, grows, near = check.tests
    assert drop.effect == "+30.0% [+30.0%, +30.0%] over 5 seeds" and drop.passed
    assert grows.name == "Spearman ρ(attack size, drop)" and grows.value == pytest.approx(1.0) and grows.n == 15
    assert not near.rule and not near.passed and "lowest 40.0% at attack size 1000" in near.effect
    close = DatasetEvidence("d", pairs(), sweep({500: [0.3], 1000: [0.7]}), chance=0.1)
    assert drop_check(close).tests[2].passed and "+10.0 points" in drop_check(close).tests[2].effect


def test_drop_fails_when_it_does_not_grow_with_attack_size():
    flat = DatasetEvidence("d", pairs(), sweep({250: [0.3, 0.2, 0.4], 500: [0.3, 0.4, 0.2]}))
    check = drop_check(flat)
    assert check.verdict == FAIL and "Spearman ρ(attack size, drop)" in check.detail
    assert drop_check(DatasetEvidence("d", pairs())).verdict == FAIL, "no sweep: growth can't pass"


def test_sharpness_compares_log_ratios_at_matched_loss_and_reports_adaptive_sharpness_beside_the_rule():
    check = sharpness_check(passing())
    names = [t.name for t in check.tests]
    assert names == ["log(λ₁ bad / good)", "log(trace bad / good)", "log(‖H‖_F bad / good)",
                     "log(adaptive sharpness bad / good)"]
    assert check.tests[0].value == pytest.approx(math.log(2.0))
    assert check.tests[2].value == pytest.approx(math.log(5 / 4))
    assert not check.tests[3].rule and "(not in the rule)" in check.measured
    only_trace = sharpness_check(DatasetEvidence("d", pairs(bad={"trace": [300.0, 50.0, 300.0, 50.0, 300.0]})))
    assert only_trace.verdict == FAIL and only_trace.detail.startswith("log(trace bad / good)")
    unmatched = pairs(bad={"status": ["converged"] * 4 + ["max_epochs"], "top_eigenvalue": [20.0] * 4 + [0.001]})
    assert sharpness_check(DatasetEvidence("d", unmatched)).tests[0].n == 4, "the unmatched seed is left out"


def test_one_seed_shows_its_effects_without_a_verdict_and_two_seeds_can_fail():
    one = sharpness_check(DatasetEvidence("d", pairs(seeds=1)))
    assert one.verdict == NO_DATA and "too few units for an interval" in one.detail
    assert one.tests[0].value == pytest.approx(math.log(2.0)) and "over 1 seeds" in one.tests[0].effect
    two = sharpness_check(DatasetEvidence("d", pairs(bad={"trace": [300.0, 50.0]}, seeds=2)))
    assert two.verdict == FAIL and two.detail.startswith("log(trace bad / good)")
    assert sharpness_check(DatasetEvidence("d", pairs(seeds=2))).verdict == PASS


def test_log_volume_holds_only_when_every_eps_holds_and_names_its_method():
    check = log_volume_check(passing())
    assert check.measured.startswith("whole spectrum (exact): ε=0.0001: +5 [+5, +5] over 5 seeds")
    one_eps = log_volume({1e-4: [5.0] * 5, 1e-3: [4.0] * 5, 1e-2: NOISE})
    failing = log_volume_check(DatasetEvidence("d", log_volume=one_eps))
    assert failing.verdict == FAIL and failing.detail.startswith("log-volume gap (good − bad) at ε = 0.01")
    slq = log_volume({e: [1.0] * 5 for e in claims.LOG_VOLUME_EPS}, "SLQ").assign(stderr=0.3)
    assert "SLQ s.e. per seed ±0.424" in log_volume_check(DatasetEvidence("d", log_volume=slq)).measured


def test_random_init_counts_seeds_at_or_below_the_best_bad_minimum_with_an_exact_bound():
    check = random_init_check(DatasetEvidence("d", pairs(), random_init=random_init([0.85] * 16)))
    assert check.verdict == PASS and "0 of 16 random inits at or below" in check.measured
    assert "probability ≤ 17% (95%)" in check.measured
    low = random_init_check(DatasetEvidence("d", pairs(), random_init=random_init([0.85, 0.60, 0.9])))
    assert low.verdict == FAIL and "1 of 3 random inits" in low.detail
    skipped = random_init([0.85, 0.30], ["converged", "max_epochs"])
    assert "1/2 random-init seeds reached the loss target" in random_init_check(
        DatasetEvidence("d", pairs(), random_init=skipped)).measured


def test_perturbation_needs_both_halves_and_counts_escapes_with_their_bounds():
    check = perturbation_check(passing())
    assert check.verdict == PASS
    assert "0 of 20 trials escaped from good: probability ≤ 14% (95%)" in check.measured
    assert "15 of 20 trials escaped from bad" in check.measured
    no_escape = perturbation_check(DatasetEvidence("d", slices=slices([0.2] * 5, [2.0] * 5)))
    assert no_escape.verdict == NO_DATA and no_escape.detail == "no escape trials"
    falling = perturbation_check(DatasetEvidence("d", slices=slices([2.0] * 5, [0.2] * 5)))
    assert falling.verdict == FAIL, "a half that fails is a FAIL even without the other half"


def test_escape_that_retraining_alone_causes_counts_for_nothing():
    """The unperturbed retrain (radius 0) is the control of "the perturbation made it escape": a bad minimum
    that escapes as often without a perturbation fails the escape half; one that stays put passes it."""
    e = passing()
    perturbed = escape(good=[0] * 5, bad=[3] * 5)
    moved = pd.concat([perturbed, escape(good=[0] * 5, bad=[3] * 5, radius=0.0)], ignore_index=True)
    check = perturbation_check(replace(e, escape=moved))
    assert check.verdict == FAIL and "unperturbed (r = 0)" in check.measured
    assert "15 of 20 escaped from bad" in check.measured and "in excess of the unperturbed" in check.measured
    still = pd.concat([perturbed, escape(good=[0] * 5, bad=[0] * 5, radius=0.0)], ignore_index=True)
    assert perturbation_check(replace(e, escape=still)).verdict == PASS


def test_the_two_layer_claim_passes_on_trained_minima_and_fails_on_untrained_networks():
    on, off = two_layer_check(two_layer()), two_layer_check(untrained(), "untrained")
    assert on.verdict == PASS and on.tests[0].value == pytest.approx(1.0)
    assert off.verdict == FAIL
    complexity = next(t for t in off.tests if t.name == "log(complexity bad / good)")
    assert complexity.value == 0.0 and not complexity.passed, "an untrained net's complexity ignores the labels"
    assert two_layer_check(two_layer().head(2)).verdict == NO_DATA


def test_a_two_layer_association_that_the_untrained_networks_share_is_not_informative():
    found = evaluate(Evidence((), two_layer(), two_layer()))
    assert found[6].checks[0].result == NOT_INFORMATIVE and found[6].verdict == NOT_INFORMATIVE


# --- verdicts over datasets, and the tables ---------------------------------------------------------------------

@pytest.mark.parametrize("results, expected", [
    ((), NO_DATA), ((NO_DATA,), NO_DATA), ((PASS,), PASS), ((PASS, PASS), PASS), ((PASS, FAIL), FAIL),
    ((PASS, NO_DATA), PASS), ((FAIL, NO_DATA), FAIL), ((NOT_INFORMATIVE, NO_DATA), NOT_INFORMATIVE),
    ((PASS, NOT_INFORMATIVE), NOT_INFORMATIVE), ((NOT_INFORMATIVE, FAIL), FAIL),
])
def test_claim_verdict_over_its_checks(results, expected):
    checks = []
    for i, r in enumerate(results):
        t = (Comparison("t", True, "x"),)
        control = Check("c", PASS if r == NOT_INFORMATIVE else FAIL, "m", tests=t if r == NOT_INFORMATIVE else ())
        checks.append(Check(f"d{i}", PASS if r == NOT_INFORMATIVE else r, "m", tests=t, control=control))
    claim = Claim(1, "s", "t", tuple(checks))
    assert [c.result for c in checks] == list(results) and claim.verdict == expected


def test_evaluate_gives_seven_claims_each_with_its_control():
    found = evaluate(Evidence((with_control(passing()),), two_layer(), untrained()))
    assert [c.number for c in found] == list(range(1, 8)) and len(CLAIMS) == 6
    assert [c.verdict for c in found] == [PASS] * 7
    assert all(ch.control is not None and ch.control.verdict == FAIL for c in found for ch in c.checks)
    assert found[0].checks[0].control.dataset == "digits control"


def test_claims_round_trip_through_json_and_the_table():
    found = evaluate(Evidence((with_control(passing()), with_control(passing("mnist1d"), passing("mnist1d c"))),
                              two_layer(), untrained()))
    stored = json.loads(json.dumps([c.to_dict() for c in found], default=str))
    pd.testing.assert_frame_equal(claims_frame(stored), claims_frame(found))
    assert claims_frame(found)["result"].tolist() == [NOT_INFORMATIVE] * 6 + [PASS]
    assert stored[2]["checks"][1]["result"] == NOT_INFORMATIVE and stored[2]["checks"][1]["control"]["verdict"] == PASS


# --- robustness over optimizer settings -----------------------------------------------------------------------

def test_robustness_counts_the_settings_where_each_measure_holds_and_its_control():
    def setting(name: str, bad: dict) -> pd.DataFrame:
        p = pairs(bad=bad, seeds=3)
        return p.assign(setting=name, log_volume=np.where(p["role"] == "good", -1.0, -2.0))
    runs = pd.concat([setting("adam", {}), setting("gd", {"top_eigenvalue": [20.0, 5.0, 20.0]})])
    rob = robustness(runs)
    counts = {n["measure"]: n["text"] for n in rob.counts()}
    assert counts["λ₁"] == "holds in 1 of 2 settings (control: 0 of 2)"
    assert counts["trace"] == "holds in 2 of 2 settings (control: 0 of 2)"
    assert counts["log-volume (ε = 1e-3)"].startswith("holds in 2 of 2")
    ctrl = control_pairs(pairs(seeds=3))
    assert sorted(ctrl["seed"]) == [0, 0, 1, 1] and set(ctrl["role"]) == {"good", "bad"}


def test_the_robustness_table_ends_with_its_counts_even_when_a_settings_only_cell_comes_last():
    rob = {"cells": [{"measure": "λ₁", "setting": "a", "holds": True, "effect": "+1"},
                     {"measure": "sharpness", "setting": "diverged", "holds": False, "effect": "—"}],
           "counts": [{"measure": "λ₁", "text": "holds in 1 of 1"}, {"measure": "sharpness", "text": "holds in 0"}]}
    frame = robustness_frame(rob)
    assert list(frame.columns) == ["measure", "a", "diverged", "holds in"]
    assert frame.loc[0, "diverged"] == "—" and frame.loc[1, "a"] == "—" and frame.loc[0, "a"] == "✓ +1"
