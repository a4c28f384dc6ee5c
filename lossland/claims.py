"""The paper's seven claims, each tested on measured results: pure functions of DataFrames.

`Evidence` holds what a reproduction measured (read back from the store by `reproduce`); `evaluate`
turns it into one `Claim` per statement, each with a `Check` per dataset carrying the numbers
(mean ± spread over seeds), the test applied and whether it held. Comparisons are between means over
seeds; how many seeds agree is reported beside them. A claim without the evidence it needs is
"NO DATA", never a PASS.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

FIT_ACCURACY = 0.99  # "≈100%" clean-train accuracy
MATCHED_LOSS_RATIO = 2.0  # clean losses of a pair within this factor of each other count as matched


@dataclass(frozen=True, eq=False)
class DatasetEvidence:
    """What a reproduction measured on one dataset. Every frame may be empty.

    pairs: one row per run of the main pairs (one pair per seed, at the preset's attack size): seed,
        role, status, clean_loss, clean_acc, test_acc, top_eigenvalue, trace, frobenius_sq.
    sweep: the runs of the attack-size sweep: n_attack, seed, role, status, test_acc (+ sharpness).
    log_volume: the main pairs' log-volume over the top k eigenvalues: seed, role, k, value.
    random_init: clean random-init seeds: seed, status, test_acc.
    slices: filter-normalised 1-D slices of the main pairs: seed, role, direction_seed, alpha, clean_loss.
    escape: perturb-and-retrain trials from the main pairs: seed, role, radius, trial, escaped.
    """

    dataset: str
    pairs: pd.DataFrame = field(default_factory=pd.DataFrame)
    sweep: pd.DataFrame = field(default_factory=pd.DataFrame)
    log_volume: pd.DataFrame = field(default_factory=pd.DataFrame)
    random_init: pd.DataFrame = field(default_factory=pd.DataFrame)
    slices: pd.DataFrame = field(default_factory=pd.DataFrame)
    escape: pd.DataFrame = field(default_factory=pd.DataFrame)


@dataclass(frozen=True, eq=False)
class Evidence:
    datasets: tuple[DatasetEvidence, ...]
    # every two_layer minimum: dataset, seed, n_attack, role, complexity, rhs, hessian_frobenius, holds
    two_layer: pd.DataFrame = field(default_factory=pd.DataFrame)


@dataclass(frozen=True)
class Check:
    """One claim on one dataset (or on the 2-layer runs)."""

    dataset: str
    verdict: str  # PASS | FAIL | NO DATA
    measured: str
    detail: str = ""  # what failed, in numbers; or why there is no data


@dataclass(frozen=True)
class Claim:
    number: int
    statement: str
    test: str
    checks: tuple[Check, ...]

    @property
    def verdict(self) -> str:
        verdicts = {c.verdict for c in self.checks}
        if not verdicts or verdicts == {"NO DATA"}:
            return "NO DATA"
        return "FAIL" if verdicts - {"PASS"} else "PASS"

    @property
    def measured(self) -> str:
        return "; ".join(f"{c.dataset}: {c.measured}" for c in self.checks)

    def to_dict(self) -> dict:
        return {"number": self.number, "statement": self.statement, "test": self.test, "verdict": self.verdict,
                "measured": self.measured, "checks": [c.__dict__ for c in self.checks]}


# --- formatting ----------------------------------------------------------------------------------

def _spread(values, fmt: str = "{:.3g}") -> str:
    """mean ± standard deviation over seeds (just the value for one seed)."""
    v = np.asarray(pd.Series(values, dtype=float).dropna())
    if v.size == 0:
        return "—"
    if v.size == 1:
        return fmt.format(v[0])
    return f"{fmt.format(v.mean())} ± {fmt.format(v.std(ddof=1))}"


def _pct(values) -> str:
    return _spread(np.asarray(pd.Series(values, dtype=float)) * 100, "{:.1f}") + "%"


def _by_role(pairs: pd.DataFrame, column: str) -> pd.DataFrame:
    """seed × role table of `column` over the pairs whose both runs are present."""
    wide = pairs.pivot_table(index="seed", columns="role", values=column, aggfunc="first")
    if not {"good", "bad"} <= set(wide.columns):
        return pd.DataFrame(columns=["good", "bad"])
    return wide[["good", "bad"]].dropna()


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _no_data(dataset: str, why: str) -> Check:
    return Check(dataset, "NO DATA", "—", why)


def _usable(pairs: pd.DataFrame) -> pd.DataFrame:
    return pairs[pairs["status"] != "failed"] if len(pairs) else pairs


def _left_out(pairs: pd.DataFrame) -> str:
    """A note naming the seeds left out because a run of theirs failed (empty when none)."""
    if len(pairs) == 0:
        return ""
    failed = sorted(pairs.loc[pairs["status"] == "failed", "seed"].unique())
    return f"; seed(s) {[int(x) for x in failed]} left out: a run failed" if failed else ""


# --- the claims -----------------------------------------------------------------------------------

def fit_check(e: DatasetEvidence) -> Check:
    pairs = _usable(e.pairs)
    acc = _by_role(pairs, "clean_acc") if len(pairs) else pd.DataFrame()
    if acc.empty:
        return _no_data(e.dataset, "no complete good/bad pair")
    loss = _by_role(pairs, "clean_loss")
    status = pairs.pivot_table(index="seed", columns="role", values="status", aggfunc="first")
    hi, lo = np.maximum(loss["bad"], loss["good"]), np.minimum(loss["bad"], loss["good"])
    ratio = (hi / lo).where(hi > 0, 1.0)  # two zero losses are matched
    fits = (acc >= FIT_ACCURACY).all(axis=1)
    converged = (status[["good", "bad"]] == "converged").all(axis=1).reindex(acc.index, fill_value=False)
    matched = (ratio <= MATCHED_LOSS_RATIO) & converged
    measured = (f"clean acc good {_pct(acc['good'])}, bad {_pct(acc['bad'])}; clean loss good "
                f"{_spread(loss['good'], '{:.2e}')}, bad {_spread(loss['bad'], '{:.2e}')}; "
                f"{int((fits & matched).sum())}/{len(acc)} seeds fit and matched{_left_out(e.pairs)}")
    problems = []
    if not fits.all():
        problems.append(f"clean accuracy below {FIT_ACCURACY:.0%} in seed(s) {[int(x) for x in acc.index[~fits]]}")
    if not matched.all():
        problems.append(f"clean losses not matched (a run stopped before the loss target, or losses more than "
                        f"{MATCHED_LOSS_RATIO:g}× apart) in seed(s) {[int(x) for x in acc.index[~matched]]}: statuses "
                        + ", ".join(f"{s}: {status.loc[s, 'good']}/{status.loc[s, 'bad']}"
                                    for s in acc.index[~matched]))
    return Check(e.dataset, _verdict(not problems), measured, "; ".join(problems))


def drop_check(e: DatasetEvidence) -> Check:
    pairs = _usable(e.pairs)
    test = _by_role(pairs, "test_acc") if len(pairs) else pd.DataFrame()
    sweep = _usable(e.sweep)
    if test.empty:
        return _no_data(e.dataset, "no complete good/bad pair")
    drop_pairs = test["good"] - test["bad"]
    problems = []
    if not drop_pairs.mean() > 0:
        problems.append(f"mean test drop at the main attack size is {drop_pairs.mean():.1%}, not positive")
    measured = (f"test acc good {_pct(test['good'])}, bad {_pct(test['bad'])} "
                f"(lower in {int((drop_pairs > 0).sum())}/{len(drop_pairs)} seeds){_left_out(e.pairs)}")
    wide = (sweep.pivot_table(index=["n_attack", "seed"], columns="role", values="test_acc", aggfunc="first")
            if len(sweep) else pd.DataFrame())
    complete = (wide["good"] - wide["bad"]).dropna() if {"good", "bad"} <= set(wide.columns) else pd.Series()
    if complete.empty or complete.index.get_level_values("n_attack").nunique() < 2:
        problems.append("the attack-size sweep has fewer than two sizes with a complete good/bad pair, so growth "
                        "can't be tested")
        return Check(e.dataset, "FAIL", measured, "; ".join(problems))
    drops = complete.groupby(level="n_attack")
    short = sweep[sweep["status"] != "converged"]
    if len(short):
        where = ", ".join(f"{int(n)}: {len(g)}" for n, g in short.groupby("n_attack"))
        note = f"; {len(short)}/{len(sweep)} sweep runs stopped before the loss target (by attack size {where})"
    else:
        note = ""
    means, spread = drops.mean(), drops.std(ddof=1)
    steps = np.diff(means.to_numpy())
    measured += "; drop by attack size " + ", ".join(
        f"{int(n)}: {m:.1%}" + (f" ± {spread[n]:.1%}" if pd.notna(spread[n]) else "") for n, m in means.items())
    measured += note
    if not (steps > 0).all():
        sizes = [int(n) for n in means.index]
        bad_steps = [f"{sizes[i]}→{sizes[i + 1]}" for i, s in enumerate(steps) if s <= 0]
        problems.append(f"the mean drop does not grow at step(s) {', '.join(bad_steps)}")
    return Check(e.dataset, _verdict(not problems), measured, "; ".join(problems))


SHARPNESS = (("top_eigenvalue", "λ₁"), ("trace", "trace"), ("frobenius", "‖H‖_F"))


def sharpness_check(e: DatasetEvidence) -> Check:
    pairs = _usable(e.pairs)
    if len(pairs):
        pairs = pairs.assign(frobenius=pairs["frobenius_sq"].astype(float).clip(lower=0) ** 0.5)
        converged = pairs.groupby("seed")["status"].transform(lambda s: (s == "converged").all())
        pairs = pairs[converged]
    if len(pairs) == 0 or _by_role(pairs, "top_eigenvalue").empty:
        return _no_data(e.dataset, "no pair where both runs reached the clean-loss target")
    parts, problems = [], []
    for column, label in SHARPNESS:
        wide = _by_role(pairs, column)
        larger = int((wide["bad"] > wide["good"]).sum())
        parts.append(f"{label} good {_spread(wide['good'])}, bad {_spread(wide['bad'])} "
                     f"(larger in {larger}/{len(wide)})")
        if not wide["bad"].mean() > wide["good"].mean():
            problems.append(f"mean {label} of the bad minima {wide['bad'].mean():.4g} is not larger than the good "
                            f"minima's {wide['good'].mean():.4g}")
    parts[-1] += _left_out(e.pairs)
    return Check(e.dataset, _verdict(not problems), "; ".join(parts), "; ".join(problems))


def log_volume_check(e: DatasetEvidence) -> Check:
    lv = e.log_volume
    if len(lv) == 0:
        return _no_data(e.dataset, "no stored log-volumes")
    wide = lv.pivot_table(index=["seed", "k"], columns="role", values="value", aggfunc="first")
    if not {"good", "bad"} <= set(wide.columns):
        return _no_data(e.dataset, "log-volumes of only one role")
    gap = (wide["good"] - wide["bad"]).dropna().groupby(level="k")
    means = gap.mean()
    ks = means.index.to_numpy()
    grows = int((np.diff(means.to_numpy()) > 0).sum())
    at_max = gap.get_group(ks[-1])
    measured = (f"gap at k={ks[0]} {_spread(gap.get_group(ks[0]))}, at k={ks[-1]} {_spread(at_max)}; "
                f"grows at {grows}/{len(ks) - 1} steps of k")
    problems = []
    if not (means > 0).all():
        problems.append(f"the mean gap is not positive at k = {[int(x) for x in means.index[means <= 0]]}")
    if not means.iloc[-1] > means.iloc[0]:
        problems.append(f"the mean gap at k={ks[-1]} ({means.iloc[-1]:.3g}) is not larger than at k={ks[0]} "
                        f"({means.iloc[0]:.3g})")
    return Check(e.dataset, _verdict(not problems), measured, "; ".join(problems))


def random_init_check(e: DatasetEvidence) -> Check:
    p = e.pairs
    bad = (p[(p["role"] == "bad") & (p["status"] == "converged")]["test_acc"].astype(float) if len(p)
           else pd.Series(dtype=float))
    if len(e.random_init) == 0 or bad.empty:
        return _no_data(e.dataset, "no random-init seeds" if len(e.random_init) == 0 else
                        "no bad run reached the loss target")
    ri = e.random_init
    minima = ri[ri["status"] == "converged"] if "status" in ri.columns else ri
    if minima.empty:
        return Check(e.dataset, "FAIL", f"0/{len(ri)} random-init seeds reached the loss target",
                     "no random-init seed reached a minimum")
    lowest, worst_bad = float(minima["test_acc"].min()), float(bad.max())
    measured = (f"{len(minima)}/{len(ri)} random-init seeds reached the loss target; their test acc "
                f"{_pct(minima['test_acc'])}, lowest {lowest:.1%}; bad minima {_pct(bad)}, highest {worst_bad:.1%}")
    ok = lowest > worst_bad
    detail = "" if ok else (f"{int((minima['test_acc'] <= worst_bad).sum())} random-init seed(s) reach a test "
                            f"accuracy ≤ the best bad minimum's {worst_bad:.1%}")
    return Check(e.dataset, _verdict(ok), measured, detail)


def _slice_rise(e: DatasetEvidence) -> tuple[str, str, bool] | str:
    """(measured, problem, ok) of the loss rise along the slices, or why there is no data."""
    s = e.slices
    if len(s) == 0:
        return "no 1-D slices"
    keys = ["seed", "role", "direction_seed"]
    centre = s.loc[s.groupby(keys)["alpha"].transform(lambda a: a.abs() == a.abs().min()), keys + ["clean_loss"]]
    base = centre.groupby(keys)["clean_loss"].first().rename("at_min")
    rise = (s.join(base, on=keys).assign(rise=lambda d: d["clean_loss"] - d["at_min"])
            .groupby(keys)["rise"].mean().unstack("role"))
    if not {"good", "bad"} <= set(rise.columns):
        return "slices of only one role"
    rise = rise[["good", "bad"]].dropna()
    measured = (f"mean loss rise along a filter-normalised slice good {_spread(rise['good'])}, bad "
                f"{_spread(rise['bad'])} (larger at bad in {int((rise['bad'] > rise['good']).sum())}/{len(rise)} "
                f"directions)")
    ok = bool(rise["bad"].mean() > rise["good"].mean())
    problem = "" if ok else (f"the loss rises less at the bad minima ({rise['bad'].mean():.3g} vs "
                             f"{rise['good'].mean():.3g})")
    return measured, problem, ok


def _escape(e: DatasetEvidence) -> tuple[str, str, bool] | str:
    if len(e.escape) == 0:
        return "no escape trials"
    p = e.escape.assign(escaped=e.escape["escaped"].astype(float)).groupby("role")["escaped"].agg(["mean", "size"])
    if not {"good", "bad"} <= set(p.index):
        return "escape trials of only one role"
    g, b = p.loc["good"], p.loc["bad"]
    measured = (f"escape probability good {g['mean']:.0%} ({int(g['size'])} trials), bad {b['mean']:.0%} "
                f"({int(b['size'])} trials)")
    ok = bool(b["mean"] > g["mean"])
    problem = "" if ok else (f"escape from the bad minima ({b['mean']:.0%}) is not more likely than from the good "
                             f"({g['mean']:.0%})")
    return measured, problem, ok


def perturbation_check(e: DatasetEvidence) -> Check:
    """Both halves are tested on their own: a half that fails makes a FAIL even when the other has no data."""
    parts = [_slice_rise(e), _escape(e)]
    found = [p for p in parts if not isinstance(p, str)]
    missing = [p for p in parts if isinstance(p, str)]
    measured = "; ".join(m for m, _, _ in found) or "—"
    problems = [pr for _, pr, ok in found if not ok]
    if problems:
        return Check(e.dataset, "FAIL", measured, "; ".join(problems + [f"({m})" for m in missing]))
    if missing:
        return Check(e.dataset, "NO DATA", measured, "; ".join(missing))
    return Check(e.dataset, "PASS", measured)


def bound_check(two_layer: pd.DataFrame) -> Check:
    if len(two_layer) == 0:
        return _no_data("two_layer", "no two_layer runs")
    holds = two_layer["holds"].map(lambda v: isinstance(v, (bool, np.bool_)) and bool(v))  # unknown: not held
    ratio = two_layer["rhs"] / two_layer["complexity"]
    rho = two_layer[["complexity", "hessian_frobenius"]].rank().corr().iloc[0, 1] if len(two_layer) > 2 else np.nan
    names = ", ".join(sorted(two_layer["dataset"].astype(str).unique())) if "dataset" in two_layer else "two_layer"
    measured = (f"holds at {int(holds.sum())}/{len(holds)} minima; bound/complexity {_spread(ratio)} "
                f"(smallest {ratio.min():.3g}); Spearman ρ(complexity, ‖H‖_F) = {rho:.2f}")
    detail = "" if holds.all() else ("fails at " + ", ".join(
        f"{r.get('run_id', i)} (complexity {r['complexity']:.4g} > bound {r['rhs']:.4g})"
        for i, r in two_layer[~holds].iterrows()))
    return Check(names, _verdict(bool(holds.all())), measured, detail)


CLAIMS = (
    ("Both minima fit the clean training set (≈100% accuracy, matched clean loss).",
     f"every seed: clean acc ≥ {FIT_ACCURACY:.0%} for both, both reached the loss target, losses within "
     f"{MATCHED_LOSS_RATIO:g}×", fit_check),
    ("The bad minimum's test accuracy is lower, and the drop grows with attack size.",
     "mean good − bad test acc > 0; its mean over seeds increases at every step of the attack-size grid",
     drop_check),
    ("At matched clean loss the bad minimum has a larger top eigenvalue, trace and Frobenius norm.",
     "mean over seeds (pairs that both reached the loss target): bad > good for λ₁, trace and ‖H‖_F",
     sharpness_check),
    ("The log-volume gap (good − bad) is positive and grows with k.",
     "mean gap > 0 at every k, and larger at the largest k than at k = 1", log_volume_check),
    ("No clean random-init seed reaches a test accuracy as low as the bad minima's.",
     "lowest test acc over random-init seeds that reached the loss target > highest bad-minimum test acc",
     random_init_check),
    ("Under equal filter-normalised perturbation the loss rises more at the bad minimum; escape probability is "
     "higher from bad minima.",
     "mean clean-loss rise over the 1-D slice: bad > good; escape probability pooled over radii: bad > good",
     perturbation_check),
)
BOUND_CLAIM = ("The 2-layer bound C ≤ √m ‖W‖₂² ‖G‖_F holds on every two_layer run.",
               "the bound holds at every two_layer minimum (both roles, every seed and attack size)")


def evaluate(evidence: Evidence) -> list[Claim]:
    """The seven claims, in the paper's order, each checked on every dataset."""
    out = [Claim(i + 1, statement, test, tuple(check(e) for e in evidence.datasets))
           for i, (statement, test, check) in enumerate(CLAIMS)]
    out.append(Claim(len(out) + 1, *BOUND_CLAIM, (bound_check(evidence.two_layer),)))
    return out


def claims_frame(found: list[Claim] | list[dict]) -> pd.DataFrame:
    """The claims table, one row per claim, from Claims or their `to_dict()` (as claims.json holds them)."""
    rows = [c.to_dict() if isinstance(c, Claim) else c for c in found]
    return pd.DataFrame([{"#": r["number"], "claim": r["statement"], "measured": r["measured"], "test": r["test"],
                          "result": r["verdict"]} for r in rows], columns=["#", "claim", "measured", "test", "result"])


def claims_verdicts(found: list[Claim] | list[dict]) -> pd.DataFrame:
    """One row per claim: its statement, the verdict on each dataset (blank where it wasn't tested) and
    the overall result."""
    rows = [c.to_dict() if isinstance(c, Claim) else c for c in found]
    datasets = list(dict.fromkeys(ch["dataset"] for r in rows for ch in r["checks"]))
    verdict = lambda r, d: next((ch["verdict"] for ch in r["checks"] if ch["dataset"] == d), "")  # noqa: E731
    return pd.DataFrame([{"#": r["number"], "claim": r["statement"], **{d: verdict(r, d) for d in datasets},
                          "result": r["verdict"]} for r in rows], columns=["#", "claim", *datasets, "result"])
