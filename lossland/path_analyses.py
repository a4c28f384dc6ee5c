"""The rows of two analyses of paths: the optimizer's path on its PCA plane, and the search for the 50%
escape radius. `analyses` loads the checkpoints, calls these and stores what they return.

A trajectory analysis is landscape rows of kind `trajectory` per minimum: `pca` rows, the n × n grid of
the plane θ* + α d₁ + β d₂ of the run's recorded PCA directions (trajectory.plane_axes: the path and
`margin` beyond), and `path` rows, point n² + t at the path's coordinates with the epoch (direction_seed)
and the snapshot's clean loss; every row carries the explained variance ratios in settings_json. An
escape search is basin-trial rows of kind `escape_search`, like the escape trials', one set per radius
it probed; the search itself is replayed from them (escape.replay_transition).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pandas as pd

from . import escape, landscape, trajectory
from .basins import EscapeResult
from .checkpoint import Checkpoint
from .pairs import METRICS, ROLES, Progress, run_id, scaled
from .specs import EscapeSearchSpec, Spec, TrajectorySpec


class NoTrajectory(ValueError):
    """A run whose checkpoint holds no optimizer trajectory."""


def trajectory_rows(ck: dict[str, Checkpoint], pair_id: str, spec: TrajectorySpec, progress: Progress) -> pd.DataFrame:
    """The landscape rows of the trajectory analysis of both minima (see the module's docstring)."""
    frames = []
    for i, role in enumerate(ROLES):
        c, rid = ck[role], run_id(pair_id, role)
        tr = c.trajectory
        if tr is None:
            raise NoTrajectory(f"run {rid} holds no optimizer trajectory: it was trained with "
                               f"record.trajectory_points = 0, stopped before its path spanned a plane, or by a "
                               f"lossland that did not record one")
        alphas, betas = trajectory.plane_axes(tr.coords, spec.n, spec.margin)
        surf = landscape.slice_2d(c.model, c.dataset(), c.config.train.loss, tr.directions[0], tr.directions[1],
                                  alphas, betas, progress=scaled(progress, i / len(ROLES), (i + 1) / len(ROLES)))
        grid = surf.to_frame().rename(columns={"index": "point"}).assign(normalization="pca")
        path = pd.DataFrame({"point": spec.n ** 2 + np.arange(len(tr.epochs)), "alpha": tr.coords[:, 0],
                             "beta": tr.coords[:, 1], "clean_loss": tr.clean_loss, "direction_seed": tr.epochs,
                             "normalization": "path"})
        frames.append(pd.concat([grid, path], ignore_index=True).assign(
            run_id=rid, kind=spec.kind, settings_json=json.dumps({"explained": [float(v) for v in tr.explained]})))
    return pd.concat(frames, ignore_index=True)


def trajectory_frame(df: pd.DataFrame) -> pd.DataFrame | None:
    """Stored trajectory rows (with role) for the charts: part ('pca' grid or 'path'), epoch, and the
    explained variance ratios explained_1, explained_2 of each row's minimum."""
    if not len(df):
        return None
    explained = np.array([json.loads(t)["explained"] for t in df["settings_json"]], dtype=float)
    return df.assign(part=df["normalization"].astype(str), epoch=df["direction_seed"],
                     explained_1=explained[:, 0], explained_2=explained[:, 1])


def trial_rows(res: EscapeResult, rid: str, spec: Spec) -> pd.DataFrame:
    """The basin_trials rows of escape trials of one minimum."""
    df = res.to_frame()
    return pd.DataFrame({"run_id": rid, "kind": spec.kind, "radius": df["radius"], "trial": df["trial"],
                         "seed": df["seed"], **{m: df[m] for m in METRICS}, "escaped": df["escaped"].astype(bool),
                         "distance": df["distance_from_minimum"], "settings_json": spec.to_json()})


def search_settings(spec: EscapeSearchSpec) -> dict:
    """The settings of escape.bisect_escape in an EscapeSearchSpec."""
    return {k: getattr(spec, k) for k in ("r_lo", "r_hi", "steps", "expand", "factor", "scan")}


def escape_search(ck: dict[str, Checkpoint], pair_id: str, spec: EscapeSearchSpec, have: pd.DataFrame,
                  keep: Callable[[pd.DataFrame], None], progress: Progress) -> dict[str, escape.EscapeTransition]:
    """Per minimum, escape.escape_transition with the trials already stored (`have`) reused and each new
    radius's trial rows handed to `keep` as they finish."""
    out = {}
    for i, role in enumerate(ROLES):
        c, rid = ck[role], run_id(pair_id, role)
        out[role] = t = escape.escape_transition(
            c.config, c.dataset(), c.model, role, **search_settings(spec), n_trials=spec.n_trials, seed=spec.seed,
            retrain_epochs=spec.retrain_epochs, margin=spec.margin,
            done=escape.stored_counts(have[have["run_id"] == rid]),
            on_radius=lambda res, rid=rid: keep(trial_rows(res, rid, spec)),
            progress=scaled(progress, i / len(ROLES), (i + 1) / len(ROLES), f"{role}: "))
        progress((i + 1) / len(ROLES), f"{role}: 50% escape radius " + (f"{t.r50:.3g}" if t.bracketed else
                                                                         "not bracketed"))
    return out


def escape_transitions(frame: pd.DataFrame, spec: EscapeSearchSpec) -> pd.DataFrame:
    """One row per minimum of a stored escape search (frame: role, radius, escaped): role, lo, hi, r50,
    bracketed and the unperturbed control's counts zero_k of zero_n (0 of 0 where not probed), replayed
    from its trials; a role whose trials do not replay (a search left unfinished) is left out."""
    rows = []
    for role, trials in frame.groupby("role", sort=False):
        try:
            t = escape.replay_transition(trials, **search_settings(spec))
        except KeyError:
            continue
        k, n = t.at_zero or (0, 0)
        rows.append({"role": role, "lo": t.lo, "hi": t.hi, "r50": t.r50, "bracketed": t.bracketed, "zero_k": k,
                     "zero_n": n})
    return pd.DataFrame(rows, columns=["role", "lo", "hi", "r50", "bracketed", "zero_k", "zero_n"])
