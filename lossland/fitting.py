"""The paper's Figure 1: a few 1-D points fitted by an over-parameterised network (smooth) and by polynomials (wild).

The report gets the stored result with `analyses.get(store, CURVE_FIT, CurveFitSpec())` (None until it is
computed; `analyses.compute` computes and stores it) and draws it with
`charts.curve_fit_chart(a.frame, fitting.summary(a.frame))`.

n points x_i evenly spaced on [−1, 1], y_i = target(x_i) + noise·ε_i (ε standard normal, seeded by
(seed, n)). Fitted to them: a tanh MLP 1 → widths → 1 with far more parameters than points, trained
full-batch (Adam, cosine-annealed learning rate) on the mean squared error towards zero; least-squares
polynomials of degree n − 1 (the interpolant) and n − 1 + k for each k in extra_degrees (the
minimum-norm interpolant in the Legendre basis: numpy.linalg.lstsq on legvander, whose columns are
far better conditioned on [−1, 1] than monomials); and one least-squares polynomial of low_degree < n − 1,
which does not interpolate: the control that shows the roughness comes from interpolating with a
polynomial, not from polynomials as such. Each fit is scored on a dense grid of n_grid points:
test error = mean of (f − target)² over the grid (the noise-free target), roughness = ∫ f''(x)² dx by
second differences on the grid, and the training error = mean of (f(x_i) − y_i)² over the points.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from numpy.polynomial import legendre

TARGETS = {"sin": "sin(πx)", "cubic": "x³ − x/2"}  # name -> formula
NET = "net"
TARGET = "target"
GRID, POINTS = "grid", "points"


def target_values(name: str, x: np.ndarray) -> np.ndarray:
    """sin(πx), or the cubic x³ − x/2 (a low-degree target the interpolant reproduces: the negative control)."""
    if name == "sin":
        return np.sin(np.pi * x)
    if name == "cubic":
        return x ** 3 - 0.5 * x
    raise ValueError(f"target = {name!r} is not allowed: one of {', '.join(TARGETS)}")


def poly_label(degree_over: int | None = None, degree: int | None = None) -> str:
    """"poly n-1", "poly n-1+k" (k > 0) or, for a fixed low degree d, "poly deg d"."""
    if degree is not None:
        return f"poly deg {degree}"
    return "poly n-1" if not degree_over else f"poly n-1+{degree_over}"


@dataclass(frozen=True, eq=False)
class CurveFitResult:
    """One row per (fit, n, seed, part, x): the fit's value there and the target (grid: the noise-free
    target; points: the noisy observation y_i). The target itself is the fit "target" (n = 0, seed = 0)."""

    fit: tuple[str, ...]
    n: np.ndarray
    seed: np.ndarray
    part: tuple[str, ...]  # "grid" | "points"
    x: np.ndarray
    value: np.ndarray
    target: np.ndarray
    n_params: int  # of the network
    seconds: float

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"fit": list(self.fit), "n": self.n, "seed": self.seed, "part": list(self.part),
                             "x": self.x, "value": self.value, "target": self.target})


def points(target_name: str, noise: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n evenly spaced x on [−1, 1] and y = target(x) + noise·ε, ε seeded by (seed, n)."""
    x = np.linspace(-1.0, 1.0, n)
    return x, target_values(target_name, x) + noise * np.random.default_rng([seed, n]).standard_normal(n)


def polynomial(x: np.ndarray, y: np.ndarray, degree: int, at: np.ndarray) -> np.ndarray:
    """The least-squares polynomial of `degree` through (x, y) — for degree ≥ len(x) − 1 the
    interpolant of least Legendre-coefficient norm — evaluated at `at`."""
    coef = np.linalg.lstsq(legendre.legvander(x, degree), y, rcond=None)[0]
    return legendre.legval(at, coef)


def _init(members: int, widths: Sequence[int], seed: int) -> list[torch.Tensor]:
    """Weights (members, fan_in, fan_out) and biases (members, 1, fan_out) ~ U(±1/√fan_in), as nn.Linear."""
    gen, dims, out = torch.Generator().manual_seed(seed), (1, *widths, 1), []
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        bound = 1.0 / math.sqrt(a)
        out += [(torch.rand(members, a, b, generator=gen) * 2 - 1) * bound,
                (torch.rand(members, 1, b, generator=gen) * 2 - 1) * bound]
    return out


def _forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """All members at once: x (members, points) -> f (members, points)."""
    h = x[:, :, None]
    for i in range(0, len(params), 2):
        h = torch.baddbmm(params[i + 1], h, params[i])
        h = torch.tanh(h) if i + 2 < len(params) else h
    return h[:, :, 0]


@contextmanager
def _one_thread() -> Iterator[None]:
    """Ops this small gain nothing from intra-op threads, which only synchronise: a busy 2-core machine took
    145 s with two threads where one took 6 s. The process's setting is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_nets(x: np.ndarray, y: np.ndarray, mask: np.ndarray, widths: Sequence[int], steps: int, lr: float,
               seed: int) -> list[torch.Tensor]:
    """Train one MLP per row of x (points padded, `mask` 1 where real) as one batched network on the sum of
    the members' mean squared errors: Adam is elementwise, so each member trains as if alone."""
    params = [p.requires_grad_(True) for p in _init(len(x), widths, seed)]
    xt, yt, mt = (torch.as_tensor(a, dtype=torch.float32) for a in (x, y, mask))
    count = mt.sum(1)
    opt = torch.optim.Adam(params, lr=lr, fused=True)  # fused: a third less time per step on CPU
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        opt.zero_grad()
        ((((_forward(params, xt) - yt) * mt) ** 2).sum(1) / count).sum().backward()
        opt.step()
        schedule.step()
    return [p.detach().double() for p in params]


def _rows(out: dict[str, list], fit: str, n: int, seed: int, part: str, x, value, truth) -> None:
    for key, v in (("fit", [fit] * len(x)), ("n", [n] * len(x)), ("seed", [seed] * len(x)),
                   ("part", [part] * len(x)), ("x", x), ("value", value), ("target", truth)):
        out[key].extend(np.asarray(v).tolist() if key in ("x", "value", "target") else v)


def curve_fit(target: str = "sin", noise: float = 0.1, ns: Sequence[int] = (5, 8, 11, 14), n_seeds: int = 3,
              seed: int = 0, widths: Sequence[int] = (64, 64), steps: int = 2000, lr: float = 0.01,
              extra_degrees: Sequence[int] = (0, 20), low_degree: int = 3, n_grid: int = 401) -> CurveFitResult:
    """Figure 1 for every n in ns and seeds seed .. seed + n_seeds − 1 (see the module docstring). The
    networks of all (n, seed) train together (train_nets); the grid is evaluated in float64."""
    start = time.perf_counter()
    members = [(n, s) for n in ns for s in range(seed, seed + n_seeds)]
    width = max(ns)
    X, Y, M = (np.zeros((len(members), width)) for _ in range(3))
    for b, (n, s) in enumerate(members):
        X[b, :n], Y[b, :n] = points(target, noise, n, s)
        M[b, :n] = 1.0
    grid = np.linspace(-1.0, 1.0, n_grid)
    truth = target_values(target, grid)
    with _one_thread():
        params = train_nets(X, Y, M, widths, steps, lr, seed)
        with torch.no_grad():
            on_grid = _forward(params, torch.as_tensor(grid).expand(len(members), -1)).numpy()
            at_points = _forward(params, torch.as_tensor(X)).numpy()
    rows: dict[str, list] = {k: [] for k in ("fit", "n", "seed", "part", "x", "value", "target")}
    _rows(rows, TARGET, 0, 0, GRID, grid, truth, truth)
    for b, (n, s) in enumerate(members):
        x, y = X[b, :n], Y[b, :n]
        fits = {NET: (on_grid[b], at_points[b, :n])}
        for k in extra_degrees:
            fits[poly_label(k)] = (polynomial(x, y, n - 1 + k, grid), polynomial(x, y, n - 1 + k, x))
        if low_degree < n - 1:
            fits[poly_label(degree=low_degree)] = (polynomial(x, y, low_degree, grid), polynomial(x, y, low_degree, x))
        for fit, (g, p) in fits.items():
            _rows(rows, fit, n, s, GRID, grid, g, truth)
            _rows(rows, fit, n, s, POINTS, x, p, y)
    n_params = sum(p[0].numel() for p in params)
    return CurveFitResult(fit=tuple(rows["fit"]), n=np.array(rows["n"]), seed=np.array(rows["seed"]),
                          part=tuple(rows["part"]), x=np.array(rows["x"]), value=np.array(rows["value"]),
                          target=np.array(rows["target"]), n_params=n_params, seconds=time.perf_counter() - start)


def roughness(x: np.ndarray, f: np.ndarray) -> float:
    """∫ f''² dx on an evenly spaced grid x: f'' by second differences at the interior points, carried to
    the two ends, integrated by the trapezoid rule."""
    second = np.diff(f, 2) / float(x[1] - x[0]) ** 2
    return float(np.trapezoid(np.pad(second, 1, mode="edge") ** 2, x))


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (fit, n, seed): train_mse at the points, test_mse against the target on the grid, roughness."""
    out = []
    for (fit, n, seed), g in frame.groupby(["fit", "n", "seed"], sort=False):
        grid, pts = g[g["part"] == GRID].sort_values("x"), g[g["part"] == POINTS]
        out.append({"fit": fit, "n": int(n), "seed": int(seed),
                    "train_mse": float(((pts["value"] - pts["target"]) ** 2).mean()) if len(pts) else math.nan,
                    "test_mse": float(((grid["value"] - grid["target"]) ** 2).mean()),
                    "roughness": roughness(grid["x"].to_numpy(), grid["value"].to_numpy())})
    return pd.DataFrame(out)
