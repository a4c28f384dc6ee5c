"""The paper's claims, each tested on measured results and on its negative control: pure functions of DataFrames.

`Evidence` holds what a reproduction measured (read back from the store by `lossland.evidence`);
`evaluate` turns it into one `Claim` per statement, each with a `Check` per dataset. A check is made
of `Comparison`s, each an effect size with its 95% interval (bootstrap over seeds, or Clopper–Pearson for a
count, `lossland.stats`) and a rule fixed here before any run: an effect passes when its whole
interval lies on the claimed side of zero. The same rule is applied to the dataset's **negative
control** — pairs whose "bad" run is just another good run (another initialisation seed, no attack
set) — where it must not pass. A check is

- PASS when every test of its rule passes and none passes on the control,
- NOT INFORMATIVE when its rule passes but a test also passes on the control (or there is no control),
- FAIL when a test of its rule fails, and NO DATA without the evidence it needs — also when the only tests
  that fail are effects measured without an interval (one seed has none: a one-seed run shows its effects,
  it does not fail them).

Comparisons are of paired seeds (the good and the bad minimum of one seed); log-ratios are used for
the sharpness measures, which span orders of magnitude.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from .stats import bootstrap_mean, bootstrap_spearman, count_text, percent, spread
from .verdicts import (  # noqa: F401  (the verdict types are part of claims' interface)
    FAIL,
    NO_DATA,
    NOT_INFORMATIVE,
    PASS,
    Check,
    Claim,
    Comparison,
    _judge,
    _no_data,
    effect,
)

FIT_ACCURACY = 0.99  # "≈100%" training accuracy (clean set for both minima; attack set for the bad one)
MATCHED_LOSS_RATIO = 2.0  # clean losses of a pair within this factor of each other count as matched
LOG_VOLUME_EPS = (1e-4, 1e-3, 1e-2)  # log-volume −½ Σᵢ log(λᵢ⁺ + ε) over the whole spectrum, at each ε
NEAR_CHANCE = 0.15  # reported: a bad minimum within 15 points of chance accuracy ("like a random guess")
FLOOR = 1e-12  # log-ratios of non-negative measures are of max(value, FLOOR)



@dataclass(frozen=True, eq=False)
class DatasetEvidence:
    """What a reproduction measured on one dataset. Every frame may be empty.

    pairs: one row per run of the main pairs (one per seed): seed, role, status, clean_loss, clean_acc,
        attack_acc, test_acc, top_eigenvalue, trace, frobenius_sq (exact where the dense Hessian was
        built), adaptive_sharpness.
    sweep: every pair of the attack-size sweep (the main pairs among them): n_attack, seed, role, status,
        clean_acc, test_acc.
    log_volume: seed, role, eps, value (−½ Σ log(λ⁺ + ε) over all eigenvalues), stderr, method.
    random_init: clean random-init seeds: seed, status, test_acc.
    slices: filter-normalised 1-D slices: seed, role, direction_seed, alpha, clean_loss.
    escape: perturb-and-retrain trials: seed, role, radius, trial, escaped.
    chance: the test accuracy of a uniform guess. control: the same frames for the control pairs.
    """

    dataset: str
    pairs: pd.DataFrame = field(default_factory=pd.DataFrame)
    sweep: pd.DataFrame = field(default_factory=pd.DataFrame)
    log_volume: pd.DataFrame = field(default_factory=pd.DataFrame)
    random_init: pd.DataFrame = field(default_factory=pd.DataFrame)
    slices: pd.DataFrame = field(default_factory=pd.DataFrame)
    escape: pd.DataFrame = field(default_factory=pd.DataFrame)
    chance: float = math.nan
    control: DatasetEvidence | None = None


@dataclass(frozen=True, eq=False)
class Evidence:
    datasets: tuple[DatasetEvidence, ...]
    # two_layer minima at the loss target: width, seed, n_attack, role, complexity, hessian_frobenius,
    # top_eigenvalue (one good row per width and seed; bad rows at each attack size) and, as its control,
    # the untrained networks in the same columns (role "good": true labels, "bad": random labels)
    two_layer: pd.DataFrame = field(default_factory=pd.DataFrame)
    two_layer_control: pd.DataFrame = field(default_factory=pd.DataFrame)


# --- building blocks -----------------------------------------------------------------------------

def by_role(pairs: pd.DataFrame, column: str) -> pd.DataFrame:
    """seed × role table of `column` over the pairs whose both runs are present (the first row of each)."""
    if len(pairs) == 0 or column not in pairs.columns:
        return pd.DataFrame(columns=["good", "bad"])
    first = pairs.drop_duplicates(["seed", "role"])
    sides = [first.loc[first["role"] == r].set_index("seed")[column].astype(float) for r in ("good", "bad")]
    return pd.concat(sides, axis=1, keys=["good", "bad"]).dropna()


def usable(pairs: pd.DataFrame) -> pd.DataFrame:
    return pairs[pairs["status"] != "failed"] if len(pairs) else pairs


def converged(pairs: pd.DataFrame) -> pd.DataFrame:
    """The runs of the seeds whose both runs reached the clean-loss target (compared at matched loss)."""
    if len(pairs) == 0:
        return pairs
    both = pairs.groupby("seed")["status"].transform(lambda s: (s == "converged").all() and len(s) == 2)
    return pairs[both]


def _left_out(pairs: pd.DataFrame) -> str:
    """A note naming the seeds left out because a run of theirs failed (empty when none)."""
    if len(pairs) == 0:
        return ""
    failed = sorted(pairs.loc[pairs["status"] == "failed", "seed"].unique())
    return f"; seed(s) {[int(x) for x in failed]} left out: a run failed" if failed else ""


def log_ratio(wide: pd.DataFrame) -> pd.Series:
    return np.log(wide["bad"].clip(lower=FLOOR)) - np.log(wide["good"].clip(lower=FLOOR))


def _paired_log_ratios(pairs: pd.DataFrame, measures) -> list[Comparison]:
    return [effect(f"log({label} bad / good)", bootstrap_mean(log_ratio(by_role(pairs, column))), rule=rule)
            for column, label, rule in measures]


# --- claims 1-6, per dataset -----------------------------------------------------------------------

def fit_check(e: DatasetEvidence) -> Check:
    pairs = usable(e.pairs)
    acc = by_role(pairs, "clean_acc")
    if acc.empty:
        return _no_data(e.dataset, "no complete good/bad pair")
    loss = by_role(pairs, "clean_loss")
    status = pairs.pivot_table(index="seed", columns="role", values="status", aggfunc="first")
    hi, lo = np.maximum(loss["bad"], loss["good"]), np.minimum(loss["bad"], loss["good"])
    ratio = (hi / lo).where(hi > 0, 1.0)  # two zero losses are matched
    converged = (status[["good", "bad"]] == "converged").all(axis=1).reindex(acc.index, fill_value=False)
    ok = (acc >= FIT_ACCURACY).all(axis=1) & (ratio <= MATCHED_LOSS_RATIO) & converged
    fit = Comparison("both fit the clean set at matched loss", bool(ok.all()),
               count_text(int(ok.sum()), len(ok), "seeds fit and matched"), float(ok.mean()), n=len(ok),
               controlled=False)
    attack = by_role(pairs, "attack_acc")
    memorised = bootstrap_mean(attack["bad"])
    held = bool(len(attack) and (attack["bad"] >= FIT_ACCURACY).all())
    mem = Comparison("the bad run fits its attack set", held, f"attack acc {memorised.text('{:.1%}')} over "
               f"{memorised.n} seeds", memorised.value, memorised.lo, memorised.hi, memorised.n)
    measured = (f"clean acc good {percent(acc['good'])}, bad {percent(acc['bad'])}; clean loss good "
                f"{spread(loss['good'], '{:.2e}')}, bad {spread(loss['bad'], '{:.2e}')}; {fit.effect}; "
                f"bad run's {mem.effect}{_left_out(e.pairs)}")
    bad_seeds = [int(s) for s in acc.index[~ok]]
    notes = (f"seed(s) {bad_seeds} below {FIT_ACCURACY:.0%} clean accuracy, stopped before the loss target or "
             f"losses more than {MATCHED_LOSS_RATIO:g}× apart (statuses " + ", ".join(
                 f"{s}: {status.loc[s, 'good']}/{status.loc[s, 'bad']}" for s in bad_seeds) + ")") if bad_seeds else ""
    return _judge(e.dataset, [fit, mem], measured, notes)


def _near_chance(e: DatasetEvidence) -> Comparison:
    """The lowest test accuracy of a bad minimum that fits its clean set at the loss target, against chance."""
    s = usable(e.sweep)
    bad = s[(s["role"] == "bad") & (s["status"] == "converged") & (s["clean_acc"] >= FIT_ACCURACY)] if len(s) else s
    if len(bad) == 0 or not math.isfinite(e.chance):
        return Comparison("a bad minimum near chance", False, "—", rule=False)
    low = bad.loc[bad["test_acc"].idxmin()]
    gap = float(low["test_acc"]) - e.chance
    return Comparison("a bad minimum near chance", gap <= NEAR_CHANCE,
                f"lowest {low['test_acc']:.1%} at attack size {int(low['n_attack'])} (chance {e.chance:.0%}: "
                f"{gap * 100:+.1f} points)", gap, n=len(bad), rule=False, controlled=False)


def drop_check(e: DatasetEvidence) -> Check:
    pairs = usable(e.pairs)
    test = by_role(pairs, "test_acc")
    if test.empty:
        return _no_data(e.dataset, "no complete good/bad pair")
    drop = effect("test drop (good − bad) at the main attack size", bootstrap_mean(test["good"] - test["bad"]),
                  fmt="{:+.1%}")
    sweep = usable(e.sweep)
    wide = (sweep.pivot_table(index=["n_attack", "seed"], columns="role", values="test_acc", aggfunc="first")
            if len(sweep) else pd.DataFrame())
    d = (wide["good"] - wide["bad"]).dropna() if {"good", "bad"} <= set(wide.columns) else pd.Series(dtype=float)
    sizes = d.index.get_level_values("n_attack").to_numpy() if len(d) else np.array([])
    rho = bootstrap_spearman(sizes, d.to_numpy())
    grows = effect("Spearman ρ(attack size, drop)", rho, "pairs", "{:+.2f}")
    means = d.groupby(level="n_attack").mean() if len(d) else pd.Series(dtype=float)
    measured = (f"test acc good {percent(test['good'])}, bad {percent(test['bad'])}; drop {drop.effect}; mean drop by "
                "attack size " + (", ".join(f"{int(n)}: {m:.1%}" for n, m in means.items()) or "—")
                + f"; ρ {grows.effect}{_left_out(e.pairs)}")
    near = _near_chance(e)
    return _judge(e.dataset, [drop, grows, near], measured + f"; {near.name}: {near.effect}")


SHARPNESS = (("top_eigenvalue", "λ₁", True), ("trace", "trace", True), ("frobenius", "‖H‖_F", True),
             ("adaptive_sharpness", "adaptive sharpness", False))


def with_frobenius(pairs: pd.DataFrame) -> pd.DataFrame:
    if len(pairs) == 0 or "frobenius_sq" not in pairs.columns:
        return pairs
    return pairs.assign(frobenius=pairs["frobenius_sq"].astype(float).clip(lower=0) ** 0.5)


def sharpness_check(e: DatasetEvidence) -> Check:
    pairs = with_frobenius(converged(usable(e.pairs)))
    if by_role(pairs, "top_eigenvalue").empty:
        return _no_data(e.dataset, "no pair where both runs reached the clean-loss target")
    tests = _paired_log_ratios(pairs, SHARPNESS)
    parts = []
    for (column, label, _), t in zip(SHARPNESS, tests, strict=True):
        wide = by_role(pairs, column)
        if len(wide):
            parts.append(f"{label} good {spread(wide['good'])}, bad {spread(wide['bad'])}, log-ratio {t.effect}"
                         + ("" if t.rule else " (not in the rule)"))
    return _judge(e.dataset, [t for t in tests if t.n or t.rule], "; ".join(parts) + _left_out(e.pairs))


def log_volume_check(e: DatasetEvidence) -> Check:
    lv = e.log_volume
    if len(lv) == 0:
        return _no_data(e.dataset, "no stored spectra to take a log-volume of")
    tests, parts = [], []
    for eps in LOG_VOLUME_EPS:
        at = lv[np.isclose(lv["eps"].astype(float), eps)]
        wide = by_role(at, "value")
        t = effect(f"log-volume gap (good − bad) at ε = {eps:g}", bootstrap_mean(wide["good"] - wide["bad"]))
        se = by_role(at, "stderr")
        noise = ((se["good"] ** 2 + se["bad"] ** 2) ** 0.5).mean() if len(se) else math.nan
        tests.append(t)
        parts.append(f"ε={eps:g}: {t.effect}" + (f" (SLQ s.e. per seed ±{noise:.3g})" if noise > 0 else ""))
    methods = ", ".join(sorted(lv["method"].astype(str).unique())) if "method" in lv.columns else "?"
    if not any(t.n for t in tests):
        return _no_data(e.dataset, "log-volumes of only one role")
    return _judge(e.dataset, tests, f"whole spectrum ({methods}): " + "; ".join(parts))


def random_init_check(e: DatasetEvidence) -> Check:
    p = usable(e.pairs)
    bad = (p[(p["role"] == "bad") & (p["status"] == "converged")]["test_acc"].astype(float) if len(p)
           else pd.Series(dtype=float))
    if len(e.random_init) == 0 or bad.empty:
        return _no_data(e.dataset, "no random-init seeds" if len(e.random_init) == 0 else
                        "no bad run reached the loss target")
    ri = e.random_init
    minima = ri[ri["status"] == "converged"] if "status" in ri.columns else ri
    worst_bad = float(bad.max())
    low = int((minima["test_acc"] <= worst_bad).sum())
    t = Comparison("random inits as bad as a bad minimum", low == 0 and len(minima) > 0,
             count_text(low, len(minima), "random inits at or below the best bad minimum's test accuracy"),
             low / len(minima) if len(minima) else math.nan, n=len(minima))
    measured = (f"{len(minima)}/{len(ri)} random-init seeds reached the loss target, test acc "
                f"{percent(minima['test_acc'])}; bad minima {percent(bad)}, best {worst_bad:.1%}; {t.effect}")
    return _judge(e.dataset, [t], measured)


def _slice_rise(e: DatasetEvidence) -> Comparison | str:
    """log(mean rise bad / good) along the slices, per seed, or why there is no data."""
    s = e.slices
    if len(s) == 0:
        return "no 1-D slices"
    keys = ["seed", "role", "direction_seed"]
    centre = s.loc[s.groupby(keys)["alpha"].transform(lambda a: a.abs() == a.abs().min()), keys + ["clean_loss"]]
    base = centre.groupby(keys)["clean_loss"].first().rename("at_min")
    rise = (s.join(base, on=keys).assign(rise=lambda d: d["clean_loss"] - d["at_min"])
            .groupby(["seed", "role"])["rise"].mean().unstack("role"))
    if not {"good", "bad"} <= set(rise.columns):
        return "slices of only one role"
    return effect("log(loss rise along the slices bad / good)", bootstrap_mean(log_ratio(rise.dropna())))


def _escape(e: DatasetEvidence) -> tuple[Comparison, str] | str:
    """Escape probability bad − good. Where the trials include radius 0 (retraining without a perturbation,
    the negative control of "the perturbation made it escape"), each role's escape probability is taken in
    excess of its unperturbed one: a minimum that retraining alone moves counts for nothing."""
    if len(e.escape) == 0:
        return "no escape trials"
    t = e.escape.assign(escaped=e.escape["escaped"].astype(float))
    control = t["radius"].astype(float) == 0.0 if "radius" in t.columns else pd.Series(False, index=t.index)
    per_seed = t[~control].pivot_table(index="seed", columns="role", values="escaped", aggfunc="mean")
    if not {"good", "bad"} <= set(per_seed.columns):
        return "escape trials of only one role"
    text = "; ".join(_escape_counts(t[~control], "trials escaped from"))
    name = "escape probability bad − good"
    if control.any():
        still = t[control].pivot_table(index="seed", columns="role", values="escaped", aggfunc="mean")
        per_seed = per_seed - still.reindex(index=per_seed.index, columns=per_seed.columns)
        text += "; unperturbed (r = 0): " + "; ".join(_escape_counts(t[control], "escaped from"))
        name = "escape probability in excess of the unperturbed retrain, bad − good"
    wide = per_seed[["good", "bad"]].dropna()
    return effect(name, bootstrap_mean(wide["bad"] - wide["good"]), fmt="{:+.0%}"), text


def _escape_counts(t: pd.DataFrame, what: str) -> list[str]:
    counts = t.groupby("role")["escaped"].agg(["sum", "size"])
    return [count_text(int(counts.loc[r, "sum"]), int(counts.loc[r, "size"]), f"{what} {r}")
            for r in ("good", "bad") if r in counts.index]


def perturbation_check(e: DatasetEvidence) -> Check:
    """Both halves are tested on their own: a half that fails makes a FAIL even when the other has no data."""
    rise, esc = _slice_rise(e), _escape(e)
    tests = [t for t in (rise, esc[0] if isinstance(esc, tuple) else esc) if isinstance(t, Comparison)]
    missing = [m for m in (rise, esc) if isinstance(m, str)]
    measured = "; ".join([f"{t.name} {t.effect}" for t in tests] + ([esc[1]] if isinstance(esc, tuple) else []))
    check = _judge(e.dataset, tests, measured or "—", "; ".join(f"({m})" for m in missing) if missing else "")
    if missing and check.verdict == PASS or not tests:
        return Check(e.dataset, NO_DATA, measured or "—", "; ".join(missing), tuple(tests))
    return check


CLAIMS = (
    ("Both minima fit the clean training set at matched clean loss; the bad one also fits its attack set.",
     f"every seed: clean acc ≥ {FIT_ACCURACY:.0%} for both, both at the loss target within {MATCHED_LOSS_RATIO:g}×, "
     f"attack acc of the bad run ≥ {FIT_ACCURACY:.0%}", fit_check),
    ("The bad minimum's test accuracy is lower, and the drop grows with attack size.",
     "95% interval of the mean drop over seeds above 0; of Spearman ρ(attack size, drop) over the sweep's pairs "
     "above 0", drop_check),
    ("At matched clean loss the bad minimum has a larger top eigenvalue, trace and Frobenius norm.",
     "pairs at the loss target: 95% interval of the mean log(bad / good) above 0 for each of λ₁, trace, ‖H‖_F",
     sharpness_check),
    ("The bad minimum's basin is smaller: the log-volume over the whole spectrum is lower.",
     f"95% interval of the mean gap −½ Σᵢ log(λᵢ⁺ + ε) (good − bad) above 0 at every ε in "
     f"{', '.join(f'{x:g}' for x in LOG_VOLUME_EPS)}", log_volume_check),
    ("No clean random-init seed reaches a test accuracy as low as the bad minima's.",
     "0 random-init seeds at the loss target with test acc ≤ the best bad minimum's", random_init_check),
    ("Under equal filter-normalised perturbation the loss rises more at the bad minimum, and perturb-and-retrain "
     "escapes it more often.",
     "95% intervals above 0: mean log(loss rise bad / good) over the slices; mean escape probability bad − good "
     "(|Δ test acc| > margin after retraining, both roles alike), each in excess of its unperturbed retrain (r = 0) "
     "where the plan runs one", perturbation_check),
)


# --- claim 7: the 2-layer statement ------------------------------------------------------------------

def two_layer_check(minima: pd.DataFrame, name: str = "two_layer") -> Check:
    """Across two_layer minima, a monotone association of the complexity with ‖H‖_F, and the bad minima
    above the good ones of the same width and seed in both (see Evidence.two_layer)."""
    if len(minima) < 3:
        return _no_data(name, f"{len(minima)} two_layer minima measured (3 needed for a rank correlation)")
    c = minima["complexity"]
    rho = effect("Spearman ρ(complexity, ‖H‖_F)", bootstrap_spearman(c, minima["hessian_frobenius"]), "minima",
                 "{:+.2f}")
    rho_top = effect("Spearman ρ(complexity, λ₁)", bootstrap_spearman(c, minima["top_eigenvalue"]), "minima",
                     "{:+.2f}", rule=False)
    good = minima[minima["role"] == "good"].drop_duplicates(["width", "seed"]).set_index(["width", "seed"])
    bad = minima[minima["role"] == "bad"].merge(good[["complexity", "hessian_frobenius"]], on=["width", "seed"],
                                                 suffixes=("", "_good"))
    order = [effect(f"log({label} bad / good)", bootstrap_mean(
        np.log(bad[c].clip(lower=FLOOR)) - np.log(bad[f"{c}_good"].clip(lower=FLOOR))), "pairs")
        for c, label in (("complexity", "complexity"), ("hessian_frobenius", "‖H‖_F"))]
    widths = ", ".join(str(int(w)) for w in sorted(minima["width"].unique())) if "width" in minima else "?"
    measured = (f"{len(minima)} minima (widths {widths}); {rho.name} {rho.effect}; {rho_top.name} {rho_top.effect}; "
                + "; ".join(f"{t.name} {t.effect}" for t in order))
    return _judge(name, [rho, *order, rho_top], measured)


CLAIM_7 = ("Among two_layer minima, lower complexity E‖∇ₓf‖² goes with a smaller Hessian norm, and the bad "
           "minima have the higher of both.",
           "95% intervals above 0: Spearman ρ(complexity on held-out inputs, ‖H‖_F) over the minima (bootstrap over "
           "minima); mean log(bad / good) of the complexity and of ‖H‖_F over pairs of one width and seed")


# --- the claims and their controls -----------------------------------------------------------------

def _controlled(check_fn, e: DatasetEvidence) -> Check:
    return replace(check_fn(e), control=check_fn(e.control) if e.control is not None else None)


def evaluate(evidence: Evidence) -> list[Claim]:
    """The seven claims, in the paper's order: claims 1-6 on every dataset, claim 7 on the two_layer runs,
    each check beside the same rule on its negative control."""
    out = [Claim(i + 1, statement, test, tuple(_controlled(check, e) for e in evidence.datasets))
           for i, (statement, test, check) in enumerate(CLAIMS)]
    control = two_layer_check(evidence.two_layer_control, "untrained two_layer networks")
    return [*out, Claim(7, *CLAIM_7, (replace(two_layer_check(evidence.two_layer), control=control),))]
