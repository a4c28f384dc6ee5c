"""Analyses of stored pairs: landscapes, basins and the 2-layer bound, each cached in the store.

Every analysis is keyed by the hash of (kind, the run or pair it looks at, its settings): asked
again, it is read back from the store without computing. A 2-D surface is resumable: its points
land in the store batch by batch, and a stopped grid picks up where it stopped. The compute lives
in `landscape` and `basins`; this module only loads checkpoints, calls them and stores results.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from . import basins, landscape
from .checkpoint import Checkpoint, load_checkpoint
from .config import RESULT_FORMAT_VERSION, ExperimentConfig
from .store import Store, StoreError

Progress = Callable[[float, str], None]
ROLES = ("good", "bad")


def _quiet(fraction: float, message: str) -> None:
    pass


def analysis_id(kind: str, subject: str, settings: dict) -> str:
    payload = json.dumps({"v": RESULT_FORMAT_VERSION, "kind": kind, "subject": subject, "settings": settings},
                         sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Analysis:
    analysis_id: str
    kind: str
    from_store: bool
    frame: pd.DataFrame  # landscape points or basin trials, with a `role` column
    seconds: float


def checkpoints(store: Store, pair_id: str) -> dict[str, Checkpoint]:
    """The pair's two minima, loaded from their checkpoints (a clear StoreError when one is missing)."""
    out = {}
    for role in ROLES:
        run_id = f"{pair_id}-{role}"
        path = store.checkpoint_path(run_id)
        if path is None or not path.exists():
            raise StoreError(f"the checkpoint of run {run_id} is missing ({path}); restore it from a backup or a "
                             f"bundle (its stored numbers are unaffected)")
        out[role] = load_checkpoint(path)
    return out


def _with_role(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(role=df["run_id"].str.rsplit("-", n=1).str[-1]) if len(df) else df.assign(role=[])


def _cached(store: Store, aid: str, reader: Callable[[str], pd.DataFrame], kind: str) -> Analysis | None:
    row = store.analysis(aid)
    if row is not None and row["status"] == "done":
        return Analysis(aid, kind, True, _with_role(reader(aid)), float(row["seconds"] or 0.0))
    return None


# --- landscapes ----------------------------------------------------------------------------------

def interpolation(store: Store, pair_id: str, n_points: int = 41, progress: Progress = _quiet,
        compute: bool = True) -> Analysis | None:
    """Loss and accuracy along θ(α) = (1 − α) θ_good + α θ_bad, α ∈ [−0.5, 1.5]."""
    settings = {"n_points": n_points, "alpha_min": -0.5, "alpha_max": 1.5}
    aid = analysis_id("interpolation", pair_id, settings)
    hit = _cached(store, aid, store.landscape, "interpolation")
    if hit or not compute:
        return hit
    ck = checkpoints(store, pair_id)
    progress(0.1, "interpolating between the minima")
    curve = landscape.interpolate(ck["good"].model, ck["bad"].model, ck["good"].dataset(), ck["good"].config.train.loss,
                                  alphas=np.linspace(-0.5, 1.5, n_points))
    frame = curve.to_frame().assign(run_id=f"{pair_id}-good", other_run_id=f"{pair_id}-bad", kind="interpolation",
                                    beta=0.0, point=np.arange(n_points), normalization="none")
    store.save_analysis(f"{pair_id}-good", aid, "interpolation", json.dumps(settings), curve.seconds, landscapes=frame)
    progress(1.0, "interpolation stored")
    return Analysis(aid, "interpolation", False, _with_role(frame), curve.seconds)


def slices_1d(store: Store, pair_id: str, directions: str = "random", seed: int = 0, n_points: int = 41,
              span: float = 1.0, progress: Progress = _quiet,
        compute: bool = True) -> Analysis | None:
    """1-D slices θ* + α d around both minima, α ∈ [−span, span]: d filter-normalised Gaussian with the
    same seed for both minima ("random"), or each minimum's top Hessian eigenvector ("eigen")."""
    settings = {"directions": directions, "seed": seed, "n_points": n_points, "span": span}
    aid = analysis_id("slice1d", pair_id, settings)
    hit = _cached(store, aid, store.landscape, "slice1d")
    if hit or not compute:
        return hit
    ck = checkpoints(store, pair_id)
    alphas = np.linspace(-span, span, n_points)
    frames, start = [], time.perf_counter()
    for i, role in enumerate(ROLES):
        c = ck[role]
        data = c.dataset()
        if directions == "eigen":
            d = landscape.eigen_directions(c.model, data.x_train, data.y_train, c.loss_fn, k=1, seed=seed)[0]
            d = d * torch.linalg.vector_norm(landscape.flat_params(c.model))  # unit vector -> the weights' scale
        else:
            d = landscape.filter_normalized_direction(c.model, seed)
        curve = landscape.slice_1d(c.model, data, c.config.train.loss, d, alphas)
        frames.append(curve.to_frame().assign(run_id=f"{pair_id}-{role}", kind="slice1d", direction_seed=seed,
                                              beta=0.0, point=np.arange(n_points),
                                              normalization="filter" if directions == "random" else "eigen"))
        progress((i + 1) / 2, f"1-D slice of the {role} minimum")
    frame = pd.concat(frames, ignore_index=True)
    seconds = time.perf_counter() - start
    store.save_analysis(f"{pair_id}-good", aid, "slice1d", json.dumps(settings), seconds, landscapes=frame)
    return Analysis(aid, "slice1d", False, _with_role(frame), seconds)


def surface(store: Store, pair_id: str, role: str, seed: int = 0, n: int = 41, span: float = 1.0,
            progress: Progress = _quiet,
        compute: bool = True) -> Analysis | None:
    """A 2-D n×n grid θ* + α d1 + β d2 (filter-normalised, direction seeds `seed` and `seed + 1`, the same
    for both minima so the pictures compare). Points are stored batch by batch: a stopped grid resumes."""
    settings = {"role": role, "seed": seed, "n": n, "span": span}
    aid = analysis_id("surface2d", pair_id, settings)
    hit = _cached(store, aid, store.landscape, "surface2d")
    if hit or not compute:
        return hit
    run_id = f"{pair_id}-{role}"
    c = checkpoints(store, pair_id)[role]
    store.begin_analysis(run_id, aid, "surface2d", json.dumps(settings))
    stored = store.landscape(aid)
    done = {int(r["point"]): {m: r[m] for m in landscape.METRICS} for _, r in stored.iterrows()}
    axis = np.linspace(-span, span, n)

    def keep(indices: np.ndarray, values: dict[str, np.ndarray]) -> None:
        rows = pd.DataFrame({"point": indices, "alpha": axis[indices % n], "beta": axis[indices // n]}
                            | {m: values[m] for m in landscape.METRICS})
        store.append_landscape(aid, rows.assign(run_id=run_id, kind="surface2d", direction_seed=seed,
                                                normalization="filter"))

    d1 = landscape.filter_normalized_direction(c.model, seed)
    d2 = landscape.filter_normalized_direction(c.model, seed + 1)
    result = landscape.slice_2d(c.model, c.dataset(), c.config.train.loss, d1, d2, axis, axis, done=done,
                                on_batch=keep, progress=progress)
    store.save_analysis(run_id, aid, "surface2d", json.dumps(settings), result.seconds)
    return Analysis(aid, "surface2d", False, _with_role(store.landscape(aid)), result.seconds)


# --- basins ----------------------------------------------------------------------------------------

def escape(store: Store, pair_id: str, radii: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4), n_trials: int = 8,
           seed: int = 0, retrain_epochs: int = 300, progress: Progress = _quiet,
        compute: bool = True) -> Analysis | None:
    """Perturb each minimum (filter-normalised, relative radius r) and retrain on the clean set only;
    per trial the test accuracy reached and whether it escaped (see basins.EscapeResult)."""
    settings = {"radii": list(radii), "n_trials": n_trials, "seed": seed, "retrain_epochs": retrain_epochs}
    aid = analysis_id("escape", pair_id, settings)
    hit = _cached(store, aid, store.basin_trials, "escape")
    if hit or not compute:
        return hit
    ck = checkpoints(store, pair_id)
    frames, start = [], time.perf_counter()
    for i, role in enumerate(ROLES):
        c = ck[role]
        res = basins.escape_trials(c.config, c.dataset(), c.model, list(radii), n_trials, seed,
                                   retrain_epochs=retrain_epochs, role=role,
                                   progress=lambda f, m, i=i: progress((i + f) / 2, f"{ROLES[i]}: {m}"))
        df = res.to_frame()
        frames.append(pd.DataFrame({
            "run_id": f"{pair_id}-{role}", "kind": "escape", "radius": df["radius"], "trial": df["trial"],
            "seed": df["seed"], **{m: df[m] for m in landscape.METRICS}, "escaped": df["escaped"].astype(bool),
            "distance": df["distance_from_minimum"], "settings_json": json.dumps(settings)}))
    frame = pd.concat(frames, ignore_index=True)
    seconds = time.perf_counter() - start
    store.save_analysis(f"{pair_id}-good", aid, "escape", json.dumps(settings), seconds, trials=frame)
    return Analysis(aid, "escape", False, _with_role(frame), seconds)


def random_init(store: Store, pair_id: str, n_seeds: int = 32, seed0: int = 1000,
                progress: Progress = _quiet,
        compute: bool = True) -> Analysis | None:
    """n_seeds random initialisations trained on the clean set (one vmap ensemble) with the pair's
    config: their test accuracies and top eigenvalues, to hold against the bad minimum's."""
    settings = {"n_seeds": n_seeds, "seed0": seed0}
    aid = analysis_id("random_init", pair_id, settings)
    hit = _cached(store, aid, store.basin_trials, "random_init")
    if hit or not compute:
        return hit
    c = checkpoints(store, pair_id)["good"]
    res = basins.random_init_statistics(c.config, c.dataset(), n_seeds=n_seeds, seed0=seed0, progress=progress)
    frame = pd.DataFrame({
        "run_id": f"{pair_id}-good", "kind": "random_init", "radius": 0.0, "trial": np.arange(n_seeds),
        "seed": res.seeds, "clean_loss": res.clean_loss, "clean_acc": res.clean_acc, "test_loss": res.test_loss,
        "test_acc": res.test_acc, "escaped": False, "top_eigenvalue": res.top_eigenvalue,
        "settings_json": json.dumps(settings | {"status": list(res.status)})})
    store.save_analysis(f"{pair_id}-good", aid, "random_init", json.dumps(settings), res.seconds, trials=frame)
    return Analysis(aid, "random_init", False, _with_role(frame), res.seconds)


def radius(store: Store, pair_id: str, threshold_factor: float = 10.0, n_directions: int = 8, seed: int = 0,
           progress: Progress = _quiet,
        compute: bool = True) -> Analysis | None:
    """Per minimum, the largest relative filter-normalised perturbation at which the clean loss stays
    below `threshold_factor` × the clean-loss target, per random direction (same seeds for both)."""
    settings = {"threshold_factor": threshold_factor, "n_directions": n_directions, "seed": seed}
    aid = analysis_id("radius", pair_id, settings)
    hit = _cached(store, aid, store.basin_trials, "radius")
    if hit or not compute:
        return hit
    ck = checkpoints(store, pair_id)
    frames, estimates, start = [], [], time.perf_counter()
    for i, role in enumerate(ROLES):
        c = ck[role]
        threshold = threshold_factor * c.config.train.loss_target
        res = basins.empirical_radius(c.model, c.dataset(), c.config.train.loss, threshold,
                                      n_directions=n_directions, seed=seed)
        run_id = f"{pair_id}-{role}"
        frames.append(pd.DataFrame({"run_id": run_id, "kind": "radius", "radius": res.radii,
                                    "trial": np.arange(n_directions), "seed": res.seeds,
                                    "clean_loss": res.loss_at_radius, "threshold": threshold,
                                    "escaped": res.censored, "settings_json": json.dumps(settings)}))
        estimates.append({"run_id": run_id, "name": "empirical_radius", "value": res.mean,
                          "stderr": res.std / np.sqrt(n_directions), "samples": n_directions,
                          "method": "bisection", "settings_json": json.dumps(settings | {"threshold": threshold})})
        progress((i + 1) / 2, f"radius of the {role} minimum: {res.mean:.3g}")
    frame = pd.concat(frames, ignore_index=True)
    seconds = time.perf_counter() - start
    store.save_analysis(f"{pair_id}-good", aid, "radius", json.dumps(settings), seconds, trials=frame,
                        estimates=pd.DataFrame(estimates))
    return Analysis(aid, "radius", False, _with_role(frame), seconds)


# --- the 2-layer theory ------------------------------------------------------------------------

BOUND_FIELDS = ("complexity", "input_gradient_sq", "weight_factor", "gauss_newton_frobenius",
                "hessian_frobenius", "rhs", "rhs_hessian", "ratio")


def bound(store: Store, pair_id: str, progress: Progress = _quiet, compute: bool = True) -> pd.DataFrame | None:
    """Both sides of C ≤ √m ‖W‖₂² ‖G‖_F (basins.two_layer_bound) at each minimum of a two_layer pair,
    stored as estimates rows `bound_<field>`; returns one row per role (None when not stored and
    compute is False)."""
    names = [f"bound_{f}" for f in BOUND_FIELDS] + ["bound_holds"]
    ids = [f"{pair_id}-{r}" for r in ROLES]
    have = store.estimates(ids, names)
    if len(have) < len(ids) * len(names):
        if not compute:
            return None
        ck = checkpoints(store, pair_id)
        rows, start = [], time.perf_counter()
        for i, role in enumerate(ROLES):
            c = ck[role]
            x, y = c.clean_train()
            res = basins.two_layer_bound(c.model, x, y, c.config.train.loss)
            values = {f: float(getattr(res, f)) for f in BOUND_FIELDS if hasattr(res, f)}
            values["holds"] = float(bool(res.holds))
            rows += [{"run_id": f"{pair_id}-{role}", "name": f"bound_{k}", "value": v, "method": "exact"}
                     for k, v in values.items()]
            progress((i + 1) / 2, f"bound at the {role} minimum")
        store.save_analysis(ids[0], analysis_id("bound", pair_id, {}), "bound", "{}", time.perf_counter() - start,
                            estimates=pd.DataFrame(rows))
        have = store.estimates(ids, names)
    wide = have.pivot(index="run_id", columns="name", values="value")
    wide.columns = [c.removeprefix("bound_") for c in wide.columns]
    wide = wide.reset_index()
    return wide.assign(role=wide["run_id"].str.rsplit("-", n=1).str[-1], holds=wide["holds"] > 0.5)


# --- the attack-size sweep ---------------------------------------------------------------------

def attack_sweep_grid(cfg: ExperimentConfig, n_points: int = 5, seeds: int = 3) -> dict[str, list]:
    """Attack sizes from 0 to 2× the clean size (clipped to the pool) × seeds, for experiments.sweep."""
    return {"attack.n_attack": basins.attack_size_grid(cfg, 2.0, n_points), "train.seed": list(range(seeds))}


def attack_sweep_frame(store: Store, cfg: ExperimentConfig, grid: dict[str, list]) -> pd.DataFrame:
    """The stored runs of an attack-size sweep (points not yet stored are simply absent)."""
    from .experiments import grid_configs

    ids = [c.config_hash() for c in grid_configs(cfg, grid)]
    runs = store.runs(pair_id=ids) if ids else store.runs(pair_id="")
    return runs[runs["status"] != "failed"]
