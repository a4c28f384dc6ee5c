"""Basins of minima: perturb-and-retrain escapes, random-init statistics, empirical radii; the 2-layer theory.

Perturbations are relative and filter-normalised (landscape.filter_normalized_direction): at radius
r every filter of the weights moves by r times its own norm, biases and BatchNorm parameters stay.
`escape_trials` retrains perturbed copies of a minimum on the clean set and asks whether they end
in a minimum that generalises differently; `random_init_statistics` trains many seeds and measures
their sharpness; `empirical_radius` measures how far the clean loss stays under a threshold along
random rays. The 2-layer theory lives in `theory` and is importable from here: `two_layer_measure`
(complexity against the Hessian's norms, the claim's quantities) and `two_layer_bound` (the identity
check in the Gauss-Newton matrix, not the claim).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from .config import ExperimentConfig
from .curvature import HessianOperator, hvp_dtype
from .data import Dataset
from .ensemble import train_seeds
from .lanczos import top_eigenpairs
from .landscape import LossSurface, filter_normalized_direction, flat_params, unflatten
from .models import n_params
from .pairs import METRICS, Progress, check_role, quiet, scaled
from .theory import BoundResult as BoundResult
from .theory import BoundSettings as BoundSettings
from .theory import TwoLayerMeasure as TwoLayerMeasure
from .theory import two_layer_bound as two_layer_bound
from .theory import two_layer_measure as two_layer_measure
from .train import loss_function, resolve_device


def _frozen(a, dtype=np.float64) -> np.ndarray:
    a = np.array(a, dtype=dtype)
    a.setflags(write=False)
    return a


def perturb(model: nn.Module, radius: float, seed: int) -> torch.Tensor:
    """θ + r·d with d = filter_normalized_direction(model, seed): each weight filter moves by r times its norm."""
    return flat_params(model) + radius * filter_normalized_direction(model, seed)


# --- perturb and retrain -----------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class EscapeResult:
    """Per trial (radius-major: all trials of radii[0], then radii[1], ...) arrays of equal length.

    A trial *escaped* when its retraining converged (clean loss ≤ train.loss_target) and its test
    accuracy moved away from the minimum's by more than `escape_margin`, in either direction
    (|test_acc − minimum_test_acc| > margin): one definition for both roles, so neither role's escape
    probability is favoured by its direction (a bad minimum that escapes does so upwards anyway).
    """

    radii: tuple[float, ...]
    n_trials: int
    role: str  # of the minimum: "good" or "bad"
    escape_margin: float
    retrain_epochs: int
    minimum_clean_loss: float
    minimum_test_acc: float
    radius: np.ndarray
    trial: np.ndarray
    seed: np.ndarray  # direction and mini-batch order of the trial
    status: tuple[str, ...]  # of the retraining: converged | max_epochs | diverged
    epochs: np.ndarray
    start_clean_loss: np.ndarray  # at the perturbed point, before retraining
    start_test_acc: np.ndarray
    clean_loss: np.ndarray  # after retraining
    clean_acc: np.ndarray
    attack_loss: np.ndarray
    attack_acc: np.ndarray
    test_loss: np.ndarray
    test_acc: np.ndarray
    distance_from_minimum: np.ndarray  # ‖θ_end − θ*‖
    distance_travelled: np.ndarray  # ‖θ_end − θ_start‖: how far retraining moved
    escaped: np.ndarray
    seconds: float

    def escape_probability(self) -> np.ndarray:
        """The fraction of trials that escaped, per radius (aligned with `radii`)."""
        return self.escaped.reshape(len(self.radii), self.n_trials).mean(1)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({c: list(getattr(self, c)) for c in (*_TRIAL_COLUMNS, "escaped")})


_TRIAL_COLUMNS = ("radius", "trial", "seed", "status", "epochs", "start_clean_loss", "start_test_acc", *METRICS,
                  "distance_from_minimum", "distance_travelled")


def escape_trials(cfg: ExperimentConfig, data: Dataset, model: nn.Module, radii: list[float], n_trials: int,
                  seed: int, retrain_epochs: int | None = None, progress: Progress | None = None, *,
                  role: str = "bad", escape_margin: float = 0.05, ensemble: bool | None = None,
                  device: torch.device | str | None = None) -> EscapeResult:
    """Perturb the minimum `model` n_trials times at each radius and retrain every copy on the clean set.

    Trial t uses seed + t at every radius, for its direction and its mini-batch order, so the radii
    are compared on the same random directions. Retraining uses cfg.train (optimizer, lr, batch size,
    loss target) with max_epochs = retrain_epochs or cfg.train.max_epochs, from a fresh optimizer
    state. The trials of one radius train together (ensemble.train_seeds with init): as one vmap ensemble
    where that pays (`ensemble=None`: ensemble.ensemble_pays), else one by one with train(init=...), which
    gives the same result within float tolerance; BatchNorm models train one by one, their statistics
    start fresh and are re-estimated by the retraining. See EscapeResult for `escaped`.
    """
    check_role(role)
    if n_trials < 1 or not radii or any(not (math.isfinite(r) and r >= 0) for r in radii):
        raise ValueError(f"n_trials = {n_trials} must be ≥ 1 and radii = {radii!r} finite numbers ≥ 0")
    report = progress or quiet
    start = time.perf_counter()
    epochs = retrain_epochs or cfg.train.max_epochs
    cfg = cfg.with_changes(**{"train.max_epochs": epochs})
    dev = torch.device(device) if device is not None else resolve_device(cfg.train.device)
    model = copy.deepcopy(model).to(dev).eval()
    surface = LossSurface(model, data, cfg.train.loss, whole_test=True)  # as the retrained runs' test_acc
    theta0 = flat_params(model)
    at_min = surface.evaluate(theta0[None])
    seeds = [seed + t for t in range(n_trials)]
    directions = torch.stack([filter_normalized_direction(model, s) for s in seeds])
    rows: dict[str, list] = {k: [] for k in _TRIAL_COLUMNS}
    for i, r in enumerate(radii):
        starts = theta0 + r * directions
        before = surface.evaluate(starts)
        init = [{k: v.clone() for k, v in unflatten(model, s).items()} for s in starts]
        part = scaled(report, i / len(radii), (i + 1) / len(radii), f"radius {r:g}: ")
        for t, res in enumerate(train_seeds(cfg, data, seeds, "good", part, dev, init, ensemble)):
            end = flat_params(res.model).to(theta0)
            row = {"radius": float(r), "trial": t, "seed": seeds[t], "status": res.status, "epochs": res.epochs,
                   "start_clean_loss": before["clean_loss"][t], "start_test_acc": before["test_acc"][t],
                   **{k: getattr(res, k) for k in METRICS},
                   "distance_from_minimum": float(torch.linalg.vector_norm(end - theta0)),
                   "distance_travelled": float(torch.linalg.vector_norm(end - starts[t]))}
            for k, v in row.items():
                rows[k].append(v)
    min_acc = float(at_min["test_acc"][0])
    change = np.array(rows["test_acc"]) - min_acc
    moved = np.abs(change) > escape_margin  # the same direction and margin for both roles
    escaped = moved & (np.array(rows["status"]) == "converged")
    report(1.0, f"escape trials: {int(escaped.sum())}/{len(escaped)} escaped")
    ints = ("trial", "seed", "epochs")
    return EscapeResult(
        radii=tuple(float(r) for r in radii), n_trials=n_trials, role=role, escape_margin=escape_margin,
        retrain_epochs=epochs, minimum_clean_loss=float(at_min["clean_loss"][0]), minimum_test_acc=min_acc,
        status=tuple(rows.pop("status")),
        **{k: _frozen(v, np.int64 if k in ints else np.float64) for k, v in rows.items()},
        escaped=_frozen(escaped, bool), seconds=time.perf_counter() - start)


# --- many seeds: generalisation against sharpness ------------------------------------------------

@dataclass(frozen=True, eq=False)
class RandomInitResult:
    """One entry per seed: the minimum it reached trained on the clean set, and its sharpness."""

    seeds: np.ndarray
    status: tuple[str, ...]
    converged: np.ndarray  # training reached train.loss_target
    epochs: np.ndarray
    clean_loss: np.ndarray
    clean_acc: np.ndarray
    test_loss: np.ndarray
    test_acc: np.ndarray
    top_eigenvalue: np.ndarray  # λ_1 of the Hessian of the clean training loss
    eigenvalues: np.ndarray  # (n_seeds, spectrum_k), descending
    lanczos_converged: np.ndarray  # every residual ≤ spectrum.tol·|λ_i|
    seconds: float


def random_init_statistics(cfg: ExperimentConfig, data: Dataset, n_seeds: int = 32, seed0: int = 0,
                           spectrum_k: int = 1, progress: Progress | None = None,
                           device: torch.device | str | None = None) -> RandomInitResult:
    """Train seeds seed0 .. seed0 + n_seeds − 1 on the clean set (ensemble.train_seeds: one vmap ensemble where it
    pays), then the top spectrum_k Hessian eigenvalues of each member's clean training loss (Lanczos, cfg.spectrum's
    tol, max_steps, chunk_size and seed, on a copy whose products run in curvature.hvp_dtype of its size: float64,
    float32 above FLOAT32_HVP_PARAMS, as the stored spectra)."""
    if n_seeds < 1 or spectrum_k < 1:
        raise ValueError(f"n_seeds = {n_seeds} and spectrum_k = {spectrum_k} must both be ≥ 1")
    report = progress or quiet
    start = time.perf_counter()
    seeds = list(range(seed0, seed0 + n_seeds))
    members = train_seeds(cfg, data, seeds, "good", progress=lambda f, m: report(0.7 * f, m), device=device)
    sc, loss_fn = cfg.spectrum, loss_function(cfg.train.loss)
    eig, lanczos_ok = [], []
    for j, res in enumerate(members):
        twin = copy.deepcopy(res.model).to(hvp_dtype(n_params(res.model)))
        op = HessianOperator(twin, data.x_train, data.y_train, loss_fn, chunk_size=sc.chunk_size)
        top = top_eigenpairs(op, min(spectrum_k, op.n), tol=sc.tol, max_steps=sc.max_steps, seed=sc.seed)
        eig.append(top.eigenvalues)
        lanczos_ok.append(top.converged)
        report(0.7 + 0.3 * (j + 1) / n_seeds, f"top eigenvalue of seed {seeds[j]}: {top.eigenvalues[0]:.4g}")
    eigenvalues = _frozen(eig)
    get = lambda k: _frozen([getattr(r, k) for r in members])  # noqa: E731
    return RandomInitResult(
        seeds=_frozen(seeds, np.int64), status=tuple(r.status for r in members),
        converged=_frozen([r.status == "converged" for r in members], bool),
        epochs=_frozen([r.epochs for r in members], np.int64), clean_loss=get("clean_loss"),
        clean_acc=get("clean_acc"), test_loss=get("test_loss"), test_acc=get("test_acc"),
        top_eigenvalue=_frozen(eigenvalues[:, 0]), eigenvalues=eigenvalues,
        lanczos_converged=_frozen(lanczos_ok, bool), seconds=time.perf_counter() - start)


# --- how far the loss stays low ------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class RadiusResult:
    """Per direction, the relative radius r at which the clean loss first reaches the threshold."""

    radii: np.ndarray  # (n_directions,): L(r') < threshold at every r' the search evaluated up to r
    censored: np.ndarray  # never reached within r_max: radius = r_max is a lower bound
    loss_at_radius: np.ndarray
    mean: float
    std: float  # over directions (ddof = 0)
    threshold: float
    base_loss: float  # at the minimum
    seeds: np.ndarray
    r_max: float
    tol: float
    n_scan: int
    evaluations: int
    seconds: float


def empirical_radius(model: nn.Module, data: Dataset, loss_name: str, threshold: float, n_directions: int = 8,
                     seed: int = 0, r_max: float = 2.0, tol: float = 1e-3, n_scan: int = 20,
                     batch_points: int = 64) -> RadiusResult:
    """Along rays θ + r·d_k (d_k = filter_normalized_direction(model, seed + k)), the largest r with the
    clean loss below `threshold`: a coarse scan at r_max·s/n_scan (s = 1..n_scan) brackets the first
    scan point at or above it, then bisection of all directions together narrows each bracket
    [lo, hi] to hi − lo ≤ tol; the radius is lo. A crossing and re-crossing between two scan points
    is not seen. A direction that stays below up to r_max is censored at r_max."""
    if not (n_directions >= 1 and n_scan >= 1 and r_max > 0 and tol > 0):
        raise ValueError(f"n_directions = {n_directions}, n_scan = {n_scan} must be ≥ 1; r_max = {r_max} and "
                         f"tol = {tol} > 0")
    start = time.perf_counter()
    surface = LossSurface(model, data, loss_name, batch_points=batch_points)
    theta = flat_params(model)
    seeds = np.arange(seed, seed + n_directions)
    D = torch.stack([filter_normalized_direction(model, int(s)) for s in seeds])
    base = float(surface.evaluate(theta[None])["clean_loss"][0])
    if not base < threshold:
        raise ValueError(f"threshold = {threshold:g} is not above the clean loss at the minimum ({base:.4g})")

    def losses(r: np.ndarray, rows: np.ndarray) -> np.ndarray:
        rr = torch.as_tensor(r, dtype=theta.dtype, device=theta.device)[:, None]
        return surface.evaluate(theta + rr * D[torch.as_tensor(rows, device=D.device)])["clean_loss"]

    scan = r_max * np.arange(1, n_scan + 1) / n_scan
    grid = losses(np.tile(scan, n_directions), np.repeat(np.arange(n_directions), n_scan)).reshape(n_directions, n_scan)
    above = grid >= threshold
    censored = ~above.any(1)
    first = np.where(censored, n_scan, above.argmax(1))
    lo = np.where(first > 0, scan[np.maximum(first - 1, 0)], 0.0)
    hi = np.where(censored, r_max, scan[np.minimum(first, n_scan - 1)])
    lo = np.where(censored, r_max, lo)
    live = np.flatnonzero(~censored)
    while len(live) and np.max(hi[live] - lo[live]) > tol:
        mid = 0.5 * (lo[live] + hi[live])
        below = losses(mid, live) < threshold
        lo[live] = np.where(below, mid, lo[live])
        hi[live] = np.where(below, hi[live], mid)
        live = live[hi[live] - lo[live] > tol]
    loss_at = losses(lo, np.arange(n_directions))
    return RadiusResult(radii=_frozen(lo), censored=_frozen(censored, bool), loss_at_radius=_frozen(loss_at),
                        mean=float(lo.mean()), std=float(lo.std()), threshold=float(threshold), base_loss=base,
                        seeds=_frozen(seeds, np.int64), r_max=float(r_max), tol=float(tol), n_scan=n_scan,
                        evaluations=surface.evaluations, seconds=time.perf_counter() - start)


def attack_size_grid(cfg: ExperimentConfig, max_factor: float = 2.0, n_points: int = 5) -> list[int]:
    """n_points attack sizes evenly from 0 to max_factor × data.n_train, clipped to the held-out pool
    (pool − n_train) and deduplicated, ascending."""
    if n_points < 1 or not (math.isfinite(max_factor) and max_factor >= 0):
        raise ValueError(f"n_points = {n_points} must be ≥ 1 and max_factor = {max_factor} a finite number ≥ 0")
    free = math.inf if cfg.data.factory else cfg.data.pool_size() - cfg.data.n_train  # a factory's: checked at loading
    sizes = np.rint(np.linspace(0.0, max_factor * cfg.data.n_train, n_points)).astype(int)
    return sorted({int(min(s, free)) for s in sizes})
