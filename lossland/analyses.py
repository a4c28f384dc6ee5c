"""Analyses of stored pairs: landscapes, basins and the 2-layer bound, each cached in the store.

An analysis is a spec (`lossland.specs`) applied to a pair; its id is the spec's hash with the pair.
`get` reads a stored analysis back and never computes; `compute` returns the stored one or computes
and stores it; `stored` lists the specs of a kind the store holds for a pair, most recent first (so
a page shows what `reproduce` computed, whatever its settings). A 2-D surface is resumable: its
points land in the store batch by batch, and a stopped grid picks up where it stopped. The compute
lives in `landscape` and `basins`; this module only loads checkpoints, calls them and stores results.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from . import basins, figure1, landscape, path_analyses
from .checkpoint import Checkpoint, load_checkpoint
from .config import ConfigError
from .curvature import adaptive_sharpness
from .data import attack_labels
from .frames import with_run_roles
from .layers import layer_curvature
from .models import build_model
from .pairs import ROLES, Progress, quiet, role_of, run_id, run_ids, scaled
from .specs import (
    BoundSpec,
    CurveFitSpec,
    EscapeSearchSpec,
    EscapeSpec,
    InterpolationSpec,
    LayerSpec,
    RadiusSpec,
    RandomInitSpec,
    SharpnessSpec,
    SliceSpec,
    Spec,
    SurfaceSpec,
    TrajectorySpec,
    TwoLayerSpec,
    from_stored,
)
from .store import Store, StoreError


@dataclass(frozen=True)
class Analysis:
    spec: Spec
    analysis_id: str
    from_store: bool
    frame: pd.DataFrame  # landscape points, basin trials or (bound) one row per minimum, with a `role` column
    seconds: float

    @property
    def kind(self) -> str:
        return self.spec.kind


def get(store: Store, pair_id: str, spec: Spec) -> Analysis | None:
    """The stored analysis `spec` of the pair, or None when the store does not hold it complete."""
    aid = spec.analysis_id(pair_id)
    row = store.analysis(aid)
    if row is None or row["status"] != "done":
        return None
    frame = _READERS[spec.kind](store, pair_id, aid)
    return None if frame is None else Analysis(spec, aid, True, frame, float(row["seconds"] or 0.0))


def get_many(store: Store, pair_ids, spec: Spec) -> dict[str, Analysis]:
    """The stored analyses `spec` of many pairs, by pair id (those not stored complete are absent): one
    query for their status, and for the kinds kept as estimates one query for all their rows."""
    ids = list(dict.fromkeys(pair_ids))
    if not ids:
        return {}
    runs = [r for pid in ids for r in run_ids(pid)]
    rows = store.analyses(runs, spec.kind)
    done = {r.analysis_id: float(r.seconds or 0.0) for r in rows.itertuples() if r.status == "done"}
    prefix = _ESTIMATE_PREFIX.get(spec.kind)
    have = store.estimates(runs) if prefix is not None else None
    out = {}
    for pid in ids:
        aid = spec.analysis_id(pid)
        if aid not in done:
            continue
        if have is not None:
            frame = _estimates_wide(have[have["run_id"].isin(run_ids(pid))], prefix)
        else:
            frame = _READERS[spec.kind](store, pid, aid)
        if frame is not None:
            out[pid] = Analysis(spec, aid, True, frame, done[aid])
    return out


def compute(store: Store, pair_id: str, spec: Spec, progress: Progress = quiet) -> Analysis:
    """The stored analysis `spec` of the pair, or — when it isn't stored — computed now and stored."""
    hit = get(store, pair_id, spec)
    return hit if hit is not None else _COMPUTE[spec.kind](store, pair_id, spec, progress)


def stored(store: Store, pair_id: str, kind: str) -> list[Spec]:
    """The specs of the `kind` analyses stored complete for the pair, most recent first."""
    rows = store.analyses(run_ids(pair_id), kind)
    out: list[Spec] = []
    for r in rows[rows["status"] == "done"].itertuples(index=False):
        try:
            spec = from_stored(kind, r.settings_json)
        except ConfigError:
            continue  # settings this version of lossland can't read: not an analysis `get` can find
        if spec.analysis_id(pair_id) == r.analysis_id and spec not in out:
            out.append(spec)
    return out


def checkpoints(store: Store, pair_id: str) -> dict[str, Checkpoint]:
    """The pair's two minima, loaded from their checkpoints (a clear StoreError when one is missing)."""
    out = {}
    for role in ROLES:
        rid = run_id(pair_id, role)
        path = store.checkpoint_path(rid)
        if path is None or not path.exists():
            raise StoreError(f"the checkpoint of run {rid} is missing ({path}); restore it from a backup or a "
                             f"bundle (its stored numbers are unaffected)")
        out[role] = load_checkpoint(path)
    return out


def _with_role(df: pd.DataFrame) -> pd.DataFrame:
    return with_run_roles(df)


def _save(store: Store, pair_id: str, spec: Spec, seconds: float, **rows: pd.DataFrame) -> Analysis:
    """Store a finished analysis (owned by the good run) and return it as computed."""
    aid = spec.analysis_id(pair_id)
    store.save_analysis(run_id(pair_id, "good"), aid, spec.kind, spec.to_json(), seconds, **rows)
    return Analysis(spec, aid, False, _READERS[spec.kind](store, pair_id, aid), seconds)


# --- landscapes ----------------------------------------------------------------------------------

def _interpolation(store: Store, pair_id: str, spec: InterpolationSpec, progress: Progress) -> Analysis:
    """Loss and accuracy along θ(α) = (1 − α) θ_good + α θ_bad."""
    ck = checkpoints(store, pair_id)
    progress(0.1, "interpolating between the minima")
    curve = landscape.interpolate(ck["good"].model, ck["bad"].model, ck["good"].dataset(), ck["good"].config.train.loss,
                                  alphas=np.linspace(spec.alpha_min, spec.alpha_max, spec.n_points))
    frame = curve.to_frame().assign(run_id=run_id(pair_id, "good"), other_run_id=run_id(pair_id, "bad"),
                                    kind=spec.kind, beta=0.0, point=np.arange(spec.n_points), normalization="none")
    done = _save(store, pair_id, spec, curve.seconds, landscapes=frame)
    progress(1.0, "interpolation stored")
    return done


def _slices(store: Store, pair_id: str, spec: SliceSpec, progress: Progress) -> Analysis:
    """1-D slices around both minima (see SliceSpec)."""
    ck = checkpoints(store, pair_id)
    alphas = np.linspace(-spec.span, spec.span, spec.n_points)
    frames, start = [], time.perf_counter()
    for i, role in enumerate(ROLES):
        c = ck[role]
        data = c.dataset()
        if spec.directions == "eigen":
            d = landscape.eigen_directions(c.model, data.x_train, data.y_train, c.loss_fn, k=1, seed=spec.seed)[0]
            d = d * torch.linalg.vector_norm(landscape.flat_params(c.model))  # unit vector -> the weights' scale
        else:
            d = landscape.filter_normalized_direction(c.model, spec.seed)
        curve = landscape.slice_1d(c.model, data, c.config.train.loss, d, alphas)
        frames.append(curve.to_frame().assign(run_id=run_id(pair_id, role), kind=spec.kind, direction_seed=spec.seed,
                                              beta=0.0, point=np.arange(spec.n_points),
                                              normalization="filter" if spec.directions == "random" else "eigen"))
        progress((i + 1) / len(ROLES), f"1-D slice of the {role} minimum")
    return _save(store, pair_id, spec, time.perf_counter() - start, landscapes=pd.concat(frames, ignore_index=True))


def _surface(store: Store, pair_id: str, spec: SurfaceSpec, progress: Progress) -> Analysis:
    """A 2-D grid around one minimum (see SurfaceSpec), stored batch by batch: a stopped grid resumes."""
    aid, rid = spec.analysis_id(pair_id), run_id(pair_id, spec.role)
    c = checkpoints(store, pair_id)[spec.role]
    store.begin_analysis(rid, aid, spec.kind, spec.to_json())
    done = {int(r["point"]): {m: r[m] for m in landscape.METRICS} for _, r in store.landscape(aid).iterrows()}
    axis = np.linspace(-spec.span, spec.span, spec.n)

    def keep(indices: np.ndarray, values: dict[str, np.ndarray]) -> None:
        rows = pd.DataFrame({"point": indices, "alpha": axis[indices % spec.n], "beta": axis[indices // spec.n]}
                            | {m: values[m] for m in landscape.METRICS})
        store.append_landscape(aid, rows.assign(run_id=rid, kind=spec.kind, direction_seed=spec.seed,
                                                normalization="filter"))

    d1 = landscape.filter_normalized_direction(c.model, spec.seed)
    d2 = landscape.filter_normalized_direction(c.model, spec.seed + 1)
    result = landscape.slice_2d(c.model, c.dataset(), c.config.train.loss, d1, d2, axis, axis, done=done,
                                on_batch=keep, progress=progress)
    store.save_analysis(rid, aid, spec.kind, spec.to_json(), result.seconds)
    return Analysis(spec, aid, False, _with_role(store.landscape(aid)), result.seconds)


# --- basins ----------------------------------------------------------------------------------------

def _escape(store: Store, pair_id: str, spec: EscapeSpec, progress: Progress) -> Analysis:
    """Perturb each minimum and retrain on the clean set only; per trial the test accuracy reached and
    whether it escaped (see basins.EscapeResult)."""
    ck = checkpoints(store, pair_id)
    frames, start = [], time.perf_counter()
    for i, role in enumerate(ROLES):
        c = ck[role]
        res = basins.escape_trials(c.config, c.dataset(), c.model, list(spec.radii), spec.n_trials, spec.seed,
                                   retrain_epochs=spec.retrain_epochs, role=role, escape_margin=spec.margin,
                                   progress=scaled(progress, i / len(ROLES), (i + 1) / len(ROLES), f"{role}: "))
        frames.append(path_analyses.trial_rows(res, run_id(pair_id, role), spec))
    return _save(store, pair_id, spec, time.perf_counter() - start, trials=pd.concat(frames, ignore_index=True))


def _random_init(store: Store, pair_id: str, spec: RandomInitSpec, progress: Progress) -> Analysis:
    """Random initialisations trained on the clean set (one vmap ensemble) with the pair's config: their
    test accuracies and top eigenvalues, to hold against the bad minimum's."""
    c = checkpoints(store, pair_id)["good"]
    res = basins.random_init_statistics(c.config, c.dataset(), n_seeds=spec.n_seeds, seed0=spec.seed0,
                                        progress=progress)
    frame = pd.DataFrame({
        "run_id": run_id(pair_id, "good"), "kind": spec.kind, "radius": 0.0, "trial": np.arange(spec.n_seeds),
        "seed": res.seeds, "clean_loss": res.clean_loss, "clean_acc": res.clean_acc, "test_loss": res.test_loss,
        "test_acc": res.test_acc, "escaped": False, "top_eigenvalue": res.top_eigenvalue,
        "settings_json": json.dumps(spec.settings() | {"status": list(res.status)})})
    return _save(store, pair_id, spec, res.seconds, trials=frame)


def _radius(store: Store, pair_id: str, spec: RadiusSpec, progress: Progress) -> Analysis:
    """Per minimum, the empirical radius along random directions (see RadiusSpec), also stored as the
    estimate `empirical_radius` of each run."""
    ck = checkpoints(store, pair_id)
    frames, estimates, start = [], [], time.perf_counter()
    for i, role in enumerate(ROLES):
        c = ck[role]
        threshold = spec.threshold_factor * c.config.train.loss_target
        res = basins.empirical_radius(c.model, c.dataset(), c.config.train.loss, threshold,
                                      n_directions=spec.n_directions, seed=spec.seed)
        rid = run_id(pair_id, role)
        frames.append(pd.DataFrame({"run_id": rid, "kind": spec.kind, "radius": res.radii,
                                    "trial": np.arange(spec.n_directions), "seed": res.seeds,
                                    "clean_loss": res.loss_at_radius, "threshold": threshold,
                                    "escaped": res.censored, "settings_json": spec.to_json()}))
        estimates.append({"run_id": rid, "name": "empirical_radius", "value": res.mean,
                          "stderr": res.std / np.sqrt(spec.n_directions), "samples": spec.n_directions,
                          "method": "bisection",
                          "settings_json": json.dumps(spec.settings() | {"threshold": threshold})})
        progress((i + 1) / len(ROLES), f"radius of the {role} minimum: {res.mean:.3g}")
    return _save(store, pair_id, spec, time.perf_counter() - start, trials=pd.concat(frames, ignore_index=True),
                 estimates=pd.DataFrame(estimates))


# --- the 2-layer theory ------------------------------------------------------------------------

BOUND_FIELDS = ("complexity", "input_gradient_sq", "weight_factor", "gauss_newton_frobenius",
                "hessian_frobenius", "rhs", "rhs_hessian", "ratio")
_BOUND_NAMES = [f"bound_{f}" for f in BOUND_FIELDS] + ["bound_holds"]


def _bound(store: Store, pair_id: str, spec: BoundSpec, progress: Progress) -> Analysis:
    """Both sides of C ≤ √m ‖W‖₂² ‖G‖_F (basins.two_layer_bound) at each minimum of a two_layer pair,
    stored as estimates rows `bound_<field>`; its frame has one row per role."""
    ck = checkpoints(store, pair_id)
    rows, start = [], time.perf_counter()
    for i, role in enumerate(ROLES):
        c = ck[role]
        x, y = c.clean_train()
        res = basins.two_layer_bound(c.model, x, y, c.config.train.loss)
        values = {f: float(getattr(res, f)) for f in BOUND_FIELDS if hasattr(res, f)}
        values["holds"] = float(bool(res.holds))
        rows += [{"run_id": run_id(pair_id, role), "name": f"bound_{k}", "value": v, "method": "exact"}
                 for k, v in values.items()]
        progress((i + 1) / len(ROLES), f"bound at the {role} minimum")
    return _save(store, pair_id, spec, time.perf_counter() - start, estimates=pd.DataFrame(rows))


def _bound_frame(store: Store, pair_id: str, aid: str) -> pd.DataFrame | None:
    ids = run_ids(pair_id)
    have = store.estimates(ids, _BOUND_NAMES)
    if len(have) < len(ids) * len(_BOUND_NAMES):
        return None
    wide = have.pivot(index="run_id", columns="name", values="value")
    wide.columns = [c.removeprefix("bound_") for c in wide.columns]
    wide = wide.reset_index()
    return wide.assign(role=wide["run_id"].map(role_of), holds=wide["holds"] > 0.5)


# --- per-minimum estimates: adaptive sharpness, the 2-layer measurement ---------------------------

def _estimates_frame(store: Store, pair_id: str, prefix: str) -> pd.DataFrame | None:
    """The pair's estimates named `prefix`<field>, one row per run and column per field (None: none stored)."""
    return _estimates_wide(store.estimates(run_ids(pair_id)), prefix)


def _estimates_wide(have: pd.DataFrame, prefix: str) -> pd.DataFrame | None:
    have = have[have["name"].astype(str).str.startswith(prefix)] if len(have) else have
    if not len(have):
        return None
    wide = have.pivot_table(index="run_id", columns="name", values="value", aggfunc="first")
    wide.columns = [str(c).removeprefix(prefix) for c in wide.columns]
    wide = wide.reset_index()
    return wide.assign(role=wide["run_id"].map(role_of))


def _sharpness(store: Store, pair_id: str, spec: SharpnessSpec, progress: Progress) -> Analysis:
    """Adaptive sharpness λ₁(|θ| H |θ|) of the clean training loss at both minima (estimates `sharpness_*`)."""
    ck = checkpoints(store, pair_id)
    rows, start = [], time.perf_counter()
    for i, role in enumerate(ROLES):
        c = ck[role]
        x, y = c.clean_train()
        res = adaptive_sharpness(c.model, x, y, c.loss_fn, tol=spec.tol, max_steps=spec.max_steps, seed=spec.seed)
        rid = run_id(pair_id, role)
        rows += [{"run_id": rid, "name": "sharpness_adaptive", "value": res.eigenvalues[0], "hvps": res.hvps,
                  "method": "lanczos", "settings_json": spec.to_json()},
                 {"run_id": rid, "name": "sharpness_converged", "value": float(res.converged), "method": "lanczos",
                  "settings_json": spec.to_json()}]
        progress((i + 1) / len(ROLES), f"adaptive sharpness of the {role} minimum: {res.eigenvalues[0]:.4g}")
    return _save(store, pair_id, spec, time.perf_counter() - start, estimates=pd.DataFrame(rows))


TWO_LAYER_STATES = {"": "trained", "untrained_": "untrained, true labels",
                    "untrained_random_": "untrained, random labels"}


def _measure_rows(rid: str, prefix: str, res, spec: TwoLayerSpec) -> list[dict]:
    values = {k: float(v) for k, v in res.__dict__.items() if isinstance(v, (bool, int, float))}
    return [{"run_id": rid, "name": f"two_layer_{prefix}{k}", "value": v, "method": res.frobenius_method,
             "settings_json": spec.to_json()} for k, v in values.items()]


def _two_layer(store: Store, pair_id: str, spec: TwoLayerSpec, progress: Progress) -> Analysis:
    """basins.two_layer_measure at both minima (estimates `two_layer_<field>`), and at the network both
    started from, with the true and with random labels (`two_layer_untrained_<field>`,
    `two_layer_untrained_random_<field>`, on the good run): the claim's negative control."""
    ck = checkpoints(store, pair_id)
    rows, start = [], time.perf_counter()
    c = ck["good"]
    x, y = c.clean_train()
    data = c.dataset()
    loss = c.config.train.loss
    for i, role in enumerate(ROLES):
        res = basins.two_layer_measure(ck[role].model, x, y, loss, x_heldout=data.x_test)
        rows += _measure_rows(run_id(pair_id, role), "", res, spec)
        progress((i + 1) / 4, f"2-layer measurement at the {role} minimum")
    untrained = build_model(c.config.model, data.in_shape, data.n_classes).eval()
    shuffled = torch.as_tensor(attack_labels(y.numpy(), data.n_classes, "random", spec.label_seed))
    for j, (prefix, labels) in enumerate((("untrained_", y), ("untrained_random_", shuffled))):
        res = basins.two_layer_measure(untrained, x, labels, loss, x_heldout=data.x_test)
        rows += _measure_rows(run_id(pair_id, "good"), prefix, res, spec)
        progress((3 + j) / 4, f"2-layer measurement at the untrained network ({TWO_LAYER_STATES[prefix]})")
    return _save(store, pair_id, spec, time.perf_counter() - start, estimates=pd.DataFrame(rows))


_READERS: dict[str, Callable[[Store, str, str], pd.DataFrame | None]] = {
    **{k: lambda store, pair_id, aid: _with_role(store.landscape(aid))
       for k in (InterpolationSpec.kind, SliceSpec.kind, SurfaceSpec.kind)},
    **{k: lambda store, pair_id, aid: _with_role(store.basin_trials(aid))
       for k in (EscapeSpec.kind, RandomInitSpec.kind, RadiusSpec.kind)},
    BoundSpec.kind: _bound_frame,
    SharpnessSpec.kind: lambda store, pair_id, aid: _estimates_frame(store, pair_id, "sharpness_"),
    TwoLayerSpec.kind: lambda store, pair_id, aid: _estimates_frame(store, pair_id, "two_layer_"),
}
_ESTIMATE_PREFIX = {SharpnessSpec.kind: "sharpness_", TwoLayerSpec.kind: "two_layer_"}
_COMPUTE: dict[str, Callable[[Store, str, Spec, Progress], Analysis]] = {
    InterpolationSpec.kind: _interpolation, SliceSpec.kind: _slices, SurfaceSpec.kind: _surface,
    EscapeSpec.kind: _escape, RandomInitSpec.kind: _random_init, RadiusSpec.kind: _radius, BoundSpec.kind: _bound,
    SharpnessSpec.kind: _sharpness, TwoLayerSpec.kind: _two_layer}


# --- per-layer curvature (layers.layer_curvature) ----------------------------------------------------
# One estimates row per run and analysis, named `layers:<analysis id>` (so specs of other settings keep
# theirs): value the sharpest block's λ₁, hvps the total; settings_json holds the blocks' columns.

def _layers(store: Store, pair_id: str, spec: LayerSpec, progress: Progress) -> Analysis:
    """λ₁ and trace of each parameter block's diagonal Hessian block at both minima (see LayerSpec)."""
    ck = checkpoints(store, pair_id)
    rows, start = [], time.perf_counter()
    for i, role in enumerate(ROLES):
        c = ck[role]
        x, y = c.clean_train()
        res = layer_curvature(c.model, x, y, c.loss_fn, by=spec.blocks, trace_samples=spec.trace_samples,
                              exact_max_params=spec.exact_max_params, tol=spec.tol, max_steps=spec.max_steps,
                              seed=spec.seed, progress=scaled(progress, i / len(ROLES), (i + 1) / len(ROLES),
                                                              f"{role}: "))
        frame = res.to_frame()
        rows.append({"run_id": run_id(pair_id, role), "name": f"layers:{spec.analysis_id(pair_id)}",
                     "value": float(frame["top_eigenvalue"].max()), "samples": spec.trace_samples,
                     "hvps": res.hvps, "method": "lanczos+hutch++",
                     "settings_json": json.dumps(frame.to_dict(orient="list"))})
    return _save(store, pair_id, spec, time.perf_counter() - start, estimates=pd.DataFrame(rows))


def _layers_frame(store: Store, pair_id: str, aid: str) -> pd.DataFrame | None:
    """The stored blocks of both minima (layers.LayerResult.to_frame() with run_id and role), or None."""
    have = store.estimates(run_ids(pair_id), [f"layers:{aid}"])
    if len(have) < len(ROLES):
        return None
    frames = {r.run_id: pd.DataFrame(json.loads(r.settings_json)).assign(run_id=r.run_id) for r in have.itertuples()}
    return _with_role(pd.concat([frames[rid] for rid in run_ids(pair_id)], ignore_index=True))  # good first


_READERS[LayerSpec.kind] = _layers_frame
_COMPUTE[LayerSpec.kind] = _layers


# --- optimizer trajectories and the escape transition (lossland.path_analyses) -----------------------

def _trajectory(store: Store, pair_id: str, spec: TrajectorySpec, progress: Progress) -> Analysis:
    """The loss on the plane of each minimum's training path and the path on it (path_analyses.trajectory_rows)."""
    start = time.perf_counter()
    rows = path_analyses.trajectory_rows(checkpoints(store, pair_id), pair_id, spec, progress)
    return _save(store, pair_id, spec, time.perf_counter() - start, landscapes=rows)


def _escape_search(store: Store, pair_id: str, spec: EscapeSearchSpec, progress: Progress) -> Analysis:
    """The 50% escape radius of each minimum (path_analyses.escape_search); each radius's trials land in the
    store as they finish, so a stopped search resumes with the radii it already has."""
    aid, ck, start = spec.analysis_id(pair_id), checkpoints(store, pair_id), time.perf_counter()
    store.begin_analysis(run_id(pair_id, "good"), aid, spec.kind, spec.to_json())
    path_analyses.escape_search(ck, pair_id, spec, store.basin_trials(aid), lambda rows: store.append_trials(aid, rows),
                                progress)
    store.save_analysis(run_id(pair_id, "good"), aid, spec.kind, spec.to_json(), time.perf_counter() - start)
    return Analysis(spec, aid, False, _with_role(store.basin_trials(aid)), time.perf_counter() - start)


_READERS[TrajectorySpec.kind] = lambda store, pair_id, aid: path_analyses.trajectory_frame(
    _with_role(store.landscape(aid)))
_READERS[EscapeSearchSpec.kind] = lambda store, pair_id, aid: _with_role(store.basin_trials(aid))
_COMPUTE[TrajectorySpec.kind] = _trajectory
_COMPUTE[EscapeSearchSpec.kind] = _escape_search


# --- the paper's Figure 1 (no pair: its subject is specs.CURVE_FIT; rows in figure1.py) --------------

def _curve_fit(store: Store, subject: str, spec: CurveFitSpec, progress: Progress) -> Analysis:
    seconds = figure1.save(store, subject, spec, progress)
    aid = spec.analysis_id(subject)
    return Analysis(spec, aid, False, figure1.read(store, subject, aid), seconds)


_READERS[CurveFitSpec.kind] = figure1.read
_COMPUTE[CurveFitSpec.kind] = _curve_fit
