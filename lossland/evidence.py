"""Reading a reproduction back from the store: `collect(plan, store)` -> the claims' Evidence, tested, and
the frames of the report's figures. What isn't stored is simply absent (its claim says NO DATA).

Derived here, from stored numbers only: the log-volume over the whole spectrum at each ε of
claims.LOG_VOLUME_EPS — exactly from the stored eigenvalues where the dense Hessian was built, else from
the stored SLQ quadrature (lanczos.slq_logdet, with its standard error) — and the negative control of
each dataset: its main pairs' good runs against the good runs of the sweep's pairs (other seeds,
trained on the clean set only), relabelled "good" and "bad" and paired seed by seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from . import analyses, claims
from .config import ExperimentConfig
from .frames import density_frame
from .lanczos import DensityResult, log_volume, slq_logdet
from .pairs import role_of
from .robustness import Robustness, robustness
from .specs import CURVE_FIT, BoundSpec, Spec
from .store import PairView, Store

if TYPE_CHECKING:
    from .plan import Plan

ROBUSTNESS_EPS = 1e-3  # the log-volume's ε in the optimizer grid


@dataclass(frozen=True, eq=False)
class DatasetResults:
    """One dataset's evidence for the claims, and the frames its figures draw."""

    dataset: str
    config: ExperimentConfig  # the first seed's main config
    pair_ids: tuple[str, ...]  # the main pairs, one per seed
    control_ids: tuple[str, ...]  # the pairs whose good runs are the control's "bad" minima
    evidence: claims.DatasetEvidence
    spectra: pd.DataFrame  # main pairs' top eigenvalues: seed, role, idx, eigenvalue
    density: pd.DataFrame  # first seed's pair: x, density, role
    interpolation: pd.DataFrame  # first seed's pair
    surfaces: pd.DataFrame  # first seed's pair, both roles: role, alpha, beta, clean_loss
    escape_search: pd.DataFrame = field(default_factory=pd.DataFrame)  # first seed's pair: its trials
    trajectory: pd.DataFrame = field(default_factory=pd.DataFrame)  # first seed's pair: path_analyses' frame


@dataclass(frozen=True, eq=False)
class Reproduction:
    plan: Plan
    datasets: tuple[DatasetResults, ...]
    two_layer: pd.DataFrame  # the claim's minima and its control (column `state`)
    claims: tuple[claims.Claim, ...]
    robustness: Robustness
    curve_fit: pd.DataFrame  # Figure 1 (fitting.CurveFitResult.to_frame()), empty when not computed
    bound: pd.DataFrame  # the identity check C_Λ ≤ √m‖W‖₂²‖G‖_F at each two_layer minimum
    skipped: tuple[tuple[str, str], ...] = ()
    seconds: float = 0.0
    computed: int = 0  # steps that computed something; 0: everything came from the store
    machine: str = ""
    code: str = ""  # lossland version and git commit that produced it
    started: str = ""  # UTC, ISO 8601


def _stored(store: Store, pair_id: str, spec: Spec) -> pd.DataFrame:
    a = analyses.get(store, pair_id, spec)
    return a.frame if a is not None else pd.DataFrame()


def _cat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    kept = [f for f in frames if len(f)]
    return pd.concat(kept, ignore_index=True) if kept else pd.DataFrame()


def _per_pair(store: Store, configs: list[ExperimentConfig], spec: Spec) -> pd.DataFrame:
    """An analysis of each pair, its rows tagged with the pair's model seed (pairs without it left out)."""
    found = analyses.get_many(store, [c.config_hash() for c in configs], spec)
    return _cat([found[c.config_hash()].frame.assign(seed=c.model.seed) for c in configs if c.config_hash() in found])


def views(store: Store, configs: list[ExperimentConfig]) -> dict[str, PairView]:
    """Everything stored for each pair of `configs` that is stored, by pair id."""
    ids = [c.config_hash() for c in configs]
    runs = store.runs(pair_id=ids) if ids else pd.DataFrame()
    have = set(runs["pair_id"]) if len(runs) else set()
    return {pid: store.pair(pid) for pid in dict.fromkeys(ids) if pid in have}


# --- runs and their measures ---------------------------------------------------------------------

def measured_runs(store: Store, configs: list[ExperimentConfig], sharpness: Spec) -> pd.DataFrame:
    """The stored runs of the pairs, with the exact trace and ‖H‖_F² where the dense Hessian was built and
    the adaptive sharpness where it was measured."""
    ids = [c.config_hash() for c in configs]
    runs = store.runs(pair_id=ids) if ids else pd.DataFrame()
    if len(runs) == 0:
        return runs
    runs = runs.assign(seed=runs["seed"].astype(int))
    exact = store.estimates(runs["run_id"], ["trace_exact", "frobenius_sq_exact"])
    if len(exact):
        wide = exact.pivot_table(index="run_id", columns="name", values="value", aggfunc="first")
        for name, column in (("trace_exact", "trace"), ("frobenius_sq_exact", "frobenius_sq")):
            if name in wide.columns:
                runs[column] = runs["run_id"].map(wide[name]).fillna(runs[column])
    sharp = _cat([a.frame for a in analyses.get_many(store, ids, sharpness).values()])
    runs["adaptive_sharpness"] = (runs["run_id"].map(sharp.set_index("run_id")["adaptive"]) if len(sharp)
                                  else np.nan)
    return runs


def _density(part: pd.DataFrame, n_params: int) -> DensityResult:
    nodes = part.pivot(index="vector", columns="idx", values="node").to_numpy()
    weights = part.pivot(index="vector", columns="idx", values="weight").fillna(0.0).to_numpy()
    return DensityResult(nodes=np.nan_to_num(nodes), weights=weights, n_params=n_params, hvps=0, seconds=0.0)


def log_volumes(stored: dict[str, PairView], configs: list[ExperimentConfig],
                eps_values=claims.LOG_VOLUME_EPS) -> pd.DataFrame:
    """−½ Σ log(max(λ, 0) + ε) over the whole spectrum of each run of the stored pairs: exact where its
    eigenvalues are all stored, else from its SLQ quadrature (stderr from the spread over the random vectors)."""
    rows = []
    for cfg in configs:
        view = stored.get(cfg.config_hash())
        if view is None:
            continue
        for run in view.runs.itertuples():
            exact = view.spectra[(view.spectra["run_id"] == run.run_id) & (view.spectra["kind"] == "exact")]
            dens = view.densities[view.densities["run_id"] == run.run_id]
            n = int(run.n_params) if pd.notna(run.n_params) else 0
            for eps in eps_values:
                if len(exact) and len(exact) == n:
                    value, stderr, method = log_volume(exact["eigenvalue"], eps), 0.0, "exact"
                elif len(dens) and n:
                    est = slq_logdet(_density(dens, n), eps)
                    value, stderr, method = -0.5 * est.value, 0.5 * est.stderr, "SLQ"
                else:
                    continue
                rows.append({"run_id": run.run_id, "seed": cfg.model.seed, "role": run.role, "eps": eps,
                             "value": value, "stderr": stderr, "method": method})
    return pd.DataFrame(rows)


# --- one dataset and its control -----------------------------------------------------------------

def _as_control(main: pd.DataFrame, other: pd.DataFrame, seeds: dict[int, int]) -> pd.DataFrame:
    """The control's frame: the main pairs' good rows, and the other seeds' good rows as "bad", each
    given the main seed it is paired with (`seeds`: other seed -> main seed)."""
    if len(main) == 0 or len(other) == 0:
        return pd.DataFrame()
    good = main[(main["role"] == "good") & main["seed"].isin(list(seeds.values()))]
    bad = other[(other["role"] == "good") & other["seed"].isin(list(seeds))]
    return pd.concat([good, bad.assign(role="bad", seed=bad["seed"].map(seeds))], ignore_index=True)


def _random_init(store: Store, pair_id: str, spec: Spec) -> pd.DataFrame:
    ri = _stored(store, pair_id, spec)
    if len(ri):
        status = json.loads(ri["settings_json"].iloc[0]).get("status")
        ri = ri.assign(status=list(status) if status else "converged")
    return ri


def dataset_evidence(plan: Plan, store: Store, name: str, base: ExperimentConfig
                     ) -> tuple[claims.DatasetEvidence, dict[str, PairView]]:
    """The dataset's evidence, with its control, and the stored pairs it was read from."""
    mains, controls = plan.main_configs(base), plan.control_configs(base)
    sweep_cfgs = [c for cs in plan.sweep_configs(base).values() for c in cs]
    sweep = measured_runs(store, sweep_cfgs, plan.sharpness)
    main_ids = {c.config_hash() for c in mains}
    pairs = sweep[sweep["pair_id"].isin(main_ids)] if len(sweep) else sweep
    other = sweep[sweep["pair_id"].isin({c.config_hash() for c in controls})] if len(sweep) else sweep
    stored = views(store, mains + controls)
    frames = {"log_volume": (log_volumes(stored, mains), log_volumes(stored, controls)),
              "slices": (_cat([_per_pair(store, mains, s) for s in plan.slices]),
                         _cat([_per_pair(store, controls, s) for s in plan.slices])),
              "escape": (_per_pair(store, mains, plan.escape), _per_pair(store, controls, plan.escape))}
    random_init = _random_init(store, mains[0].config_hash(), plan.random_init)
    chance = 1.0 / base.data.n_classes()
    seeds = {c.model.seed: m.model.seed for c, m in zip(controls, mains, strict=False)}
    control_pairs = _as_control(pairs, other, seeds)
    control = claims.DatasetEvidence(  # no sweep of its own: one size, and no chance level to approach
        f"{name} control", control_pairs, control_pairs, random_init=random_init,
        **{k: _as_control(m, o, seeds) for k, (m, o) in frames.items()})
    return claims.DatasetEvidence(name, pairs, sweep, random_init=random_init, chance=chance, control=control,
                                  **{k: m for k, (m, _) in frames.items()}), stored


def collect_dataset(plan: Plan, store: Store, name: str, base: ExperimentConfig) -> DatasetResults:
    """Everything stored for one dataset of the plan."""
    mains, controls = plan.main_configs(base), plan.control_configs(base)
    evidence, stored = dataset_evidence(plan, store, name, base)
    first = mains[0].config_hash()
    spectra, density, interpolation = [], pd.DataFrame(), pd.DataFrame()
    for cfg in mains:
        if cfg.config_hash() in stored:
            s = stored[cfg.config_hash()].spectra
            spectra.append(s[s["kind"] == "lanczos"].assign(role=s["run_id"].map(role_of), seed=cfg.model.seed)[
                ["seed", "role", "idx", "eigenvalue"]])
    if first in stored:
        v = stored[first]
        density = density_frame(v.densities, v.runs, base.spectrum.sigma)
        interpolation = _stored(store, first, plan.interpolation)
    return DatasetResults(name, mains[0], tuple(c.config_hash() for c in mains),
                          tuple(c.config_hash() for c in controls), evidence, _cat(spectra), density, interpolation,
                          _cat([_stored(store, first, spec) for spec in plan.surfaces]),
                          **{k: _stored(store, first, spec) for k, spec in (("escape_search", plan.escape_search),
                                                                           ("trajectory", plan.trajectory)) if spec})


# --- the optimizer grid, the two_layer networks ---------------------------------------------------

def robustness_runs(plan: Plan, store: Store) -> pd.DataFrame:
    """Every setting's runs (the main pairs of each dataset are one setting), with the log-volume at
    ROBUSTNESS_EPS, for robustness.robustness."""
    frames = []
    for name, base in plan.bases:
        mains = plan.main_configs(base)
        b = mains[0]
        groups = {f"{name} {b.data.n_train}+{b.attack.n_attack}: {b.train.optimizer} lr {b.train.lr:g} "
                  "(main pairs)": mains}
        for setting, cfgs in plan.robustness_configs(base).items():
            groups[f"{name} {cfgs[0].data.n_train}+{cfgs[0].attack.n_attack}: {setting}"] = cfgs
        for label, cfgs in groups.items():
            runs = measured_runs(store, cfgs, plan.sharpness)
            lv = log_volumes(views(store, cfgs), cfgs, (ROBUSTNESS_EPS,))
            if len(runs):
                lv_of = lv.set_index("run_id")["value"] if len(lv) else pd.Series(dtype=float)
                frames.append(runs.assign(setting=label, log_volume=runs["run_id"].map(lv_of)))
    return _cat(frames)


def collect_two_layer(plan: Plan, store: Store) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the 2-layer minima and, state "untrained", their initial networks; the identity check)."""
    rows, bound, cfgs = [], [], plan.two_layer_configs()
    ids = [c.config_hash() for c in cfgs]
    runs = store.runs(pair_id=ids) if ids else pd.DataFrame()
    status = runs.set_index("run_id")["status"] if len(runs) else pd.Series(dtype=str)
    measured = analyses.get_many(store, ids, plan.two_layer_spec)
    checked = analyses.get_many(store, [c.config_hash() for c in cfgs], BoundSpec())
    for cfg in cfgs:
        pid = cfg.config_hash()
        tags = {"width": cfg.model.widths[0], "seed": cfg.model.seed, "n_attack": cfg.attack.n_attack}
        m = measured[pid].frame if pid in measured else pd.DataFrame()
        b = checked[pid].frame if pid in checked else pd.DataFrame()
        if len(b):
            bound.append(b.assign(dataset=cfg.data.name, **tags))
        for r in m.to_dict("records") if len(m) else ():
            rows.append(_two_layer_row(r, "", tags, r["role"], "trained"))
            if r["role"] == "good":
                rows.append(_two_layer_row(r, "untrained_", tags, "good", "untrained"))
                rows.append(_two_layer_row(r, "untrained_random_", tags, "bad", "untrained"))
    frame = pd.DataFrame(rows)
    if len(frame):  # a good run, and the untrained network, are the same at every attack size of a width and seed
        once = (frame["role"] == "good") | (frame["state"] == "untrained")
        frame = pd.concat([frame[once].drop_duplicates(["state", "role", "width", "seed"]).assign(n_attack=0),
                           frame[~once]], ignore_index=True)
        frame["status"] = np.where(frame["state"] == "trained", frame["run_id"].map(status), "untrained")
    return frame, _cat(bound)


def _two_layer_row(r: dict, prefix: str, tags: dict, role: str, state: str) -> dict:
    """The complexity over held-out inputs (the input distribution) where measured, else over the training inputs."""
    held = r.get(f"{prefix}complexity_heldout", np.nan)
    return {**tags, "role": role, "state": state, "labels": "random" if "random" in prefix else "true",
            "complexity": held if pd.notna(held) else r.get(f"{prefix}complexity", np.nan),
            "complexity_train": r.get(f"{prefix}complexity", np.nan),
            "hessian_frobenius": r.get(f"{prefix}hessian_frobenius", np.nan),
            "top_eigenvalue": r.get(f"{prefix}top_eigenvalue", np.nan), "run_id": r.get("run_id", "")}


def collect(plan: Plan, store: Store) -> tuple:
    """Read every result of the plan back from the store and test the claims on it: (datasets, two_layer,
    claims, robustness, curve_fit, bound), the fields of Reproduction after the plan."""
    datasets = tuple(collect_dataset(plan, store, name, base) for name, base in plan.bases)
    two_layer, bound = collect_two_layer(plan, store)
    trained = (two_layer[(two_layer["state"] == "trained") & (two_layer["status"] == "converged")] if len(two_layer)
               else two_layer)  # minima: runs that reached the loss target
    untrained = two_layer[two_layer["state"] == "untrained"] if len(two_layer) else two_layer
    found = claims.evaluate(claims.Evidence(tuple(d.evidence for d in datasets), trained, untrained))
    fit = analyses.get(store, CURVE_FIT, plan.curve_fit) if plan.curve_fit is not None else None
    return (datasets, two_layer, tuple(found), robustness(robustness_runs(plan, store)),
            fit.frame if fit is not None else pd.DataFrame(), bound)
