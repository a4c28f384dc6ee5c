"""The seven claims, unit-tested on hand-built results: each claim must pass and must fail, and for the right reason.

Every frame here is synthetic (a few rows built by the helpers below), so these tests are pure and fast; they
check verdicts and also the numbers in `measured` / `detail`, so a wrong computation is caught, not only a wrong
verdict.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lossland import claims
from lossland.claims import (
    BOUND_CLAIM,
    CLAIMS,
    Check,
    Claim,
    DatasetEvidence,
    Evidence,
    bound_check,
    claims_frame,
    claims_verdicts,
    drop_check,
    evaluate,
    fit_check,
    log_volume_check,
    perturbation_check,
    random_init_check,
    sharpness_check,
)

# --- synthetic results ------------------------------------------------------------------------------

GOOD_RUN = {"status": "converged", "clean_loss": 0.010, "clean_acc": 1.0, "test_acc": 0.90,
            "top_eigenvalue": 10.0, "trace": 100.0, "frobenius_sq": 16.0}
BAD_RUN = {"status": "converged", "clean_loss": 0.012, "clean_acc": 1.0, "test_acc": 0.60,
           "top_eigenvalue": 20.0, "trace": 300.0, "frobenius_sq": 25.0}


def _value(v, i):
    return v[i] if isinstance(v, list | tuple) else v


def pairs(good: dict | None = None, bad: dict | None = None, seeds: int = 3) -> pd.DataFrame:
    """One good and one bad run per seed (seeds 0..seeds-1). Defaults are a pair where every claim holds;
    `good` / `bad` override a column, with a scalar for every seed or a list with one value per seed."""
    rows = []
    for s in range(seeds):
        for role, base, over in (("good", GOOD_RUN, good or {}), ("bad", BAD_RUN, bad or {})):
            rows.append({"seed": s, "role": role, **base, **{k: _value(v, s) for k, v in over.items()}})
    return pd.DataFrame(rows)


def sweep(drops: dict[int, list[float]], good_acc: float = 0.90) -> pd.DataFrame:
    """The attack-size sweep: at each n_attack, one pair per listed drop (seed = position), good at `good_acc`
    and bad at good_acc - drop. Rows are written largest attack size first, to show the order is not taken
    from the rows."""
    rows = []
    for n, ds in sorted(drops.items(), reverse=True):
        for s, d in enumerate(ds):
            rows.append({"n_attack": n, "seed": s, "role": "good", "status": "converged", "test_acc": good_acc})
            rows.append({"n_attack": n, "seed": s, "role": "bad", "status": "converged", "test_acc": good_acc - d})
    return pd.DataFrame(rows)


def log_volume(gaps: dict[int, list[float]]) -> pd.DataFrame:
    """log-volume over the top k eigenvalues: per k, one gap (good − bad) per seed; bad = -10·k, good = bad + gap."""
    rows = []
    for k, gs in gaps.items():
        for s, g in enumerate(gs):
            rows.append({"seed": s, "role": "bad", "k": k, "value": -10.0 * k})
            rows.append({"seed": s, "role": "good", "k": k, "value": -10.0 * k + g})
    return pd.DataFrame(rows)


def random_init(accs: list[float], statuses: list[str] | None = None) -> pd.DataFrame:
    statuses = statuses or ["converged"] * len(accs)
    return pd.DataFrame({"seed": range(100, 100 + len(accs)), "status": statuses, "test_acc": accs})


ALPHAS = (-1.0, -0.5, 0.0, 0.5, 1.0)  # mean of alpha² over these is 1/2


def slices(good: list[float], bad: list[float], directions: int = 2,
           base: dict[str, float] | None = None) -> pd.DataFrame:
    """1-D slices, clean_loss = base + r·alpha² along each direction, so the mean rise along it is r/2.
    `good` / `bad` hold one r per (seed, direction), seed-major; `base` the loss at the minimum per role."""
    base = {"good": 0.5, "bad": 0.5, **(base or {})}
    rows = []
    for role, rs in (("good", good), ("bad", bad)):
        for i, r in enumerate(rs):
            for a in ALPHAS:
                rows.append({"seed": i // directions, "role": role, "direction_seed": 1000 + i % directions,
                             "alpha": a, "clean_loss": base[role] + r * a * a})
    return pd.DataFrame(rows)


def escape(good: tuple[int, int], bad: tuple[int, int], radii=(0.5, 1.0)) -> pd.DataFrame:
    """Perturb-and-retrain trials: (escaped, trials) per role, spread over `radii`."""
    rows = []
    for role, (k, n) in (("good", good), ("bad", bad)):
        for t in range(n):
            rows.append({"seed": t % 2, "role": role, "radius": radii[t % len(radii)], "trial": t,
                         "escaped": t < k})
    return pd.DataFrame(rows)


def two_layer(complexity, rhs, hessian_frobenius, holds=None, dataset="teacher", with_run_id=True) -> pd.DataFrame:
    n = len(complexity)
    frame = pd.DataFrame({
        "dataset": dataset if isinstance(dataset, str) else list(dataset), "seed": [i // 2 for i in range(n)],
        "n_attack": 100, "role": ["good", "bad"] * (n // 2) + ["good"] * (n % 2),
        "complexity": complexity, "rhs": rhs, "hessian_frobenius": hessian_frobenius,
        "holds": holds if holds is not None else [c <= r for c, r in zip(complexity, rhs, strict=True)]})
    if with_run_id:
        frame["run_id"] = [f"run-{chr(ord('a') + i)}" for i in range(n)]
    return frame


def passing_evidence(name: str = "digits") -> DatasetEvidence:
    """One dataset's results on which all six per-dataset claims hold."""
    return DatasetEvidence(
        name, pairs(), sweep({250: [0.02, 0.04], 500: [0.05, 0.07], 1000: [0.10, 0.12]}),
        log_volume({1: [1.0, 3.0], 2: [4.0, 6.0], 3: [9.0, 11.0]}), random_init([0.85, 0.88, 0.90]),
        slices(good=[0.1, 0.3, 0.1, 0.3], bad=[1.0] * 4), escape(good=(2, 8), bad=(6, 8)))


def failing_evidence(name: str = "cifar") -> DatasetEvidence:
    """One dataset's results on which all six per-dataset claims fail."""
    return DatasetEvidence(
        name, pairs(bad={"clean_acc": 0.95, "test_acc": 0.95, "trace": 50.0}),
        sweep({250: [0.05, 0.05], 500: [0.02, 0.02]}), log_volume({1: [-1.0, -1.0], 2: [-2.0, -2.0]}),
        random_init([0.50, 0.99]), slices(good=[1.0] * 4, bad=[0.1] * 4), escape(good=(4, 8), bad=(4, 8)))


# --- claim 1: both minima fit the clean training set -----------------------------------------------------

def test_fit_passes_when_every_seed_fits_with_converged_losses_within_twofold():
    check = fit_check(DatasetEvidence("digits", pairs(good={"clean_loss": [0.010, 0.012, 0.014]},
                                                      bad={"clean_loss": [0.020, 0.015, 0.010]})))
    assert (check.verdict, check.dataset, check.detail) == ("PASS", "digits", "")
    assert check.measured == ("clean acc good 100.0 ± 0.0%, bad 100.0 ± 0.0%; clean loss good 1.20e-02 ± 2.00e-03, "
                              "bad 1.50e-02 ± 5.00e-03; 3/3 seeds fit and matched")


def test_fit_accepts_clean_accuracy_exactly_at_99_percent():
    assert fit_check(DatasetEvidence("d", pairs(bad={"clean_acc": 0.99}))).verdict == "PASS"


def test_fit_fails_when_one_run_has_95_percent_clean_accuracy_and_names_its_seed():
    check = fit_check(DatasetEvidence("d", pairs(bad={"clean_acc": [1.0, 0.95, 1.0]})))
    assert check.verdict == "FAIL"
    assert check.detail == "clean accuracy below 99% in seed(s) [1]"
    assert "bad 98.3 ± 2.9%" in check.measured
    assert check.measured.endswith("2/3 seeds fit and matched")


def test_fit_fails_when_a_run_stopped_at_max_epochs_before_the_loss_target():
    check = fit_check(DatasetEvidence("d", pairs(bad={"status": ["converged", "converged", "max_epochs"]})))
    assert check.verdict == "FAIL"
    assert "clean accuracy" not in check.detail
    assert check.detail.startswith("clean losses not matched")
    assert check.detail.endswith("in seed(s) [2]: statuses 2: converged/max_epochs")
    assert check.measured.endswith("2/3 seeds fit and matched")


def test_fit_fails_when_a_diverged_run_is_part_of_a_pair():
    check = fit_check(DatasetEvidence("d", pairs(good={"status": ["diverged", "converged", "converged"]})))
    assert check.verdict == "FAIL" and check.detail.endswith("statuses 0: diverged/converged")


@pytest.mark.parametrize("good_loss, bad_loss", [(0.010, [0.015, 0.021, 0.019]),   # bad 2.1× the good
                                                 ([0.010, 0.021, 0.010], 0.010)])  # good 2.1× the bad
def test_fit_fails_when_clean_losses_differ_by_more_than_twofold_either_way(good_loss, bad_loss):
    check = fit_check(DatasetEvidence("d", pairs(good={"clean_loss": good_loss}, bad={"clean_loss": bad_loss})))
    assert check.verdict == "FAIL"
    assert check.detail.startswith("clean losses not matched") and "more than 2× apart" in check.detail
    assert check.detail.endswith("in seed(s) [1]: statuses 1: converged/converged")


def test_fit_accepts_clean_losses_exactly_twofold_apart():
    assert fit_check(DatasetEvidence("d", pairs(good={"clean_loss": 0.01}, bad={"clean_loss": 0.02}))).verdict == "PASS"


def test_fit_reports_every_failing_reason_at_once():
    check = fit_check(DatasetEvidence("d", pairs(good={"clean_acc": [0.5, 1.0, 1.0]},
                                                 bad={"clean_loss": [0.012, 0.012, 0.5]})))
    assert check.verdict == "FAIL"
    assert "clean accuracy below 99% in seed(s) [0]" in check.detail
    assert "in seed(s) [2]: statuses 2: converged/converged" in check.detail
    assert check.measured.endswith("1/3 seeds fit and matched")


def test_fit_ignores_failed_runs_and_counts_only_complete_pairs():
    check = fit_check(DatasetEvidence("d", pairs(bad={"status": ["converged", "failed", "converged"],
                                                      "clean_acc": [1.0, 0.1, 1.0]})))
    assert check.verdict == "PASS"
    assert check.measured.endswith("2/2 seeds fit and matched; seed(s) [1] left out: a run failed")


def test_fit_counts_two_zero_clean_losses_as_matched():
    check = fit_check(DatasetEvidence("d", pairs(good={"clean_loss": 0.0}, bad={"clean_loss": 0.0})))
    assert check.verdict == "PASS", check.detail


# --- claim 2: the bad minimum tests worse, and the drop grows with attack size ------------------------------

def test_drop_passes_when_bad_tests_lower_and_the_mean_drop_grows_at_every_attack_size():
    e = DatasetEvidence("d", pairs(bad={"test_acc": [0.60, 0.65, 0.70]}),
                        sweep({250: [0.02, 0.04], 500: [0.05, 0.07], 1000: [0.10, 0.12]}))
    check = drop_check(e)
    assert (check.verdict, check.detail) == ("PASS", "")
    assert check.measured == ("test acc good 90.0 ± 0.0%, bad 65.0 ± 5.0% (lower in 3/3 seeds); drop by attack "
                              "size 250: 3.0% ± 1.4%, 500: 6.0% ± 1.4%, 1000: 11.0% ± 1.4%")


def test_drop_reports_a_single_seed_per_attack_size_without_a_spread():
    check = drop_check(DatasetEvidence("d", pairs(), sweep({250: [0.05], 500: [0.10]})))
    assert check.verdict == "PASS"
    assert check.measured.endswith("drop by attack size 250: 5.0%, 500: 10.0%")


@pytest.mark.parametrize("drops, step", [({250: [0.05, 0.05], 500: [0.05, 0.05], 1000: [0.10, 0.10]}, "250→500"),
                                         ({250: [0.03, 0.03], 500: [0.06, 0.06], 1000: [0.05, 0.05]}, "500→1000")])
def test_drop_fails_when_the_mean_drop_does_not_grow_at_one_step_and_names_that_step(drops, step):
    check = drop_check(DatasetEvidence("d", pairs(), sweep(drops)))
    assert check.verdict == "FAIL"
    assert check.detail == f"the mean drop does not grow at step(s) {step}"


def test_drop_counts_sweep_runs_that_stopped_before_the_loss_target():
    s = sweep({250: [0.05, 0.05], 500: [0.10, 0.10]})
    s.loc[(s["n_attack"] == 500) & (s["role"] == "bad") & (s["seed"] == 1), "status"] = "max_epochs"
    check = drop_check(DatasetEvidence("d", pairs(), s))
    assert check.verdict == "PASS"  # they still count in the drop; the note says so
    assert check.measured.endswith("; 1/8 sweep runs stopped before the loss target (by attack size 500: 1)")


def test_drop_fails_when_the_bad_minimum_tests_higher():
    check = drop_check(DatasetEvidence("d", pairs(bad={"test_acc": 0.95}), sweep({250: [0.02], 500: [0.04]})))
    assert check.verdict == "FAIL"
    assert check.detail == "mean test drop at the main attack size is -5.0%, not positive"
    assert check.measured.startswith("test acc good 90.0 ± 0.0%, bad 95.0 ± 0.0% (lower in 0/3 seeds)")


def test_drop_compares_the_mean_drop_over_seeds_not_each_seed():
    check = drop_check(DatasetEvidence("d", pairs(bad={"test_acc": [0.95, 0.60, 0.60]}),
                                       sweep({250: [0.02], 500: [0.04]})))
    assert check.verdict == "PASS" and "(lower in 2/3 seeds)" in check.measured


@pytest.mark.parametrize("the_sweep", [pd.DataFrame(), sweep({500: [0.05, 0.07]})], ids=["no sweep", "one size"])
def test_drop_fails_when_the_sweep_has_fewer_than_two_attack_sizes(the_sweep):
    check = drop_check(DatasetEvidence("d", pairs(), the_sweep))
    assert check.verdict == "FAIL"
    assert check.detail == ("the attack-size sweep has fewer than two sizes with a complete good/bad pair, so "
                            "growth can't be tested")


def test_drop_has_no_data_without_a_complete_pair_even_with_a_sweep():
    check = drop_check(DatasetEvidence("d", pairs().query("role == 'good'"), sweep({250: [0.1], 500: [0.2]})))
    assert (check.verdict, check.detail) == ("NO DATA", "no complete good/bad pair")


def test_drop_does_not_pass_growth_when_only_one_attack_size_has_a_complete_pair():
    s = sweep({250: [0.05, 0.05], 500: [0.10, 0.10]})
    s = s[~((s["n_attack"] == 500) & (s["role"] == "bad"))]  # every bad run at 500 missing
    assert drop_check(DatasetEvidence("d", pairs(), s)).verdict != "PASS"


def test_drop_gives_a_verdict_when_every_good_sweep_run_failed():
    s = sweep({250: [0.05], 500: [0.10]})
    s.loc[s["role"] == "good", "status"] = "failed"
    assert drop_check(DatasetEvidence("d", pairs(), s)).verdict in {"FAIL", "NO DATA"}


# --- claim 3: the bad minimum is sharper ----------------------------------------------------------------------

def test_sharpness_passes_when_bad_has_larger_eigenvalue_trace_and_frobenius_norm():
    check = sharpness_check(DatasetEvidence("d", pairs(good={"top_eigenvalue": [10.0, 12.0, 14.0]},
                                                       bad={"top_eigenvalue": [20.0, 22.0, 24.0]})))
    assert (check.verdict, check.detail) == ("PASS", "")
    assert check.measured == ("λ₁ good 12 ± 2, bad 22 ± 2 (larger in 3/3); trace good 100 ± 0, bad 300 ± 0 "
                              "(larger in 3/3); ‖H‖_F good 4 ± 0, bad 5 ± 0 (larger in 3/3)")


def test_sharpness_fails_when_only_the_trace_is_not_larger_and_names_the_trace():
    check = sharpness_check(DatasetEvidence("d", pairs(bad={"trace": [90.0, 120.0, 60.0]})))
    assert check.verdict == "FAIL"
    assert check.detail == "mean trace of the bad minima 90 is not larger than the good minima's 100"
    assert "trace good 100 ± 0, bad 90 ± 30 (larger in 1/3)" in check.measured


@pytest.mark.parametrize("column, bad_value, label, bad_mean, good_mean", [
    ("top_eigenvalue", 10.0, "λ₁", "10", "10"),          # equal is not larger
    ("trace", 99.5, "trace", "99.5", "100"),
    ("frobenius_sq", 9.0, "‖H‖_F", "3", "4"),             # compared as √frobenius_sq
])
def test_sharpness_fails_on_each_measure_alone(column, bad_value, label, bad_mean, good_mean):
    check = sharpness_check(DatasetEvidence("d", pairs(bad={column: bad_value})))
    assert check.verdict == "FAIL"
    assert check.detail == f"mean {label} of the bad minima {bad_mean} is not larger than the good minima's {good_mean}"


def test_sharpness_uses_only_pairs_where_both_runs_converged():
    e = DatasetEvidence("d", pairs(bad={"status": ["converged", "converged", "max_epochs"],
                                        "top_eigenvalue": [20.0, 20.0, 0.001]}))
    check = sharpness_check(e)
    assert check.verdict == "PASS"
    assert check.measured.startswith("λ₁ good 10 ± 0, bad 20 ± 0 (larger in 2/2)")


def test_sharpness_clips_a_negative_frobenius_estimate_to_zero():
    check = sharpness_check(DatasetEvidence("d", pairs(good={"frobenius_sq": -1.0})))
    assert check.verdict == "PASS" and "‖H‖_F good 0 ± 0, bad 5 ± 0" in check.measured


def test_sharpness_has_no_data_when_no_pair_reached_the_loss_target():
    check = sharpness_check(DatasetEvidence("d", pairs(bad={"status": "max_epochs"})))
    assert (check.verdict, check.detail) == ("NO DATA", "no pair where both runs reached the clean-loss target")


# --- claim 4: the log-volume gap is positive and grows with k --------------------------------------------------

def test_log_volume_passes_when_the_gap_is_positive_and_grows_with_k():
    check = log_volume_check(DatasetEvidence("d", log_volume=log_volume({1: [1.0, 3.0], 2: [4.0, 6.0],
                                                                         3: [9.0, 11.0]})))
    assert (check.verdict, check.detail) == ("PASS", "")
    assert check.measured == "gap at k=1 2 ± 1.41, at k=3 10 ± 1.41; grows at 2/2 steps of k"


def test_log_volume_fails_when_the_mean_gap_is_negative_at_some_k():
    check = log_volume_check(DatasetEvidence("d", log_volume=log_volume({1: [-2.0, 0.0], 2: [3.0, 3.0],
                                                                         3: [5.0, 5.0]})))
    assert check.verdict == "FAIL"
    assert check.detail == "the mean gap is not positive at k = [1]"


def test_log_volume_fails_when_the_gap_is_positive_but_shrinks_overall():
    check = log_volume_check(DatasetEvidence("d", log_volume=log_volume({1: [5.0, 5.0], 2: [6.0, 6.0],
                                                                         3: [4.0, 4.0]})))
    assert check.verdict == "FAIL"
    assert check.detail == "the mean gap at k=3 (4) is not larger than at k=1 (5)"
    assert check.measured.endswith("grows at 1/2 steps of k")


def test_log_volume_needs_growth_only_from_the_smallest_to_the_largest_k():
    check = log_volume_check(DatasetEvidence("d", log_volume=log_volume({1: [2.0], 2: [1.0], 3: [3.0]})))
    assert check.verdict == "PASS" and check.measured == "gap at k=1 2, at k=3 3; grows at 1/2 steps of k"


def test_log_volume_gap_is_good_minus_bad():
    swapped = log_volume({1: [1.0, 1.0], 2: [2.0, 2.0]}).replace({"role": {"good": "bad", "bad": "good"}})
    check = log_volume_check(DatasetEvidence("d", log_volume=swapped))
    assert check.verdict == "FAIL" and "not positive at k = [1, 2]" in check.detail


def test_log_volume_has_no_data_with_only_one_role():
    lv = log_volume({1: [1.0], 2: [2.0]}).query("role == 'good'")
    check = log_volume_check(DatasetEvidence("d", log_volume=lv))
    assert (check.verdict, check.detail) == ("NO DATA", "log-volumes of only one role")


# --- claim 5: no clean random-init seed tests as badly as the bad minima ----------------------------------------

def test_random_init_passes_when_every_converged_seed_tests_above_the_best_bad_minimum():
    check = random_init_check(DatasetEvidence("d", pairs(bad={"test_acc": [0.60, 0.65, 0.70]}),
                                              random_init=random_init([0.85, 0.88, 0.90])))
    assert (check.verdict, check.detail) == ("PASS", "")
    assert check.measured == ("3/3 random-init seeds reached the loss target; their test acc 87.7 ± 2.5%, lowest "
                              "85.0%; bad minima 65.0 ± 5.0%, highest 70.0%")


@pytest.mark.parametrize("accs, n_low", [([0.85, 0.70, 0.90], 1),   # equal to the best bad minimum
                                         ([0.85, 0.50, 0.65], 2)])
def test_random_init_fails_when_a_seed_tests_at_or_below_the_best_bad_minimum(accs, n_low):
    check = random_init_check(DatasetEvidence("d", pairs(bad={"test_acc": [0.60, 0.65, 0.70]}),
                                              random_init=random_init(accs)))
    assert check.verdict == "FAIL"
    assert check.detail == f"{n_low} random-init seed(s) reach a test accuracy ≤ the best bad minimum's 70.0%"
    assert f"lowest {min(accs):.1%}" in check.measured


def test_random_init_ignores_seeds_that_did_not_reach_the_loss_target():
    ri = random_init([0.85, 0.30, 0.88, 0.10, 0.90],
                     ["converged", "max_epochs", "converged", "diverged", "converged"])
    check = random_init_check(DatasetEvidence("d", pairs(), random_init=ri))
    assert check.verdict == "PASS"
    assert check.measured.startswith("3/5 random-init seeds reached the loss target; their test acc 87.7 ± 2.5%, "
                                     "lowest 85.0%")


def test_random_init_ignores_failed_bad_runs():
    check = random_init_check(DatasetEvidence("d", pairs(bad={"status": ["converged", "failed", "converged"],
                                                              "test_acc": [0.60, 0.99, 0.70]}),
                                              random_init=random_init([0.85])))
    assert check.verdict == "PASS" and check.measured.endswith("highest 70.0%")


def test_random_init_fails_when_no_seed_reached_the_loss_target():
    ri = random_init([0.9, 0.9], ["max_epochs", "diverged"])
    check = random_init_check(DatasetEvidence("d", pairs(), random_init=ri))
    assert check == Check("d", "FAIL", "0/2 random-init seeds reached the loss target",
                          "no random-init seed reached a minimum")


@pytest.mark.parametrize("the_pairs, ri, why", [
    (pairs(), pd.DataFrame(), "no random-init seeds"),
    (pd.DataFrame(), random_init([0.9]), "no bad run reached the loss target"),
    (pairs().query("role == 'good'"), random_init([0.9]), "no bad run reached the loss target"),
])
def test_random_init_has_no_data_without_seeds_or_bad_minima(the_pairs, ri, why):
    check = random_init_check(DatasetEvidence("d", the_pairs, random_init=ri))
    assert (check.verdict, check.detail) == ("NO DATA", why)


# --- claim 6: the bad minimum is less stable under perturbation ---------------------------------------------------

def test_perturbation_passes_when_the_loss_rises_more_and_escape_is_likelier_at_bad():
    check = perturbation_check(DatasetEvidence("d", slices=slices(good=[0.1, 0.3, 0.1, 0.3], bad=[1.0] * 4),
                                               escape=escape(good=(2, 8), bad=(6, 8))))
    assert (check.verdict, check.detail) == ("PASS", "")
    assert check.measured == ("mean loss rise along a filter-normalised slice good 0.1 ± 0.0577, bad 0.5 ± 0 "
                              "(larger at bad in 4/4 directions); escape probability good 25% (8 trials), "
                              "bad 75% (8 trials)")


def test_perturbation_fails_when_the_escape_probability_is_equal():
    check = perturbation_check(DatasetEvidence("d", slices=slices(good=[0.1] * 4, bad=[1.0] * 4),
                                               escape=escape(good=(4, 8), bad=(4, 8))))
    assert check.verdict == "FAIL"
    assert check.detail == "escape from the bad minima (50%) is not more likely than from the good (50%)"


def test_perturbation_fails_when_the_loss_rises_more_at_good_measured_from_each_slice_centre():
    # the bad slices sit higher everywhere (loss 2.0 at the minimum) but rise less: the rise is what counts
    e = DatasetEvidence("d", slices=slices(good=[1.0, 1.0, 1.0, 0.6], bad=[0.2] * 4, base={"bad": 2.0}),
                        escape=escape(good=(2, 8), bad=(6, 8)))
    check = perturbation_check(e)
    assert check.verdict == "FAIL"
    assert check.detail == "the loss rises less at the bad minima (0.1 vs 0.45)"
    assert "(larger at bad in 0/4 directions)" in check.measured


def test_perturbation_reports_both_failures_together():
    check = perturbation_check(DatasetEvidence("d", slices=slices(good=[1.0] * 2, bad=[0.2] * 2),
                                               escape=escape(good=(6, 8), bad=(2, 8))))
    assert check.verdict == "FAIL"
    assert check.detail == ("the loss rises less at the bad minima (0.1 vs 0.5); escape from the bad minima (25%) "
                            "is not more likely than from the good (75%)")


@pytest.mark.parametrize("the_slices, the_escape, why", [
    (pd.DataFrame(), escape((2, 8), (6, 8)), "no 1-D slices"),
    (slices([0.1], [1.0]), pd.DataFrame(), "no escape trials"),
    (slices([0.1], [1.0]).query("role == 'bad'"), escape((2, 8), (6, 8)), "slices of only one role"),
    (slices([0.1], [1.0]), escape((2, 8), (6, 8)).query("role == 'bad'"), "escape trials of only one role"),
])
def test_perturbation_has_no_data_without_both_roles_of_slices_and_escapes(the_slices, the_escape, why):
    check = perturbation_check(DatasetEvidence("d", slices=the_slices, escape=the_escape))
    assert (check.verdict, check.detail) == ("NO DATA", why)


# --- claim 7: the 2-layer bound holds -------------------------------------------------------------------------

def test_bound_passes_when_it_holds_at_every_minimum():
    check = bound_check(two_layer([1.0, 2.0, 4.0], [2.0, 3.0, 8.0], [3.0, 2.0, 1.0],
                                  dataset=["teacher", "digits", "teacher"]))
    assert (check.verdict, check.dataset, check.detail) == ("PASS", "digits, teacher", "")
    assert check.measured == ("holds at 3/3 minima; bound/complexity 1.83 ± 0.289 (smallest 1.5); "
                              "Spearman ρ(complexity, ‖H‖_F) = -1.00")


def test_bound_fails_when_one_minimum_does_not_hold_and_names_its_run_id():
    check = bound_check(two_layer([1.0, 2.0, 4.0, 1.0], [2.0, 3.0, 3.0, 5.0], [1.0, 2.0, 4.0, 3.0]))
    assert check.verdict == "FAIL"
    assert check.detail == "fails at run-c (complexity 4 > bound 3)"
    assert check.measured.startswith("holds at 3/4 minima; bound/complexity")
    assert "(smallest 0.75)" in check.measured


def test_bound_verdict_follows_the_stored_holds_column():
    check = bound_check(two_layer([1.0, 2.0], [2.0, 3.0], [1.0, 2.0], holds=[True, False]))
    assert check.verdict == "FAIL" and check.detail == "fails at run-b (complexity 2 > bound 3)"


def test_bound_names_the_row_without_a_run_id_and_has_no_rank_correlation_below_three_minima():
    check = bound_check(two_layer([1.0, 5.0], [2.0, 3.0], [1.0, 2.0], with_run_id=False))
    assert check.verdict == "FAIL" and check.detail == "fails at 1 (complexity 5 > bound 3)"
    assert check.measured.endswith("Spearman ρ(complexity, ‖H‖_F) = nan")


# --- NO DATA is never a PASS --------------------------------------------------------------------------------------

@pytest.mark.parametrize("check", [fit_check, drop_check, sharpness_check, log_volume_check, random_init_check,
                                   perturbation_check])
def test_every_per_dataset_claim_has_no_data_on_empty_frames(check):
    result = check(DatasetEvidence("empty"))
    assert (result.dataset, result.verdict, result.measured) == ("empty", "NO DATA", "—")
    assert result.detail


def test_bound_has_no_data_without_two_layer_runs():
    assert bound_check(pd.DataFrame()) == Check("two_layer", "NO DATA", "—", "no two_layer runs")


# --- a claim's verdict over its checks ------------------------------------------------------------------------

@pytest.mark.parametrize("verdicts, expected", [
    ((), "NO DATA"),
    (("NO DATA",), "NO DATA"),
    (("NO DATA", "NO DATA"), "NO DATA"),
    (("PASS",), "PASS"),
    (("PASS", "PASS"), "PASS"),
    (("PASS", "FAIL"), "FAIL"),
    (("FAIL", "NO DATA"), "FAIL"),
    (("PASS", "NO DATA"), "FAIL"),  # a dataset without evidence keeps the claim from passing
])
def test_claim_verdict_is_no_data_only_when_all_checks_are_and_passes_only_when_all_pass(verdicts, expected):
    claim = Claim(1, "s", "t", tuple(Check(f"ds{i}", v, "m") for i, v in enumerate(verdicts)))
    assert claim.verdict == expected


def test_claim_measured_joins_each_dataset_and_to_dict_carries_the_checks():
    claim = Claim(3, "statement", "test", (Check("a", "PASS", "x"), Check("b", "FAIL", "y", "why")))
    assert claim.measured == "a: x; b: y"
    assert claim.to_dict() == {"number": 3, "statement": "statement", "test": "test", "verdict": "FAIL",
                               "measured": "a: x; b: y",
                               "checks": [{"dataset": "a", "verdict": "PASS", "measured": "x", "detail": ""},
                                          {"dataset": "b", "verdict": "FAIL", "measured": "y", "detail": "why"}]}


# --- evaluate and the claims table -------------------------------------------------------------------------------

def test_helpers_build_evidence_on_which_every_claim_passes_and_every_claim_fails():
    checks = (fit_check, drop_check, sharpness_check, log_volume_check, random_init_check, perturbation_check)
    assert [c(passing_evidence()).verdict for c in checks] == ["PASS"] * 6
    assert [c(failing_evidence()).verdict for c in checks] == ["FAIL"] * 6


def test_evaluate_gives_the_seven_claims_in_order_with_one_check_per_dataset():
    found = evaluate(Evidence((passing_evidence("digits"), failing_evidence("cifar")),
                              two_layer([1.0, 2.0, 4.0], [2.0, 3.0, 8.0], [1.0, 2.0, 3.0])))
    assert len(CLAIMS) == 6
    assert [c.number for c in found] == list(range(1, 8))
    assert [c.statement for c in found] == [s for s, _, _ in CLAIMS] + [BOUND_CLAIM[0]]
    assert [c.test for c in found] == [t for _, t, _ in CLAIMS] + [BOUND_CLAIM[1]]
    for claim in found[:6]:
        assert [(c.dataset, c.verdict) for c in claim.checks] == [("digits", "PASS"), ("cifar", "FAIL")]
        assert claim.verdict == "FAIL"
        assert claim.measured.startswith("digits: ") and "; cifar: " in claim.measured
    assert [(c.dataset, c.verdict) for c in found[6].checks] == [("teacher", "PASS")]
    assert found[6].verdict == "PASS"


def test_evaluate_passes_every_claim_on_passing_evidence():
    found = evaluate(Evidence((passing_evidence("digits"), passing_evidence("mnist")),
                              two_layer([1.0, 2.0], [2.0, 3.0], [1.0, 2.0])))
    assert [c.verdict for c in found] == ["PASS"] * 7


def test_evaluate_without_evidence_gives_no_data_for_every_claim():
    found = evaluate(Evidence(()))
    assert [c.number for c in found] == list(range(1, 8))
    assert [c.verdict for c in found] == ["NO DATA"] * 7
    assert all(c.checks == () for c in found[:6]) and found[6].checks[0].verdict == "NO DATA"


def test_claims_frame_is_the_same_from_claims_and_from_their_json_round_trip():
    found = evaluate(Evidence((passing_evidence("digits"), failing_evidence("cifar")),
                              two_layer([1.0, 2.0, 4.0], [2.0, 3.0, 3.0], [1.0, 2.0, 3.0])))
    table = claims_frame(found)
    assert list(table.columns) == ["#", "claim", "measured", "test", "result"]
    assert table["#"].tolist() == list(range(1, 8))
    assert table["result"].tolist() == [c.verdict for c in found] == ["FAIL"] * 7
    assert table["measured"].tolist() == [c.measured for c in found]
    assert table["claim"].tolist() == [c.statement for c in found]
    stored = json.loads(json.dumps([c.to_dict() for c in found]))
    pd.testing.assert_frame_equal(claims_frame(stored), table)


def test_claims_frame_of_nothing_is_an_empty_table_with_the_columns():
    table = claims_frame([])
    assert table.empty and list(table.columns) == ["#", "claim", "measured", "test", "result"]


def test_spread_and_pct_format_mean_and_sample_standard_deviation():
    assert claims._spread([1.0, 3.0]) == "2 ± 1.41"
    assert claims._spread([2.5]) == "2.5"
    assert claims._spread([np.nan, 4.0]) == "4"
    assert claims._spread([]) == "—"
    assert claims._pct([0.9, 0.8]) == "85.0 ± 7.1%"


def test_claims_verdicts_has_one_column_per_dataset_and_blanks_where_untested():
    found = evaluate(Evidence((passing_evidence("digits"), failing_evidence("cifar")),
                              two_layer([1.0, 2.0, 4.0], [2.0, 3.0, 8.0], [3.0, 2.0, 1.0])))
    table = claims_verdicts(found)
    assert list(table.columns) == ["#", "claim", "digits", "cifar", "teacher", "result"]
    assert list(table["digits"]) == ["PASS"] * 6 + [""] and list(table["cifar"]) == ["FAIL"] * 6 + [""]
    assert list(table["teacher"]) == [""] * 6 + ["PASS"]
    assert list(table["result"]) == ["FAIL"] * 6 + ["PASS"]
    assert table.equals(claims_verdicts(json.loads(json.dumps([c.to_dict() for c in found]))))
